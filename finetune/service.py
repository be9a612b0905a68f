"""The actions behind the app's API endpoints, scoped to one owner. No Gradio here: the UI passes the
owner (signed-in user or browser session) and gets plain Python values back.

On a multi-user deployment (a Space) every owner has their own runs folder, named by a hash of the
owner key, and every run id is resolved inside it: one user can neither list nor read, stop, download
or push another's runs, whatever they send to the API. On a single-user machine the owner is ignored
and the app shows every run in the runs folder, CLI runs included.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypedDict

from . import limits, runs
from .adapter import ADAPTER_DIR, is_adapter_dir
from .config import DataConfig, RunConfig, range_problem, validate
from .data import is_hub_dataset_id
from .errors import UserError
from .limits import RunCaps

if TYPE_CHECKING:
    from .backends.base import Backend
    from .backends.zerogpu import ChunkResult, QuotaPreview


class ServiceError(ValueError, UserError):
    """A request the user can fix; the message says how. Made from a library's error, it chains it: the original
    type (``RunError``, ``HubError``...) stays its ``__cause__``."""


@dataclass(frozen=True)
class Workspace:
    """Where one owner's runs live."""

    root: Path
    multi_user: bool = False

    def for_owner(self, owner: str | None) -> Path:
        if not self.multi_user:
            return self.root
        if not owner:
            raise ServiceError("no user or session: sign in or reload the page")
        digest = hashlib.sha256(owner.encode("utf-8")).hexdigest()[:24]
        return self.root / "users" / digest


def default_workspace() -> Workspace:
    """Runs in $FINETUNE_RUNS (or ./runs); multi-user on a Space or when FINETUNE_MULTI_USER=1."""
    multi = os.environ.get("FINETUNE_MULTI_USER", "1" if os.environ.get("SPACE_ID") else "0") == "1"
    return Workspace(runs.runs_root(), multi)


SIGN_IN_TO = "sign in with Hugging Face to {action}: on this shared app only your own sign-in acts on the Hub"


def hub_token(ws: Workspace, token: str | None, action: str = "push") -> str | None:
    """The token a caller's Hub action (push, job) uses. On a shared server only the caller's own sign-in token:
    without one the action is refused, never done with the server's ``HF_TOKEN`` (an anonymous visitor would act as
    the Space's owner). On a single-user machine ``None`` lets the library fall back to ``HF_TOKEN``."""
    from .hub import MOCK_OAUTH_TOKEN

    token = None if token == MOCK_OAUTH_TOKEN else (token or None)  # gradio's local stand-in is no sign-in
    if ws.multi_user and not token:
        raise ServiceError(SIGN_IN_TO.format(action=action))
    return token


def check_config_code(ws: Workspace, config: RunConfig) -> None:
    """On a shared server, refuse every setting of a run that would load code or a server folder: the model repo's
    own Python (``model.trust_remote_code``), reward code (``rewards.module``, refused everywhere in the app), a
    model or judge that is not a Hub id (or a folder the operator offers), a GGUF file name with a path."""
    if config.rewards.module:
        # reward functions are Python code: the app never runs a user's code (finetune/rewards.py)
        raise ServiceError("rewards.module: the app does not run reward code; use the built-in rewards (exact "
                           "match, regex, JSON, keywords, length, a local judge model), or train from the command "
                           "line on your own machine with --reward-module")
    if not ws.multi_user:
        return
    if config.model.trust_remote_code:
        raise ServiceError("model.trust_remote_code: this shared app never runs a model repo's own Python code (it "
                           "would run on the server, beside every user's runs and the app's secrets); pick a model "
                           "that transformers supports natively, or train this one with the command line on your "
                           "own machine (python -m finetune train) or as a Hugging Face Job you start there")
    if config.model.id:
        check_model_ref(ws, config.model.id, "model.id")
    gguf = config.model.gguf_file or ""
    if gguf and (Path(gguf).name != gguf or gguf.startswith(".")):
        raise ServiceError(f"model.gguf_file '{gguf[:80]}' must be a file name inside the model repo, not a path")
    if config.rewards.judge_model.strip():
        check_model_ref(ws, config.rewards.judge_model, "rewards.judge_model")


def _run_dir(ws: Workspace, owner: str | None, run_id: str | None) -> Path:
    if not run_id:  # a page's run picker left empty (None)
        raise ServiceError("pick a run first (the run list shows yours)")
    try:
        path = runs.run_path(run_id, ws.for_owner(owner))
    except runs.RunError as e:
        raise ServiceError(str(e)) from e
    if not (path / runs.CONFIG_FILE).exists():
        raise ServiceError(f"no run '{run_id}' among your runs; pick one from the run list")
    return path


def _training_examples(config: RunConfig, rows: int) -> int:
    """About how many of ``rows`` train: what the test split (``data.test_split``) and then the validation split
    (``data.val_fraction``) leave, at least one."""
    return max(1, round(rows * (1 - config.data.val_fraction) * (1 - config.data.test_split)))


def parse_config(config_yaml: str) -> RunConfig:
    cfg = RunConfig.from_yaml(config_yaml or "", source="config")
    return validate(cfg, source="config")


UPLOADS = "uploads"


def keep_upload(ws: Workspace, owner: str | None, path: str | Path) -> Path:
    """Copy an uploaded data file into the owner's folder (uploads are temporary; runs must outlive them).

    The stored name is a content hash plus the original suffix: no user-chosen path ever reaches disk.
    """
    from .data import MAX_UPLOAD_ENV, max_upload_bytes

    src = Path(path)
    if not src.is_file():
        raise ServiceError(f"the uploaded file {src.name} is gone; upload it again")
    size, limit = src.stat().st_size, max_upload_bytes()
    if size > limit:
        raise ServiceError(f"{src.name} is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB upload limit; split it, "
                           f"use a Hub dataset, or raise the limit on the server ({MAX_UPLOAD_ENV})")
    if ws.multi_user:
        try:
            limits.check_disk(ws.for_owner(owner), size, f"uploading {src.name}")
        except ValueError as e:  # over the quota, or the quota's setting unreadable on the server
            raise ServiceError(str(e)) from None
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    suffix = "".join(c for c in src.suffix.lower() if c.isalnum() or c == ".")[:10]
    target = ws.for_owner(owner) / UPLOADS / f"{digest}{suffix}"
    if not target.exists():
        from .io import atomic_write_bytes

        atomic_write_bytes(target, data)
    return target


