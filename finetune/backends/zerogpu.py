"""ZeroGPU: training inside ``@spaces.GPU`` calls, in resumable chunks.

A ZeroGPU call has a fixed duration and runs in a forked worker: nothing it changes in memory survives,
and a call over its duration is aborted ("GPU task aborted"). So each call trains until a step budget
computed from the measured step time, writes a checkpoint into the run folder before returning, and the
app chains calls until the run is done. An aborted call costs only the steps since the last checkpoint:
the next call resumes from it. Outside a ZeroGPU Space ``spaces.GPU`` returns the function unchanged,
so the same code runs (and is tested) on any machine.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from .. import runs
from ..config import RunConfig
from ..events import EventLog, read_events

try:
    import spaces
except ImportError:  # not installed: plain calls
    spaces = None

FIRST_CALL_S = 60  # ZeroGPU's default duration: the first call measures the step time
MAX_CALL_S = 300  # longer calls wait longer in the ZeroGPU queue
SETUP_S = 25.0  # model load + data preparation inside each call (re-measured from the events)
MARGIN = 0.8  # train for 80% of the requested duration: the rest is for the checkpoint and variance
DAILY_QUOTA_S = {"anonymous": 120, "free": 300, "pro": 2400}


@dataclass
class ChunkPlan:
    duration_s: int  # what the call asks ZeroGPU for
    until_step: int  # where it stops and checkpoints


def measured_step_s(run_dir: Path) -> float | None:
    """Median seconds per optimizer step from the events of earlier calls."""
    steps = [e for e in read_events(run_dir) if e["type"] == "step" and e.get("elapsed_s") is not None]
    gaps = []
    for a, b in zip(steps, steps[1:]):
        if b["step"] == a["step"] + 1 and b["elapsed_s"] > a["elapsed_s"]:
            gaps.append(b["elapsed_s"] - a["elapsed_s"])
    if not gaps:
        return None
    gaps.sort()
    return gaps[len(gaps) // 2]


def measured_setup_s(run_dir: Path) -> float:
    """Seconds from a call's start to its first step (model load, data), the largest seen."""
    events = read_events(run_dir)
    seen = [e["elapsed_s"] for i, e in enumerate(events) if e["type"] == "step" and i > 0
            and events[i - 1]["type"] == "started" and e.get("elapsed_s") is not None]
    return max(seen) if seen else SETUP_S


def plan_chunk(run_dir: Path, step: int, max_steps: int, max_call_s: int = MAX_CALL_S) -> ChunkPlan:
    """How long the next call asks for and how many steps it trains, from the measured step time."""
    per_step = measured_step_s(run_dir)
    if per_step is None:  # first call: train as far as the default duration allows
        return ChunkPlan(FIRST_CALL_S, max_steps)
    setup = measured_setup_s(run_dir)
    budget = max_call_s * MARGIN - setup
    n = max(1, min(max_steps - step, int(budget // per_step)))
    duration = math.ceil((setup + n * per_step) / MARGIN)
    return ChunkPlan(min(max_call_s, max(10, duration)), step + n)


def quota_estimate(max_steps: int, per_step_s: float, setup_s: float = SETUP_S, max_call_s: int = MAX_CALL_S) -> dict:
    """GPU seconds a whole run will take from the daily quota, and how many calls."""
    per_call = max(1, int((max_call_s * MARGIN - setup_s) // per_step_s))
    calls = math.ceil(max_steps / per_call)
    gpu_s = calls * setup_s + max_steps * per_step_s
    return {"calls": calls, "gpu_seconds": round(gpu_s), "share_of_daily_quota": {
        tier: round(gpu_s / q, 2) for tier, q in DAILY_QUOTA_S.items()}}


def _duration(run_dir: str, until_step: int, duration_s: int) -> int:
    return duration_s


def _gpu(fn):
    return spaces.GPU(duration=_duration)(fn) if spaces is not None else fn


@_gpu
def train_chunk(run_dir: str, until_step: int, duration_s: int) -> dict:
    """One ZeroGPU call: resume the run, train to ``until_step`` (or the time budget), checkpoint, return.

    Runs in a forked worker: it takes and returns plain values; the run folder carries the state.
    """
    from ..train import train

    result = train(None, run_dir, until_step=until_step, time_budget_s=duration_s * MARGIN)
    return {"status": result.status, "step": result.step, "max_steps": result.max_steps}


def run_chunked(config: RunConfig | None, run_dir: Path, *, chunk: Callable[[str, int, int], dict] = None,
                max_calls: int = 100, max_aborts: int = 3, max_call_s: int = MAX_CALL_S,
                steps_per_call: int | None = None) -> Iterator[dict]:
    """Chain GPU calls until the run finishes; yields the run state after every call.

    ``chunk`` is the GPU call (``train_chunk``); an exception from it (an aborted call) is recorded as a
    ``chunk_aborted`` event and the next call resumes from the last checkpoint.
    """
    from ..train import open_run

    chunk = chunk or train_chunk
    config, run_dir, _ = open_run(config, run_dir)
    log = EventLog(run_dir)
    aborts = 0
    for _ in range(max_calls):
        state = runs.read_run(run_dir)
        if state.status in ("finished", "stopped", "failed"):
            yield state.to_dict()
            return
        max_steps = state.max_steps or config.training.max_steps or 1
        plan = plan_chunk(run_dir, state.step, max_steps, max_call_s)
        if steps_per_call:
            plan = ChunkPlan(plan.duration_s, min(plan.until_step, state.step + steps_per_call))
        try:
            chunk(str(run_dir), plan.until_step, plan.duration_s)
            aborts = 0
        except Exception as e:  # noqa: BLE001 - "GPU task aborted" and worker crashes look alike from here
            aborts += 1
            log.emit("chunk_aborted", message=f"{e.__class__.__name__}: {e}", attempt=aborts,
                     resume_from=str(runs.last_checkpoint(run_dir) or ""))
            if aborts > max_aborts:
                log.emit("failed", message=f"{aborts} GPU calls in a row were aborted; the last checkpoint is kept")
                yield runs.read_run(run_dir).to_dict()
                return
            time.sleep(0.1)
        yield runs.read_run(run_dir).to_dict()
    log.emit("paused", message=f"stopped after {max_calls} GPU calls; resume to continue")
    yield runs.read_run(run_dir).to_dict()
