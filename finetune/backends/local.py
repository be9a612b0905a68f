"""This machine: each run is its own process (``python -m finetune train CONFIG --run-dir DIR``).

The web server never trains in its own process, so it stays responsive, a crash cannot take it down,
stop is reliable, and an app restart finds the run still going or its folder in its last state.

With ``queue_dir`` (the app passes ``<runs root>/.queue``) runs wait in the machine-wide line of
:mod:`finetune.slots`: at most ``FINETUNE_MAX_CONCURRENT_RUNS`` train at once, a run started meanwhile
is accepted at once with a ``queued`` event carrying its position and no process, and :func:`dispatch` starts
its process when a slot frees (the end of a run, or the next status read). Stopping a queued run takes it out
of the line.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from .. import cpushare, runs
from ..cpushare import cpu_cores
from ..config import RunConfig
from ..limits import RunCaps
from ..events import TERMINAL, EventLog, read_events
from .. import slots

NAME = "local"
QUEUED_STOP = "removed from the queue before it started"
LOG_FILE = "process.log"
THREADS_ENV = "FINETUNE_TRAIN_THREADS"


def train_threads() -> int | None:
    """``$FINETUNE_TRAIN_THREADS``: a fixed number of CPU threads for every training run; None when unset."""
    raw = os.environ.get(THREADS_ENV, "").strip()
    if not raw:
        return None
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{THREADS_ENV}={raw!r}: set it to the number of CPU threads a training run may use "
                         "(1 or more), or unset it to let runs share the CPU with the app")
    return n


def shares_cpu(shared: bool) -> bool:
    """Whether a run adapts its threads to the app's load (:mod:`finetune.cpushare`): runs the app starts
    (``shared``), unless the operator fixed the threads (``FINETUNE_TRAIN_THREADS`` or ``OMP_NUM_THREADS``)."""
    return shared and train_threads() is None and "OMP_NUM_THREADS" not in os.environ


def cpu_threads_left(queue_dir: str | Path) -> int | None:
    """CPU threads the app may use for its own work (chat generation) beside the runs of this machine's queue
    that train now: the cores they keep while the app is busy, at least one. None when a setting is unreadable."""
    cores = cpu_cores()
    try:
        concurrent = slots.max_concurrent()
        training = concurrent - slots.free_slots(queue_dir)
        fixed = train_threads()
    except ValueError:
        return None
    if training <= 0:
        return cores
    if fixed is not None:
        per_run = fixed
    elif "OMP_NUM_THREADS" in os.environ:
        raw = os.environ["OMP_NUM_THREADS"].strip()
        per_run = int(raw) if raw.isdigit() and int(raw) > 0 else cores
    else:  # a sharing run leaves a core while the app works
        per_run = max(1, cores // concurrent - 1)
    return max(1, cores - training * per_run)


def start(config: RunConfig, root: str | Path | None = None, run_id: str | None = None,
          queue_dir: str | Path | None = None, caps: RunCaps | None = None) -> str:
    """Create the run folder, write the config, launch the training process; return the run id.

    ``queue_dir``: wait in that queue for a free training slot (see :mod:`finetune.slots`), with no process
    until the slot is free. ``caps``: a shared server's limits on the run (:mod:`finetune.limits`).
    """
    train_threads()  # a bad server setting fails before a run folder exists
    run_id = runs.check_run_id(run_id) if run_id else runs.new_run_id(config.name)
    run_dir = runs.run_path(run_id, root)
    run_dir.mkdir(parents=True, exist_ok=False)
    config.save(run_dir / runs.CONFIG_FILE)
    runs.record_backend(run_dir, NAME)
    with runs.control(run_dir):
        _launch(run_dir, queue_dir, caps=caps)
    if queue_dir is not None:
        dispatch(queue_dir)
    return run_dir.name


def resume(run_id: str, root: str | Path | None = None, queue_dir: str | Path | None = None,
           caps: RunCaps | None = None) -> str:
    """Continue a paused, stopped or interrupted run from its last checkpoint; the run reads ``queued`` while it
    waits for a slot, then ``resuming`` until its process trains.

    Right after a stop, whatever the timing: a stop its process has not taken yet is withdrawn (the run goes
    on); a process already stopping is followed by a new one, which waits for it to end
    (:func:`runs.hold_process_lock`) and goes on from the checkpoint it writes."""
    run_dir = runs.run_path(run_id, root)
    if not (run_dir / runs.CONFIG_FILE).exists():
        raise runs.RunError(f"no run '{run_id}' here")
    with runs.control(run_dir):
        current = runs.read_run(run_dir)
        if current.status in runs.LIVE and current.pid is None:
            raise runs.RunError(f"run '{run_id}' is already {current.status}: it starts when a slot frees")
        if current.status in runs.LIVE and current.pid is not None:
            if runs.withdraw_stop(run_dir):
                return run_id
            if not runs.stopping(run_dir, current.pid):
                raise runs.RunError(f"run '{run_id}' is already {current.status}")
        else:
            runs.clear_stop(run_dir)  # requests no process took (it was killed first)
        _launch(run_dir, queue_dir, resume=True, caps=caps)
    if queue_dir is not None:
        dispatch(queue_dir)
    return run_id


def _launch(run_dir: Path, queue_dir: str | Path | None = None, resume: bool = False,
            caps: RunCaps | None = None) -> None:
    """Start the run's process now (no queue), or put the run in line with no process (the caller then calls
    :func:`dispatch`, outside the run's control lock, which dispatch takes itself)."""
    args = caps.train_args() if caps is not None else []
    if queue_dir is None:
        _spawn(run_dir, None, None, resume, args)
        return
    qdir = Path(queue_dir).resolve()
    with slots.dispatching(qdir):
        ticket = slots.add_pending(qdir, run_dir.name, {"run_dir": str(run_dir.resolve()), "resume": resume,
                                                        "args": args})
        # queued at once, with no pid: the ticket, not a process, keeps it in line (runs.read_run)
        EventLog(run_dir).emit("queued", position=max(1, slots.place(qdir, ticket.name)), resume=resume)