BACKEND_NAMES = {"local": "local", "": "local", "zerogpu": "zerogpu", "hf-jobs": "hf-jobs", "hfjobs": "hf-jobs"}
SYNC_EVERY_S = 5.0  # a Hugging Face job's log is read at most this often per run (each read fetches the log)


def backend_name(backend: str | None) -> str:
    """``local`` | ``zerogpu`` | ``hf-jobs`` (``hfjobs`` is accepted too)."""
    name = BACKEND_NAMES.get((backend or "").strip().lower())
    if name is None:
        raise ServiceError(f"unknown backend '{backend}'; choose local, zerogpu or hf-jobs")
    return name


def queue_dir(ws: Workspace) -> Path:
    """The machine-wide training queue: one for every owner of the workspace."""
    from . import slots

    return slots.queue_dir(ws.root)


def run_caps(ws: Workspace) -> RunCaps | None:
    """How far one run may train here: the server's caps on a shared server (limits.run_caps), none on one's own."""
    try:
        return limits.run_caps() if ws.multi_user else None
    except ValueError as e:  # an unreadable FINETUNE_MAX_STEPS / FINETUNE_MAX_RUN_MINUTES on the server
        raise ServiceError(str(e)) from None


def _backend(name: str, ws: Workspace, *, token: str | None = None, api: Any = None, flavor: str | None = None,
             repo_id: str | None = None) -> Backend:
    from .backends import make_backend

    return make_backend(name, queue_dir=queue_dir(ws), token=token, api=api, flavor=flavor,
                        repo_id=(repo_id or "").strip() or None, sync_every_s=SYNC_EVERY_S, caps=run_caps(ws))


def _run_backend(ws: Workspace, path: Path, *, token: str | None = None, api: Any = None,
                 sync_every_s: float | None = None) -> Backend:
    """The backend a run started on (recorded in its folder), with this request's settings. On a shared server a
    Hugging Face job is read and cancelled with the caller's sign-in only (:func:`hub_token`)."""
    from .backends import backend_for

    if ws.multi_user and backend_of(path) == "hf-jobs":
        token = hub_token(ws, token, "follow or stop a Hugging Face job")
    try:
        return backend_for(path, queue_dir=queue_dir(ws), token=token, api=api,
                           sync_every_s=SYNC_EVERY_S if sync_every_s is None else sync_every_s, caps=run_caps(ws))
    except runs.RunError as e:
        raise ServiceError(str(e)) from e


def start_training(ws: Workspace, owner: str | None, config: RunConfig, backend: str = "local",
                   data_file: str | Path | None = None, *, token: str | None = None, flavor: str | None = None,
                   repo_id: str | None = None, api: Any = None, client: str | None = None) -> str:
    """Create a run and start it on ``backend``; returns the run id.

    - ``local``: a training process on this machine, waiting in the machine's queue when all training slots
      are busy (the run shows ``queued (position N)``);
    - ``zerogpu``: only the run folder; the caller drives the GPU calls with :func:`train_chunks`;
    - ``hf-jobs``: a Hugging Face Job on ``flavor`` pushing to ``repo_id``, with ``token`` (or HF_TOKEN) as its
      secret; the token is stored nowhere.

    ``client``: the caller's address (limits.client_address): on a shared server, local runs are counted per
    visitor by owner and by address.
    """
    backend = backend_name(backend)
    validate(config, source="config")
    check_config_code(ws, config)
    if backend == "hf-jobs":
        token = hub_token(ws, token, "start a Hugging Face job")
    root = ws.for_owner(owner)
    root.mkdir(parents=True, exist_ok=True)
    if data_file and backend == "hf-jobs":
        raise ServiceError("a Hugging Face job cannot read a file uploaded here: push the dataset to the Hub (Dataset "
                           "tab, push) and give its id instead of the file")
    if data_file:
        config.data.source = str(keep_upload(ws, owner, data_file).resolve())
    elif config.data.source and Path(config.data.source).exists() and ws.multi_user:
        # on a shared server a config may not point at files outside the owner's own folder
        inside = Path(config.data.source).resolve().is_relative_to(root.resolve())
        if not inside:
            raise ServiceError("data.source must be an uploaded file or a Hub dataset id")
    test = config.data.test_source.strip()
    owned = Path(test).is_absolute() and Path(test).resolve().is_relative_to(root.resolve()) and Path(test).is_file()
    if test and ws.multi_user and not owned and (Path(test).exists() or not is_hub_dataset_id(test)):
        # the test file's prompts and references end up in reports: only the owner's own uploads, or Hub data
        raise ServiceError("data.test_source must be a test file uploaded in the Dataset tab or a Hub dataset id")
    if config.training.init_adapter.strip():
        config.training.init_adapter = str(start_adapter_path(ws, owner, config.training.init_adapter.strip()))
    if backend == "hf-jobs" and config.training.max_steps <= 0:
        raise ServiceError("a Hugging Face job needs its time limit before it starts: set training.max_steps "
                           "(Hyperparameters tab) so the limit and the cost can be estimated")
    # -- a shared server's limits (finetune.limits): steps, disk, runs per visitor ---------------------------
    if ws.multi_user and backend == "local":
        assert owner  # for_owner above refused a call with no owner
        try:
            limits.check_steps(limits.run_caps(), planned_steps(config))
            limits.check_disk(root, 0, "starting a run")
            with limits.ledger_lock(ws.root):  # counted and recorded at once: two starts cannot both pass
                limits.check_visitor(ws.root, owner, client)
                rid = _start_backend(ws, backend, config, root, token=token, api=api, flavor=flavor, repo_id=repo_id)
                limits.record_run(ws.root, root / rid, owner, client)
                return rid
        except ValueError as e:  # over a limit, or a limit's setting unreadable on the server
            raise ServiceError(str(e)) from None
    # -- end of the limits --------------------------------------------------------------------------------
    return _start_backend(ws, backend, config, root, token=token, api=api, flavor=flavor, repo_id=repo_id)


