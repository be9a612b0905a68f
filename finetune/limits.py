"""The limits of a shared server (a multi-user app, e.g. a public Space): what one visitor may hold at once, how
long and how far one run may train, how much disk one owner may fill, and how long downloads are kept.

Every limit is a setting of the server (an environment variable, read when it is used) and every refusal names
the limit, the visitor's current use and what to do. A new session cannot reset them: live runs are counted
machine-wide from a ledger of who started which run (:func:`record_run`), by owner and, for anonymous visitors,
by client address too, so a fresh ``gradio_client`` session from the same address is counted with the old one.
The single-user app (someone's own machine) applies none of them.

>>> caps = RunCaps(max_steps=1000, max_minutes=60.0)
>>> caps.describe()
'at most 1,000 steps and 60 min of training per run'
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from . import runs
from .errors import UserError
from .io import file_lock

RUNS_PER_VISITOR_ENV = "FINETUNE_MAX_RUNS_PER_VISITOR"
MAX_STEPS_ENV = "FINETUNE_MAX_STEPS"
MAX_MINUTES_ENV = "FINETUNE_MAX_RUN_MINUTES"
DISK_ENV = "FINETUNE_OWNER_DISK_MB"
DOWNLOADS_AGE_ENV = "FINETUNE_DOWNLOADS_MAX_AGE_H"
BENCH_ROWS_ENV = "FINETUNE_MAX_BENCH_ROWS"
TRUST_FORWARDED_ENV = "FINETUNE_TRUST_FORWARDED"

DEFAULT_RUNS_PER_VISITOR = 3
DEFAULT_MAX_STEPS = 1000  # a few minutes to an hour on a small GPU: enough to try, not enough to hold a slot
DEFAULT_MAX_MINUTES = 60.0
DEFAULT_DISK_MB = 2000.0  # a few small adapters with their checkpoints, or one 1B merge
DEFAULT_DOWNLOADS_AGE_H = 24.0
DEFAULT_BENCH_ROWS = 100  # documents per task of one visitor's benchmark: minutes on a small GPU, not an hour

LEDGER_DIR = ".visitors"  # under the workspace root, beside the users' folders: one file per local run
BIGGEST_SHOWN = 3  # runs named in a disk refusal


class LimitError(ValueError, UserError):
    """A request over one of the server's limits; the message names the limit, the current use and the fix."""


def _number(env: str, default: float, what: str, minimum: float) -> float:
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{env}={raw!r} is not a number; set it to {what}") from None
    if value < minimum:
        raise ValueError(f"{env}={raw}: it must be at least {minimum:g}; set it to {what}")
    return value


def runs_per_visitor() -> int:
    """``$FINETUNE_MAX_RUNS_PER_VISITOR`` (default 3): live and queued local runs one visitor may hold."""
    return int(_number(RUNS_PER_VISITOR_ENV, DEFAULT_RUNS_PER_VISITOR, "how many runs one visitor may have "
                       "training or waiting at once (e.g. 3)", 1))


def owner_disk_bytes() -> int:
    """``$FINETUNE_OWNER_DISK_MB`` (default 2000): the disk one owner's folder may fill, in bytes."""
    return int(_number(DISK_ENV, DEFAULT_DISK_MB, "the megabytes one owner's runs and uploads may fill "
                       "(e.g. 2000)", 1) * 1e6)


def bench_rows() -> int:
    """``$FINETUNE_MAX_BENCH_ROWS`` (default 100): the documents per task a visitor's benchmark may score."""
    return int(_number(BENCH_ROWS_ENV, DEFAULT_BENCH_ROWS, "the documents per task one benchmark may score "
                       "(e.g. 100)", 1))


def check_bench_rows(limit: int) -> int:
    """The row limit of a visitor's benchmark: ``limit`` when within this server's, else a refusal (0, every
    document, is over it)."""
    cap = bench_rows()
    if limit <= 0 or limit > cap:
        asked = "every document" if limit <= 0 else f"{limit:,} documents"
        raise LimitError(f"limit: this benchmark would score {asked} of each task, over this server's limit of {cap:,} "
                         f"per task ({BENCH_ROWS_ENV}); set limit to {cap:,} or less")
    return limit


def downloads_max_age_s() -> float:
    """``$FINETUNE_DOWNLOADS_MAX_AGE_H`` (default 24): how long prepared downloads are kept, in seconds."""
    return _number(DOWNLOADS_AGE_ENV, DEFAULT_DOWNLOADS_AGE_H, "the hours a prepared download is kept (e.g. 24)",
                   0.001) * 3600