def _waiting(run_dir: Path) -> bool:
    """Whether the run is queued with no process (its ticket still stands)."""
    if not (run_dir / runs.CONFIG_FILE).is_file():
        return False
    state = runs.read_run(run_dir)
    return state.status == "queued" and state.pid is None


def dispatch(queue_dir: str | Path) -> list[str]:
    """Move the line on: start the process of each queued run a free slot is there for (first in line first),
    drop the tickets of runs that were stopped or deleted, and write the new positions of the runs still waiting.
    Called when a run is queued, when a run's process ends, and on status reads (so an app restarted after a
    crash, or a run that ended in another app process, moves the line too). Returns the runs started."""
    qdir = Path(queue_dir).resolve()
    if not slots.pending_tickets(qdir):
        return []
    started: list[str] = []
    n = slots.max_concurrent()
    with slots.dispatching(qdir):
        for ticket in slots.pending_tickets(qdir):
            record = slots.read_pending(ticket)
            run_dir = Path(record["run_dir"]) if record and isinstance(record.get("run_dir"), str) else None
            if run_dir is None or not _waiting(run_dir):
                ticket.unlink(missing_ok=True)  # stopped while waiting, deleted, or launched before a crash
                continue
            if slots.place(qdir, ticket.name, n) > 0:
                break  # no free slot, or a waiting process is ahead
            slot = slots.acquire_slot(qdir, n)
            if slot is None:
                break
            try:
                with runs.control(run_dir):  # a stop sent meanwhile wins: the run is then no longer waiting
                    if _waiting(run_dir):
                        assert record is not None
                        _spawn(run_dir, qdir, slot, bool(record.get("resume")), [str(a) for a in record.get("args", [])])
                        started.append(run_dir.name)
            finally:
                slots.release(slot)  # the process holds the slot now (its inherited descriptor)
                ticket.unlink(missing_ok=True)
        for ticket in slots.pending_tickets(qdir):  # the new positions of the runs still waiting
            record = slots.read_pending(ticket)
            run_dir = Path(record["run_dir"]) if record and isinstance(record.get("run_dir"), str) else None
            if run_dir is None or not _waiting(run_dir):
                continue
            place = max(1, slots.place(qdir, ticket.name, n))
            if runs.read_run(run_dir).queue_position != place:
                EventLog(run_dir).emit("queued", position=place, resume=bool(record and record.get("resume")))
    return started


