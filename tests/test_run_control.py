"""Stop and resume of a local run in any order and timing end in the state asked last, and the status says
``resuming`` from the resume until the run trains again (the README's polling loop must not exit).

The fast test drives the real launcher, queue and training command; the run's first process is a small
stand-in that takes stop requests the way the trainer's step callback does (``runs.claim_stop``) and holds the
run's process lock, so every moment (before and after the stop is taken) can be reached on purpose; the
runs the app resumes wait in the queue behind a held slot (with no process), so no model is loaded. The slow test does the
same with real training."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import runs, service, slots
from finetune.backends import local
from finetune.events import EventLog, read_events
from test_app import tiny_yaml
from test_queue import hold, kill, wait_until

ROOT = Path(__file__).resolve().parent.parent

# The stand-in trainer: holds the run like a training process, reports "started" with its pid, then at each
# "step" (a file GO appears) takes a pending stop request as train.py does; stopping takes until END appears.
TRAINER = """
import os, sys, time
from pathlib import Path
from finetune import runs
from finetune.events import EventLog
run_dir = Path(sys.argv[1])
lock = runs.hold_process_lock(run_dir)
log = EventLog(run_dir)
log.emit("started", pid=os.getpid(), max_steps=100)
print("ready", flush=True)
while not (run_dir.parent / "GO").exists():
    time.sleep(0.05)
while not runs.claim_stop(run_dir):
    time.sleep(0.05)
while not (run_dir.parent / "END").exists():
    time.sleep(0.05)