def _start_backend(ws: Workspace, backend: str, config: RunConfig, root: Path, *, token: str | None, api: Any,
                   flavor: str | None, repo_id: str | None) -> str:
    try:
        return _backend(backend, ws, token=token, api=api, flavor=flavor, repo_id=repo_id).start(config, root)
    except UserError as e:  # a job that cannot be built or reached, a Hub refusal: the same error type for all
        raise ServiceError(str(e)) from e
    except ValueError as e:  # a bad FINETUNE_MAX_CONCURRENT_RUNS or FINETUNE_TRAIN_THREADS on the server
        raise ServiceError(str(e)) from None


def planned_steps(config: RunConfig, rows: int | None = None) -> int | None:
    """The optimizer steps a run will take: ``training.max_steps``, else planned from the rows of its data and the
    epochs (``rows``: counted by the caller; else those of a local data file); None when unknown before it starts
    (a Hub dataset)."""
    import math

    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    if rows is None:
        from . import data
        from .config import SAMPLE_DATA

        source = config.data.source or str(SAMPLE_DATA)
        if not Path(source).is_file():
            return None
        rows = len(data.load_rows(source, max_bytes=data.max_upload_bytes()).rows)
    examples = _training_examples(config, rows)
    return max(1, math.ceil(math.ceil(math.ceil(examples / t.batch_size) / t.grad_accum) * t.epochs))


def train_chunks(ws: Workspace, owner: str | None, run_id: str, chunk: Callable[[str, int, int], ChunkResult] | None = None,
                 **kw: Any) -> Iterator[dict[str, Any]]:
    """Drive a ZeroGPU run: chained GPU calls (``chunk``, default zerogpu.train_chunk) until it ends; yields
    the run state after each call."""
    from .backends import zerogpu

    path = _run_dir(ws, owner, run_id)
    for state in zerogpu.run_chunked(None, path, chunk=chunk, **kw):
        state.pop("path", None)
        yield state


def backend_of(path: Path) -> str:
    """Where a run trains: ``local`` | ``zerogpu`` | ``hf-jobs`` (recorded in its folder: runs.read_backend)."""
    try:
        return runs.read_backend(path)
    except runs.RunError as e:
        raise ServiceError(str(e)) from e


def zerogpu_quota(config: RunConfig, data_file: str | Path | None = None) -> QuotaPreview:
    """The ZeroGPU quota a run will use (zerogpu.quota_preview); an epochs-based run counts the rows of its data
    (the uploaded file, else a local data.source)."""
    from .backends import zerogpu

    n_examples = None
    source = data_file or config.data.source or str(Path(__file__).parent / "samples" / "city_year.jsonl")
    if config.training.max_steps <= 0 and source and Path(source).is_file():
        from . import data

        table = data.load_rows(source, max_bytes=data.max_upload_bytes())
        n_examples = _training_examples(config, len(table.rows))
    return zerogpu.quota_preview(config, n_examples)


def run_state(ws: Workspace, owner: str | None, run_id: str, *, token: str | None = None, api: Any = None,
              sync: bool = True, sync_every_s: float | None = None) -> tuple[runs.RunState, str]:
    """The run's state from its folder, and '' or why it may be stale. A Hugging Face job's folder is first
    synced from the job's log (``sync``; at most every ``sync_every_s``); when the job cannot be read the last
    known state comes back with the reason."""
    path = _run_dir(ws, owner, run_id)
    if not sync:
        return runs.read_run(path), ""
    backend = _run_backend(ws, path, token=token, api=api, sync_every_s=sync_every_s)
    try:
        return backend.status(path), ""
    except UserError as e:  # the job's service cannot be reached or refuses: show the folder as it is
        return runs.read_run(path), str(e)


def run_status(ws: Workspace, owner: str | None, run_id: str, *, token: str | None = None, api: Any = None) -> dict[str, Any]:
    """The run's state from its folder; a Hugging Face job's folder is first synced from the job's log."""
    state, stale = run_state(ws, owner, run_id, token=token, api=api)
    out = state.to_dict()
    out.pop("path", None)  # never reveal server paths
    out["backend"] = backend_of(state.path)
    if stale:
        out["message"] = f"cannot read the job right now ({stale}); showing its last known state"
    return out


def stop_training(ws: Workspace, owner: str | None, run_id: str, *, token: str | None = None,
                  api: Any = None) -> dict[str, Any]:
    """Stop a run: a local one checkpoints at its next step (a queued one leaves the queue); a Hugging Face job is
    cancelled. Returns its state (a job's synced from its log)."""
    path = _run_dir(ws, owner, run_id)
    backend = _run_backend(ws, path, token=token, api=api, sync_every_s=0.0)
    try:
        backend.stop(path)
        backend.status(path)  # a cancelled job: its end mirrored into the folder now
    except UserError as e:
        raise ServiceError(str(e)) from e
    return run_status(ws, owner, run_id)


def resume_training(ws: Workspace, owner: str | None, run_id: str, *, client: str | None = None) -> str:
    """Continue a run from its last checkpoint: a local one through the queue; a ZeroGPU one is checked here and
    resumed by driving :func:`train_chunks` again; a Hugging Face job cannot be resumed. On a shared server a
    local resume counts against the visitor's live runs as a start does (``client``: their address)."""
    path = _run_dir(ws, owner, run_id)
    check_config_code(ws, RunConfig.load(path / runs.CONFIG_FILE))  # an older version's run may ask for code
    try:
        if ws.multi_user and backend_of(path) == "local":
            assert owner  # _run_dir refused a call with no owner
            with limits.ledger_lock(ws.root):
                limits.check_visitor(ws.root, owner, client, exclude=run_id)
                limits.check_disk(ws.for_owner(owner), 0, "resuming a run")
                rid = _run_backend(ws, path).resume(path)
                limits.record_run(ws.root, path, owner, client)
                return rid
        return _run_backend(ws, path).resume(path)
    except UserError as e:
        raise ServiceError(str(e)) from e
    except ValueError as e:  # a bad queue or thread setting on the server
        raise ServiceError(str(e)) from None


