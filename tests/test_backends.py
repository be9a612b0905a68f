"""Where training runs: ZeroGPU-style chunks equal one uninterrupted run and survive an aborted call; a local
run outlives the app that started it; a Hugging Face job's spec is right, keeps the token secret, and its
exact command trains and pushes end to end here; `accelerate launch` with 2 processes saves one adapter.

All on CPU with the tiny random Llama (tests/conftest.py), offline.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import runs, service
from finetune.backends import get_backend, hfjobs, local, zerogpu
from finetune.config import RunConfig
from finetune.events import EventLog, read_events
from finetune.train import train
from test_train import adapter_tensors, assert_same_adapter, tiny_config

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
TOKEN = "hf_TESTtokenNeverPrinted0123456789"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory):
    """One uninterrupted 12-step run (save every 4): what every interrupted variant must end with."""
    result = train(tiny_config(tiny_model_dir), runs_root=tmp_path_factory.mktemp("reference"))
    assert result.status == "finished"
    return result


def started_events(run_dir: Path) -> list[dict]:
    return [e for e in read_events(run_dir) if e["type"] == "started"]


# ---------------------------------------------------------------------------------------------
# ZeroGPU: chunks


def forked_worker(chunk):
    """What ZeroGPU does to a call: arguments and result cross a process boundary as pickles."""
    calls = []

    def call(run_dir: str, until_step: int, duration_s: int) -> dict:
        args = pickle.loads(pickle.dumps((run_dir, until_step, duration_s)))
        calls.append(args)
        return pickle.loads(pickle.dumps(chunk(*args)))

    call.calls = calls
    return call


def test_chunked_training_equals_uninterrupted(tiny_model_dir, tmp_path, reference):
    worker = forked_worker(zerogpu.train_chunk)
    states = list(zerogpu.run_chunked(tiny_config(tiny_model_dir), tmp_path / "chunked", chunk=worker,
                                      steps_per_call=5))
    # 0 -> 5, 5 -> 10, 10 -> 12: three calls, each ended at its own checkpoint (5 and 10 are off the save grid)
    assert [c[1] for c in worker.calls] == [5, 10, 12]
    assert [(s["status"], s["step"]) for s in states] == [("paused", 5), ("paused", 10), ("finished", 12)]
    run_dir = tmp_path / "chunked"
    assert [e["resumed_from"] for e in started_events(run_dir)] == [
        None, "checkpoints/checkpoint-5", "checkpoints/checkpoint-10"]
    assert_same_adapter(reference.adapter_dir, run_dir / "adapter")
    assert [s for s, _ in runs.read_run(run_dir).losses] == list(range(1, 13))  # one loss per step, no gap


class WorkerKilled(BaseException):
    """A GPU call cut off mid-step: like a killed worker, it passes train()'s error handling unrecorded."""