@dataclass(frozen=True)
class RunCaps:
    """How far one run of a shared server may train: ``max_steps`` optimizer steps (checked before it starts)
    and ``max_minutes`` of wall-clock time per start or resume (the run then checkpoints and stops); None: no cap."""

    max_steps: int | None = None
    max_minutes: float | None = None

    def describe(self) -> str:
        parts = ([f"{self.max_steps:,} steps"] if self.max_steps is not None else []) + \
                ([f"{self.max_minutes:g} min of training"] if self.max_minutes is not None else [])
        return f"at most {' and '.join(parts)} per run" if parts else "no limit per run"

    def train_args(self) -> list[str]:
        """The caps as arguments of ``python -m finetune train`` (how the app hands them to a run's process)."""
        return (["--step-cap", str(self.max_steps)] if self.max_steps is not None else []) + \
               (["--time-limit", repr(self.max_minutes)] if self.max_minutes is not None else [])


def run_caps() -> RunCaps:
    """``$FINETUNE_MAX_STEPS`` (default 1000) and ``$FINETUNE_MAX_RUN_MINUTES`` (default 60; fractions allowed)."""
    steps = int(_number(MAX_STEPS_ENV, DEFAULT_MAX_STEPS, "the most training steps one run may ask for (e.g. 1000)", 1))
    minutes = _number(MAX_MINUTES_ENV, DEFAULT_MAX_MINUTES, "the minutes one run may train before it checkpoints "
                      "and stops (e.g. 60)", 0.001)
    return RunCaps(steps, minutes)


def check_steps(caps: RunCaps, steps: int | None) -> None:
    """Refuse a run that asks for (``training.max_steps``) or is planned over (epochs x rows) the step cap."""
    if steps is not None and caps.max_steps is not None and steps > caps.max_steps:
        raise LimitError(f"training.max_steps: this run would train {steps:,} steps, over this server's limit of "
                         f"{caps.max_steps:,} steps per run ({MAX_STEPS_ENV}); set training.max_steps to "
                         f"{caps.max_steps:,} or less (or fewer epochs), or train on your own machine or a Job")


def time_limit_message(minutes: float) -> str:
    """Why a run stopped at the time cap (its ``stopped`` event), and how to go on."""
    return (f"stopped at this server's time limit of {minutes:g} min per run ({MAX_MINUTES_ENV}); the checkpoint "
            "is kept: resume the run to train on from it")


# ---------------------------------------------------------------------------------------------
# who holds which runs: the ledger


def client_address(host: str | None, forwarded_for: str | None) -> str:
    """The address a request came from. Behind proxies the server trusts (``FINETUNE_TRUST_FORWARDED=N``: N proxies
    in front of the app, e.g. 1 on a Space), the Nth address of ``X-Forwarded-For`` counted from the right: each
    proxy appends the address that connected to it, so the entries left of those are the client's own words and
    may be forged. Without the setting the header is ignored (anyone can write it): the connection's address."""
    raw = os.environ.get(TRUST_FORWARDED_ENV, "").strip()
    hops = int(raw) if raw.isascii() and raw.isdigit() else 0
    entries = [e.strip() for e in (forwarded_for or "").split(",") if e.strip()]
    if hops and entries:
        return entries[-min(hops, len(entries))][:64]
    return (host or "unknown")[:64]


def _ledger(root: Path) -> Path:
    return Path(root) / LEDGER_DIR


@contextlib.contextmanager
def ledger_lock(root: Path) -> Iterator[None]:
    """Count and start under one lock (across the app's threads and processes), so two starts sent at once
    cannot both pass a count of limit - 1."""
    with file_lock(_ledger(root) / ".lock"):
        yield


def _owner_id(owner: str) -> str:
    # owner keys of anonymous browsers are secrets: only a digest is written down
    return hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]


def _counted_address(owner: str, address: str | None) -> str | None:
    # signed-in users are counted by their account: people behind one address (a school, a company) do not
    # share one allowance
    return None if owner.startswith("user:") else (address or None)


def record_run(root: Path, run_dir: Path, owner: str, address: str | None) -> None:
    """Note who started (or resumed) a local run; call under :func:`ledger_lock`."""
    from .io import atomic_write_json

    atomic_write_json(_ledger(root) / f"{run_dir.name}.json",
                      {"run": str(Path(run_dir).resolve()), "owner": _owner_id(owner),
                       "address": _counted_address(owner, address)})


def live_runs(root: Path, owner: str, address: str | None, exclude: str | None = None) -> tuple[list[str], list[str]]:
    """The live and queued runs (ids) of ``owner`` and of ``address``, machine-wide; the entries of runs that
    ended (or whose folder is gone) are dropped from the ledger. ``exclude``: a run id not to count (a resume)."""
    mine, same_address = [], []
    owner_id, counted = _owner_id(owner), _counted_address(owner, address)
    folder = _ledger(root)
    for entry in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            record = json.loads(entry.read_text(encoding="utf-8"))
            run_dir = Path(record["run"])
            live = (run_dir / runs.CONFIG_FILE).is_file() and runs.read_run(run_dir).status in runs.LIVE
        except (OSError, ValueError, KeyError, TypeError):  # a damaged entry counts for nobody
            live = False
            record = {}
        if not live:
            entry.unlink(missing_ok=True)
            continue
        if entry.stem == exclude:
            continue
        if record.get("owner") == owner_id:
            mine.append(entry.stem)
        elif counted and record.get("address") == counted:
            same_address.append(entry.stem)
    return mine, same_address


