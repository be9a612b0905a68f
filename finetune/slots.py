"""A machine-wide queue for local training processes: at most ``FINETUNE_MAX_CONCURRENT_RUNS`` (default 1)
train at once; the others wait in line, first come first served, with their position in their run folder.

Everything lives in one folder (``<runs root>/.queue``) and rests on ``fcntl.flock``, which the kernel
releases when a process dies, so neither a crashed trainer nor a killed waiter can block the queue:

- ``slot-<i>.lock``: a training process holds an exclusive lock on one slot file for its whole life;
- ``pending/<ns>-<run_id>.json``: a run the app queued, with no process yet: what to launch when a slot frees
  (``backends.local.dispatch`` takes a slot, hands it to the run's new process and removes the ticket, under
  ``dispatch.lock``). A waiting run costs a small file, not a process; any dispatch (the end of a run, the next
  status read, an app restarted after a crash) moves the line on.
- ``waiting/<ns>-<run_id>``: a ticket per waiting process (``finetune train --queue-dir``), named by the time it
  joined, locked by its waiter. A ticket whose lock can be taken belongs to a dead waiter and is removed.

Both kinds stand in one line, ordered by the time they joined. A waiting process waits in
:func:`wait_for_slot`, writing a ``queued`` event (with its position) whenever the position changes, and
leaves the line when a ``STOP`` file appears in its run folder.

>>> import tempfile
>>> q = tempfile.mkdtemp()
>>> held = acquire_slot(q)           # a trainer takes the only slot
>>> t = enqueue(q, "run-b")          # the next request waits
>>> position(q, t)
1
>>> release(held); close_ticket(t)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .io import file_lock

MAX_ENV = "FINETUNE_MAX_CONCURRENT_RUNS"
QUEUE_DIR = ".queue"  # under the runs root; not a run id (run ids start with a letter or digit)
WAITING = "waiting"
PENDING = "pending"
DISPATCH_LOCK = "dispatch.lock"
POLL_S = 0.5


def max_concurrent() -> int:
    """``$FINETUNE_MAX_CONCURRENT_RUNS`` (default 1): how many local runs train at once on this machine."""
    raw = os.environ.get(MAX_ENV, "1").strip() or "1"
    try:
        n = int(raw)
    except ValueError:
        raise ValueError(f"{MAX_ENV}={raw!r} is not a number; set it to how many runs may train at once (e.g. 1)") from None
    if n < 1:
        raise ValueError(f"{MAX_ENV}={n}: at least one run must be able to train; set it to 1 or more")
    return n


def queue_dir(runs_root: str | Path) -> Path:
    return Path(runs_root) / QUEUE_DIR


@dataclass
class Ticket:
    """A place in line: the ticket file and the open descriptor that holds its lock."""

    path: Path
    fd: int


def _try_lock(path: Path, create: bool = True) -> int | None:
    """An open descriptor holding an exclusive lock on ``path``, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _slots(qdir: Path, n: int) -> list[Path]:
    return [qdir / f"slot-{i}.lock" for i in range(n)]


def acquire_slot(qdir: str | Path, n: int | None = None) -> int | None:
    """Take a free training slot (the descriptor holds it until closed or the process dies), or None."""
    qdir = Path(qdir)
    qdir.mkdir(parents=True, exist_ok=True)
    for slot in _slots(qdir, n or max_concurrent()):
        fd = _try_lock(slot)
        if fd is not None:
            return fd
    return None


def free_slots(qdir: str | Path, n: int | None = None) -> int:
    """How many slots nobody holds right now (a probe: each is locked and released at once)."""
    n = n or max_concurrent()
    if not Path(qdir).is_dir():
        return n
    free = 0
    for slot in _slots(Path(qdir), n):
        fd = _try_lock(slot)
        if fd is not None:
            free += 1
            os.close(fd)
    return free


def release(fd: int | None) -> None:
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the file drops its lock


