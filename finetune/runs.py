"""Run folders: ``runs/<run_id>/{config.yaml, events.jsonl, checkpoints/, adapter/}``.

The folder is the source of truth: listing runs and reading a run's state needs no live process, so a
reloaded page or a restarted app shows every run as it is.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from .adapter import ADAPTER_DIR, checkpoint_step, is_adapter_dir
from .errors import UserError
from .events import EVENTS_FILE, TERMINAL, read_events
from .io import file_lock, pid_alive, process_started

if TYPE_CHECKING:
    from .config import RunConfig

CONFIG_FILE = "config.yaml"
CHECKPOINTS = "checkpoints"
ADAPTER = ADAPTER_DIR  # the finished adapter; its format is adapter.py's
STOP_FILE = "STOP"
# A stop request taken by a process is renamed to STOPPING.<pid> (atomic: exactly one of "the process takes it"
# and "a resume withdraws it" happens), so a resume knows whether the process will stop or go on.
STOPPING_PREFIX = "STOPPING."
# Events of stop requests (runs.request_stop) and of their withdrawal by a resume (runs.withdraw_stop): a process
# waiting to train the run reads whether a stop was asked after its own launch (runs.stop_before_training).
STOP_ASKED = "stop_asked"
STOP_WITHDRAWN = "stop_withdrawn"
# Held (flock) by the training process of a run for its whole life: a resumed run's process waits on it until
# the process it follows has ended, so two processes never train one folder.
PROCESS_LOCK = ".process.lock"
# Held by stop and resume while they decide, so a stop and a resume of one run never interleave.
CONTROL_LOCK = ".control.lock"
# The statuses of a live run: started, waiting for a slot (with a waiting process, or the app's ticket), training.
LIVE = ("new", "resuming", "queued", "running")
QUEUED = 0  # read_run: a run in the app's queue, with no process yet (no pid is 0)
# The rows data.test_split held out of the training data, as conversations (finetune.evaluate.write_held_out):
# the run's test set, written when the run starts.
TEST_SET = "test_set.jsonl"
EVAL_REPORT = "eval/report.json"  # the latest evaluation of the run (finetune.evaluate), checkpoints included
BENCH_REPORT = "eval/benchmark.json"  # the latest general-ability benchmark of the run (finetune.benchmark)
BENCH_PARTS = "eval/bench_parts"  # a benchmark's scores part by part (task x base|adapter), kept as made on ZeroGPU
BENCH_TASKS = "eval/bench_tasks"  # the lm-eval task YAML (and data) a benchmark made of the run's test files
# A run executing on another machine (Hugging Face Jobs) records its job here; its liveness is the job's,
# not a local process id (backends.hfjobs.sync writes the job's end into the events).
JOB_FILE = "job.json"
# Where a run trains (local | zerogpu | hf-jobs), written once when the run starts (record_backend) and read by
# read_backend only: nothing else decides a run's backend.
BACKEND_FILE = "backend.json"
BACKEND_NAMES = ("local", "zerogpu", "hf-jobs")
# A checkpoint is usable only when everything resume needs is on disk (the trainer writes the state last).
CHECKPOINT_FILES = ("trainer_state.json", "adapter_model.safetensors", "optimizer.pt", "scheduler.pt")
# A sharded (FSDP) run's checkpoint: each process's part of the optimizer in one folder (torch.distributed.checkpoint,
# complete once its .metadata is written) instead of optimizer.pt.
SHARDED_OPTIMIZER = "optimizer_0/.metadata"


def _missing_files(checkpoint: Path) -> list[str]:
    """The files a resume needs that ``checkpoint`` lacks (a sharded checkpoint's optimizer counts as optimizer.pt)."""
    sharded = (checkpoint / SHARDED_OPTIMIZER).exists()
    return [f for f in CHECKPOINT_FILES if not (checkpoint / f).exists() and not (sharded and f == "optimizer.pt")]

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class RunError(ValueError, UserError):
    """A run folder that cannot be used; the message names the path and the fix."""


def record_backend(run_dir: Path, backend: str) -> None:
    """Record where the run trains; done once, by the backend that starts the run."""
    from .io import atomic_write_json

    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; one of {BACKEND_NAMES}")
    atomic_write_json(Path(run_dir) / BACKEND_FILE, {"backend": backend})


def read_backend(run_dir: Path, events: list[dict[str, Any]] | None = None) -> str:
    """Where a run trains: ``local`` | ``zerogpu`` | ``hf-jobs``, from the record its backend wrote at start.

    A folder written before the record existed (or by ``python -m finetune train``, which trains in its own
    process) is read from the older markers: a ``job.json`` (hf-jobs), a ``submitted`` event of the zerogpu
    backend, else local. ``events``: the run's events when the caller has read them already.
    """
    run_dir = Path(run_dir)
    try:
        record = json.loads((run_dir / BACKEND_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        record = {}
    except (OSError, ValueError) as e:  # a damaged record (cut off mid-write, edited by hand)
        raise RunError(f"{run_dir / BACKEND_FILE} is unreadable ({e.__class__.__name__}); write "
                       '{"backend": "local"} (or zerogpu, hf-jobs) into it') from None
    recorded = record.get("backend") if isinstance(record, dict) else None
    if recorded in BACKEND_NAMES:
        return str(recorded)
    if (run_dir / JOB_FILE).exists():
        return "hf-jobs"
    events = read_events(run_dir) if events is None else events
    if any(e.get("type") == "submitted" and e.get("backend") == "zerogpu" for e in events):
        return "zerogpu"
    return "local"


def runs_root(root: str | Path | None = None) -> Path:
    """$FINETUNE_RUNS, else ./runs."""
    return Path(root or os.environ.get("FINETUNE_RUNS") or "runs")


def new_run_id(name: str = "") -> str:
    """Time-ordered and unguessable: 20261123-101500-my-run-3f9c2a7d1b."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[:40]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return "-".join(p for p in (stamp, slug, secrets.token_hex(5)) if p)


def check_run_id(run_id: str) -> str:
    """Reject ids that could leave the runs folder (``../../etc``) or are not ours."""
    if not isinstance(run_id, str) or not _ID_RE.match(run_id) or ".." in run_id:
        raise RunError(f"'{run_id}' is not a valid run id (letters, digits, '.', '_', '-' only)")
    return run_id


def run_path(run_id: str, root: str | Path | None = None) -> Path:
    return runs_root(root) / check_run_id(run_id)


def _checkpoint_folders(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``checkpoints/checkpoint-N`` folder of the run with its step, in step order (complete or not)."""
    found = [(checkpoint_step(d), d) for d in (Path(run_dir) / CHECKPOINTS).glob("checkpoint-*") if d.is_dir()]
    return sorted((step, d) for step, d in found if step is not None)


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [d for _, d in _checkpoint_folders(run_dir)
            if not _missing_files(d) and _state_readable(d)]


def adapter_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoints usable as adapters (chat, evaluation, export, ``RUN@STEP``), oldest first: those whose
    ``adapter/`` is intact, and the complete ones. A checkpoint that lost its optimizer or trainer state cannot be
    resumed from, but its adapter is as good as ever."""
    complete = set(checkpoints(run_dir))
    return [d for _, d in _checkpoint_folders(run_dir) if d in complete or is_adapter_dir(d / ADAPTER)]


def incomplete_checkpoints(run_dir: Path) -> dict[Path, list[str]]:
    """The checkpoint folders a resume cannot start from, with the files each lacks (an unreadable trainer state
    counts as missing), oldest first."""
    complete = set(checkpoints(run_dir))
    return {d: _missing_files(d) or ["trainer_state.json (unreadable)"]
            for _, d in _checkpoint_folders(run_dir) if d not in complete}


def _state_readable(checkpoint: Path) -> bool:
    """A trainer state cut off mid-write (crash, full disk) would fail the resume: skip that checkpoint."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_bytes())
    except (OSError, ValueError):
        return False
    return True


def last_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def run_of(path: str | Path) -> Path | None:
    """The run folder that ``path`` is, or whose ``adapter/``, checkpoint (``checkpoints/checkpoint-N``) or
    checkpoint adapter it is; None for a folder outside any run (an adapter folder on its own)."""
    p = Path(path)
    if p.name == ADAPTER:
        p = p.parent
    if p.name.startswith("checkpoint-") and p.parent.name == CHECKPOINTS:
        p = p.parent.parent
    return p if (p / CONFIG_FILE).is_file() and (p / EVENTS_FILE).is_file() else None


def write_eval_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write a run's evaluation report (``eval/report.json``, atomically; see ``finetune.evaluate``)."""
    from .io import atomic_write_json

    path = Path(run_dir) / EVAL_REPORT
    atomic_write_json(path, report)
    return path


def read_eval_report(run_dir: Path) -> dict[str, Any] | None:
    """The run's latest evaluation report, or None when it has none (or it is unreadable)."""
    try:
        report = json.loads((Path(run_dir) / EVAL_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def write_bench_report(run_dir: Path, report: dict[str, Any]) -> Path:
    """Write a run's benchmark report (``eval/benchmark.json``, atomically; see ``finetune.benchmark``)."""
    from .io import atomic_write_json

    path = Path(run_dir) / BENCH_REPORT
    atomic_write_json(path, report)
    return path


def read_bench_report(run_dir: Path) -> dict[str, Any] | None:
    """The run's latest benchmark report, or None when it has none (or it is unreadable)."""
    try:
        report = json.loads((Path(run_dir) / BENCH_REPORT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) and isinstance(report.get("results"), list) else None


def request_stop(run_dir: Path) -> None:
    """Ask a running training to stop at the next step (it checkpoints first), and every process launched for the
    run that waits to train (:func:`hold_process_lock`) to end without training.

    The request is recorded as a ``stop_asked`` event first (what a waiting process reads: a stop asked after its
    launch), then as the ``STOP`` file (what the training process takes at its next step)."""
    from .events import EventLog

    EventLog(Path(run_dir)).emit(STOP_ASKED)
    (Path(run_dir) / STOP_FILE).touch()


def stop_requested(run_dir: Path) -> bool:
    return (Path(run_dir) / STOP_FILE).exists()


def claim_stop(run_dir: Path) -> bool:
    """Take a pending stop request for this process (it will stop): True when there was one. Atomic against
    :func:`withdraw_stop`: a request is either taken or withdrawn, never both."""
    try:
        os.rename(Path(run_dir) / STOP_FILE, Path(run_dir) / f"{STOPPING_PREFIX}{os.getpid()}")
    except FileNotFoundError:
        return False
    return True


def withdraw_stop(run_dir: Path) -> bool:
    """Take back a stop request no process has taken yet: True when one was withdrawn (the run goes on)."""
    from .events import EventLog

    try:
        (Path(run_dir) / STOP_FILE).unlink()
    except FileNotFoundError:
        return False
    EventLog(Path(run_dir)).emit(STOP_WITHDRAWN)  # the processes waiting to train go on too
    return True


def stopping(run_dir: Path, pid: int | None) -> bool:
    """Whether process ``pid`` has taken a stop request (it is stopping)."""
    return pid is not None and (Path(run_dir) / f"{STOPPING_PREFIX}{pid}").exists()


def clear_stop(run_dir: Path, requests: bool = True) -> None:
    """Forget the stop requests of ended processes (``requests``: the pending one too)."""
    run_dir = Path(run_dir)
    for path in list(run_dir.glob(f"{STOPPING_PREFIX}*")) + ([run_dir / STOP_FILE] if requests else []):
        path.unlink(missing_ok=True)


def forget_stop(run_dir: Path, pid: int | None = None) -> None:
    """Remove the stop request process ``pid`` (default: this one) took, once it has recorded its end."""
    (Path(run_dir) / f"{STOPPING_PREFIX}{os.getpid() if pid is None else pid}").unlink(missing_ok=True)


def record_process(run_dir: Path, resume: bool) -> None:
    """Record this process as the run's (a ``launched`` event with its pid) before it loads or waits for anything,
    so the run reads ``new``/``resuming`` while it lives and, should it die before training, as it was before
    (``interrupted`` for a run that never trained), and a stop reaches it while it waits. A process the app
    launched is recorded already (by the app, with the same pid)."""
    from .events import EventLog

    pid = os.getpid()
    own = [e.get("type") for e in read_events(run_dir) if e.get("pid") == pid]
    since = own[len(own) - own[::-1].index("launched"):] if "launched" in own else None
    if since is not None and not any(t in TERMINAL or t in ("started", "paused") for t in since):
        return  # launched by the app and recorded there; a process training the run again records itself again
    EventLog(Path(run_dir)).emit("launched", **process_record(pid), resume=resume)


def stop_before_training(run_dir: Path) -> bool:
    """Whether this process, about to train the run, was asked to stop since it was launched (a ``stop_asked``
    after its ``launched`` event, not withdrawn since): the request is taken, and the process should end with a
    ``stopped`` event. A ``STOP`` file older than its launch was meant for the process it followed: it is dropped
    (it would stop the run's next step otherwise). A process with no ``launched`` record takes a ``STOP`` file."""
    pid = os.getpid()
    with control(run_dir):
        events = read_events(run_dir)
        launches = [i for i, e in enumerate(events) if e.get("type") == "launched" and e.get("pid") == pid]
        if not launches:
            return claim_stop(run_dir)
        asked = False
        for e in events[launches[-1] + 1:]:
            if e.get("type") == STOP_ASKED:
                asked = True
            elif e.get("type") == STOP_WITHDRAWN:
                asked = False
        if asked:
            claim_stop(run_dir)
            return True
        (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
        return False


@contextlib.contextmanager
def control(run_dir: Path) -> Iterator[None]:
    """Stop and resume of one run, one at a time (across processes: the app and the CLI)."""
    with file_lock(Path(run_dir) / CONTROL_LOCK):
        yield


def hold_process_lock(run_dir: Path) -> int:
    """Wait until no other process trains this run, then hold the run for this process (until it exits):
    returns the descriptor that holds the lock. Stop requests of earlier processes are forgotten."""
    fd = os.open(Path(run_dir) / PROCESS_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    clear_stop(run_dir, requests=False)
    return fd


def _pid_alive(pid: object, started: object = None) -> bool:
    return pid_alive(pid, started)


def process_record(pid: int) -> dict[str, int]:
    """A process as an event records it: its pid and when it started (``pid_started``; a reused pid is another
    process, which :func:`read_run` does not take for the run's)."""
    started = process_started(pid)
    return {"pid": pid} | ({"pid_started": started} if started is not None else {})


def _started_of(events: list[dict[str, Any]]) -> dict[int, int]:
    """The start time recorded with each pid (the latest record of it)."""
    return {e["pid"]: e["pid_started"] for e in events
            if isinstance(e.get("pid"), int) and isinstance(e.get("pid_started"), int)}


@dataclass
class RunState:
    run_id: str
    path: Path
    status: str  # new | queued | running | paused | interrupted | stopped | finished | failed
    name: str = ""
    model: str = ""
    step: int = 0
    max_steps: int = 0
    loss: float | None = None
    eval_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None  # while it trains only: measured, or the estimator's before a step is (eta_estimated)
    eta_estimated: bool = False
    elapsed_s: float | None = None  # training time of every process of the run (a resumed run goes on counting)
    message: str = ""
    app_message: str = field(default="", repr=False)  # the message in the app's words, when it has them (the app shows it)
    started: float | None = None
    has_adapter: bool = False
    last_checkpoint: str | None = None
    losses: list[tuple[int, float]] = field(default_factory=list)
    eval_losses: list[tuple[int, float]] = field(default_factory=list)
    queue_position: int | None = None  # queued: 1 = trains next (backends.queue)
    device: str = ""  # where the run trains: cuda | cpu | mps (its started event)
    mem_gb: float | None = None  # device memory in use at the last step (gauge.Gauge), of mem_total_gb
    mem_total_gb: float | None = None
    util_pct: float | None = None  # device utilisation at the last step (CPU: 100 per busy core)
    cpu_threads: int | None = None  # the threads a CPU run trains with (its started event): the cores it can keep busy
    # how the run is laid out over its processes (its started event): strategy (none | ddp | fsdp), world_size,
    # param_bytes_per_rank (the base model's parameter bytes each process holds), param_bytes_total
    distributed: dict[str, Any] = field(default_factory=dict)
    pid: int | None = field(default=None, repr=False)  # the run's latest process (not shown: a server detail)
    # the latest step's method metrics (training.method other than sft: reward margins, KL, mean rewards...)
    metrics: dict[str, float] = field(default_factory=dict)
    # a preference run's answers to its fixed sample prompts at its latest save (``samples`` events: prompt, answer,
    # ended) and that save's step
    samples: list[dict[str, Any]] = field(default_factory=list)
    samples_step: int | None = None
    # what the run warns about now: the latest samples' degeneration (finetune/degeneration.py) and a reward
    # margin past its limit (``warning`` events), each as "step N: message"
    warnings: list[str] = field(default_factory=list)

    @property
    def status_text(self) -> str:
        """The status as people read it: ``queued (position 2)``."""
        if self.status == "queued" and self.queue_position:
            return f"queued (position {self.queue_position})"
        return self.status

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("pid", None)
        d.pop("app_message", None)  # the app shows it as the message (service.OwnerSpace.status)
        d["path"] = str(self.path)
        d["status_text"] = self.status_text
        return d


def read_run(run_dir: Path) -> RunState:
    """The state of a run from its folder alone.

    A process launched for the run (a ``launched`` event with its pid) makes it ``new`` (a first start) or
    ``resuming`` until that process starts training; the end events of the process it follows (a ``stopped``
    written after the resume was asked) do not end it. If the launched process dies before it trains, the
    run reads as it was before the launch (``interrupted`` for a run that never trained).
    """
    run_dir = Path(run_dir)
    events = read_events(run_dir)
    state = RunState(run_id=run_dir.name, path=run_dir, status="new")
    pending: int | None = None  # the pid of a launched process that has not started training yet (QUEUED: none yet)
    before = "interrupted"  # the status as it would be without that launch
    # processes launched for the run that have neither trained nor ended (pid -> resume): a resume from the command
    # line waits for the run's process lock, several may wait at once, and any of them may train next
    waiting: dict[int, bool] = {}
    trainer: int | None = None  # the pid of the process training the run (its "started"), until its end
    sample_warnings: list[str] = []  # the latest samples' (a later healthy save clears them)
    other_warnings: dict[str, str] = {}  # the latest warning event of each kind
    earlier_s, process_s = 0.0, 0.0  # training time of the run's earlier processes, and of the latest one
    for e in events:
        kind = e.get("type")
        if kind == "launched":  # the app started a training process for the run (backends.local)
            if state.status not in ("new", "resuming", "queued", "running"):
                before = state.status
            pending = e.get("pid")
            if isinstance(pending, int):
                waiting[pending] = bool(e.get("resume"))
            state.status = "resuming" if e.get("resume") else "new"
            state.message, state.queue_position, state.pid = "", None, pending
        elif kind == "queued":  # waiting for a free training slot on this machine (finetune.slots)
            if e.get("pid") is None and state.status not in LIVE:
                before = state.status  # queued by the app with no process yet: a resume of a stopped run, say
            if e.get("pid") is None:
                pending = QUEUED  # no process: the end events of a process it follows do not end it
            state.status, state.queue_position = "queued", e.get("position")
            state.message = f"queued (position {e.get('position')}): starts when a run ahead of it ends"
            state.pid = e.get("pid")
        elif kind == "started":
            pending = None
            trainer = e.get("pid")
            waiting.pop(e.get("pid"), None)  # type: ignore[arg-type]
            state.started = state.started or e.get("time")
            state.name = e.get("name", state.name)
            state.model = e.get("model", state.model)
            state.device = e.get("device", state.device) or state.device
            state.cpu_threads = e.get("cpu_threads", state.cpu_threads)
            state.distributed = e.get("distributed") or state.distributed
            earlier_s, process_s = earlier_s + process_s, 0.0  # each process counts its elapsed_s from its start
            state.max_steps = e.get("max_steps", state.max_steps) or state.max_steps
            state.status, state.message, state.queue_position = "running", "", None
            state.pid = e.get("pid")
        elif kind == "step":
            state.step = e.get("step", state.step)
            state.max_steps = e.get("max_steps", state.max_steps) or state.max_steps
            for key in ("loss", "tokens_per_s", "eta_s", "mem_gb", "mem_total_gb", "util_pct"):
                if e.get(key) is not None:
                    setattr(state, key, e[key])
            state.eta_estimated = bool(e.get("eta_estimated"))
            if e.get("elapsed_s") is not None:
                process_s = float(e["elapsed_s"])
                state.elapsed_s = round(earlier_s + process_s, 2)
            if isinstance(e.get("metrics"), dict):
                state.metrics = e["metrics"]
            if e.get("loss") is not None:
                # a resumed run replays steps after its checkpoint: keep the latest value per step
                state.losses = [p for p in state.losses if p[0] < e["step"]] + [(e["step"], e["loss"])]
        elif kind == "eval":
            state.eval_loss = e.get("eval_loss")
            if e.get("eval_loss") is not None:
                state.eval_losses = [p for p in state.eval_losses if p[0] < e.get("step", 0)]
                state.eval_losses.append((e.get("step", 0), e["eval_loss"]))
        elif kind == "samples":
            state.samples, state.samples_step = list(e.get("samples") or []), e.get("step")
            sample_warnings = [f"step {e.get('step')}: {w}" for w in e.get("warnings") or []]
        elif kind == "warning":
            other_warnings[e.get("kind", "")] = f"step {e.get('step')}: {e.get('message', '')}"
        elif kind == "chunk_aborted":  # a GPU call was cut off (ZeroGPU): resumable from the last checkpoint
            state.status, state.message = "interrupted", e.get("message", "")
        elif kind in TERMINAL or kind == "paused":
            waiting.pop(e.get("pid"), None)  # type: ignore[arg-type]
            if e.get("pid") in (None, trainer):
                trainer = None
            if pending == QUEUED and e.get("queued"):
                pass  # the queue's own verdict on a run with no process (stopped while it waited)
            elif pending is not None and e.get("pid") != pending:
                before = kind  # the end of the process a resumed one follows: the run goes on
                state.message = e.get("message", "")
                continue
            pending = None
            state.status, state.queue_position = kind, None
            state.message, state.app_message = e.get("message", ""), e.get("app_message", "")
            if kind == "finished":
                state.step = e.get("step", state.step)
    state.warnings = sample_warnings + list(other_warnings.values())
    _settle_liveness(run_dir, events, state, before, pending, trainer, waiting)
    _read_outputs(run_dir, state)
    return state


def _settle_liveness(run_dir: Path, events: list[dict[str, Any]], state: RunState, before: str, pending: int | None,
                     trainer: int | None, waiting: dict[int, bool]) -> None:
    """The status the events left, checked against the processes still alive: a live status whose process is gone
    reads as it was before that process (or ``interrupted``), a run another process trains or waits to train goes
    on with that one. ``before``: the status without the pending launch; ``pending``: the launched process that has
    not trained yet; ``trainer``: the process training the run; ``waiting``: processes launched to train it."""
    remote = read_backend(run_dir, events) == "hf-jobs"  # a job's liveness is the job's, not a local process's
    started = _started_of(events)

    def alive(pid: object) -> bool:
        return _pid_alive(pid, started.get(pid)) if isinstance(pid, int) else False

    # a run queued by the app has no process until its turn (backends.local.dispatch): its ticket keeps it
    watched = ((state.status in ("queued", "running") or (state.status in LIVE and state.pid is not None))
               and not (state.status == "queued" and state.pid is None))
    if watched and not remote and not alive(state.pid):
        # the process is gone without a final event: resumable
        state.status = before if pending is not None and state.status != "running" else "interrupted"
        state.queue_position = None
    if (not remote and state.status in ("new", "resuming") and trainer is not None and trainer != state.pid
            and alive(trainer) and not stopping(run_dir, trainer)):
        # a resume from the command line waits for the process that trains the run now (which is not stopping)
        state.status, state.pid = "running", trainer
    if not remote and state.status not in LIVE and state.status != "finished":
        # another process launched for the run still waits to train it: the run goes on with that one
        others = [pid for pid in waiting if pid != state.pid and alive(pid)]
        if others:
            state.status = "resuming" if waiting[others[-1]] else "new"
            state.pid, state.message = others[-1], ""
    if state.status != "running":  # the time left of a run that trains no more means nothing
        state.eta_s, state.eta_estimated = None, False


def _read_outputs(run_dir: Path, state: RunState) -> None:
    """The run's name, its adapter (a finished run whose adapter lost its weights says which file, and the fix)
    and its last checkpoint."""
    state.name = config_name(run_dir) or state.name
    state.has_adapter = is_adapter_dir(run_dir / ADAPTER)
    if state.status == "finished" and not state.has_adapter:
        from .adapter import adapter_file_missing

        missing = adapter_file_missing(run_dir / ADAPTER, f"{run_dir.name}/{ADAPTER}")
        if missing:  # finished, but the adapter it wrote lost its weights since: say which file, and the fix
            state.message = missing
    ck = last_checkpoint(run_dir)
    state.last_checkpoint = str(ck) if ck else None


_names: dict[Path, tuple[int, str]] = {}  # config.yaml -> (its mtime in ns, its name): read once per change


def config_name(run_dir: Path) -> str:
    """The name in a run's config (``name``, empty when none): a run is named from its start, before it trains."""
    path = Path(run_dir) / CONFIG_FILE
    try:
        mtime = path.stat().st_mtime_ns
    except FileNotFoundError:
        return ""
    cached = _names.get(path)
    if cached is None or cached[0] != mtime:
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):  # a damaged config names nothing; its run still lists
            data = None
        name = data.get("name") if isinstance(data, dict) else None
        cached = (mtime, name if isinstance(name, str) else "")
        if len(_names) > 4096:
            _names.clear()
        _names[path] = cached
    return cached[1]


def list_runs(root: str | Path | None = None) -> list[RunState]:
    """Every run under the root, newest first."""
    base = runs_root(root)
    if not base.is_dir():
        return []
    out = [read_run(d) for d in base.iterdir() if d.is_dir() and (d / CONFIG_FILE).exists() and _ID_RE.match(d.name)]
    return sorted(out, key=lambda s: (s.started or 0, s.run_id), reverse=True)


def open_run(config: RunConfig | None, run_dir: str | Path | None = None, root: str | Path | None = None,
             record: bool = False) -> tuple[RunConfig, Path, bool]:
    """Create a run folder (or reopen one to resume). Returns (config, folder, resuming). ``record``: the run trains
    in this process, which a new folder records (``record_process``) before its config is written."""
    from .config import RunConfig
    from .distributed import is_main_process, world_size
    from .errors import TrainingError

    if run_dir is not None:
        run_dir = Path(run_dir)
        saved = run_dir / CONFIG_FILE
        if saved.exists():
            existing = RunConfig.load(saved)
            if config is not None and _identity(config) != _identity(existing):
                raise TrainingError(
                    f"{run_dir} already holds a run with a different config; resume it without changing the "
                    "config (only training.max_steps/epochs may grow), or use a new --run-dir"
                )
            if config is not None and is_main_process():  # extending a run: more steps or epochs
                existing.training.max_steps = config.training.max_steps
                existing.training.epochs = config.training.epochs
                existing.save(saved)
            return existing, run_dir, True
    elif world_size() > 1:
        # each process would draw its own random run id: they must share one folder
        raise TrainingError("a multi-process run (accelerate launch) needs --run-dir so every process uses the same run folder")
    else:
        run_dir = runs_root(root) / new_run_id((config or RunConfig()).name)
    config = config or RunConfig()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # per process: ranks probe the same folder at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write the run folder {run_dir}: {e.strerror or e}; choose a writable --run-dir") from e
    if is_main_process():
        if record:  # first: a run folder is never without its process's record
            record_process(run_dir, resume=False)
        config.save(run_dir / CONFIG_FILE)
    return config, run_dir, False


def _identity(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed."""
    d = cfg.to_dict()
    d["training"] = {k: v for k, v in d["training"].items() if k not in ("max_steps", "epochs")}
    d.pop("hub", None)
    return d
