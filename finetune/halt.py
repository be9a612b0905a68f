"""When a run ends before its planned last step: the stop rules of one ``train`` call, as one value.

A run halts ``stopped`` (the caller's ``should_stop``, a ``STOP`` file in the run folder, a shared server's time
cap) or ``paused`` (a ZeroGPU chunk reached its step or its time budget). Either way it checkpoints first, so the
next call resumes there. The rules are read at each step's end (:func:`finetune.callbacks.events_callback`) and,
for the time budget, before the extra work of a checkpoint save.

>>> halt = Halt(started_at=0.0, until_step=5)
>>> halt.decide(step=5, max_steps=10, per_step=1.0, now=1.0, run_dir=None)
('paused', None)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import runs
from .distributed import is_main_process
from .limits import RunCaps, check_steps, time_limit_message


@dataclass(frozen=True)
class Halt:
    """The stop rules of one ``train`` call (None: that rule is off)."""

    started_at: float = field(default_factory=time.time)  # when this call began: budgets count from here
    should_stop: Callable[[], bool] | None = None  # the caller's stop (status ``stopped``)
    until_step: int | None = None  # a chunk's last step (status ``paused``)
    time_budget_s: float | None = None  # a chunk's wall-clock budget, a checkpoint included (``paused``)
    caps: RunCaps | None = None  # a shared server's limits (finetune.limits): the step cap and the time cap

    @property
    def time_limit_s(self) -> float | None:
        """The shared server's cap on this call's training time in seconds (``stopped``, resumable)."""
        caps = self.caps
        return caps.max_minutes * 60 if caps is not None and caps.max_minutes is not None else None

    def time_left(self, now: float | None = None) -> float | None:
        """Seconds left of the time budget (None: no budget)."""
        if self.time_budget_s is None:
            return None
        return self.time_budget_s - ((time.time() if now is None else now) - self.started_at)

    def check_planned(self, steps: int) -> None:
        """Refuse a run planned over the step cap before it trains (raises LimitError)."""
        if self.caps is not None:
            check_steps(self.caps, steps)

    def decide(self, step: int, max_steps: int, per_step: float, now: float,
               run_dir: Path | None) -> tuple[str | None, str | None]:
        """At a step's end: (``stopped`` | ``paused`` | None, why when it is the time cap). ``per_step``: the
        recent seconds per step; ``run_dir``: where a ``STOP`` file may ask (None: not looked at)."""
        halt: str | None = None
        message: str | None = None
        if self.should_stop is not None and self.should_stop():
            halt = "stopped"
        elif run_dir is not None and step < max_steps and is_main_process() and runs.claim_stop(run_dir):
            halt = "stopped"  # taken (renamed): a resume asked from now on follows this process
        elif self.until_step is not None and step >= self.until_step:
            halt = "paused"
        elif self.time_budget_s is not None:
            # leave room for one more step and the checkpoint write
            if now - self.started_at + 2 * per_step > self.time_budget_s:
                halt = "paused"
        limit = self.time_limit_s
        if halt is None and limit is not None and now - self.started_at >= limit:
            # a shared server's cap on one run's time (limits.RunCaps): stopped as a user's stop is, resumable
            halt = "stopped"
            message = time_limit_message(limit / 60)
        return halt, message
