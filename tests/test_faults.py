"""Faults end in the state the user asked for, with a message that names the file and the fix, and nothing trained
is lost: resumes waiting on a run that is stopped, a finished run resumed, a process killed before it trains, a
full disk while a checkpoint is written, deleted files, and what killed processes leave behind.

After every fault, ``finetune status`` must not report a live state for a run with no live process
(:func:`assert_settled`). CPU, offline, the tiny random Llama of conftest.py; the tests that train several
processes in a loop are marked slow.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import runs, service
from finetune.adapter import WEIGHTS_FILE
from finetune.cli import main
from finetune.config import RunConfig
from finetune.events import EVENTS_FILE, EventLog, read_events
from finetune.models import ModelError
from finetune.train import TrainingError, train
from test_queue import kill, wait_until
from test_train import adapter_tensors, assert_same_adapter, tiny_config

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def cli_status(run_dir: Path) -> dict:
    done = cli("status", str(run_dir), "--no-sync")
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def assert_settled(run_dir: Path) -> str:
    """No live state without a live process: every process the run's events name is gone, and the status (as
    ``finetune status`` prints it) is not live. Returns the status."""
    pids = {e["pid"] for e in read_events(run_dir) if isinstance(e.get("pid"), int)} - {os.getpid()}
    # a process that recorded its end may take a moment to exit
    wait_until(lambda: not any(runs._pid_alive(p) for p in pids), 30, "the run's processes to end")
    status = cli_status(run_dir)["status"]
    assert status not in runs.LIVE, status
    return status


def step_events(run_dir: Path) -> list[int]:
    return [e["step"] for e in read_events(run_dir) if e["type"] == "step"]


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir()
                  if p.name == runs.STOP_FILE or p.name.startswith(runs.STOPPING_PREFIX) or ".partial" in p.name)


# =============================================================================================
# 1. stop reaches the resumes that wait on the run


# Stands in for the run's training process: holds the run as train does, reports "started", takes the stop
# request at a step's end as the trainer does, and records "stopped".
TRAINER = """
import os, sys, time
from pathlib import Path
from finetune import runs
from finetune.events import EventLog
run_dir = Path(sys.argv[1])
runs.record_process(run_dir, resume=False)
lock = runs.hold_process_lock(run_dir)
log = EventLog(run_dir)
log.emit("started", pid=os.getpid(), max_steps=40)
print("ready", flush=True)
while not runs.claim_stop(run_dir):
    time.sleep(0.05)
