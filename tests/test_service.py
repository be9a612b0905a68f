"""The actions the app and the CLI share (finetune.service), exercised without Gradio: list, status, stop,
resume, and where a run trains (recorded once in its folder, read by backends.backend_for)."""

from __future__ import annotations

import json
import os

import pytest

from finetune import runs, service
from finetune.backends import backend_for, hfjobs, local, zerogpu
from finetune.backends.base import Backend
from finetune.config import RunConfig
from finetune.events import EventLog


def make_run(root, run_id: str, *, alive: bool = True, backend: str | None = "local"):
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    if backend:
        runs.record_backend(run_dir, backend)
    EventLog(run_dir).emit("started", max_steps=10, pid=os.getpid() if alive else 2**22 + 7)
    EventLog(run_dir).emit("step", step=3, max_steps=10, loss=1.25)
    return run_dir


def test_list_status_and_stop_of_a_local_run(tmp_path):
    ws = service.Workspace(tmp_path)
    run_dir = make_run(tmp_path, "r1")
    [listed] = ws.owner_space(None).statuses()
    assert listed["run_id"] == "r1" and listed["status"] == "running" and listed["backend"] == "local"
    assert "path" not in listed and "losses" not in listed
    state = ws.owner_space(None).status("r1")
    assert state["step"] == 3 and state["losses"] == [(3, 1.25)] and "path" not in state
    stopped = ws.owner_space(None).stop("r1")
    assert runs.stop_requested(run_dir) and stopped["run_id"] == "r1"
    assert ws.owner_space(None).resume("r1") == "r1"  # the stop, not taken yet, is withdrawn
    assert not runs.stop_requested(run_dir)
    with pytest.raises(service.ServiceError, match="already running"):
        ws.owner_space(None).resume("r1")


def test_unknown_and_invalid_runs_are_user_errors(tmp_path):
    space = service.Workspace(tmp_path).owner_space(None)
    for action in (space.status, space.stop, space.resume, space.logs):
        with pytest.raises(service.ServiceError, match="no run 'nope'"):
            action("nope")
        with pytest.raises(service.ServiceError, match="not a valid run id"):
            action("../etc")


def test_no_run_picked_is_a_user_error_for_every_run_action(tmp_path):
    """A page's run picker left empty sends None: refused with what to do (export raised an AttributeError)."""
    ws = service.Workspace(tmp_path)
    space = ws.owner_space(None)
    for run_id in (None, ""):
        for action in (space.adapter_path, space.status, space.stop, space.resume):
            with pytest.raises(service.ServiceError, match="pick a run first"):
                action(run_id)
        with pytest.raises(service.ServiceError, match="pick a run first"):
            ws.owner_space(None).export(run_id, "gguf", "q8_0", tmp_path / "out")


def test_zerogpu_run_records_its_backend_and_resumes_only_when_stopped(tmp_path):
    ws = service.Workspace(tmp_path)
    run_id = zerogpu.start(RunConfig(), tmp_path)
    run_dir = tmp_path / run_id
    assert json.loads((run_dir / runs.BACKEND_FILE).read_text()) == {"backend": "zerogpu"}
    assert ws.owner_space(None).backend(run_id) == "zerogpu"
    assert isinstance(backend_for(run_dir), zerogpu.ZeroGPUBackend)
    EventLog(run_dir).emit("paused", message="quota")
    assert ws.owner_space(None).resume(run_id) == run_id  # the caller drives the GPU calls again
    EventLog(run_dir).emit("finished", step=10)
    with pytest.raises(service.ServiceError, match="is finished: nothing to resume") as refused:
        ws.owner_space(None).resume(run_id)
    assert isinstance(refused.value.__cause__, runs.RunError)  # the library's error type is kept, chained
    ws.owner_space(None).stop(run_id)
    assert runs.stop_requested(run_dir)
    assert '"finished"' in ws.owner_space(None).logs(run_id)


def test_a_hf_job_cannot_be_resumed(tmp_path):
    ws = service.Workspace(tmp_path)
    run_dir = make_run(tmp_path, "job1", backend="hf-jobs")
    (run_dir / runs.JOB_FILE).write_text(json.dumps({"job_id": "j1"}))
    assert isinstance(backend_for(run_dir), hfjobs.HFJobsBackend)
    with pytest.raises(service.ServiceError, match="cannot be resumed"):
        ws.owner_space(None).resume("job1")


def test_old_run_folders_without_the_record_are_read_from_their_markers(tmp_path):
    plain = make_run(tmp_path, "old-local", backend=None)
    job = make_run(tmp_path, "old-job", backend=None)
    (job / runs.JOB_FILE).write_text(json.dumps({"job_id": "j1"}))
    zero = make_run(tmp_path, "old-zero", backend=None)
    EventLog(zero).emit("submitted", backend="zerogpu")
    assert [runs.read_backend(d) for d in (plain, job, zero)] == ["local", "hf-jobs", "zerogpu"]
    listed = {r["run_id"]: r["backend"] for r in service.Workspace(tmp_path).owner_space(None).statuses()}
    assert listed == {"old-local": "local", "old-job": "hf-jobs", "old-zero": "zerogpu"}
    (plain / runs.BACKEND_FILE).write_text("{cut off")
    with pytest.raises(runs.RunError, match="backend.json"):
        runs.read_backend(plain)


def test_every_backend_implements_the_protocol(tmp_path):
    for backend in (local.LocalBackend(tmp_path / ".queue"), zerogpu.ZeroGPUBackend(), hfjobs.HFJobsBackend()):
        assert isinstance(backend, Backend) and backend.name in runs.BACKEND_NAMES


def test_cli_and_service_agree_on_stop(tmp_path, capsys):
    from finetune.cli import main

    make_run(tmp_path, "done", alive=False)
    EventLog(tmp_path / "done").emit("finished", step=10)
    assert main(["stop", "done", "--runs-root", str(tmp_path)]) == 0
    assert "nothing to stop" in capsys.readouterr().out and not runs.stop_requested(tmp_path / "done")
    make_run(tmp_path, "live")
    assert main(["stop", "live", "--runs-root", str(tmp_path)]) == 0
    assert "asked run live to stop" in capsys.readouterr().out and runs.stop_requested(tmp_path / "live")
    assert main(["runs", "--runs-root", str(tmp_path), "--json"]) == 0
    shown = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["run_id"] for r in shown] and {r["run_id"] for r in shown} == {"done", "live"}
