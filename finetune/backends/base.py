"""The one interface every backend implements: where a run trains, seen from the app and the CLI.

A backend object carries the settings of one request (the local queue, a Jobs flavor, the caller's token);
its methods act on a run folder. Which backend a run uses is recorded in the folder when it starts
(:func:`finetune.runs.record_backend`) and read back by :func:`finetune.backends.backend_for` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from ..config import RunConfig
from ..runs import RunState


@runtime_checkable
class Backend(Protocol):
    """start / status / stop / resume / logs of a run on one kind of machine.

    >>> from finetune.backends import backend_for
    >>> backend_for(Path("runs/20261123-101500-demo-3f9c2a7d1b")).name  # doctest: +SKIP
    'local'
    """

    name: str

    def start(self, config: RunConfig, root: Path) -> str:
        """Create the run folder under ``root`` (recording this backend) and start the run; returns its id."""
        ...

    def status(self, run_dir: Path) -> RunState:
        """The run's state (a remote run's folder is brought up to date first, where the backend can)."""
        ...

    def stop(self, run_dir: Path) -> None:
        """Ask the run to stop (a checkpoint first, where the backend keeps them)."""
        ...

    def resume(self, run_dir: Path) -> str:
        """Continue a stopped, paused or interrupted run from its last checkpoint; returns its id."""
        ...

    def logs(self, run_dir: Path, tail: int = 200) -> str:
        """The last ``tail`` lines of the run's output."""
        ...