def run_logs(ws: Workspace, owner: str | None, run_id: str, *, token: str | None = None, api: Any = None,
             tail: int = 200) -> str:
    """The last ``tail`` lines of a run's output (a local process's log, a job's log, a ZeroGPU run's events)."""
    path = _run_dir(ws, owner, run_id)
    try:
        return _run_backend(ws, path, token=token, api=api).logs(path, tail=tail)
    except UserError as e:
        raise ServiceError(str(e)) from e


def check_download_room(ws: Workspace, owner: str | None, source: Path, what: str) -> None:
    """On a shared server, a download is prepared (and kept FINETUNE_DOWNLOADS_MAX_AGE_H) only while the owner's
    disk plus about its size (that of ``source``, what it packs) stays within the owner's quota."""
    if not ws.multi_user:
        return
    size = limits.folder_bytes(source) if source.is_dir() else source.stat().st_size
    try:
        limits.check_disk(ws.for_owner(owner), size, what)
    except ValueError as e:
        raise ServiceError(str(e)) from None


def disk_usage(ws: Workspace, owner: str | None) -> str:
    """The size of the owner's runs folder (with the quota on a shared server), as one line."""
    root = ws.for_owner(owner)
    if not ws.multi_user:
        return f"The runs folder uses {limits.folder_bytes(root) / 1e6:,.1f} MB."
    try:
        return limits.disk_usage_text(root)
    except ValueError as e:
        raise ServiceError(str(e)) from None


def delete_run(ws: Workspace, owner: str | None, run_id: str) -> str:
    """Delete one of the owner's runs that is not live (its folder: checkpoints, adapter, events); returns what
    the owner's folder uses afterwards."""
    path = _run_dir(ws, owner, run_id)
    try:
        limits.delete_run(ws.for_owner(owner), path)
    except ValueError as e:
        raise ServiceError(str(e)) from None
    return disk_usage(ws, owner)


def run_states(ws: Workspace, owner: str | None) -> list[runs.RunState]:
    """The owner's runs, newest first, read from their folders (the machine's queue moved on first, when a slot
    freed that no process of this app saw end)."""
    from .backends import local

    try:
        local.dispatch(queue_dir(ws))
    except ValueError as e:  # a bad FINETUNE_MAX_CONCURRENT_RUNS on the server
        raise ServiceError(str(e)) from None
    return runs.list_runs(ws.for_owner(owner))


def list_runs(ws: Workspace, owner: str | None) -> list[dict[str, Any]]:
    """The owner's runs, newest first, as the API shows them (no server paths, no loss curves; their backend)."""
    out: list[dict[str, Any]] = []
    for s in run_states(ws, owner):
        d = s.to_dict()
        for key in ("path", "losses", "eval_losses"):
            d.pop(key, None)
        d["backend"] = backend_of(s.path)
        out.append(d)
    return out


def check_zerogpu(available: tuple[bool, str]) -> None:
    """Refuse a ZeroGPU run where ZeroGPU is not offered (``available``: zerogpu.available() or the app's
    setting), saying why and what to choose instead."""
    ok, why = available
    if not ok:
        raise ServiceError(f"ZeroGPU is not available: {why}; choose 'This machine' or Hugging Face Jobs")


def start(ws: Workspace, owner: str | None, config_yaml: str, backend: str = "local",
          data_file: str | Path | None = None, *, token: str | None = None, flavor: str | None = None,
          repo_id: str | None = None, zerogpu: tuple[bool, str] = (True, ""), api: Any = None,
          client: str | None = None) -> str:
    """The app's and API's start: a config YAML (and an optional uploaded data file) started on ``backend``;
    returns the run id (a ZeroGPU run is then driven with :func:`train_chunks`)."""
    name = backend_name(backend)
    if name == "zerogpu":
        check_zerogpu(zerogpu)
    cfg = parse_config(config_yaml)
    return start_training(ws, owner, cfg, name, data_file=data_file, token=token, flavor=flavor, repo_id=repo_id,
                          api=api, client=client)


def run_backend(ws: Workspace, owner: str | None, run_id: str) -> str:
    """Where one of the owner's runs trains: ``local`` | ``zerogpu`` | ``hf-jobs``."""
    return backend_of(_run_dir(ws, owner, run_id))


def push(ws: Workspace, owner: str | None, run_id: str, repo_id: str, *, token: str | None = None,
         private: bool = True, ignore_template_mismatch: bool = False) -> str:
    """Push a finished run's adapter (with its model card) to a Hub model repo; returns the URL.

    Refused (:class:`verify.TemplateMismatch`) when the adapter's chat template does not render what training
    rendered, unless ``ignore_template_mismatch``."""
    from .hub import push_adapter
    from .verify import require_consistent

    token = hub_token(ws, token)
    folder = adapter_path(ws, owner, run_id)
    require_consistent(folder, action="push", ignore_mismatch=ignore_template_mismatch)
    return push_adapter(folder, repo_id, token=token, private=private)


def push_dataset(ws: Workspace, formatted: str | Path, repo_id: str, *, token: str | None = None,
                 private: bool = True) -> str:
    """Push a formatted dataset (the Dataset tab's JSONL) to a Hub dataset repo; returns the URL."""
    from .hub import push_dataset as push_jsonl

    token = hub_token(ws, token)
    return push_jsonl(Path(formatted), repo_id, token=token, private=private)


def zerogpu_quota_for(config_yaml: str, data_file: str | Path | None = None) -> QuotaPreview:
    """:func:`zerogpu_quota` of a config YAML."""
    return zerogpu_quota(parse_config(config_yaml), data_file)


@dataclass(frozen=True)
class JobCost:
    """A Hugging Face job's time limit and what it costs at most (None: the flavor's price is not listed)."""

    limit_s: int
    max_usd: float | None