def killed_at(step: int):
    from transformers import TrainerCallback

    class Kill(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step:
                raise WorkerKilled()

    return Kill()


def test_aborted_chunk_resumes_from_last_checkpoint(tiny_model_dir, tmp_path, reference):
    calls = []

    def chunk(run_dir: str, until_step: int, duration_s: int) -> dict:
        calls.append(until_step)
        if len(calls) == 2:  # the second call dies at step 9: checkpoint-8 is on disk, step 9 is not
            try:
                train(None, run_dir, until_step=until_step, callbacks=[killed_at(9)])
            except WorkerKilled:
                raise RuntimeError("GPU task aborted") from None  # what spaces raises in the app
        return zerogpu.train_chunk(run_dir, until_step, duration_s)

    run_dir = tmp_path / "aborted"
    states = list(zerogpu.run_chunked(tiny_config(tiny_model_dir), run_dir, chunk=chunk, steps_per_call=6))
    assert states[1]["status"] == "interrupted" and "GPU task aborted" in states[1]["message"]
    assert states[-1]["status"] == "finished" and states[-1]["step"] == 12
    [aborted] = [e for e in read_events(run_dir) if e["type"] == "chunk_aborted"]
    assert aborted["resume_from"] == "checkpoints/checkpoint-8"
    events = read_events(run_dir)
    after_abort = events[events.index(aborted) + 1:]
    # the call after the aborted one (a loaded machine may add calls later: each call has a time budget)
    resumed = next(e for e in after_abort if e["type"] == "started")["resumed_from"]
    assert resumed == "checkpoints/checkpoint-8"
    lost = 9 - int(resumed.rsplit("-", 1)[1])
    assert lost <= tiny_config(tiny_model_dir).training.save_steps  # at most one save interval
    assert_same_adapter(reference.adapter_dir, run_dir / "adapter")


def test_chunk_errors_retry_up_to_a_limit_but_permanent_errors_stop(tmp_path):
    cfg = RunConfig()
    aborted = []

    def always_aborted(run_dir, until_step, duration_s):
        aborted.append(until_step)
        raise RuntimeError("GPU task aborted")

    states = list(zerogpu.run_chunked(cfg, tmp_path / "a", chunk=always_aborted, max_aborts=2))
    assert len(aborted) == 3 and states[-1]["status"] == "failed"
    assert "3 GPU calls in a row were aborted" in states[-1]["message"]

    class GradioError(Exception):
        """On ZeroGPU a worker's exception comes back as gr.Error with the class name as its message."""

    bad = []

    def config_error(run_dir, until_step, duration_s):
        bad.append(1)
        raise GradioError("ConfigError")

    states = list(zerogpu.run_chunked(cfg, tmp_path / "b", chunk=config_error))
    assert len(bad) == 1 and states[-1]["status"] == "failed"  # no quota spent on retrying a bad config


def write_calls(run_dir: Path, calls: list[tuple[int, float, list[tuple[int, float]]]]) -> None:
    """Fake events: per call (resumed step, setup seconds, [(step, elapsed_s), ...])."""
    log = EventLog(run_dir)
    for resumed, _setup, steps in calls:
        log.emit("started", max_steps=100, resumed_from=f"checkpoints/checkpoint-{resumed}" if resumed else None)
        for step, elapsed in steps:
            log.emit("step", step=step, max_steps=100, loss=1.0, elapsed_s=elapsed)


def test_plan_chunk_and_quota_arithmetic(tmp_path):
    # nothing measured yet: the first call asks for the default 60 s and trains until its time budget
    assert zerogpu.plan_chunk(tmp_path, 0, 100) == zerogpu.ChunkPlan(60, 100)
    assert zerogpu.plan_chunk(tmp_path, 0, 0) == zerogpu.ChunkPlan(60, 0)  # epochs: steps unknown yet

    # call 1: setup 20 s, then 2 s/step; call 2 resumed at 10 after a 30 s setup. The gap across the two
    # calls (step 10 at 38 s -> step 11 at 30 s) must not count as a step time.
    write_calls(tmp_path, [(0, 20, [(i, 20 + 2 * i) for i in range(1, 11)]),
                           (10, 30, [(11, 32.0), (12, 34.0), (13, 36.0)])])
    assert zerogpu.measured_step_s(tmp_path) == 2.0
    assert zerogpu.measured_setup_s(tmp_path) == 32.0  # the slowest call's start, including its first step
    plan = zerogpu.plan_chunk(tmp_path, 13, 100, max_call_s=300)
    # budget 300 * 0.8 - 32 = 208 s -> 104 steps, capped by the 87 left; asks (32 + 87 * 2) / 0.8 = 258 s
    assert plan == zerogpu.ChunkPlan(258, 100)
    plan = zerogpu.plan_chunk(tmp_path, 13, 1000, max_call_s=300)
    assert plan == zerogpu.ChunkPlan(300, 13 + 104)

    # logging every 5 steps: the step time is the gap divided by the steps between two events
    other = tmp_path / "sparse"
    other.mkdir()
    write_calls(other, [(0, 10, [(5, 20.0), (10, 30.0), (15, 40.0)])])
    assert zerogpu.measured_step_s(other) == 2.0
    assert zerogpu.measured_setup_s(other) == 12.0  # 20 s at step 5 minus 4 further steps of 2 s

    q = zerogpu.quota_estimate(max_steps=1000, per_step_s=0.5, setup_s=20, max_call_s=300)
    # 440 steps per 300 s call -> 3 calls; 3 x 20 s setup + 1000 x 0.5 s = 560 GPU seconds
    assert q["calls"] == 3 and q["steps_per_call"] == 440 and q["gpu_seconds"] == 560
    assert q["share_of_daily_quota"] == {"unauthenticated": 4.67, "free": 1.87, "pro": 0.23, "team": 0.23,
                                           "enterprise": 0.16}
    assert zerogpu.quota_estimate(1000, 0.5, 20, quota_factor=2.0)["gpu_seconds"] == 1120  # xlarge: double
    with pytest.raises(ValueError, match="measure the step time"):
        zerogpu.quota_estimate(100, 0)


# ---------------------------------------------------------------------------------------------
# local: the run is its own process


def wait_for(predicate, timeout: float, what: str, run_dir: Path):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    log = (run_dir / local.LOG_FILE).read_text(errors="replace")[-2000:] if (run_dir / local.LOG_FILE).exists() else ""
    pytest.fail(f"timed out waiting for {what}; process log:\n{log}")


def test_local_run_survives_the_app_and_resumes(tiny_model_dir, tmp_path, reference):
    root = tmp_path / "runs"
    backend = get_backend("local")
    run_id = backend.start(tiny_config(tiny_model_dir), root)
    run_dir = runs.run_path(run_id, root)
    wait_for(lambda: any(e["type"] == "checkpoint" and e["step"] >= 4 for e in read_events(run_dir)), 120,
             "checkpoint-4", run_dir)
    assert backend.status(run_id, root).status == "running"
    # the training process dies (the app dying does not touch it: it is its own session; killing it is the
    # harder case: no final event, a half-done interval)
    pid = started_events(run_dir)[-1]["pid"]
    assert pid != os.getpid()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: runs.read_run(run_dir).status == "interrupted", 10, "interrupted", run_dir)
    state = runs.read_run(run_dir)
    assert not state.has_adapter and state.last_checkpoint

    # a restarted app knows only the folder: a fresh service call and a fresh process both show the truth
    ws = service.Workspace(root)
    assert [(r["run_id"], r["status"]) for r in ws.owner_space(None).statuses()] == [(run_id, "interrupted")]
    cli = subprocess.run([sys.executable, "-m", "finetune", "runs", "--runs-root", str(root), "--json"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["status"] == "interrupted"

    backend.resume(run_id, root)
    wait_for(lambda: runs.read_run(run_dir).status in ("finished", "failed"), 120, "the resumed run", run_dir)
    [after] = service.Workspace(root).owner_space(None).statuses()
    assert after["status"] == "finished" and after["step"] == 12 and after["has_adapter"]
    assert int(started_events(run_dir)[-1]["resumed_from"].rsplit("-", 1)[1]) >= 4
    assert_same_adapter(reference.adapter_dir, run_dir / "adapter")

    # the CLI reads the same folder
    shown = subprocess.run([sys.executable, "-m", "finetune", "status", run_id, "--runs-root", str(root)],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and json.loads(shown.stdout)["status"] == "finished"


def test_stop_and_status_commands(tmp_path, capsys):
    from finetune.cli import main

    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    EventLog(run_dir).emit("started", max_steps=10, pid=os.getpid())  # this process: alive
    EventLog(run_dir).emit("step", step=3, max_steps=10, loss=1.25)
    assert main(["runs", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "r1" in out and "running" in out and "3/10" in out and "1.2500" in out
    assert main(["stop", "r1", "--runs-root", str(tmp_path)]) == 0
    assert runs.stop_requested(run_dir)
    assert main(["status", str(run_dir)]) == 0
    assert json.loads(capsys.readouterr().out.split("\n", 1)[1])["step"] == 3
    assert main(["status", "nope", "--runs-root", str(tmp_path)]) == 2
    assert "python -m finetune runs" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# Hugging Face Jobs


def job_config(model_id: str = "NousResearch/Llama-2-7b-chat-hf") -> RunConfig:
    from finetune.presets import load_preset

    cfg = load_preset("llama-2-7b-guanaco-t4")
    cfg.model.id = model_id
    return cfg


def test_job_spec_flavor_timeout_command_and_secret():
    from finetune import memory

    cfg = job_config()
    spec = hfjobs.job_spec(cfg, "t4-small", "me/llama2-guanaco", space_id="me/finetune", tokens=400_000)
    assert spec["image"] == "hf.co/spaces/me/finetune" and spec["flavor"] == "t4-small"
    run_id = spec["labels"]["finetune-run"]
    assert spec["command"] == ["python", "-m", "finetune", "train", "--config-env", "FINETUNE_CONFIG_B64",
                               "--run-dir", f"/tmp/finetune-runs/{run_id}", "--events-json",
                               "--push-to", "me/llama2-guanaco"]
    sent = RunConfig.from_yaml(base64.b64decode(spec["env"]["FINETUNE_CONFIG_B64"]).decode())
    assert sent.to_dict() == cfg.to_dict()
    assert spec["secrets"] == ["HF_TOKEN"]

    # timeout: the estimate on a T4 with a 1.5x margin plus 15 min of start-up, in whole minutes
    gpu = memory.get_gpu("t4")
    est = memory.estimate_time(memory.spec_for_config(cfg), memory.setup_for(cfg, gpu), gpu, 400_000, 1.0)
    expected = -(-(est.seconds * 1.5 + 900) // 60) * 60
    assert spec["timeout"] == max(1800, expected) and spec["timeout"] > est.seconds
    big = hfjobs.job_spec(cfg, "t4-small", None, space_id="me/finetune", tokens=40_000_000)
    assert big["timeout"] > spec["timeout"] and "--push-to" not in big["command"]

    # two GPUs: the same train command, told the layout (the run fits one A10G: data parallel), which starts one
    # process per GPU through accelerate itself; a shorter limit for the same work
    two = hfjobs.job_spec(cfg, "a10g-largex2", "me/x", space_id="me/finetune", tokens=40_000_000)
    assert two["command"][:4] == ["python", "-m", "finetune", "train"]
    assert two["command"][-6:-2] == ["--distributed", "ddp", "--num-processes", "2"]
    one = hfjobs.job_spec(cfg, "a10g-large", "me/x", space_id="me/finetune", tokens=40_000_000)
    assert two["timeout"] < one["timeout"]

    # the token: only in the secret's value and the request's own authentication
    req = hfjobs.request(spec, TOKEN)
    assert req["secrets"] == {"HF_TOKEN": TOKEN} and req["token"] == TOKEN
    rest = {k: v for k, v in req.items() if k not in ("secrets", "token")}
    assert TOKEN not in json.dumps(rest) and TOKEN not in json.dumps(spec)
    assert rest == {k: v for k, v in spec.items() if k != "secrets"}


def test_job_spec_refuses_what_a_job_cannot_do(tmp_path):
    cfg = job_config()
    with pytest.raises(hfjobs.JobError, match="tokens"):
        hfjobs.job_spec(cfg, "t4-small", space_id="me/finetune")  # epochs-based, size unknown
    with pytest.raises(hfjobs.JobError, match="unknown Jobs flavor 'v100'"):
        hfjobs.job_spec(cfg, "v100", space_id="me/finetune", timeout_s=600)
    with pytest.raises(hfjobs.JobError, match="space_id"):
        hfjobs.job_spec(cfg, "t4-small", timeout_s=600)
    local_model = job_config(str(tmp_path))
    with pytest.raises(hfjobs.JobError, match="path on this machine"):
        hfjobs.job_spec(local_model, "t4-small", space_id="me/finetune", timeout_s=600)
    data = tmp_path / "d.jsonl"
    data.write_text("{}\n")
    cfg.data.source = str(data)
    with pytest.raises(hfjobs.JobError, match="push it as a dataset"):
        hfjobs.job_spec(cfg, "t4-small", space_id="me/finetune", timeout_s=600)
    leaky = job_config()
    leaky.data.system_prompt = f"token {TOKEN}"
    spec = hfjobs.job_spec(leaky, "t4-small", space_id="me/finetune", timeout_s=600)
    with pytest.raises(hfjobs.JobError, match="appears in the job's config"):
        hfjobs.request(spec, TOKEN)
    # the embedded default model goes by its Hub id
    assert hfjobs.portable_config(RunConfig()).model.id == "HuggingFaceTB/SmolLM2-135M-Instruct"


class FakeJobsApi:
    """The Jobs half of HfApi: records what it is sent, answers with huggingface_hub's own JobInfo."""

    def __init__(self, log_lines: list[str]):
        self.sent: list[dict] = []
        self.stage = "SCHEDULING"
        self.log_lines = log_lines
        self.cancelled: list[str] = []

    def _info(self, job_id: str):
        from huggingface_hub._jobs_api import JobInfo

        return JobInfo(id=job_id, owner={"id": "1", "name": "me", "type": "user"},
                       status={"stage": self.stage, "message": "Job timeout" if self.stage == "ERROR" else None},
                       endpoint="https://huggingface.co")

    def run_job(self, **kwargs):
        self.sent.append(kwargs)
        return self._info("job123")

    def inspect_job(self, *, job_id, namespace=None, token=None):
        assert token == TOKEN and namespace == "me"
        return self._info(job_id)

    def fetch_job_logs(self, *, job_id, namespace=None, follow=False, tail=None, token=None):
        assert token == TOKEN
        return iter(self.log_lines)

    def cancel_job(self, *, job_id, namespace=None, token=None):
        assert token == TOKEN
        self.cancelled.append(job_id)
        self.stage = "CANCELED"


LOG = """\
Failed to load CPU gemm_4bit_forward from kernels-community
{"type": "started", "time": 1.0, "name": "", "model": "m", "device": "cuda", "pid": 7, "max_steps": 40}
Loading weights: 100%|##########| 20/20
{"type": "step", "time": 2.0, "step": 1, "max_steps": 40, "loss": 2.5, "elapsed_s": 3.0}
{"type": "step", "time": 3.0, "step": 2, "max_steps": 40, "loss": 2.25, "elapsed_s": 4.0}
{"type": "checkpoint", "time": 3.1, "step": 2, "path": "checkpoints/checkpoint-2"}
{"type": "step", "time": 4.0, "step": 3, "max_steps"
"""


def test_job_status_live_loss_sync_and_cancel(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the CLI and the app pass it this way or as token=
    events = hfjobs.parse_events(LOG)
    assert [e["type"] for e in events] == ["started", "step", "step", "checkpoint"]  # the torn line is skipped

    api = FakeJobsApi(LOG.splitlines())
    root = tmp_path / "runs"
    run_id = hfjobs.start(job_config(), root, flavor="l4x1", repo_id="me/out", space_id="me/finetune",
                          timeout_s=3600, api=api)
    [sent] = api.sent
    assert sent["secrets"] == {"HF_TOKEN": TOKEN} and sent["flavor"] == "l4x1" and sent["timeout"] == 3600
    run_dir = runs.run_path(run_id, root)
    job = hfjobs.read_job(run_id, root)
    assert job["job_id"] == "job123" and job["namespace"] == "me" and job["url"].endswith("/me/job123")
    assert runs.read_run(run_dir).status == "new"  # submitted, not started

    api.stage = "RUNNING"
    st = hfjobs.status("job123", TOKEN, api, namespace="me")
    assert st["status"] == "running" and st["step"] == 2 and st["max_steps"] == 40 and st["loss"] == 2.25
    assert st["losses"] == [(1, 2.5), (2, 2.25)]
    state = hfjobs.sync(run_id, root, api=api)
    # the job's pid belongs to another machine: a remote run stays "running" while its job does
    assert state.status == "running" and state.step == 2 and state.loss == 2.25
    assert [s.run_id for s in runs.list_runs(root)] == [run_id]

    api.log_lines = LOG.splitlines()[:4]
    api.stage = "ERROR"  # e.g. the time limit: no final event in the log
    state = hfjobs.sync(run_id, root, api=api)
    assert state.status == "failed" and state.message == "Job timeout"

    api.stage = "RUNNING"
    hfjobs.stop(run_id, root, api=api)
    assert api.cancelled == ["job123"]
    assert hfjobs.sync(run_id, root, api=api).status == "stopped"
    assert "loss" in hfjobs.logs(run_id, root, api=api)

    # a job's own output echoing the token (in an event and in a plain line) is scrubbed before it is read
    api.log_lines = LOG.splitlines() + [json.dumps({"type": "note", "time": 1.0, "message": f"Authorization: Bearer {TOKEN}"}),
                                        f"echo {TOKEN}"]
    st = hfjobs.status("job123", TOKEN, api, namespace="me")
    assert TOKEN not in json.dumps(st, default=str) and any("***" in str(e.get("message")) for e in st["events"])
    hfjobs.sync(run_id, root, api=api)
    text = hfjobs.logs(run_id, root, api=api)
    assert TOKEN not in text and "echo ***" in text

    # the token is nowhere in the run folder
    for f in run_dir.rglob("*"):
        if f.is_file():
            assert TOKEN not in f.read_text(errors="replace"), f


FAKE_HUB = '''
"""Loaded at interpreter start (sitecustomize): a fake HfApi that records pushes instead of sending them."""
import json, os, pathlib
import huggingface_hub

class FakeHfApi(huggingface_hub.HfApi):  # downloads stay real (offline cache); pushes are recorded
    record = pathlib.Path(os.environ["FAKE_HUB_RECORD"])

    def _write(self, **call):
        calls = json.loads(self.record.read_text()) if self.record.exists() else []
        self.record.write_text(json.dumps(calls + [call]))

    def create_repo(self, repo_id, token=None, private=None, repo_type=None, exist_ok=False):
        self._write(op="create_repo", repo_id=repo_id, token=token, private=private)
        return "https://huggingface.co/" + repo_id

    def upload_folder(self, repo_id, folder_path, token=None, repo_type=None, revision=None, commit_message=None):
        files = sorted(p.name for p in pathlib.Path(folder_path).iterdir())
        self._write(op="upload_folder", repo_id=repo_id, token=token, files=files)

huggingface_hub.HfApi = FakeHfApi
'''


def fake_hub_cache(tiny_model_dir: Path, cache: Path, repo_id: str) -> None:
    """The tiny model under a Hub id in an HF cache (refs/main -> snapshot), resolvable offline."""
    org, name = repo_id.split("/")
    snap = cache / f"models--{org}--{name}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    for f in tiny_model_dir.iterdir():
        (snap / f.name).symlink_to(f)
    refs = cache / f"models--{org}--{name}" / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)


def test_job_command_runs_end_to_end_here(tiny_model_dir, tmp_path, reference):
    repo_model = "finetune-test/tiny-llama"
    fake_hub_cache(tiny_model_dir, tmp_path / "hub", repo_model)
    cfg = tiny_config(tiny_model_dir)
    cfg.model.id = repo_model
    spec = hfjobs.job_spec(cfg, "l4x1", "me/tiny-adapter", image="finetune:test", timeout_s=600,
                           run_root=str(tmp_path / "job"))
    assert spec["command"][:2] == ["python", "-m"]

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(FAKE_HUB)
    record = tmp_path / "pushes.json"
    # the job's environment: its env and secrets, plus what the image provides (finetune importable,
    # the model in the Hub cache, "python" on PATH)
    env = {**os.environ, **spec["env"], **hfjobs.request(spec, TOKEN)["secrets"],
           "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "HF_HUB_CACHE": str(tmp_path / "hub"),
           "HF_HUB_OFFLINE": "1", "FAKE_HUB_RECORD": str(record),
           "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])}
    done = subprocess.run(spec["command"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    job_log = done.stdout + done.stderr
    assert done.returncode == 0, job_log[-3000:]

    # what hfjobs.status reads from the job's log
    summary = hfjobs.summarize(hfjobs.parse_events(job_log), "COMPLETED")
    assert summary["status"] == "finished" and summary["step"] == 12 and len(summary["losses"]) == 12
    assert summary["pushed_to"] == "https://huggingface.co/me/tiny-adapter"

    pushes = json.loads(record.read_text())
    assert [p["op"] for p in pushes] == ["create_repo", "upload_folder"]
    assert all(p["repo_id"] == "me/tiny-adapter" and p["token"] == TOKEN for p in pushes)
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(pushes[1]["files"])

    run_dir = Path(spec["command"][spec["command"].index("--run-dir") + 1])
    assert_same_adapter(reference.adapter_dir, run_dir / "adapter")
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == repo_model
    assert TOKEN not in job_log
    for f in run_dir.rglob("*"):
        if f.is_file() and f.suffix in (".json", ".jsonl", ".yaml", ".md", ".txt"):
            assert TOKEN not in f.read_text(errors="replace"), f


def test_train_cli_hf_jobs_backend_needs_a_space_and_a_token(tmp_path, monkeypatch, capsys):
    from finetune.cli import main

    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert main(["train", "smollm2-135m-cpu", "--backend", "hf-jobs", "--flavor", "t4-small",
                 "--runs-root", str(tmp_path)]) == 2
    assert "--space" in capsys.readouterr().err
    assert main(["train", "--backend", "hf-jobs", "--push-to", "not a repo"]) == 2
    assert "user/name" in capsys.readouterr().err
    sent = []
    monkeypatch.setattr(hfjobs, "submit", lambda spec, token, api=None: sent.append(spec) or {
        "job_id": "j1", "url": "https://huggingface.co/jobs/me/j1", "namespace": "me", "stage": "SCHEDULING"})
    assert main(["train", "smollm2-135m-cpu", "--backend", "hf-jobs", "--flavor", "a10g-small", "--space",
                 "me/finetune", "--push-to", "me/out", "--runs-root", str(tmp_path)]) == 0
    out = capsys.readouterr()
    assert out.out.strip() == "j1" and "python -m finetune status" in out.err
    assert sent[0]["flavor"] == "a10g-small" and sent[0]["command"][-2:] == ["--push-to", "me/out"]
    assert TOKEN not in json.dumps(sent[0])


# ---------------------------------------------------------------------------------------------
# several processes: accelerate launch (DDP over gloo on CPU)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_accelerate_launch_two_processes_saves_one_adapter(tiny_model_dir, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    tiny_config(tiny_model_dir, max_steps=6, save_steps=3).save(cfg_path)
    run_dir = tmp_path / "ddp"
    # on a machine without GPUs, --multi_gpu is what makes accelerate start N processes (torchrun); without
    # it, it runs one. The Trainer then picks gloo because training.use_cpu is set on CPU.
    cmd = [str(VENV_BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()),
           "-m", "finetune", "train", str(cfg_path), "--run-dir", str(run_dir), "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    events = read_events(run_dir)
    kinds = [e["type"] for e in events]
    # rank 0 alone writes: one started, one step event per step, one finished
    assert kinds.count("started") == 1 and kinds.count("finished") == 1
    assert [e["step"] for e in events if e["type"] == "step"] == list(range(1, 7))
    tensors = adapter_tensors(run_dir / "adapter")
    assert tensors and any(v.abs().sum() > 0 for k, v in tensors.items() if "lora_B" in k)
    assert json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["r"] == 8
    assert runs.read_run(run_dir).status == "finished"
    assert not list(run_dir.glob(".write-test*"))