def check_visitor(root: Path, owner: str, address: str | None, exclude: str | None = None) -> None:
    """Refuse one more live run when the owner, or anyone at their address, already holds the limit."""
    limit = runs_per_visitor()
    mine, others = live_runs(root, owner, address, exclude)
    if len(mine) >= limit:
        raise LimitError(f"you already have {len(mine)} runs training or waiting, this server's limit per visitor "
                         f"({RUNS_PER_VISITOR_ENV}={limit}); stop one of them (Train tab, Stop) or wait for one "
                         "to finish, then start again")
    if len(mine) + len(others) >= limit:
        raise LimitError(f"{len(mine) + len(others)} runs from your address are training or waiting, this server's "
                         f"limit per visitor ({RUNS_PER_VISITOR_ENV}={limit}); stop one of yours or wait for one "
                         "to finish (sign in to be counted by your account instead)")


# ---------------------------------------------------------------------------------------------
# disk


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (links not followed); 0 when it does not exist."""
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed while counting
                pass
    return total


def _mb(n: float) -> str:
    return f"{n / 1e6:,.1f} MB"


def disk_usage_text(owner_root: Path) -> str:
    """The owner's folder size against the quota, as one line (the Train tab shows it)."""
    used, quota = folder_bytes(owner_root), owner_disk_bytes()
    return f"Your runs and uploads use {_mb(used)} of {_mb(quota)} ({DISK_ENV})."


def biggest_runs(owner_root: Path, n: int = BIGGEST_SHOWN) -> list[tuple[str, int]]:
    """The owner's largest run folders: (run id, bytes), largest first."""
    sizes = [(d.name, folder_bytes(d)) for d in Path(owner_root).iterdir()
             if d.is_dir() and (d / runs.CONFIG_FILE).is_file()] if Path(owner_root).is_dir() else []
    return sorted(sizes, key=lambda s: -s[1])[:n]


def check_disk(owner_root: Path, adding: int, what: str) -> None:
    """Refuse ``what`` (an upload, a start, a download) when the owner's folder plus ``adding`` bytes would pass
    the quota, naming the use and the runs to delete first."""
    quota = owner_disk_bytes()
    used = folder_bytes(owner_root)
    if used + adding <= quota:
        return
    big = ", ".join(f"{rid} ({_mb(size)})" for rid, size in biggest_runs(owner_root) if size > 0)
    raise LimitError(f"{what} refused: your runs and uploads use {_mb(used)}" + (f" and this needs {_mb(adding)}"
                     if adding else "") + f", over your {_mb(quota)} of disk on this server ({DISK_ENV}); "
                     + (f"delete runs you no longer need, largest first: {big}" if big else
                        "delete uploads or runs you no longer need") + " (push or download them first to keep them)")


def delete_run(owner_root: Path, run_dir: Path) -> None:
    """Remove one of the owner's runs (not live) to free disk."""
    state = runs.read_run(run_dir)
    if state.status in runs.LIVE:
        raise LimitError(f"run '{run_dir.name}' is {state.status}: stop it before deleting it")
    if not Path(run_dir).resolve().is_relative_to(Path(owner_root).resolve()):  # pragma: no cover - callers resolve
        raise LimitError(f"run '{run_dir.name}' is not one of yours")
    shutil.rmtree(run_dir)


def remove_old_files(folder: Path, max_age_s: float, now: float | None = None) -> int:
    """Delete files under ``folder`` not modified for ``max_age_s`` seconds, and the folders they leave empty;
    returns how many files went."""
    now = time.time() if now is None else now
    removed = 0
    if not Path(folder).is_dir():
        return 0
    for dirpath, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(dirpath, name)
            try:
                if now - os.lstat(path).st_mtime > max_age_s:
                    os.unlink(path)
                    removed += 1
            except FileNotFoundError:
                pass
        if dirpath != str(folder):
            with contextlib.suppress(OSError):  # not empty, or gone: fine
                os.rmdir(dirpath)
    return removed


def start_cleanup(folders: list[Path], every_s: float = 600.0) -> threading.Thread:
    """A daemon thread that removes old prepared downloads from ``folders`` every ``every_s`` seconds."""

    def loop() -> None:
        import logging

        log = logging.getLogger("finetune.limits")
        while True:
            try:
                age = downloads_max_age_s()
                for folder in folders:
                    removed = remove_old_files(folder, age)
                    if removed:
                        log.info("removed %d downloads older than %g h from %s", removed, age / 3600, folder)
            except (OSError, ValueError) as e:  # a bad setting or an unreadable folder: said, tried again later
                log.warning("download clean-up: %s", e)
            time.sleep(every_s)

    thread = threading.Thread(target=loop, name="downloads-cleanup", daemon=True)
    thread.start()
    return thread