def job_cost(config_yaml: str, flavor: str) -> JobCost:
    """The time limit a job of this config gets on ``flavor`` (the time estimate with a margin) and its price."""
    from . import memory
    from .backends import hfjobs

    cfg = parse_config(config_yaml)
    if cfg.training.max_steps <= 0:
        raise ServiceError("set training.max_steps (Hyperparameters tab): a job's time limit is set before it "
                           "starts, from the number of steps")
    limit = hfjobs.estimate_timeout_s(hfjobs.portable_config(cfg), flavor)
    gpu = memory.get_gpu(hfjobs.FLAVOR_GPUS[flavor])
    cost = (limit / 3600 * gpu.usd_per_hour * hfjobs.gpu_count(flavor) if gpu.usd_per_hour is not None else None)
    return JobCost(limit, cost)


class RunSummary(TypedDict):
    """What a run will use, shown before it starts (:func:`run_summary`)."""

    data: str  # the file name, the Hub dataset id, or "the bundled sample"
    sample: bool  # no dataset was chosen: the bundled sample would be used (the app asks to confirm)
    rows: int | None  # rows in the data file (None: a Hub dataset, counted when the run starts)
    template: str  # templates.template_label of data.template
    method: str  # training.method: sft, dpo, orpo, kto or grpo
    model: str
    steps: int | None  # training.max_steps, else planned from the rows and epochs (None: unknown yet)
    backend: str


BACKEND_LABELS = {"local": "this machine", "zerogpu": "ZeroGPU", "hf-jobs": "Hugging Face Jobs"}


def run_summary(config_yaml: str, data_file: str | Path | None = None, backend: str = "local",
                flavor: str | None = None) -> RunSummary:
    """The data (file, rows), template, method, model, steps and backend a run of this config would use."""
    from . import data
    from .config import sample_data
    from .models import EMBEDDED_REPO_ID
    from .templates import template_label

    cfg = parse_config(config_yaml)
    name = backend_name(backend)
    source = str(data_file) if data_file else cfg.data.source
    sample = not source
    rows: int | None = None
    if sample or Path(source).is_file():
        table = data.load_rows(source or str(sample_data(cfg.training.method)), max_bytes=data.max_upload_bytes())
        rows = len(table.rows)
    shown = "the bundled sample (city/year extraction)" if sample else (Path(source).name if data_file else source)
    steps = planned_steps(cfg, rows) if cfg.training.max_steps > 0 or rows is not None else None
    return {"data": shown, "sample": sample, "rows": rows,
            "template": template_label(cfg.data.template), "method": cfg.training.method,
            "model": cfg.model.id or f"{EMBEDDED_REPO_ID} (embedded)", "steps": steps,
            "backend": BACKEND_LABELS[name] + (f" ({flavor})" if name == "hf-jobs" and flavor else "")}


def check_data_chosen(config_yaml: str, data_file: str | Path | None, use_sample: bool) -> None:
    """The app's Start button: a run with no dataset trains on the bundled sample only when the user said so."""
    if not data_file and not parse_config(config_yaml).data.source and not use_sample:
        raise ServiceError("no dataset chosen: upload a file or give a Hub dataset id (1 · Dataset), or tick "
                           "'Train on the bundled sample' to try the app on its city/year example")


def loss_curves(ws: Workspace, owner: str | None, run_ids: list[str]) -> list[dict[str, Any]]:
    """The train loss by step of several of the owner's runs, one row per point (run, step, loss): their
    curves overlaid."""
    out: list[dict[str, Any]] = []
    for rid in run_ids:
        out += [{"run": rid, "step": s, "loss": v} for s, v in runs.read_run(_run_dir(ws, owner, rid)).losses]
    return out


def run_events(ws: Workspace, owner: str | None, run_id: str) -> list[dict[str, Any]]:
    from .events import read_events

    return read_events(_run_dir(ws, owner, run_id))


def adapter_path(ws: Workspace, owner: str | None, run_id: str | None) -> Path:
    """The adapter folder of one of the owner's runs: ``ID`` (the finished adapter), ``ID@40`` (the checkpoint
    of step 40) or ``ID@best`` / ``ID@best-<metric>`` (the checkpoint the run's evaluation ranks best, by exact
    match unless a metric of ``finetune.evaluate.METRICS`` is named)."""
    run_id, _, step = (run_id or "").partition("@")
    run_dir = _run_dir(ws, owner, run_id)
    if step:
        return _checkpoint_adapter(run_dir, run_id, step)
    path = run_dir / ADAPTER_DIR
    if not is_adapter_dir(path):
        raise ServiceError(f"run '{run_id}' has no adapter yet: it appears when the run finishes")
    return path


def start_adapter_path(ws: Workspace, owner: str | None, text: str) -> Path:
    """The adapter a new run of the owner starts from (``training.init_adapter``): one of the owner's runs, ``ID``,
    ``ID@STEP`` or ``ID@best`` (:func:`adapter_path`), or an adapter folder already inside the owner's runs (a config
    saved by an earlier run names it so). Nothing outside the owner's own runs: not another user's adapter, not a
    folder of the server."""
    from .adapter import find_adapter_dir

    path = Path(text).expanduser()
    if path.is_absolute() and path.resolve().is_relative_to(ws.for_owner(owner).resolve()):
        folder = find_adapter_dir(path)
        if folder is not None:
            return folder
    if "/" in text or "\\" in text:
        raise ServiceError(f"training.init_adapter {text}: start from one of your runs, by its id (ID, ID@STEP or "
                           "ID@best, as in the run list)")
    try:
        return adapter_path(ws, owner, text).resolve()
    except ServiceError as e:
        raise ServiceError(f"training.init_adapter: {e}") from None