log.emit("stopped", step=3, message="stopped by the user")
"""


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    monkeypatch.delenv(slots.MAX_ENV, raising=False)


def start_trainer(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", TRAINER, str(run_dir)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def status(ws, rid: str) -> str:
    return ws.owner_space(None).status(rid)["status"]


def test_stop_and_resume_in_any_order_end_as_asked(tmp_path, tiny_model_dir):
    ws = service.Workspace(tmp_path)
    root = ws.for_owner(None)
    blocker = hold(f"fd = slots.acquire_slot({str(slots.queue_dir(root))!r})")  # launched runs wait in line
    rid = "20260101-000000-r-0123456789"
    run_dir = runs.run_path(rid, root)
    run_dir.mkdir(parents=True)
    service.parse_config(tiny_yaml(tiny_model_dir, steps=100)).save(run_dir / runs.CONFIG_FILE)
    runs.record_backend(run_dir, "local")
    tmp = run_dir.parent
    trainer = start_trainer(run_dir)
    try:
        assert status(ws, rid) == "running"
        # 1. Resume before the process took the stop: the stop is withdrawn and the same process goes on.
        ws.owner_space(None).stop(rid)
        assert runs.stop_requested(run_dir)
        assert ws.owner_space(None).resume(rid) == rid
        assert not runs.stop_requested(run_dir) and status(ws, rid) == "running"
        (tmp / "GO").touch()
        time.sleep(0.5)
        assert status(ws, rid) == "running" and trainer.poll() is None  # it did not stop

        # 2. Resume after the process took the stop (it is writing its checkpoint): a new process follows it,
        # and the run reads "resuming" throughout, also after the first process has recorded "stopped".
        ws.owner_space(None).stop(rid)
        wait_until(lambda: runs.stopping(run_dir, trainer.pid), 10, "the stop taken")
        assert status(ws, rid) == "running"
        ws.owner_space(None).resume(rid)
        assert status(ws, rid) in ("resuming", "queued")  # queued: a slot is taken (by the stand-in's blocker)
        (tmp / "END").touch()
        trainer.wait(10)
        assert read_events(run_dir)[-1]["type"] in ("stopped", "queued")
        seen = set()
        deadline = time.time() + 5
        while time.time() < deadline:
            seen.add(status(ws, rid))
            time.sleep(0.1)
        assert seen <= {"resuming", "queued"} and status(ws, rid) == "queued", seen  # now waits for the slot
        with pytest.raises(service.ServiceError, match="already queued"):
            ws.owner_space(None).resume(rid)  # one process per run, however often resume is asked

        # 3. Stop then resume right away while it waits in the queue, then stop for good: no request is lost,
        # none is left behind, and a stop of a stopped run changes nothing.
        stopped = ws.owner_space(None).stop(rid)
        assert stopped["status"] == "stopped" and "queue" in stopped["message"]
        ws.owner_space(None).resume(rid)
        assert status(ws, rid) in ("resuming", "queued")
        wait_until(lambda: status(ws, rid) == "queued", 20, "queued again")
        time.sleep(1.5)
        assert status(ws, rid) == "queued"  # a stale request would have taken it out of the line
        assert ws.owner_space(None).stop(rid)["status"] == "stopped"
        assert ws.owner_space(None).stop(rid)["status"] == "stopped"
        assert not runs.stop_requested(run_dir)
        # each resume waited in line with no process (the slot stayed busy): two queued resumes, no launch
        assert not any(e["type"] == "launched" for e in read_events(run_dir))
        resumes = [e for e in read_events(run_dir) if e["type"] == "queued" and "pid" not in e]
        assert len(resumes) == 2 and all(e["resume"] for e in resumes)
    finally:
        if trainer.poll() is None:
            kill(trainer)
        kill(blocker)


def test_a_resumed_process_that_dies_before_training_leaves_the_run_as_it_was(tmp_path):
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    log = EventLog(run_dir)
    log.emit("started", pid=os.getpid(), max_steps=10)
    log.emit("stopped", step=3, message="stopped by the user")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    log.emit("launched", pid=dead.pid, resume=True)
    assert runs.read_run(run_dir).status == "stopped"  # resumable again, not "resuming" forever
    log.emit("launched", pid=os.getpid(), resume=True)
    assert runs.read_run(run_dir).status == "resuming"
    log.emit("failed", pid=os.getpid(), message="the training process exited with code 1 before it started")
    assert runs.read_run(run_dir).status == "failed"
    new = tmp_path / "r2"
    new.mkdir()
    EventLog(new).emit("launched", pid=dead.pid, resume=False)
    assert runs.read_run(new).status == "interrupted"


@pytest.mark.slow
def test_real_run_stop_resume_timings(tmp_path, tiny_model_dir, monkeypatch):
    """Real training: stop then resume at once, stop and resume once stopped; every status read after a
    resume is live until the run finishes with all its steps."""
    monkeypatch.delenv(local.THREADS_ENV, raising=False)
    ws = service.Workspace(tmp_path)
    rid = ws.owner_space(None).start_config(service.parse_config(tiny_yaml(tiny_model_dir, steps=40)))
    wait_until(lambda: ws.owner_space(None).status(rid)["step"] >= 2, 180, "training")
    ws.owner_space(None).stop(rid)
    ws.owner_space(None).resume(rid)
    wait_until(lambda: ws.owner_space(None).status(rid)["step"] >= 8, 180, "training on")
    ws.owner_space(None).stop(rid)
    wait_until(lambda: status(ws, rid) == "stopped", 60, "stopped")
    ws.owner_space(None).resume(rid)
    while (s := ws.owner_space(None).status(rid))["status"] not in runs.TERMINAL:
        assert s["status"] in runs.LIVE, s
        time.sleep(0.2)
    assert s["status"] == "finished" and s["step"] == 40, s
    assert not runs.stop_requested(runs.run_path(rid, ws.for_owner(None)))


def test_a_pid_reused_by_another_process_does_not_keep_the_run_live(tmp_path):
    """After a restart of the machine (or long enough), a dead run's pid may belong to another process: the start
    time recorded with the pid tells them apart."""
    from finetune.io import process_started

    me = os.getpid()
    run_dir = tmp_path / "r1"
    run_dir.mkdir()
    (run_dir / runs.CONFIG_FILE).write_text("name: r1\n")
    started = process_started(me)
    assert isinstance(started, int)
    EventLog(run_dir).emit("started", pid=me, pid_started=started, max_steps=10)
    assert runs.read_run(run_dir).status == "running"  # this very process: live
    other = tmp_path / "r2"
    other.mkdir()
    (other / runs.CONFIG_FILE).write_text("name: r2\n")
    EventLog(other).emit("started", pid=me, pid_started=started - 1, max_steps=10)  # the pid's earlier owner
    assert runs.read_run(other).status == "interrupted"
    assert runs.process_record(me) == {"pid": me, "pid_started": started}
