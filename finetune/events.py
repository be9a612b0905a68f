"""The event log of a run: one JSON object per line in ``runs/<id>/events.jsonl``.

Types: ``started``, ``step`` (loss, lr, grad_norm, tokens_per_s, elapsed_s since the process started, eta_s:
measured after its first step, the estimator's before, said by ``eta_estimated``), ``eval`` (eval_loss),
``checkpoint`` (step, path), ``paused`` (a chunk ended at a checkpoint; resumable), ``stopped`` (the user
asked), ``finished`` (metrics), ``failed`` (message). Every event carries ``type`` and ``time`` (unix s).

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> EventLog(d).emit("step", step=1, loss=2.5)["type"]
'step'
>>> [e["loss"] for e in read_events(d)]
[2.5]
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, Protocol

from .io import append_jsonl, read_jsonl

EVENTS_FILE = "events.jsonl"
TERMINAL = ("finished", "failed", "stopped")


def _clean(value: object) -> object:
    """JSON-safe numbers: NaN/inf become None (json.dumps would write invalid JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class EventLog:
    def __init__(self, run_dir: Path, on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.path = Path(run_dir) / EVENTS_FILE
        self.on_event = on_event

    def emit(self, type: str, **fields: object) -> dict[str, Any]:
        event = {"type": type, "time": round(time.time(), 3), **{k: _clean(v) for k, v in fields.items()}}
        append_jsonl(self.path, event)
        if self.on_event is not None:
            self.on_event(event)
        return event


class EventSink(Protocol):
    """Where a run's events go: :class:`EventLog` (rank 0) or :class:`SilentLog`."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]: ...


class SilentLog:
    """The event log of a process other than rank 0: events are built (callers read them) but not written."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, "time": round(time.time(), 3), **fields}


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return read_jsonl(Path(run_dir) / EVENTS_FILE)