def _checkpoint_adapter(run_dir: Path, run_id: str, step: str) -> Path:
    from .adapter import checkpoint_step, find_adapter_dir

    kept = {checkpoint_step(c): c for c in runs.checkpoints(run_dir)}
    listed = ", ".join(f"{run_id}@{s}" for s in kept) or "none yet"
    if step == "best" or step.startswith("best-"):
        from .evaluate import METRICS, best_checkpoint

        metric = step.partition("-")[2] or "exact_match"
        if metric not in METRICS:
            raise ServiceError(f"'{metric}' is not a metric; use {run_id}@best-<{'|'.join(METRICS)}>")
        report = runs.read_eval_report(run_dir)
        best = best_checkpoint(report, metric) if report else None
        if best is None:
            raise ServiceError(f"run '{run_id}' has no evaluation of its checkpoints; evaluate it with all "
                               "checkpoints first (Train tab, /evaluate, or finetune eval --checkpoints all)")
        step = str(best["step"])
    if not (step.isascii() and step.isdigit()) or int(step) not in kept:  # "²" is a digit to isdigit, not to int
        raise ServiceError(f"run '{run_id}' has no checkpoint '{step}'; its checkpoints: {listed}")
    folder = find_adapter_dir(kept[int(step)])
    if folder is None or folder == kept[int(step)]:
        raise ServiceError(f"checkpoint {step} of run '{run_id}' has no adapter folder (saved by an older "
                           "version); use the finished run")
    return folder


def checkpoint_choices(ws: Workspace, owner: str | None, run_id: str) -> list[str]:
    """``ID@step`` of each kept checkpoint of a run that can be used as an adapter, oldest first."""
    from .adapter import checkpoint_step, find_adapter_dir

    run_dir = _run_dir(ws, owner, run_id)
    return [f"{run_id}@{checkpoint_step(c)}" for c in runs.checkpoints(run_dir)
            if find_adapter_dir(c) not in (None, c)]


def evaluate(ws: Workspace, owner: str | None, run_id: str, test_file: str | Path | None, *,
             checkpoints: str = "all", max_new_tokens: int = 256, progress: Any = None) -> dict[str, Any]:
    """Evaluate one of the owner's runs (``ID``, ``ID@step``) on a test file (an upload, or the run's configured
    ``data.test_source`` when none is given); the report is also written into the run folder."""
    from .evaluate import evaluate as run_evaluation

    from .evaluate import run_test_set

    folder = adapter_path(ws, owner, run_id)
    limit = 0
    if test_file:
        data: str | Path = keep_upload(ws, owner, test_file)
    else:
        own = run_test_set(_run_dir(ws, owner, run_id.partition("@")[0]))
        if own is None:
            raise ServiceError("give a test file (prompts and reference answers), or set one (or a held-out test "
                               "split) in the Dataset tab before training")
        data, limit = own.source, own.limit
    if not 1 <= max_new_tokens <= 4096:
        raise ServiceError(f"max_new_tokens must be between 1 and 4096, got {max_new_tokens}")
    return run_evaluation(folder, data, checkpoints=checkpoints, max_new_tokens=max_new_tokens, progress=progress,
                          label=run_id, limit=limit)


def eval_report(ws: Workspace, owner: str | None, run_id: str) -> dict[str, Any] | None:
    """The latest evaluation report of one of the owner's runs (None when it has none)."""
    return runs.read_eval_report(_run_dir(ws, owner, run_id.partition("@")[0]))


def adapter_zip(ws: Workspace, owner: str | None, run_id: str, out_dir: Path) -> Path:
    """The adapter folder as a zip file to download."""
    folder = adapter_path(ws, owner, run_id)
    check_download_room(ws, owner, folder, "zipping the adapter")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{run_id}-adapter.zip"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(folder))
    target.write_bytes(buf.getvalue())
    return target


_tokenizers: dict[str, Any] = {}  # model name -> a transformers tokenizer
# Concurrent requests (the app serves several at once) load a tokenizer once, one at a time: the first use of
# transformers' lazy imports from several threads at once fails ("cannot import name 'AutoTokenizer'").
_tokenizers_lock = threading.Lock()


def _tokenizer(model: str) -> Any:
    """Tokenizers for token statistics, kept per model name (loading one takes about a second)."""
    from .models import load_tokenizer

    with _tokenizers_lock:
        if model not in _tokenizers:
            if len(_tokenizers) >= 4:
                _tokenizers.pop(next(iter(_tokenizers)))
            _tokenizers[model] = load_tokenizer(model)
        return _tokenizers[model]


def check_hub_dataset_id(text: str) -> str:
    """A Hub dataset id typed by a user of a shared server: never a path on the server (``../../etc/passwd``)."""
    text = (text or "").strip()
    if not is_hub_dataset_id(text):  # a Hub id that names nothing on this server (../../etc/passwd, runs/alice)
        raise ServiceError(f"'{text[:80]}' is not a Hub dataset id; type one like user/name, or upload the file")
    return text


def _model_dirs() -> list[Path]:
    """Folders of models the operator of a shared server offers to every user (FINETUNE_MODEL_DIRS, separated
    by the OS path separator): the only local folders a user of a shared server may name as a model."""
    return [Path(d).resolve() for d in os.environ.get("FINETUNE_MODEL_DIRS", "").split(os.pathsep) if d.strip()]


def check_model_ref(ws: Workspace, text: str, what: str = "base model") -> str:
    """A base model or adapter named by a user of a shared server: a Hub repo id (or empty for the default), never
    a folder on the server (``/srv/other-user/model``, ``../runs``). A single-user app may name local folders."""
    text = (text or "").strip()
    if not ws.multi_user or not text:
        return text
    path = Path(text)
    if path.is_absolute() and any(path.resolve().is_relative_to(d) for d in _model_dirs()):
        return text  # a folder the server's operator offers to every user
    # A Hub-shaped name that is also a folder here (``runs/users``, ``finetune/samples``) would load that folder:
    # from_pretrained looks locally first. Refused like any other path.
    if not is_hub_dataset_id(text) or path.exists():
        raise ServiceError(f"'{text[:80]}' is not a Hub repo id; on this shared server the {what} is a Hub id like "
                           "org/name (or empty for the default)")
    return text


def chat_models(ws: Workspace, owner: str | None, base_model: str | None, adapter: str | None) -> tuple[str | None, str]:
    """What the Playground, ``/chat``, ``/compare`` and ``/exact_prompt`` load: the adapter folder (one of the owner's
    runs or checkpoints, else a Hub adapter repo, else None for the base alone) and the base model (the one given,
    else the adapter's own base; empty: the embedded default). On a shared server the base an adapter names
    (``base_model_name_or_path``, which anyone can write into a Hub adapter) is checked as a typed one is."""
    from . import inference, refs

    base = check_model_ref(ws, base_model or "")
    text = (adapter or "").strip()
    if not text:
        return None, base
    try:
        path = str(adapter_path(ws, owner, text))
    except ServiceError:
        ref = refs.classify(text, strict=False, local_first=False)
        if not (ref.kind == "hub" and ref.has_namespace):
            raise
        path = check_model_ref(ws, text, "adapter")  # a Hub repo id
    if not base and ws.multi_user:
        base = check_model_ref(ws, inference.adapter_base(path), f"base model of the adapter {text[:80]}")
    return path, base