def _spawn(run_dir: Path, queue_dir: Path | None, slot: int | None, resume: bool, args: list[str]) -> None:
    """Start the run's training process, handing it ``slot`` (a locked descriptor it keeps while it lives)."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TRACKIO_DIR", str(run_dir.resolve().parent / ".trackio"))  # the owner's dashboard, if a run tracks
    threads = train_threads()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)  # read by torch when the process imports it
    elif shares_cpu(queue_dir is not None):
        env[cpushare.ENV] = str(os.getpid())  # the run watches this process's CPU use (finetune.cpushare)
    root = Path(__file__).resolve().parent.parent.parent
    cmd = [sys.executable, "-m", "finetune", "train", "--run-dir", str(run_dir.resolve()), "--quiet", *args]
    if slot is not None:
        # an inherited descriptor keeps the slot's lock: if the process dies, the kernel drops it
        cmd += ["--queue-slot-fd", str(slot)]
    log = open(run_dir / LOG_FILE, "ab")
    try:
        proc = subprocess.Popen(
            cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # survives a restart of the app and is not hit by its Ctrl-C
            pass_fds=(slot,) if slot is not None else (),
        )
    finally:
        log.close()
    # Live at once ("new" or "resuming", with the process's pid), before the process has written anything.
    EventLog(run_dir).emit("launched", **runs.process_record(proc.pid), resume=resume)
    # Reap the process when it ends: an unreaped (zombie) child still answers kill(pid, 0), so a crashed run
    # would read as "running" for as long as the app lives. Its slot is then free: the line moves on.
    threading.Thread(target=_reap, args=(proc, run_dir, queue_dir), name=f"reap-{run_dir.name}", daemon=True).start()


def _reap(proc: subprocess.Popen[bytes], run_dir: Path, queue_dir: Path | None = None) -> None:
    """Wait for the process; if it exited with an error before training began (a bad install, a bad argument),
    record why, so the run does not sit as "new" forever. Then start the next queued run."""
    code = proc.wait()
    try:
        if code > 0:  # not success, nor killed by a signal (an interrupted run stays resumable)
            own = [e for e in read_events(run_dir) if e.get("pid") == proc.pid]
            if not any(e.get("type") == "started" or e.get("type") in TERMINAL for e in own):
                tail = logs(run_dir.name, run_dir.parent, tail=3).strip().replace("\n", " | ")
                EventLog(run_dir).emit("failed", pid=proc.pid, message="the training process exited with code "
                                       f"{code} before it started" + (f": {tail}" if tail else ""))
    finally:
        if queue_dir is not None:
            dispatch(queue_dir)


def status(run_id: str, root: str | Path | None = None) -> runs.RunState:
    return runs.read_run(runs.run_path(run_id, root))


def stop(run_id: str, root: str | Path | None = None, wait_queued_s: float = 5.0,
         queue_dir: str | Path | None = None) -> None:
    """Ask the run to stop at the next step; it writes a checkpoint and a ``stopped`` event. A queued run
    leaves the line at once (one with a waiting process checks every half second; this waits up to
    ``wait_queued_s`` for that). A run with no process (finished, stopped, interrupted) is left as it is: no
    request stays behind."""
    run_dir = runs.run_path(run_id, root)
    with runs.control(run_dir):
        current = runs.read_run(run_dir)
        if current.status == "queued" and current.pid is None:
            # no process yet: the run leaves the line now; the dispatcher drops its ticket
            EventLog(run_dir).emit("stopped", message=QUEUED_STOP, queued=True)
        elif current.status not in runs.LIVE or current.pid is None:
            runs.clear_stop(run_dir)  # what processes that are gone left (a request none took, STOPPING.<pid>)
            return
        else:
            runs.request_stop(run_dir)
    if queue_dir is not None:
        dispatch(queue_dir)
    deadline = time.time() + wait_queued_s
    while runs.read_run(run_dir).status == "queued" and time.time() < deadline:
        time.sleep(0.1)


def logs(run_id: str, root: str | Path | None = None, tail: int = 200) -> str:
    path = runs.run_path(run_id, root) / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-tail:])


class LocalBackend:
    """The :class:`~finetune.backends.base.Backend` of this machine; ``queue_dir``: the machine-wide queue runs
    wait in (None: start at once)."""

    name = NAME

    def __init__(self, queue_dir: str | Path | None = None, caps: RunCaps | None = None) -> None:
        self.queue_dir = queue_dir
        self.caps = caps

    def start(self, config: RunConfig, root: Path) -> str:
        return start(config, root, queue_dir=self.queue_dir, caps=self.caps)

    def status(self, run_dir: Path) -> runs.RunState:
        if self.queue_dir is not None:
            dispatch(self.queue_dir)  # a slot freed by a process this app did not start (or before a restart)
        return runs.read_run(run_dir)

    def stop(self, run_dir: Path) -> None:
        stop(run_dir.name, run_dir.parent, queue_dir=self.queue_dir)

    def resume(self, run_dir: Path) -> str:
        return resume(run_dir.name, run_dir.parent, queue_dir=self.queue_dir, caps=self.caps)

    def logs(self, run_dir: Path, tail: int = 200) -> str:
        return logs(run_dir.name, run_dir.parent, tail=tail)