log.emit("stopped", pid=os.getpid(), step=3, message="stopped by the user")
runs.forget_stop(run_dir)
"""


def test_stop_reaches_every_resume_waiting_on_the_run(tmp_path, tiny_model_dir):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunConfig.from_yaml(tiny_config(tiny_model_dir, max_steps=40).to_yaml()).save(run_dir / runs.CONFIG_FILE)
    trainer = subprocess.Popen([sys.executable, "-c", TRAINER, str(run_dir)], cwd=ROOT, env=ENV,
                               stdout=subprocess.PIPE, text=True)
    assert trainer.stdout.readline().strip() == "ready"
    waiting = [subprocess.Popen([sys.executable, "-m", "finetune", "train", "--run-dir", str(run_dir), "--quiet"],
                                cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for _ in range(3)]
    try:
        pids = {p.pid for p in waiting}
        # each resume records itself before it waits on the run's lock
        wait_until(lambda: pids <= {e.get("pid") for e in read_events(run_dir) if e["type"] == "launched"}, 60,
                   "the resumes recorded")
        assert cli_status(run_dir)["status"] in runs.LIVE
        stopped = cli("stop", str(run_dir))
        assert stopped.returncode == 0 and "nothing to stop" not in stopped.stdout, stopped.stdout
        trainer.wait(30)
        for p in waiting:
            out, err = p.communicate(timeout=60)
            assert p.returncode == 0, err[-2000:]
        events = read_events(run_dir)
        # none of them trained: each took the stop asked after its launch, once it held the run
        assert not [e for e in events if e["type"] == "started" and e.get("pid") in pids]
        ends = {e["pid"]: e["message"] for e in events if e["type"] == "stopped" and e.get("pid") in pids}
        assert ends == {pid: "stopped before training began" for pid in pids}
        assert assert_settled(run_dir) == "stopped"
        assert leftovers(run_dir) == []  # no STOP, no STOPPING.<pid>
        # a resume asked after the stop is not stopped by it: it records itself and goes on to train
        later = subprocess.Popen([sys.executable, "-m", "finetune", "train", "--run-dir", str(run_dir), "--quiet"],
                                 cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            wait_until(lambda: any(e["type"] == "started" and e.get("pid") == later.pid
                                   for e in read_events(run_dir)), 120, "the later resume training")
            assert cli_status(run_dir)["status"] in runs.LIVE
        finally:
            kill(later)
        assert assert_settled(run_dir) == "interrupted"
    finally:
        for p in [trainer, *waiting]:
            if p.poll() is None:
                kill(p)


# =============================================================================================
# 3. a process killed before it trains


def test_a_run_killed_while_it_loads_reads_interrupted_not_new(tmp_path, tiny_model_dir):
    cfg_path = tmp_path / "cfg.yaml"
    tiny_config(tiny_model_dir, max_steps=4).save(cfg_path)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "train", str(cfg_path), "--run-dir", str(run_dir),
                             "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # recorded before its config is written, before the model loads
        wait_until(lambda: (run_dir / runs.CONFIG_FILE).exists(), 60, "the run folder")
        assert [e["type"] for e in read_events(run_dir)][:1] == ["launched"]
        assert runs.read_run(run_dir).status == "new" and runs.read_run(run_dir).pid == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    assert not any(e["type"] == "started" for e in read_events(run_dir))
    assert assert_settled(run_dir) == "interrupted"
    assert "nothing to stop" in cli("stop", str(run_dir)).stdout


# =============================================================================================
# 2. a finished run is not trained again


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    """A finished 6-step run with checkpoints at 2, 4 and 6 (copied by each test that changes it)."""
    result = train(tiny_config(tiny_model_dir, max_steps=6, save_steps=2, save_total_limit=3),
                   runs_root=tmp_path_factory.mktemp("finished"))
    assert result.status == "finished"
    return result.run_dir


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run, as if a process now gone had trained it (it was trained in this one)."""
    out = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, out)
    gone = dead_pid()
    events = [{**e, "pid": gone} if "pid" in e else e for e in read_events(out)]
    (out / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    return out


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_resuming_a_finished_run_trains_nothing_and_says_so(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    before = runs.read_run(run_dir)
    final_loss = [e for e in read_events(run_dir) if e["type"] == "finished"][-1]["metrics"]["final_loss"]
    kept = mtimes(run_dir / "checkpoints")
    adapter = mtimes(run_dir / "adapter")

    again = train(None, run_dir)
    assert again.status == "finished" and again.step == 6 and again.metrics["final_loss"] == final_loss
    assert step_events(run_dir) == [1, 2, 3, 4, 5, 6]  # no step 7
    assert mtimes(run_dir / "checkpoints") == kept and mtimes(run_dir / "adapter") == adapter
    note = [e["message"] for e in read_events(run_dir) if e["type"] == "note"][-1]
    assert f"run {run_dir.name} already finished at step 6 of 6: nothing to train" in note
    state = runs.read_run(run_dir)
    assert (state.status, state.step, state.losses) == ("finished", 6, before.losses)
    assert assert_settled(run_dir) == "finished"

    # the command line says so too, and changes nothing
    done = cli("train", "--run-dir", str(run_dir))
    assert done.returncode == 0 and "already finished at step 6 of 6" in done.stderr, done.stderr[-2000:]
    assert step_events(run_dir) == [1, 2, 3, 4, 5, 6] and mtimes(run_dir / "checkpoints") == kept
    assert assert_settled(run_dir) == "finished"


def test_a_run_killed_after_its_last_checkpoint_only_writes_its_adapter(finished_run, tmp_path):
    """Killed between its last checkpoint and ``finished``: the resume writes adapter/ from that checkpoint (the
    same weights as the finished run's) and the end events; it trains no step."""
    run_dir = copy_run(finished_run, tmp_path)
    want = adapter_tensors(run_dir / "adapter")
    shutil.rmtree(run_dir / "adapter")
    lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    last_checkpoint = max(i for i, line in enumerate(lines) if json.loads(line)["type"] == "checkpoint")
    (run_dir / EVENTS_FILE).write_text("\n".join(lines[:last_checkpoint + 1]) + "\n")
    assert runs.read_run(run_dir).status == "interrupted"
    kept = mtimes(run_dir / "checkpoints")

    done = train(None, run_dir)
    assert done.status == "finished" and done.step == 6
    assert step_events(run_dir) == [1, 2, 3, 4, 5, 6] and mtimes(run_dir / "checkpoints") == kept
    got = adapter_tensors(run_dir / "adapter")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    note = [e["message"] for e in read_events(run_dir) if e["type"] == "note"][-1]
    assert "had trained 6 of 6 steps (up to checkpoint-6)" in note and "writing its adapter/" in note
    assert assert_settled(run_dir) == "finished"


def test_a_checkpoint_left_half_written_by_a_kill_is_removed_and_its_steps_trained_again(finished_run, tmp_path):
    """Killed while it wrote checkpoint-6 (its weights and part of the optimizer on disk, no state, no adapter/): the
    resume says so, removes it, goes on from checkpoint-4 and ends with the finished run's adapter."""
    run_dir = copy_run(finished_run, tmp_path)
    reference = tmp_path / "reference-adapter"
    shutil.copytree(run_dir / "adapter", reference)
    shutil.rmtree(run_dir / "adapter")
    half = run_dir / "checkpoints" / "checkpoint-6"
    for name in ("trainer_state.json", "scheduler.pt", "rng_state.pth"):
        (half / name).unlink(missing_ok=True)
    shutil.rmtree(half / "adapter")
    (half / "optimizer.pt").write_bytes((half / "optimizer.pt").read_bytes()[:100])
    lines = (run_dir / EVENTS_FILE).read_text().splitlines()
    last_step = max(i for i, line in enumerate(lines) if json.loads(line)["type"] == "step")
    (run_dir / EVENTS_FILE).write_text("\n".join(lines[:last_step + 1]) + "\n")
    assert assert_settled(run_dir) == "interrupted"
    assert Path(runs.read_run(run_dir).last_checkpoint).name == "checkpoint-4"

    done = train(None, run_dir)
    assert done.status == "finished" and done.step == 6
    notes = [e["message"] for e in read_events(run_dir) if e["type"] == "note"]
    assert any("checkpoints/checkpoint-6 lacks trainer_state.json, scheduler.pt: it cannot be resumed from, so "
               "training resumes from checkpoint-4; it was left half-written and is removed" in n for n in notes), notes
    assert [e for e in read_events(run_dir) if e["type"] == "started"][-1]["resumed_from"] == \
        "checkpoints/checkpoint-4"
    assert (half / "trainer_state.json").exists()  # written again, whole
    assert_same_adapter(reference, run_dir / "adapter")
    assert assert_settled(run_dir) == "finished"


# =============================================================================================
# 5. missing files are named


@pytest.mark.parametrize("lost", [WEIGHTS_FILE, "adapter_config.json"])
def test_an_adapter_that_lost_a_file_is_named_and_rebuilt_by_a_resume(finished_run, tmp_path, capsys, lost):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "adapter" / lost).unlink()
    missing = f"adapter/{lost} is missing"

    state = cli_status(run_dir)
    assert state["status"] == "finished" and state["has_adapter"] is False
    assert f"{run_dir.name}/{missing}" in state["message"] and "resume the run" in state["message"]
    from finetune.adapter_lookup import adapter_dir

    with pytest.raises(ModelError, match=missing):
        adapter_dir(run_dir)
    space = service.Workspace(run_dir.parent).owner_space(None)
    with pytest.raises(service.ServiceError, match=missing):
        space.adapter_path(run_dir.name)
    test_set = tmp_path / "test.jsonl"
    test_set.write_text(json.dumps({"prompt": "hi", "reference": "hello"}) + "\n")
    for command in (["generate", "--adapter", str(run_dir), "--prompt", "hi", "--max-new-tokens", "2"],
                    ["eval", "--adapter", str(run_dir), "--data", str(test_set)],
                    ["export", "--adapter", str(run_dir), "--format", "lora-gguf", "--out", str(tmp_path / "x.gguf")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert missing in err and "Repo id" not in err and "does not fit" not in err, (command, err)

    # the resume the message suggests writes it again from the last checkpoint, training nothing
    train(None, run_dir)
    assert runs.read_run(run_dir).has_adapter and step_events(run_dir) == [1, 2, 3, 4, 5, 6]
    assert adapter_dir(run_dir) == run_dir / "adapter"


def test_a_checkpoint_whose_adapter_lost_its_weights_is_named(finished_run, tmp_path):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "checkpoints" / "checkpoint-4" / "adapter" / WEIGHTS_FILE).unlink()
    space = service.Workspace(run_dir.parent).owner_space(None)
    rid = run_dir.name
    with pytest.raises(service.ServiceError, match=f"checkpoints/checkpoint-4/adapter/{WEIGHTS_FILE} is missing"):
        space.adapter_path(f"{rid}@4")
    assert space.checkpoint_choices(rid) == [f"{rid}@2", f"{rid}@6"]  # the pickers offer what works


def test_a_checkpoint_without_its_optimizer_stays_usable_as_an_adapter(finished_run, tmp_path, tiny_model_dir):
    run_dir = copy_run(finished_run, tmp_path)
    (run_dir / "checkpoints" / "checkpoint-6" / "optimizer.pt").unlink()
    rid = run_dir.name
    space = service.Workspace(run_dir.parent).owner_space(None)
    # chat, evaluation and export still take it
    assert space.checkpoint_choices(rid) == [f"{rid}@2", f"{rid}@4", f"{rid}@6"]
    assert space.adapter_path(f"{rid}@6") == run_dir / "checkpoints" / "checkpoint-6" / "adapter"
    from finetune.commands.export import adapter_ref
    from finetune.evaluate import _kept_checkpoints

    assert adapter_ref(f"{run_dir}@6", None).endswith("checkpoint-6/adapter")
    assert [p.name for p in _kept_checkpoints(run_dir, run_dir, None)] == [
        "checkpoint-2", "checkpoint-4", "checkpoint-6"]
    # resuming needs the rest: the resume goes on from checkpoint-4 and says why
    assert Path(runs.read_run(run_dir).last_checkpoint).name == "checkpoint-4"
    more = tiny_config(tiny_model_dir, max_steps=8, save_steps=2, save_total_limit=3)
    done = train(more, run_dir)
    assert done.status == "finished" and done.step == 8
    started = [e for e in read_events(run_dir) if e["type"] == "started"][-1]
    assert started["resumed_from"] == "checkpoints/checkpoint-4"
    notes = [e["message"] for e in read_events(run_dir) if e["type"] == "note"]
    assert any("checkpoints/checkpoint-6 lacks optimizer.pt: it cannot be resumed from, so training resumes from "
               f"checkpoint-4; its adapter stays usable as {rid}@6" in n for n in notes), notes


# =============================================================================================
# 4. a full disk while a checkpoint is written


@pytest.fixture
def small_disk(tmp_path):
    """A 9 MB tmpfs (one tiny checkpoint takes ~7 MB: the second does not fit); grow(mb) makes room. Needs root
    (mount); without it the test is skipped: tests/test_reliability.py covers the same with a failing writer."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode()[-200:]}")

    def grow(mb: int) -> None:
        subprocess.run(["mount", "-o", f"remount,size={mb}m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_while_saving_names_the_space_and_keeps_the_last_checkpoint(small_disk, tiny_model_dir):
    disk, grow = small_disk
    cfg = tiny_config(tiny_model_dir, max_steps=4, save_steps=2)
    with pytest.raises(TrainingError) as err:
        train(cfg, runs_root=disk)
    [run_dir] = [d for d in disk.iterdir() if d.is_dir()]
    message = str(err.value)
    assert message.startswith(f"No space left on device under {run_dir}: ") and " MB free, the checkpoint needs " \
        "about " in message and "free space and resume" in message and "(checkpoint-2) is kept" in message, message
    free, need = (int(message.split(": ", 1)[1].split(" MB free")[0]),
                  int(message.split("needs about ")[1].split(" MB")[0]))
    assert free < need and 5 <= need <= 10  # a tiny checkpoint: ~7 MB
    # the half-written checkpoint is gone (it kept the disk full), the last complete one stays
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    state = runs.read_run(run_dir)
    assert state.status == "failed" and state.message == message
    assert Path(state.last_checkpoint).name == "checkpoint-2"

    # resumed with the disk still full: the same message, and still checkpoint-2
    with pytest.raises(TrainingError, match="No space left on device under"):
        train(None, run_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    assert assert_settled(run_dir) == "failed"

    grow(64)  # space is freed: the resume finishes from checkpoint-2
    done = train(None, run_dir)
    assert done.status == "finished" and done.step == 4
    assert [e for e in read_events(run_dir) if e["type"] == "started"][-1]["resumed_from"] == \
        "checkpoints/checkpoint-2"
    assert [s for s, _ in runs.read_run(run_dir).losses] == [1, 2, 3, 4]
    assert assert_settled(run_dir) == "finished"


# =============================================================================================
# 6. what dead processes leave behind


def test_a_stopped_run_keeps_no_stop_files(tiny_model_dir, tmp_path):
    from transformers import TrainerCallback

    class StopAtTwo(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == 2:
                runs.request_stop(Path(args.output_dir).parent)

    result = train(tiny_config(tiny_model_dir, max_steps=6, save_steps=2), runs_root=tmp_path,
                   callbacks=[StopAtTwo()])
    assert result.status == "stopped"
    assert leftovers(result.run_dir) == []  # the STOPPING.<pid> it took is gone with it
    assert assert_settled(result.run_dir) == "stopped"


def test_an_export_killed_midway_leaves_nothing_the_next_export_keeps(finished_run, tmp_path):
    from finetune.export import export_model

    out = tmp_path / "out"
    out.mkdir()
    gone = dead_pid()
    (out / f".model.gguf.partial{gone}").write_bytes(b"\0" * 1024)
    (out / f".model-dir.partial{gone}").mkdir()
    live = out / f".other.gguf.partial{os.getpid()}"  # an export still under way
    live.write_bytes(b"x")
    export_model(finished_run, "lora-gguf", out / "lora.gguf", quant="f16")
    assert sorted(p.name for p in out.iterdir()) == sorted(["lora.gguf", live.name])


@pytest.fixture
def sleeper():
    """Starts a process that lives a minute (a run's process, as far as its events say); killed after the test."""
    procs: list[subprocess.Popen] = []

    def start() -> subprocess.Popen:
        procs.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
        return procs[-1]

    yield start
    for p in procs:
        if p.poll() is None:
            kill(p)


def test_a_waiting_resume_killed_leaves_the_run_as_it_was(tmp_path, sleeper):
    """A resume killed while it waits on the run (another resume is training it) leaves the run live while the
    one training lives, and as it was once both are gone."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    log = EventLog(run_dir)
    trainer, waiter, other = sleeper(), sleeper(), sleeper()
    log.emit("launched", pid=trainer.pid, resume=True)
    log.emit("started", pid=trainer.pid, max_steps=10)
    log.emit("stopped", pid=trainer.pid, step=2, message="stopped by the user")
    log.emit("launched", pid=waiter.pid, resume=True)
    log.emit("launched", pid=other.pid, resume=True)
    kill(other)  # the last resume recorded dies: the one still waiting keeps the run live
    assert runs.read_run(run_dir).status == "resuming" and runs.read_run(run_dir).pid == waiter.pid
    kill(waiter)
    assert runs.read_run(run_dir).status == "stopped"


# =============================================================================================
# stop and resume in a loop, and two resumes at once, with real training


@pytest.mark.slow
def test_stop_and_resume_in_a_loop_from_the_command_line_ends_as_asked(tmp_path, tiny_model_dir):
    cfg_path = tmp_path / "cfg.yaml"
    tiny_config(tiny_model_dir, max_steps=12, save_steps=2).save(cfg_path)
    run_dir = tmp_path / "run"
    procs = [subprocess.Popen([sys.executable, "-m", "finetune", "train", str(cfg_path), "--run-dir", str(run_dir),
                               "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)]
    try:
        for round_ in range(3):
            wait_until(lambda: any(e["type"] == "step" for e in read_events(run_dir)[-3:]), 180, "training")
            assert "nothing to stop" not in cli("stop", str(run_dir)).stdout
            # two resumes at once, right after the stop
            procs += [subprocess.Popen([sys.executable, "-m", "finetune", "train", "--run-dir", str(run_dir),
                                        "--quiet"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.PIPE) for _ in range(2)]
            wait_until(lambda: sum(e["type"] == "launched" for e in read_events(run_dir)) >= 3 + 2 * round_, 60,
                       "the resumes recorded")
        for p in procs:
            p.wait(600)
            assert p.returncode == 0, p.stderr.read()[-2000:]
    finally:
        for p in procs:
            if p.poll() is None:
                kill(p)
    assert assert_settled(run_dir) == "finished"
    assert max(step_events(run_dir)) == 12 and runs.read_run(run_dir).step == 12
    assert leftovers(run_dir) == []


@pytest.mark.slow
def test_stop_and_resume_in_a_loop_through_the_api_ends_as_asked(tmp_path, tiny_model_dir):
    """The app's endpoints, called with gradio_client as a script would: stop and resume in a loop, each resume
    right after its stop; the run ends finished with all its steps, and reads live until then."""
    from test_app import tiny_yaml
    from test_reliability import client, launch_app

    demo, url = launch_app(tmp_path / "runs", tmp_path / "downloads", multi_user=False)
    try:
        c = client(url)
        rid = c.predict(tiny_yaml(tiny_model_dir, steps=12), None, "local", api_name="/start_training")
        for _ in range(3):
            wait_until(lambda: c.predict(rid, api_name="/run_status")["status"] == "running", 180, "training")
            c.predict(rid, api_name="/stop_training")
            c.predict(rid, api_name="/resume_training")
        while (s := c.predict(rid, api_name="/run_status"))["status"] not in runs.TERMINAL:
            assert s["status"] in runs.LIVE, s
            time.sleep(0.3)
        assert s["status"] == "finished" and s["step"] == 12, s
    finally:
        demo.close()
    run_dir = runs.run_path(rid, service.Workspace(tmp_path / "runs").for_owner(None))
    assert assert_settled(run_dir) == "finished" and leftovers(run_dir) == []


def test_a_resume_waiting_on_a_training_run_leaves_it_running(tmp_path, sleeper):
    """``train --run-dir`` while the run trains waits for it: the run reads ``running`` (with the training process),
    ``resuming`` once that process is stopping or gone, and as it was once both are gone."""
    run_dir = tmp_path / "r"
    run_dir.mkdir()
    log = EventLog(run_dir)
    trainer, waiter = sleeper(), sleeper()
    log.emit("launched", pid=trainer.pid, resume=False)
    log.emit("started", pid=trainer.pid, max_steps=10)
    log.emit("step", step=1, max_steps=10, loss=2.0)
    log.emit("launched", pid=waiter.pid, resume=True)
    state = runs.read_run(run_dir)
    assert (state.status, state.pid, state.step) == ("running", trainer.pid, 1)
    (run_dir / f"{runs.STOPPING_PREFIX}{trainer.pid}").touch()  # it took a stop: the waiting one goes on
    assert (runs.read_run(run_dir).status, runs.read_run(run_dir).pid) == ("resuming", waiter.pid)
    (run_dir / f"{runs.STOPPING_PREFIX}{trainer.pid}").unlink()
    kill(trainer)
    assert (runs.read_run(run_dir).status, runs.read_run(run_dir).pid) == ("resuming", waiter.pid)
    kill(waiter)
    assert runs.read_run(run_dir).status == "interrupted"


def test_a_run_extended_after_it_finished_and_killed_after_its_new_last_checkpoint_gets_that_adapter(finished_run,
                                                                                                  tmp_path):
    """Finished at step 4, extended to 6 and killed after checkpoint-6 (before its adapter/ was written): the
    resume does not answer "already finished at step 4" with the step-4 adapter; it builds adapter/ from
    checkpoint-6."""
    from finetune.adapter import METRICS_FILE

    run_dir = copy_run(finished_run, tmp_path)
    want = adapter_tensors(run_dir / "adapter")  # the step-6 weights
    metrics = (run_dir / "adapter" / METRICS_FILE).read_text()
    shutil.rmtree(run_dir / "adapter")
    shutil.copytree(run_dir / "checkpoints" / "checkpoint-4" / "adapter", run_dir / "adapter")  # the step-4 adapter
    (run_dir / "adapter" / METRICS_FILE).write_text(metrics)
    events = read_events(run_dir)
    last_checkpoint = max(i for i, e in enumerate(events) if e["type"] == "checkpoint")
    at_4 = next(i for i, e in enumerate(events) if e["type"] == "checkpoint" and e["step"] == 4)
    finished_at_4 = {"type": "finished", "time": events[at_4]["time"], "step": 4, "adapter": "adapter",
                     "metrics": {"steps": 4}, "pid": dead_pid()}
    kept = events[:at_4 + 1] + [finished_at_4] + events[at_4 + 1:last_checkpoint + 1]
    (run_dir / EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in kept))

    done = train(None, run_dir)
    assert done.status == "finished" and done.step == 6
    got = adapter_tensors(run_dir / "adapter")
    assert got.keys() == want.keys() and all((got[k] == want[k]).all() for k in want)
    assert "already finished" not in [e["message"] for e in read_events(run_dir) if e["type"] == "note"][-1]


def test_a_crash_that_is_not_the_disks_keeps_a_later_checkpoint_whose_adapter_is_intact(finished_run, tmp_path):
    """A failure other than a full disk (out of memory, a bug) leaves a later checkpoint that lacks its optimizer but
    holds an intact adapter: it stays for chat, evaluation and export; a full disk removes it."""
    import errno

    from finetune.save_space import disk_full

    run_dir = copy_run(finished_run, tmp_path)
    later = run_dir / "checkpoints" / "checkpoint-6"
    (later / "optimizer.pt").unlink()
    assert disk_full(run_dir, RuntimeError("CUDA out of memory"), 0) is None
    assert (later / "adapter" / WEIGHTS_FILE).is_file()
    full = disk_full(run_dir, OSError(errno.ENOSPC, "No space left on device"), 0)
    assert full is not None and "No space left on device" in str(full) and not later.exists()


def test_a_visitor_sees_no_server_folder_in_a_runs_message(tmp_path):
    """On a shared server a run's message (a full disk's names its folder) and its log say the owner's paths
    relative to their folder; on one's own machine they stay whole."""
    ws = service.Workspace(tmp_path / "srv" / "runs", multi_user=True)
    space = ws.owner_space("browser:" + "f" * 24)
    run_dir = space.root / "20261207-000000-abcd1234"
    message = f"No space left on device under {run_dir}: 3 MB free, the checkpoint needs about 9 MB"
    assert space.shown(message) == ("No space left on device under 20261207-000000-abcd1234: 3 MB free, the "
                                    "checkpoint needs about 9 MB")
    assert str(tmp_path) not in space.shown(f"{run_dir.resolve()}/checkpoints/checkpoint-4 kept")
    single = service.Workspace(tmp_path / "mine").owner_space(None)
    assert single.shown(f"under {single.root}/x") == f"under {single.root}/x"