def format_preview(source: str, *, template: str, system_prompt: str = "", columns: dict[str, str] | None = None,
                   model: str = "", max_length: int = 1024, train_on: str = "assistant",
                   hub_config: str | None = None, split: str = "train", out_dir: Path, preview_rows: int = 5,
                   hub_only: bool = False, keep_duplicates: bool = False, method: str = "sft",
                   val_fraction: float = 0.0, test_split: float = 0.0) -> FormatPreview:
    """Format a dataset for the Dataset tab: summary markdown, preview examples with spans, token lengths,
    row problems, warnings and the formatted JSONL file.

    ``source`` is an uploaded file (capped at the upload limit) or a Hub id; ``hub_only`` refuses anything
    but a Hub id (text typed on a shared server). ``val_fraction`` / ``test_split``: the rows split as training
    splits them (``data.val_fraction``, ``data.test_split``, seed 42), counted in the summary.
    """
    from . import data

    for key, value in (("data.val_fraction", val_fraction), ("data.test_split", test_split)):
        problem = range_problem(key, value)
        if problem:
            raise ServiceError(problem)

    if hub_only:
        source = check_hub_dataset_id(source)
    tok = _tokenizer(model)
    is_file = Path(source).exists()
    from . import methods

    if method not in methods.REGISTRY:
        raise ServiceError(f"method '{method}' is not one of: {', '.join(methods.REGISTRY)}")
    if methods.REGISTRY[method].text_rows:
        return _method_preview(source, method, template=template, system_prompt=system_prompt, columns=columns,
                               tokenizer=tok, hub_config=hub_config, split=split, out_dir=out_dir,
                               preview_rows=preview_rows, is_file=is_file)
    try:
        settings = DataConfig(hub_config=hub_config, split=split, template=template, system_prompt=system_prompt,
                              columns=columns or {}, train_on=train_on, keep_duplicates=keep_duplicates,
                              val_fraction=val_fraction, test_split=test_split)
        result = data.format_dataset(source, settings, tokenizer=tok, max_length=max_length,
                                     max_bytes=data.max_upload_bytes())
    except data.DataError as e:
        if is_file and e.file == str(source):  # name the file, not the server's upload path
            raise data.DataError(Path(source).name, e.row, e.reason) from None
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_file:
        result.source = Path(source).name  # not the server's upload path
    name = Path(source).stem if is_file else source.replace("/", "__")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "data"
    out = out_dir / f"{name}.{template}.jsonl"
    data.write_jsonl(result.examples, out)
    return {
        "summary": data.summary_markdown(result),
        "examples": [{"row": ex.row, "text": ex.text, "spans": [list(s) for s in ex.spans]}
                     for ex in result.examples[:preview_rows]],
        "lengths": list(result.lengths),
        "problems": [[p.row, p.field, p.reason, p.fix] for p in result.problems],
        "warnings": [f"row {p.row}: {p.reason}" for p in result.warnings],
        "file": str(out),
    }


def _method_preview(source: str, method: str, *, template: str, system_prompt: str, columns: dict[str, str] | None,
                    tokenizer: Any, hub_config: str | None, split: str, out_dir: Path, preview_rows: int,
                    is_file: bool) -> FormatPreview:
    """:func:`format_preview` for dpo/orpo/kto/grpo data: the detected shape, and each example's prompt with its
    chosen and rejected answers (or its answer and label, or its reference) as training renders them."""
    import json

    from . import data, methods
    from .data.preference import FeedbackExample, PairExample, PromptExample, format_for_method
    from .data.stats import token_lengths

    try:
        result = format_for_method(source, method, template=template, system_prompt=system_prompt,
                                   columns=columns or None, tokenizer=tokenizer, hub_config=hub_config, split=split,
                                   max_bytes=data.max_upload_bytes(), shape=methods.get(method).shape)
    except data.DataError as e:
        if is_file and e.file == str(source):
            raise data.DataError(Path(source).name, e.row, e.reason) from None
        raise
    shown: list[dict[str, Any]] = []
    for ex in result.examples[:preview_rows]:
        if isinstance(ex, PairExample):
            for label, answer in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                shown.append({"row": f"{ex.row} ({label})", "text": ex.prompt + answer,
                              "spans": [[len(ex.prompt), len(ex.prompt) + len(answer)]]})
        elif isinstance(ex, FeedbackExample):
            shown.append({"row": f"{ex.row} ({'thumbs up' if ex.label else 'thumbs down'})",
                          "text": ex.prompt + ex.completion,
                          "spans": [[len(ex.prompt), len(ex.prompt) + len(ex.completion)]]})
        elif isinstance(ex, PromptExample):
            shown.append({"row": f"{ex.row} (reference: {ex.answer if ex.answer is not None else 'none'})",
                          "text": ex.prompt, "spans": []})
    name = Path(source).stem if is_file else source.replace("/", "__")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.{method}.{template}.jsonl"
    out.write_text("".join(json.dumps({"row": ex.row, **ex.to_json()}, ensure_ascii=False) + "\n"
                           for ex in result.examples), encoding="utf-8")
    texts = [ex.prompt + (ex.chosen if isinstance(ex, PairExample) else
                          ex.completion if isinstance(ex, FeedbackExample) else "") for ex in result.examples]
    shown_source = Path(source).name if is_file else source
    skipped = ", ".join(f"{n} {c}" for c, n in result.skipped.most_common())
    summary = (f"**{method.upper()} data** from `{shown_source}`: {len(result.examples)} examples of "
               f"{result.rows_in} rows, shape `{result.shape}`" + (f"; skipped: {skipped}" if skipped else "") +
               ". Highlighted: the answer each example trains on.")
    return {
        "summary": summary,
        "examples": shown,
        "lengths": token_lengths(texts, tokenizer) if tokenizer is not None else [],
        "problems": [[p.row, p.field, p.reason, p.fix] for p in result.problems],
        "warnings": [],
        "file": str(out),
    }


