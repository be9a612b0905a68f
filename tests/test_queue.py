"""The machine-wide training queue: a second local run is accepted and waits with its position shown, then
trains after the first; stopping a queued run takes it out of the line; neither a dead waiter nor a dead
trainer blocks the queue (flock locks die with their process)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import runs, service
from finetune import slots
from finetune.backends import local
from finetune.events import read_events
from test_app import tiny_yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_slot(monkeypatch):
    monkeypatch.delenv(slots.MAX_ENV, raising=False)


def hold(code: str) -> subprocess.Popen:
    """A process that runs ``code`` (queue calls), prints "ready", then sleeps until killed."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom finetune import slots\n" + code
                             + "\nprint('ready', flush=True)\ntime.sleep(600)"],
                            cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def wait_until(predicate, timeout: float = 60, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_positions_and_dead_processes_never_block(tmp_path, monkeypatch):
    q = tmp_path / ".queue"
    trainer = hold(f"fd = slots.acquire_slot({str(q)!r})\nassert fd is not None")
    assert slots.free_slots(q) == 0 and slots.acquire_slot(q) is None

    waiter = hold(f"t = slots.enqueue({str(q)!r}, 'run-a')")  # first in line, in another process
    mine = slots.enqueue(q, "run-b")
    assert [p.name.split("-", 1)[1] for p in slots.live_tickets(q)] == ["run-a", "run-b"]
    assert slots.position(q, mine) == 2

    kill(waiter)  # a dead waiter's ticket is unlocked: it is dropped and the line moves up
    assert slots.position(q, mine) == 1
    assert [p.name.split("-", 1)[1] for p in slots.live_tickets(q)] == ["run-b"]

    kill(trainer)  # a dead trainer's slot lock is released by the kernel
    assert slots.position(q, mine) == 0
    slot = slots.wait_for_slot(q, mine, poll_s=0.01)
    assert slot is not None and slots.live_tickets(q) == []  # the ticket is gone once the slot is taken
    slots.release(slot)

    monkeypatch.setenv(slots.MAX_ENV, "2")
    a, b = slots.acquire_slot(q), slots.acquire_slot(q)
    assert a is not None and b is not None and slots.acquire_slot(q) is None
    slots.release(a)
    slots.release(b)
    monkeypatch.setenv(slots.MAX_ENV, "zero")
    with pytest.raises(ValueError, match="FINETUNE_MAX_CONCURRENT_RUNS"):
        slots.max_concurrent()


def test_stopping_a_queued_run_takes_it_out_of_the_line(tmp_path, tiny_model_dir):
    """Two runs wait behind a busy slot; stopping the first leaves the second at position 1. The waiting
    processes never load a model (they wait before the heavy imports), so this takes about a second."""
    ws = service.Workspace(tmp_path)
    trainer = hold(f"fd = slots.acquire_slot({str(slots.queue_dir(tmp_path))!r})")
    cfg = service.parse_config(tiny_yaml(tiny_model_dir, steps=2))
    first = ws.owner_space(None).start_config(cfg)
    second = ws.owner_space(None).start_config(service.parse_config(tiny_yaml(tiny_model_dir, steps=2)))
    states = {s["run_id"]: s for s in ws.owner_space(None).statuses()}
    assert states[first]["status_text"] == "queued (position 1)"
    assert states[second]["status_text"] == "queued (position 2)"

    stopped = ws.owner_space(None).stop(first)
    assert stopped["status"] == "stopped" and "queue" in stopped["message"]
    wait_until(lambda: ws.owner_space(None).status(second)["queue_position"] == 1, 10, "second run at position 1")
    assert ws.owner_space(None).status(second)["status_text"] == "queued (position 1)"
    cli = [sys.executable, "-m", "finetune"]
    listing = subprocess.run(cli + ["runs", "--runs-root", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert "queued (position 1)" in listing.stdout, listing.stdout

    done = subprocess.run(cli + ["stop", second, "--runs-root", str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0 and "left the training queue" in done.stdout, done.stdout + done.stderr
    assert ws.owner_space(None).status(second)["status"] == "stopped"
    kill(trainer)
    assert slots.live_tickets(slots.queue_dir(tmp_path)) == []
    for rid in (first, second):
        assert not any(e["type"] == "started" for e in read_events(runs.run_path(rid, tmp_path)))


def test_a_queued_run_has_no_process_and_a_killed_one_frees_its_slot(tmp_path, tiny_model_dir):
    """The app's queue holds a waiting run as a ticket, not a process; the run's process starts when the slot
    frees (here: the holder is killed, and the next status read moves the line), and a process killed before it
    trains leaves the run interrupted with its slot free for the next."""
    ws = service.Workspace(tmp_path)
    trainer = hold(f"fd = slots.acquire_slot({str(slots.queue_dir(tmp_path))!r})")
    rid = ws.owner_space(None).start_config(service.parse_config(tiny_yaml(tiny_model_dir, steps=2)))
    run_dir = runs.run_path(rid, tmp_path)
    time.sleep(1.0)
    assert ws.owner_space(None).status(rid)["status_text"] == "queued (position 1)"
    assert [e["type"] for e in read_events(run_dir)] == ["queued"]  # no process was launched for it
    assert not any("pid" in e for e in read_events(run_dir))
    assert [p.name.split("-", 1)[1] for p in slots.pending_tickets(slots.queue_dir(tmp_path))] == [f"{rid}.json"]

    kill(trainer)
    pid = wait_until(lambda: next((e["pid"] for e in read_events(run_dir) if e["type"] == "launched"), None)
                     or (ws.owner_space(None).status(rid) and None), 10, "launched when the slot freed")
    assert slots.pending_tickets(slots.queue_dir(tmp_path)) == []
    assert slots.free_slots(slots.queue_dir(tmp_path)) == 0  # the process holds the slot it was handed
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: ws.owner_space(None).status(rid)["status"] == "interrupted", 10, "interrupted")
    wait_until(lambda: slots.free_slots(slots.queue_dir(tmp_path)) == 1, 10, "the slot released by the kernel")


def test_second_run_waits_in_the_queue_then_trains_after_the_first(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.delenv(local.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    ws = service.Workspace(tmp_path, multi_user=True)
    first = ws.owner_space("alice").start_config(service.parse_config(tiny_yaml(tiny_model_dir, steps=2)))
    second = ws.owner_space("bob").start_config(service.parse_config(tiny_yaml(tiny_model_dir, steps=2)))
    state = ws.owner_space("bob").status(second)
    assert state["status"] == "queued" and state["queue_position"] == 1, state
    assert state["status_text"] == "queued (position 1)"
    assert [r["status_text"] for r in ws.owner_space("bob").statuses()] == ["queued (position 1)"]

    done = {}
    for who, rid in (("alice", first), ("bob", second)):
        done[rid] = wait_until(lambda: (s := ws.owner_space(who).status(rid))["status"] in runs.TERMINAL and s,
                               240, f"run {rid}")
        assert done[rid]["status"] == "finished" and done[rid]["has_adapter"], done[rid]
    first_events = read_events(runs.run_path(first, ws.for_owner("alice")))
    second_events = read_events(runs.run_path(second, ws.for_owner("bob")))
    first_end = next(e["time"] for e in first_events if e["type"] == "finished")
    second_start = next(e["time"] for e in second_events if e["type"] == "started")
    assert second_start >= first_end  # never two trainings at once
    assert [e["type"] for e in second_events][:3] == ["queued", "launched", "started"]
    assert "pid" not in second_events[0]  # it waited with no process
    # an app-started run begins on every core and watches the app's CPU use to give one back while it serves
    cores = len(os.sched_getaffinity(0))
    started = [e for e in first_events + second_events if e["type"] == "started"]
    assert [(e["cpu_threads"], e["shares_cpu"]) for e in started] == [(cores, True)] * 2, started


def test_thread_settings_of_a_run(monkeypatch, tmp_path):
    monkeypatch.delenv(local.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(local, "cpu_cores", lambda: 8)
    assert local.train_threads() is None
    assert local.shares_cpu(True) and not local.shares_cpu(False)  # the CLI on its own keeps every core
    q = tmp_path / ".queue"
    assert local.cpu_threads_left(q) == 8  # nothing trains: the app may use every core
    slot = slots.acquire_slot(q)
    try:
        assert local.cpu_threads_left(q) == 1  # beside a sharing run (7 threads while the app works)
        monkeypatch.setenv("OMP_NUM_THREADS", "5")  # the operator's setting stands
        assert not local.shares_cpu(True) and local.cpu_threads_left(q) == 3
        monkeypatch.setenv(local.THREADS_ENV, "4")
        assert local.train_threads() == 4 and not local.shares_cpu(True) and local.cpu_threads_left(q) == 4
    finally:
        slots.release(slot)
    for bad in ("0", "many"):
        monkeypatch.setenv(local.THREADS_ENV, bad)
        with pytest.raises(ValueError, match="FINETUNE_TRAIN_THREADS=.*1 or more"):
            local.train_threads()
