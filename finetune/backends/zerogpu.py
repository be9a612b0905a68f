"""ZeroGPU: training inside ``@spaces.GPU`` calls, in resumable chunks.

A ZeroGPU call has a fixed duration and runs in a forked worker: nothing it changes in memory survives,
and a call over its duration is aborted ("GPU task aborted"). So each call trains until a step budget
computed from the measured step time, writes a checkpoint into the run folder before returning, and the
app chains calls until the run is done. An aborted call costs only the steps since the last checkpoint:
the next call resumes from it. Outside a ZeroGPU Space ``spaces.GPU`` returns the function unchanged,
so the same code runs (and is tested) on any machine.

>>> quota_estimate(max_steps=1000, per_step_s=0.5, setup_s=20)["calls"]  # 440 steps fit one 300 s call
3
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, ParamSpec, TypedDict, TypeVar

from .. import runs
from ..config import RunConfig
from ..errors import PROGRAMMING_ERRORS, BadInputError, internal_message, is_programming_error, report_internal
from ..events import EventLog, read_events
from ..memory import ZEROGPU, ZEROGPU_DAILY_QUOTA_MIN

try:
    import spaces
except ImportError:  # not installed: plain calls
    spaces = None

NAME = "zerogpu"
_P = ParamSpec("_P")
_R = TypeVar("_R")
FIRST_CALL_S = ZEROGPU.default_call_s  # ZeroGPU's default duration: the first call measures the step time
MAX_CALL_S = ZEROGPU.max_call_s  # about the longest a call may ask for; longer calls also wait longer in the queue
SETUP_S = 25.0  # model load + data preparation inside each call (re-measured from the events)
MARGIN = 0.8  # train for 80% of the requested duration: the rest is for the checkpoint and variance
# seconds of daily quota per account tier (the numbers live in memory/hardware.py, with their source)
DAILY_QUOTA_S = {tier: minutes * 60 for tier, minutes in ZEROGPU_DAILY_QUOTA_MIN.items()}
# Errors a retry cannot fix (bad config, missing model, bad data, out of memory; train() reports any error
# inside training as a TrainingError): the run fails at once instead of spending the user's quota on the
# same error again. What stays retryable is a call cut off from outside: "GPU task aborted", a lost worker.
PERMANENT_ERRORS = ("ConfigError", "ModelError", "TrainingError", "RunError", "DataError", "TemplateError",
                    # a bug of ours fails the same way on every retry (errors.PROGRAMMING_ERRORS)
                    *(t.__name__ for t in PROGRAMMING_ERRORS), "KeyError", "IndexError")


def available() -> tuple[bool, str]:
    """Whether this app runs on a ZeroGPU Space (the platform sets SPACES_ZERO_GPU), and if not, why."""
    if spaces is None:
        return False, "the `spaces` package is not installed (it comes with Hugging Face Spaces)"
    try:
        on_zero = bool(spaces.config.Config.zero_gpu)
    except AttributeError:  # an older `spaces`: the platform's variable says it
        on_zero = os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "true")
    if not on_zero:
        return False, "this app is not running on a ZeroGPU Space (run it on one, with ZeroGPU hardware, to use it)"
    return True, ""


def start(config: RunConfig, root: str | Path | None = None, run_id: str | None = None) -> str:
    """Create the run folder of a ZeroGPU run (config and a ``submitted`` event); the app then drives its GPU
    calls with :func:`run_chunked`. Returns the run id. A run laid out over several GPUs is refused: a ZeroGPU
    call holds one GPU."""
    t = config.training
    if t.distributed in ("ddp", "fsdp") or t.num_processes > 1:
        raise BadInputError(
            f"ZeroGPU lends one GPU per call, and this run asks for several (training.distributed {t.distributed}, "
            f"training.num_processes {t.num_processes}); set training.distributed none (or auto) and "
            "training.num_processes 0 here, or train on a multi-GPU Hugging Face Jobs flavor (e.g. a100x4, l40sx4)")
    run_id = runs.check_run_id(run_id) if run_id else runs.new_run_id(config.name)
    run_dir = runs.run_path(run_id, root)
    run_dir.mkdir(parents=True, exist_ok=False)
    config.save(run_dir / runs.CONFIG_FILE)
    runs.record_backend(run_dir, NAME)
    EventLog(run_dir).emit("submitted", backend=NAME)
    return run_id


def status(run_id: str, root: str | Path | None = None) -> runs.RunState:
    return runs.read_run(runs.run_path(run_id, root))


def stop(run_id: str, root: str | Path | None = None) -> None:
    """The current GPU call checkpoints and ends at its next step; no further call is made."""
    runs.request_stop(runs.run_path(run_id, root))


@dataclass
class ChunkPlan:
    duration_s: int  # what the call asks ZeroGPU for
    until_step: int  # where it stops and checkpoints (0: no step limit, the time budget decides)


def _calls(run_dir: Path) -> list[list[dict[str, Any]]]:
    """The step events of each call (a ``started`` event opens a call), in order."""
    calls: list[list[dict[str, Any]]] = []
    for e in read_events(run_dir):
        if e.get("type") == "started":
            calls.append([e])
        elif e.get("type") == "step" and calls and e.get("elapsed_s") is not None:
            calls[-1].append(e)
    return calls


def _resumed_step(started: dict[str, Any]) -> int:
    """The step a call resumed from: ``checkpoints/checkpoint-40`` -> 40, a fresh start -> 0."""
    ck = started.get("resumed_from") or ""
    tail = ck.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def measured_step_s(run_dir: Path) -> float | None:
    """Median seconds per optimizer step from the events of earlier calls.

    Gaps are taken within one call only (``elapsed_s`` restarts with each call, and the first step of a call
    includes its setup) and divided by the steps between two events (``logging_steps`` may be > 1).
    """
    gaps: list[float] = []
    for call in _calls(run_dir):
        steps = call[1:]
        for a, b in zip(steps, steps[1:]):
            n = b["step"] - a["step"]
            if n > 0 and b["elapsed_s"] > a["elapsed_s"]:
                gaps.append((b["elapsed_s"] - a["elapsed_s"]) / n)
    if not gaps:
        return None
    gaps.sort()
    return gaps[len(gaps) // 2]


def measured_setup_s(run_dir: Path) -> float:
    """Seconds from a call's start to its first step (model load, data), the largest seen."""
    per_step = measured_step_s(run_dir) or 0.0
    seen: list[float] = []
    for call in _calls(run_dir):
        if len(call) > 1:
            first = call[1]
            trained = max(1, first["step"] - _resumed_step(call[0]))  # steps inside the first logged one
            seen.append(max(0.0, first["elapsed_s"] - (trained - 1) * per_step))
    return max(seen) if seen else SETUP_S