def enqueue(qdir: str | Path, run_id: str) -> Ticket:
    """Join the line. The ticket is locked before it gets its visible name, so no one takes it for dead."""
    waiting = Path(qdir) / WAITING
    waiting.mkdir(parents=True, exist_ok=True)
    tmp = waiting / f".new-{os.getpid()}-{run_id}"
    fd = _try_lock(tmp)
    if fd is None:  # pragma: no cover - the name is unique to this process and run
        raise RuntimeError(f"cannot lock {tmp}")
    final = waiting / f"{time.time_ns():020d}-{run_id}"
    os.rename(tmp, final)
    return Ticket(final, fd)


def adopt(path: str | Path, fd: int) -> Ticket:
    """The ticket a parent process handed over (its locked descriptor was inherited)."""
    return Ticket(Path(path), fd)


def close_ticket(ticket: Ticket) -> None:
    """Leave the line (the run got a slot, was stopped, or failed)."""
    try:
        ticket.path.unlink()
    except FileNotFoundError:
        pass
    release(ticket.fd)


def live_tickets(qdir: str | Path) -> list[Path]:
    """Tickets of living waiters, in line order; a ticket nobody holds is a dead waiter's and is removed."""
    waiting = Path(qdir) / WAITING
    if not waiting.is_dir():
        return []
    alive = []
    for path in sorted(p for p in waiting.iterdir() if not p.name.startswith(".")):
        fd = _try_lock(path, create=False)
        if fd is None:
            if path.exists():
                alive.append(path)
            continue
        try:  # we got the lock: its waiter is gone
            path.unlink()
        except FileNotFoundError:
            pass
        finally:
            os.close(fd)
    return alive


def add_pending(qdir: str | Path, run_id: str, launch: dict[str, Any]) -> Path:
    """Queue a run with no process: ``launch`` says how to start it when its turn comes."""
    pending = Path(qdir) / PENDING
    pending.mkdir(parents=True, exist_ok=True)
    final = pending / f"{time.time_ns():020d}-{run_id}.json"
    tmp = pending / f".new-{final.name}"
    tmp.write_text(json.dumps(launch), encoding="utf-8")
    os.replace(tmp, final)  # whole or absent: a dispatcher never reads half a ticket
    return final


def pending_tickets(qdir: str | Path) -> list[Path]:
    """The queued runs with no process, in line order."""
    pending = Path(qdir) / PENDING
    return sorted(p for p in pending.iterdir() if not p.name.startswith(".")) if pending.is_dir() else []


def read_pending(path: Path) -> dict[str, Any] | None:
    """A pending ticket's launch record; None when it is gone or damaged (the dispatcher drops it)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def dispatching(qdir: str | Path) -> Iterator[None]:
    """One dispatcher at a time (the app's threads, a restarted app): a ticket is launched once."""
    with file_lock(Path(qdir) / DISPATCH_LOCK):
        yield


def place(qdir: str | Path, name: str, n: int | None = None) -> int:
    """The place in line of the ticket called ``name`` (waiting or pending): 1 = next to train; 0 = a slot is
    free for it now. Counts the waiters and pending runs ahead and the slots they will take first."""
    ahead = sum(1 for p in live_tickets(qdir) + pending_tickets(qdir) if p.name < name)
    free = free_slots(qdir, n)
    return 0 if ahead < free else ahead - free + 1


def position(qdir: str | Path, ticket: Ticket, n: int | None = None) -> int:
    """:func:`place` of a waiting process's ticket."""
    return place(qdir, ticket.path.name, n)


def wait_for_slot(qdir: str | Path, ticket: Ticket, *, on_position: Callable[[int], object] | None = None,
                  should_stop: Callable[[], bool] | None = None, poll_s: float = POLL_S) -> int | None:
    """Wait in line until a slot is ours; return its descriptor (hold it while training), or None when
    ``should_stop`` asked to leave the line. ``on_position`` hears every change of position."""
    n = max_concurrent()
    last = None
    try:
        while True:
            if should_stop is not None and should_stop():
                return None
            pos = position(qdir, ticket, n)
            if pos == 0:
                fd = acquire_slot(qdir, n)
                if fd is not None:
                    return fd
                pos = 1  # taken between the probe and the lock: still first in line
            if pos != last and on_position is not None:
                on_position(pos)
            last = pos
            time.sleep(poll_s)
    finally:
        close_ticket(ticket)
