"""Where training runs: one :class:`~finetune.backends.base.Backend` interface (start, status, stop, resume,
logs), three implementations.

- ``local`` (:class:`~finetune.backends.local.LocalBackend`): a process on this machine, waiting in the
  machine-wide queue of ``finetune.slots`` when every training slot is busy;
- ``hf-jobs`` (:class:`~finetune.backends.hfjobs.HFJobsBackend`): a Hugging Face Job on a rented GPU (its log is
  mirrored into the run folder; the user's token is passed in or read from HF_TOKEN);
- ``zerogpu`` (:class:`~finetune.backends.zerogpu.ZeroGPUBackend`): the run folder; the app then drives chained
  ``@spaces.GPU`` calls inside its own process with ``zerogpu.run_chunked`` (only on a ZeroGPU Space).

A run records its backend when it starts; :func:`backend_for` is the one place that reads it back.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

from .. import runs
from ..limits import RunCaps
from . import hfjobs, local, zerogpu
from .base import Backend

BACKENDS: dict[str, ModuleType] = {"local": local, "hf-jobs": hfjobs, "zerogpu": zerogpu}


def get_backend(name: str) -> ModuleType:
    """The module of a backend by name (its functions take a run id and a root)."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available here: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def make_backend(name: str, *, queue_dir: str | Path | None = None, token: str | None = None, api: Any = None,
                 flavor: str | None = None, repo_id: str | None = None,
                 sync_every_s: float = 0.0, caps: RunCaps | None = None) -> Backend:
    """The backend called ``name`` (local | zerogpu | hf-jobs) with the settings of one request; each takes the
    settings it uses (``queue_dir``, ``caps``: local; ``token``, ``api``, ``flavor``, ``repo_id``,
    ``sync_every_s``: hf-jobs)."""
    if name == local.NAME:
        return local.LocalBackend(queue_dir, caps)
    if name == zerogpu.NAME:
        return zerogpu.ZeroGPUBackend()
    if name == hfjobs.NAME:
        return hfjobs.HFJobsBackend(token, api=api, flavor=flavor or hfjobs.DEFAULT_FLAVOR,
                                    repo_id=repo_id, sync_every_s=sync_every_s)
    raise ValueError(f"unknown backend '{name}'; one of {', '.join(runs.BACKEND_NAMES)}")


def backend_for(run_dir: Path, *, queue_dir: str | Path | None = None, token: str | None = None, api: Any = None,
                sync_every_s: float = 0.0, caps: RunCaps | None = None) -> Backend:
    """The backend a run started on, as recorded in its folder (runs.read_backend), with this request's
    settings."""
    return make_backend(runs.read_backend(run_dir), queue_dir=queue_dir, token=token, api=api,
                        sync_every_s=sync_every_s, caps=caps)


__all__ = ["BACKENDS", "Backend", "backend_for", "get_backend", "make_backend"]