def plan_chunk(run_dir: Path, step: int, max_steps: int, max_call_s: int = MAX_CALL_S) -> ChunkPlan:
    """How long the next call asks for and how many steps it trains, from the measured step time.

    The steps fit ``max_call_s * MARGIN`` after the setup; the duration asked is what those steps need,
    divided by MARGIN (the checkpoint write and step-time variance fit in the rest).
    """
    per_step = measured_step_s(run_dir)
    if per_step is None:  # first call: train as far as the default duration allows, then measure
        return ChunkPlan(FIRST_CALL_S, max_steps if max_steps > 0 else 0)
    setup = measured_setup_s(run_dir)
    budget = max_call_s * MARGIN - setup
    remaining = max_steps - step if max_steps > 0 else 10**9
    n = max(1, min(remaining, int(budget // per_step)))
    duration = math.ceil((setup + n * per_step) / MARGIN)
    return ChunkPlan(min(max_call_s, max(10, duration)), step + n)


class QuotaEstimate(TypedDict):
    calls: int  # GPU calls the run needs
    steps_per_call: int
    gpu_seconds: int  # of the daily quota (GPU seconds times the card's quota factor)
    share_of_daily_quota: dict[str, float]  # account tier -> fraction of its daily quota


class QuotaPreview(QuotaEstimate):
    max_steps: int
    per_step_s: float
    quota_factor: float
    daily_quota_s: dict[str, int]  # account tier -> seconds of daily quota
    upper_bound: bool  # the step time is an estimate at max_length, not measured


def quota_estimate(max_steps: int, per_step_s: float, setup_s: float = SETUP_S, max_call_s: int = MAX_CALL_S,
                   quota_factor: float = 1.0) -> QuotaEstimate:
    """GPU seconds a whole run will take from the daily quota, and how many calls (shown before it starts).

    ``quota_factor``: quota seconds per GPU second (2 for an ``xlarge`` card, memory.GPUS).
    """
    if per_step_s <= 0 or max_steps < 1:
        raise BadInputError(f"need max_steps >= 1 and per_step_s > 0, got {max_steps} and {per_step_s}; "
                         "measure the step time with a first call")
    per_call = max(1, int((max_call_s * MARGIN - setup_s) // per_step_s))
    calls = math.ceil(max_steps / per_call)
    gpu_s = (calls * setup_s + max_steps * per_step_s) * quota_factor
    return {"calls": calls, "steps_per_call": min(per_call, max_steps), "gpu_seconds": round(gpu_s),
            "share_of_daily_quota": {tier: round(gpu_s / q, 2) for tier, q in DAILY_QUOTA_S.items()}}


def quota_preview(config: RunConfig, n_examples: int | None = None, gpu: str = "zerogpu-large",
                  per_step_s: float | None = None) -> QuotaPreview:
    """What a run will take from the daily ZeroGPU quota, before it starts.

    The step time is ``per_step_s`` when measured, else memory.tokens_per_second on the ZeroGPU card with every
    example filling ``max_length`` (an upper bound: short examples train faster). An epochs-based run needs
    ``n_examples`` to count its steps. Returns quota_estimate's dict plus ``max_steps``, ``per_step_s``,
    ``quota_factor``, ``daily_quota_s`` and ``upper_bound``.
    """
    from .. import memory

    t = config.training
    if t.max_steps > 0:
        steps = t.max_steps
    elif n_examples:
        per_epoch = math.ceil(n_examples / t.batch_size)
        steps = max(1, math.ceil(per_epoch * t.epochs / t.grad_accum))
    else:
        raise BadInputError("the number of steps depends on the data: set training.max_steps or give the data first")
    card = memory.get_gpu(gpu)
    if per_step_s is None:
        spec = memory.spec_for_config(config, allow_hub=False)
        tps = memory.tokens_per_second(spec, memory.setup_for(config, card), card)
        per_step_s = t.batch_size * t.grad_accum * t.max_length / tps
    factor = card.zerogpu_quota_factor or 1.0
    est = quota_estimate(steps, per_step_s, quota_factor=factor)
    return {**est, "max_steps": steps, "per_step_s": per_step_s, "quota_factor": factor,
            "daily_quota_s": dict(DAILY_QUOTA_S), "upper_bound": True}


def _permanent(e: BaseException) -> bool:
    """On ZeroGPU an exception in the worker comes back as ``gr.Error`` whose message is the class name
    (spaces.zero.wrappers); here it is the exception itself. Both are recognised."""
    return (e.__class__.__name__ in PERMANENT_ERRORS or str(e).strip() in PERMANENT_ERRORS
            or is_programming_error(e))


def _duration(run_dir: str, until_step: int, duration_s: int) -> int:
    """ZeroGPU reads the duration of each call from its arguments (``spaces.GPU(duration=callable)``)."""
    return duration_s


def _gpu(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    return spaces.GPU(duration=_duration)(fn) if spaces is not None else fn


class ChunkResult(TypedDict):
    """What one GPU call returns (plain values: it crosses the ZeroGPU worker boundary)."""
    status: str
    step: int
    max_steps: int


@_gpu
def train_chunk(run_dir: str, until_step: int, duration_s: int) -> ChunkResult:
    """One ZeroGPU call: resume the run, train to ``until_step`` (or the time budget), checkpoint, return.

    Runs in a forked worker: it takes and returns plain values; the run folder carries the state.
    """
    from ..train import train

    result = train(None, run_dir, until_step=until_step or None, time_budget_s=duration_s * MARGIN)
    return {"status": result.status, "step": result.step, "max_steps": result.max_steps}


def run_chunked(config: RunConfig | None, run_dir: Path, *, chunk: Callable[[str, int, int], ChunkResult] | None = None,
                max_calls: int = 100, max_aborts: int = 3, max_call_s: int = MAX_CALL_S,
                steps_per_call: int | None = None, resume: bool = False) -> Iterator[dict[str, Any]]:
    """Chain GPU calls until the run finishes; yields the run state after every call.

    ``chunk`` is the GPU call (``train_chunk``). An exception from it (an aborted call, a crashed worker) is
    recorded as a ``chunk_aborted`` event and the next call resumes from the last checkpoint, up to
    ``max_aborts`` in a row; an error a retry cannot fix (PERMANENT_ERRORS) ends the run at once.
    ``steps_per_call`` caps the steps of each call (tests, or a user who wants short calls). ``resume`` continues
    a run the user stopped (otherwise a stopped run is left as it is).

    >>> for state in run_chunked(cfg, Path("runs/demo")):  # doctest: +SKIP
    ...     print(state["status"], state["step"], "/", state["max_steps"])
    """
    chunk = chunk or train_chunk
    config, run_dir, _ = runs.open_run(config, run_dir)
    log = EventLog(run_dir)
    aborts = 0
    for _ in range(max_calls):
        state = runs.read_run(run_dir)
        if state.status == "finished" or (state.status == "stopped" and not resume):
            yield state.to_dict()
            return
        resume = False
        if runs.stop_requested(run_dir):  # asked between calls: a call would remove the request and train on
            (run_dir / runs.STOP_FILE).unlink(missing_ok=True)
            log.emit("stopped", step=state.step, max_steps=state.max_steps, message="stopped by the user")
            yield runs.read_run(run_dir).to_dict()
            return
        max_steps = state.max_steps or config.training.max_steps  # 0 until a call has counted the data
        plan = plan_chunk(run_dir, state.step, max_steps, max_call_s)
        if steps_per_call:
            cap = state.step + steps_per_call
            plan = ChunkPlan(plan.duration_s, min(plan.until_step, cap) if plan.until_step else cap)
        try:
            result = chunk(str(run_dir), plan.until_step, plan.duration_s)
        except Exception as e:  # noqa: BLE001 - "GPU task aborted" and worker crashes look alike from here
            message = f"{e.__class__.__name__}: {e}"
            if is_programming_error(e):  # a bug: its traceback goes to the log, the run shows a reference
                message = internal_message(report_internal(e, "a ZeroGPU call"))
            if _permanent(e):
                if runs.read_run(run_dir).status != "failed":  # train() records its own errors
                    log.emit("failed", message=message)
                yield runs.read_run(run_dir).to_dict()
                return
            aborts += 1
            resume_from = runs.last_checkpoint(run_dir)
            log.emit("chunk_aborted", message=message, attempt=aborts,
                     resume_from=str(resume_from.relative_to(run_dir)) if resume_from else None)
            if aborts > max_aborts:
                log.emit("failed", message=f"{aborts} GPU calls in a row were aborted ({message}); the last "
                         "checkpoint is kept: resume the run to continue from it")
                yield runs.read_run(run_dir).to_dict()
                return
            time.sleep(0.1)
        else:
            aborts = 0
            if result.get("status") in ("finished", "stopped"):
                yield runs.read_run(run_dir).to_dict()
                return
        yield runs.read_run(run_dir).to_dict()
    log.emit("paused", message=f"stopped after {max_calls} GPU calls; resume to continue")
    yield runs.read_run(run_dir).to_dict()


# A benchmark (finetune.benchmark) on ZeroGPU: the same chunked GPU calls, one (task, side) part after another,
# each part kept in the run folder as it is made, so a call cut off goes on from the next part in the next call.
BENCH_CALL_S = 300  # each benchmark call asks for this much GPU time (parts are a task on one side: short)


class BenchChunk(TypedDict):
    """What one benchmark GPU call returns (plain values: it crosses the ZeroGPU worker boundary)."""
    status: str  # paused | finished
    report: dict[str, Any] | None


def _bench_duration(adapter: str, tasks: list[str], limit: int | None, parts_dir: str, label: str,
                    duration_s: int) -> int:
    return duration_s


def _bench_gpu(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    return spaces.GPU(duration=_bench_duration)(fn) if spaces is not None else fn


@_bench_gpu
def bench_chunk(adapter: str, tasks: list[str], limit: int | None, parts_dir: str, label: str,
                duration_s: int) -> BenchChunk:
    """One ZeroGPU call of a benchmark: score the parts not yet kept in ``parts_dir`` until the call's time is
    nearly spent (then ``paused``), or the whole report (``finished``)."""
    from ..benchmark import BenchPaused, Parts, benchmark

    parts = Parts(Path(parts_dir), bench_key(adapter, tasks, limit))
    try:
        report = benchmark(adapter, tasks, limit=limit, label=label, parts=parts, budget_s=duration_s * MARGIN)
    except BenchPaused:
        return {"status": "paused", "report": None}
    return {"status": "finished", "report": report}


def bench_key(adapter: str, tasks: list[str], limit: int | None) -> str:
    """What names one benchmark's parts: the adapter, the tasks and the limit."""
    import json

    return json.dumps([adapter, list(tasks), limit])


def run_bench_chunked(adapter: str, tasks: list[str], limit: int | None, parts_dir: Path, *, label: str,
                      chunk: Callable[..., BenchChunk] | None = None, max_calls: int = 50,
                      max_aborts: int = 3, call_s: int = BENCH_CALL_S) -> dict[str, Any]:
    """Chain benchmark GPU calls (``bench_chunk``) until the report is made; a call cut off from outside is
    followed by the next one (up to ``max_aborts`` in a row), an error a retry cannot fix is raised at once."""
    from ..benchmark import BenchError

    chunk = chunk or bench_chunk
    aborts = 0
    for _ in range(max_calls):
        try:
            out = chunk(adapter, list(tasks), limit, str(parts_dir), label, call_s)
        except Exception as e:  # noqa: BLE001 - "GPU task aborted" and worker crashes look alike from here
            if _permanent(e) or isinstance(e, BenchError) or aborts >= max_aborts:
                raise
            aborts += 1
            continue
        aborts = 0
        if out["status"] == "finished" and out["report"] is not None:
            return out["report"]
    raise BenchError(f"the benchmark did not finish in {max_calls} GPU calls; run it again to go on from the parts "
                     "made (or lower the limit)")


class ZeroGPUBackend:
    """The :class:`~finetune.backends.base.Backend` of a ZeroGPU Space. ``start`` and ``resume`` prepare the run
    folder; the app then drives the GPU calls with :func:`run_chunked` inside its own request."""

    name = NAME

    def start(self, config: RunConfig, root: Path) -> str:
        return start(config, root)

    def status(self, run_dir: Path) -> runs.RunState:
        return runs.read_run(run_dir)

    def stop(self, run_dir: Path) -> None:
        stop(run_dir.name, run_dir.parent)

    def resume(self, run_dir: Path) -> str:
        state = runs.read_run(run_dir)
        if state.status in ("running", "finished"):
            raise runs.RunError(f"run '{run_dir.name}' is {state.status}: nothing to resume")
        return run_dir.name

    def logs(self, run_dir: Path, tail: int = 200) -> str:
        """The run's events (a GPU call's output stays in the Space's worker)."""
        import json

        return "\n".join(json.dumps(e, ensure_ascii=False) for e in read_events(run_dir)[-tail:])