class FormatPreview(TypedDict):
    """What the Dataset tab shows of a formatted dataset (:func:`format_preview`)."""
    summary: str  # markdown
    examples: list[dict[str, Any]]  # {"row": int, "text": str, "spans": [[start, end], ...]} (trained characters)
    lengths: list[int]  # tokens per example
    problems: list[list[Any]]  # [row, field, reason, fix] of each rejected row
    warnings: list[str]
    file: str  # the formatted JSONL


@dataclass(frozen=True)
class ExportDownload:
    """An export of a run: the file to download (a .gguf, or a zip of a folder export; None when only pushed),
    what was written, and the Hub URL when pushed."""

    file: Path | None
    summary: str
    url: str | None


def export_run(ws: Workspace, owner: str | None, run_id: str, fmt: str, quant: str, out_dir: Path, *,
               push: str | None = None, token: str | None = None, private: bool = True,
               progress: Callable[[float, str], None] | None = None) -> ExportDownload:
    """Export a finished run of this owner (see ``export.export_model``) into a new folder under ``out_dir``.

    A folder export (merged, ollama) is zipped for download; a Space is only pushed."""
    import shutil
    import uuid

    from .export import default_out, export_model

    if push:
        token = hub_token(ws, token)
    folder = adapter_path(ws, owner, run_id)
    check_download_room(ws, owner, folder, "exporting a run")
    work = out_dir / uuid.uuid4().hex[:12]
    work.mkdir(parents=True, exist_ok=True)
    target = None if fmt == "space" else work / default_out(run_id, fmt, quant).name
    try:
        result = export_model(folder, fmt, target, quant=quant, push=push or None, token=token, private=private,
                              progress=progress or (lambda f, m: None))
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    file = result.out
    if file is not None and file.is_dir():
        archive = shutil.make_archive(str(file), "zip", root_dir=file.parent, base_dir=file.name)
        shutil.rmtree(file)
        file = Path(archive)
    return ExportDownload(file, result.summary().replace(str(work) + "/", ""), result.url)


# ---------------------------------------------------------------------------------------------
# the blind A/B arena (finetune.arena): votes live in the owner's own folder


def _contender(ws: Workspace, owner: str | None, name: str) -> str | None:
    """The adapter folder a contender names (None: the base model)."""
    from .arena import BASE

    return None if name == BASE else str(adapter_path(ws, owner, name))


def arena_battle(ws: Workspace, owner: str | None, contenders: list[str], prompt: str, *, base_model: str = "",
                 temperature: float = 0.0, max_new_tokens: int = 256, top_p: float = 0.9,
                 repetition_penalty: float = 1.0, seed: int = 0) -> dict[str, Any]:
    """Two to four of ``base`` and the owner's runs / checkpoints (``ID``, ``ID@step``) answer ``prompt`` with the
    same seed and settings, each adapter with its own trained template (the base with the first adapter's);
    returns ``{"battle_id", "answers": {"A": ..., ...}}`` in a hidden shuffled order."""
    from . import arena, inference

    names = [c.strip() for c in contenders if c and c.strip()]
    folders = {n: _contender(ws, owner, n) for n in dict.fromkeys(names)}
    adapters = [f for f in folders.values() if f]
    if not adapters and len(names) >= arena.MIN_CONTENDERS:
        raise ServiceError("pick at least one of your runs or checkpoints besides the base model")
    base_model = check_model_ref(ws, base_model)
    base = base_model or (inference.adapter_base(adapters[0]) if adapters else "")
    template, system = inference.trained_defaults(adapters[0]) if adapters else ("", "")
    settings = {"temperature": temperature, "max_new_tokens": max_new_tokens, "top_p": top_p,
                "repetition_penalty": repetition_penalty, "seed": seed, "base_model": base}

    def answer(name: str) -> str:
        folder = folders[name]
        kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                  repetition_penalty=repetition_penalty, seed=seed)
        if folder is None:
            return inference.generate_batch([prompt], model=base, template=template, system_prompt=system, **kw)[0]
        return inference.generate_batch([prompt], adapter=folder, model=base_model or None, **kw)[0]

    return arena.start_battle(ws.for_owner(owner), names, prompt, answer, settings)


def arena_vote(ws: Workspace, owner: str | None, battle_id: str, verdict: str) -> dict[str, Any]:
    """Record a vote (a letter, ``tie`` or ``both_bad``) on one of the owner's open battles: ``{"vote": the
    record with the contenders revealed, "votes": the owner's vote count, "standings": their updated standings}``."""
    from . import arena

    root = ws.for_owner(owner)
    record = arena.vote(root, battle_id, verdict)
    votes = arena.read_votes(root)
    return {"vote": record, "votes": len(votes), "standings": arena.standings(votes)}


def arena_votes(ws: Workspace, owner: str | None) -> int:
    """How many votes the owner has cast."""
    from . import arena

    return len(arena.read_votes(ws.for_owner(owner)))


def arena_standings(ws: Workspace, owner: str | None) -> list[dict[str, Any]]:
    """The owner's arena standings: rating with a 95% interval, wins, losses, ties, win rate, best first."""
    from . import arena

    return arena.standings(arena.read_votes(ws.for_owner(owner)))


def arena_export(ws: Workspace, owner: str | None, out_dir: Path) -> Path:
    """A copy of the owner's votes (JSON lines) to download."""
    from . import arena

    src = arena.votes_file(ws.for_owner(owner))
    if not src.exists():
        raise ServiceError("no votes yet: start a battle and vote first")
    check_download_room(ws, owner, src, "exporting the votes")
    out_dir.mkdir(parents=True, exist_ok=True)
    import secrets

    target = out_dir / f"arena-votes-{secrets.token_hex(8)}.jsonl"  # unguessable: the downloads folder is shared
    target.write_bytes(src.read_bytes())
    return target
