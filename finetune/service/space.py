"""The actions behind the app's API endpoints, scoped to one owner. No Gradio here: the UI turns a request into
the owner's space once (``Workspace.owner_space``: the signed-in user, the browser or the session); its methods are
the actions, and they return plain Python values.

On a multi-user deployment (a Space) every owner has their own runs folder, named by a hash of the
owner key, and every run id is resolved inside it: one user can neither list nor read, stop, download
or push another's runs, whatever they send to the API. On a single-user machine the owner is ignored
and the app shows every run in the runs folder, CLI runs included.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from .. import limits, runs
from ..adapter import ADAPTER_DIR, is_adapter_dir
from ..config import RunConfig, validate
from ..data import is_hub_dataset_id
from ..errors import UserError, app_message
from .checks import (ServiceError, backend_name, backend_of, check_config_code, check_model_ref, one_process_here,
                     check_zerogpu, hub_token, parse_config, queue_dir, run_caps)
from . import arena_actions, bench_actions, synth_actions, uploads
from .plans import planned_steps
from .uploads import as_uploaded, without_upload_folders

if TYPE_CHECKING:
    from ..backends.base import Backend
    from ..benchmark import BenchProgress
    from ..evaluate import EvalProgress
    from ..synth import Progress as SynthProgress
    from ..synth import Summary as SynthSummary
    from ..backends.zerogpu import ChunkResult


SYNC_EVERY_S = 5.0  # a Hugging Face job's log is read at most this often per run (each read fetches the log)
FORM_FILE = "form.json"  # the owner's form as the page last left it (one file per owner, overwritten)
MAX_FORM_BYTES = 64_000  # a form is a few kB of settings; a shared server keeps no more than this per owner
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

    def owner_space(self, owner: str | None) -> OwnerSpace:
        """The owner's space: the actions on their runs, each resolved inside their own folder."""
        return OwnerSpace(self, owner)


def default_workspace() -> Workspace:
    """Runs in $FINETUNE_RUNS (or ./runs); multi-user on a Space or when FINETUNE_MULTI_USER=1."""
    multi = os.environ.get("FINETUNE_MULTI_USER", "1" if os.environ.get("SPACE_ID") else "0") == "1"
    return Workspace(runs.runs_root(), multi)


def _new_backend(ws: Workspace, name: str, *, token: str | None = None, api: Any = None, flavor: str | None = None,
                 repo_id: str | None = None) -> Backend:
    from ..backends import make_backend

    return make_backend(name, queue_dir=queue_dir(ws), token=token, api=api, flavor=flavor,
                        repo_id=(repo_id or "").strip() or None, sync_every_s=SYNC_EVERY_S, caps=run_caps(ws))


@dataclass(frozen=True)
class ExportDownload:
    """An export of a run: the file to download (a .gguf, or a zip of a folder export; None when only pushed),
    what was written, and the Hub URL when pushed."""

    file: Path | None
    summary: str
    url: str | None


@dataclass(frozen=True)
class OwnerSpace:
    """One owner's runs and the actions on them (``Workspace.owner_space``). On a shared workspace every run id is
    resolved inside the owner's own folder; on a single-user one the owner is ignored."""

    ws: Workspace
    owner: str | None

    @property
    def root(self) -> Path:
        """The owner's folder (the workspace's root on a single-user machine)."""
        return self.ws.for_owner(self.owner)

    @property
    def multi_user(self) -> bool:
        return self.ws.multi_user

    def save_form(self, form: dict[str, Any]) -> None:
        """Keep the owner's form (the page's settings, key -> value) so that a reloaded page comes back to it."""
        import json

        from ..io import atomic_write_text

        text = json.dumps(form, ensure_ascii=False, sort_keys=True)
        if len(text.encode("utf-8")) > MAX_FORM_BYTES:
            raise ServiceError(f"the form is over {MAX_FORM_BYTES // 1000} kB (a system prompt or schema that long?): "
                               "it is not kept for the next visit; shorten it")
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.root / FORM_FILE, text)

    def load_form(self) -> dict[str, Any] | None:
        """The form :meth:`save_form` kept (None: none yet, or no longer readable: the page opens with the preset)."""
        import json

        path = self.root / FORM_FILE
        try:
            form = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:  # a damaged file: said, and replaced at the next save
            raise ServiceError(f"your saved form could not be read ({e.__class__.__name__}); the page starts "
                               "from the preset") from None
        return form if isinstance(form, dict) else None

    def forget_form(self) -> None:
        """Drop the kept form: the next page starts from the preset."""
        (self.root / FORM_FILE).unlink(missing_ok=True)

    def keep_upload(self, path: str | Path) -> Path:
        """Copy an uploaded data file into the owner's folder (:func:`uploads.keep_upload`)."""
        return uploads.keep_upload(self.root, path, shared=self.ws.multi_user)

    def drop_upload(self, kept: str | Path) -> bool:
        """Delete a kept upload no run of the owner names (:func:`uploads.drop_upload`; True: deleted)."""
        return uploads.drop_upload(self.root, kept)

    def start(self, config_yaml: str, backend: str = "local",
              data_file: str | Path | None = None, *, token: str | None = None, flavor: str | None = None,
              repo_id: str | None = None, zerogpu: tuple[bool, str] = (True, ""), api: Any = None,
              client: str | None = None) -> str:
        """The app's and API's start: a config YAML (and an optional uploaded data file) started on ``backend``;
        returns the run id (a ZeroGPU run is then driven with :meth:`train_chunks`)."""
        name = backend_name(backend)
        if name == "zerogpu":
            check_zerogpu(zerogpu)
        cfg = parse_config(config_yaml)
        return self.start_config(cfg, name, data_file=data_file, token=token, flavor=flavor, repo_id=repo_id,
                              api=api, client=client)

    def start_config(self, config: RunConfig, backend: str = "local",
                       data_file: str | Path | None = None, *, token: str | None = None, flavor: str | None = None,
                       repo_id: str | None = None, api: Any = None, client: str | None = None) -> str:
        """Create a run and start it on ``backend``; returns the run id.

        - ``local``: a training process on this machine, waiting in the machine's queue when all training slots
          are busy (the run shows ``queued (position N)``);
        - ``zerogpu``: only the run folder; the caller drives the GPU calls with :meth:`train_chunks`;
        - ``hf-jobs``: a Hugging Face Job on ``flavor`` pushing to ``repo_id``, with ``token`` (or HF_TOKEN) as its
          secret; the token is stored nowhere.

        ``client``: the caller's address (limits.client_address): on a shared server, local runs are counted per
        visitor by owner and by address.
        """
        backend = backend_name(backend)
        validate(config, source="config")
        check_config_code(self.ws, config)
        one_process_here(self.ws, config, backend)
        if backend == "hf-jobs":
            token = hub_token(self.ws, token, "start a Hugging Face job")
        root = self.root
        root.mkdir(parents=True, exist_ok=True)
        if data_file and backend == "hf-jobs":
            raise ServiceError("a Hugging Face job cannot read a file uploaded here: push the dataset to the Hub "
                               "(Dataset tab, push) and give its id instead of the file")
        if data_file:
            config.data.source = str(self.keep_upload(data_file).resolve())
        elif config.data.source and Path(config.data.source).exists() and self.ws.multi_user:
            # on a shared server a config may not point at files outside the owner's own folder
            inside = Path(config.data.source).resolve().is_relative_to(root.resolve())
            if not inside:
                raise ServiceError("data.source must be an uploaded file or a Hub dataset id")
        test = config.data.test_source.strip()
        owned = (Path(test).is_absolute() and Path(test).resolve().is_relative_to(root.resolve())
                 and Path(test).is_file())
        if test and self.ws.multi_user and not owned and (Path(test).exists() or not is_hub_dataset_id(test)):
            # the test file's prompts and references end up in reports: only the owner's own uploads, or Hub data
            raise ServiceError("data.test_source must be a test file uploaded in the Dataset tab or a Hub dataset id")
        if config.training.init_adapter.strip():
            config.training.init_adapter = str(self.start_adapter_path(config.training.init_adapter.strip()))
        if backend == "hf-jobs" and config.training.max_steps <= 0:
            raise ServiceError("a Hugging Face job needs its time limit before it starts: set training.max_steps "
                               "(Hyperparameters tab) so the limit and the cost can be estimated")
        # -- a shared server's limits (finetune.limits): steps, disk, runs per visitor ---------------------------
        if self.ws.multi_user and backend == "local":
            assert self.owner  # for_owner above refused a call with no owner
            try:
                limits.check_steps(limits.run_caps(), planned_steps(config))
                limits.check_disk(root, 0, "starting a run")
                with limits.ledger_lock(self.ws.root):  # counted and recorded at once: two starts cannot both pass
                    limits.check_visitor(self.ws.root, self.owner, client)
                    rid = self._start_backend(backend, config, root, token=token, api=api, flavor=flavor,
                                              repo_id=repo_id)
                    limits.record_run(self.ws.root, root / rid, self.owner, client)
                    return rid
            except ValueError as e:  # over a limit, or a limit's setting unreadable on the server
                raise ServiceError(str(e)) from None
        # -- end of the limits --------------------------------------------------------------------------------
        return self._start_backend(backend, config, root, token=token, api=api, flavor=flavor, repo_id=repo_id)

    def _start_backend(self, backend: str, config: RunConfig, root: Path, *, token: str | None, api: Any,
                       flavor: str | None, repo_id: str | None) -> str:
        try:
            made = _new_backend(self.ws, backend, token=token, api=api, flavor=flavor, repo_id=repo_id)
            return made.start(config, root)
        except UserError as e:  # a job that cannot be built or reached, a Hub refusal: the same error type for all
            raise ServiceError(str(e)).in_app(app_message(e)) from e
        except ValueError as e:  # a bad FINETUNE_MAX_CONCURRENT_RUNS or FINETUNE_TRAIN_THREADS on the server
            raise ServiceError(str(e)) from None

    def train_chunks(self, run_id: str, chunk: Callable[[str, int, int], ChunkResult] | None = None,
                     **kw: Any) -> Iterator[dict[str, Any]]:
        """Drive a ZeroGPU run: chained GPU calls (``chunk``, default zerogpu.train_chunk) until it ends; yields
        the run state after each call."""
        from ..backends import zerogpu

        path = self.run_dir(run_id)
        for state in zerogpu.run_chunked(None, path, chunk=chunk, **kw):
            state.pop("path", None)
            yield state

    def state(self, run_id: str, *, token: str | None = None, api: Any = None,
                  sync: bool = True, sync_every_s: float | None = None) -> tuple[runs.RunState, str]:
        """The run's state from its folder, and '' or why it may be stale. A Hugging Face job's folder is first
        synced from the job's log (``sync``; at most every ``sync_every_s``); when the job cannot be read the last
        known state comes back with the reason."""
        path = self.run_dir(run_id)
        if not sync:
            return runs.read_run(path), ""
        backend = self._backend_for(path, token=token, api=api, sync_every_s=sync_every_s)
        try:
            return backend.status(path), ""
        except UserError as e:  # the job's service cannot be reached or refuses: show the folder as it is
            return runs.read_run(path), str(e)

    def status(self, run_id: str, *, token: str | None = None, api: Any = None) -> dict[str, Any]:
        """The run's state from its folder; a Hugging Face job's folder is first synced from the job's log."""
        state, stale = self.state(run_id, token=token, api=api)
        out = state.to_dict()
        out.pop("path", None)  # never reveal server paths
        if state.app_message:  # the failure in the app's words (its fields, not the command line's flags)
            out["message"] = state.app_message
        if out.get("message"):  # an upload by the name the user gave it, the server's folders unsaid
            out["message"] = self.shown(str(out["message"]))
        out["backend"] = backend_of(state.path)
        if stale:
            out["message"] = f"cannot read the job right now ({stale}); showing its last known state"
        return out

    def stop(self, run_id: str, *, token: str | None = None,
                      api: Any = None) -> dict[str, Any]:
        """Stop a run: a local one checkpoints at its next step (a queued one leaves the queue); a Hugging Face job is
        cancelled. Returns its state (a job's synced from its log)."""
        path = self.run_dir(run_id)
        backend = self._backend_for(path, token=token, api=api, sync_every_s=0.0)
        try:
            backend.stop(path)
            backend.status(path)  # a cancelled job: its end mirrored into the folder now
        except UserError as e:
            raise ServiceError(str(e)).in_app(app_message(e)) from e
        return self.status(run_id)

    def resume(self, run_id: str, *, client: str | None = None) -> str:
        """Continue a run from its last checkpoint: a local one through the queue; a ZeroGPU one is checked here and
        resumed by driving :meth:`train_chunks` again; a Hugging Face job cannot be resumed. On a shared server a
        local resume counts against the visitor's live runs as a start does (``client``: their address)."""
        path = self.run_dir(run_id)
        check_config_code(self.ws, RunConfig.load(path / runs.CONFIG_FILE))  # an older version's run may ask for code
        try:
            if self.ws.multi_user and backend_of(path) == "local":
                assert self.owner  # _run_dir refused a call with no owner
                with limits.ledger_lock(self.ws.root):
                    limits.check_visitor(self.ws.root, self.owner, client, exclude=run_id)
                    limits.check_disk(self.root, 0, "resuming a run")
                    rid = self._backend_for(path).resume(path)
                    limits.record_run(self.ws.root, path, self.owner, client)
                    return rid
            return self._backend_for(path).resume(path)
        except UserError as e:
            raise ServiceError(str(e)).in_app(app_message(e)) from e
        except ValueError as e:  # a bad queue or thread setting on the server
            raise ServiceError(str(e)) from None

    def logs(self, run_id: str, *, token: str | None = None, api: Any = None,
                 tail: int = 200) -> str:
        """The last ``tail`` lines of a run's output (a local process's log, a job's log, a ZeroGPU run's events)."""
        path = self.run_dir(run_id)
        try:
            return self.shown(self._backend_for(path, token=token, api=api).logs(path, tail=tail))
        except UserError as e:
            raise ServiceError(str(e)).in_app(app_message(e)) from e

    def shown(self, text: str) -> str:
        """A run's message or log as the owner sees it: each kept upload by its file name and, on a shared server,
        paths in the owner's folder relative to it (the server's folders are never shown to a visitor)."""
        text = without_upload_folders(text)
        if self.ws.multi_user:
            for folder in sorted({str(self.root.resolve()), str(self.root), str(self.ws.root.resolve()),
                                  str(self.ws.root)}, key=len, reverse=True):
                text = text.replace(folder + "/", "").replace(folder, ".")
        return text

    def check_download_room(self, source: Path, what: str) -> None:
        """On a shared server, a download is prepared (and kept FINETUNE_DOWNLOADS_MAX_AGE_H) only while the owner's
        disk plus about its size (that of ``source``, what it packs) stays within the owner's quota."""
        if not self.ws.multi_user:
            return
        size = limits.folder_bytes(source) if source.is_dir() else source.stat().st_size
        try:
            limits.check_disk(self.root, size, what)
        except ValueError as e:
            raise ServiceError(str(e)) from None

    def disk_usage(self) -> str:
        """The size of the owner's runs folder (with the quota on a shared server), as one line."""
        root = self.root
        if not self.ws.multi_user:
            return f"The runs folder uses {limits.folder_bytes(root) / 1e6:,.1f} MB."
        try:
            return limits.disk_usage_text(root)
        except ValueError as e:
            raise ServiceError(str(e)) from None

    def delete(self, run_id: str) -> str:
        """Delete one of the owner's runs that is not live (its folder: checkpoints, adapter, events); returns what
        the owner's folder uses afterwards."""
        path = self.run_dir(run_id)
        try:
            limits.delete_run(self.root, path)
        except ValueError as e:
            raise ServiceError(str(e)) from None
        return self.disk_usage()

    def states(self) -> list[runs.RunState]:
        """The owner's runs, newest first, read from their folders (the machine's queue moved on first, when a slot
        freed that no process of this app saw end)."""
        from ..backends import local

        try:
            local.dispatch(queue_dir(self.ws))
        except ValueError as e:  # a bad FINETUNE_MAX_CONCURRENT_RUNS on the server
            raise ServiceError(str(e)) from None
        return runs.list_runs(self.root)

    def statuses(self) -> list[dict[str, Any]]:
        """The owner's runs, newest first, as the API shows them (no server paths, no loss curves; their backend)."""
        out: list[dict[str, Any]] = []
        for s in self.states():
            d = s.to_dict()
            for key in ("path", "losses", "eval_losses"):
                d.pop(key, None)
            d["backend"] = backend_of(s.path)
            out.append(d)
        return out

    def backend(self, run_id: str) -> str:
        """Where one of the owner's runs trains: ``local`` | ``zerogpu`` | ``hf-jobs``."""
        return backend_of(self.run_dir(run_id))

    def push(self, run_id: str, repo_id: str, *, token: str | None = None,
             private: bool = True, ignore_template_mismatch: bool = False) -> str:
        """Push a finished run's adapter (with its model card) to a Hub model repo; returns the URL.

        Refused (:class:`verify.TemplateMismatch`) when the adapter's chat template does not render what training
        rendered, unless ``ignore_template_mismatch``."""
        from ..hub import push_adapter
        from ..verify import require_consistent

        token = hub_token(self.ws, token)
        folder = self.adapter_path(run_id)
        require_consistent(folder, action="push", ignore_mismatch=ignore_template_mismatch)
        return push_adapter(folder, repo_id, token=token, private=private)

    def loss_curves(self, run_ids: list[str]) -> list[dict[str, Any]]:
        """The train loss by step of several of the owner's runs, one row per point (run, step, loss): their
        curves overlaid."""
        out: list[dict[str, Any]] = []
        for rid in run_ids:
            out += [{"run": rid, "step": s, "loss": v} for s, v in runs.read_run(self.run_dir(rid)).losses]
        return out

    def events(self, run_id: str) -> list[dict[str, Any]]:
        from ..events import read_events

        return read_events(self.run_dir(run_id))

    def adapter_path(self, run_id: str | None) -> Path:
        """The adapter folder of one of the owner's runs: ``ID`` (the finished adapter), ``ID@40`` (the checkpoint
        of step 40) or ``ID@best`` / ``ID@best-<metric>`` (the checkpoint the run's evaluation ranks best, by exact
        match unless a metric of ``finetune.evaluate.METRICS`` is named)."""
        run_id, _, step = (run_id or "").partition("@")
        run_dir = self.run_dir(run_id)
        if step:
            return _checkpoint_adapter(run_dir, run_id, step)
        path = run_dir / ADAPTER_DIR
        if not is_adapter_dir(path):
            from ..adapter import adapter_file_missing

            missing = adapter_file_missing(path, f"run '{run_id}': {ADAPTER_DIR}")
            if missing:
                raise ServiceError(missing)
            raise ServiceError(f"run '{run_id}' has no adapter yet: it appears when the run finishes")
        return path

    def start_adapter_path(self, text: str) -> Path:
        """The adapter a new run of the owner starts from (``training.init_adapter``): one of the owner's runs,
        ``ID``, ``ID@STEP`` or ``ID@best`` (:meth:`adapter_path`), or an adapter folder already inside the owner's
        runs (a config saved by an earlier run names it so). Nothing outside the owner's own runs: not another user's
        adapter, not a folder of the server."""
        from ..adapter import find_adapter_dir

        path = Path(text).expanduser()
        if path.is_absolute() and path.resolve().is_relative_to(self.root.resolve()):
            folder = find_adapter_dir(path)
            if folder is not None:
                return folder
        if "/" in text or "\\" in text:
            raise ServiceError(f"training.init_adapter {text}: start from one of your runs, by its id (ID, ID@STEP or "
                               "ID@best, as in the run list)")
        try:
            return self.adapter_path(text).resolve()
        except ServiceError as e:
            raise ServiceError(f"training.init_adapter: {e}") from None

    def checkpoint_choices(self, run_id: str) -> list[str]:
        """``ID@step`` of each kept checkpoint of a run that can be used as an adapter, oldest first."""
        from ..adapter import checkpoint_step, find_adapter_dir

        run_dir = self.run_dir(run_id)
        return [f"{run_id}@{checkpoint_step(c)}" for c in runs.adapter_checkpoints(run_dir)
                if find_adapter_dir(c) not in (None, c)]

    def evaluate(self, run_id: str, test_file: str | Path | None, *,
                 checkpoints: str = "all", max_new_tokens: int = 0,
                 progress: Callable[[EvalProgress], None] | None = None) -> dict[str, Any]:
        """Evaluate one of the owner's runs (``ID``, ``ID@step``) on a test file (an upload, or the run's configured
        ``data.test_source`` when none is given); the report is also written into the run folder. ``max_new_tokens``
        0: sized from the references (``evaluate.answer_budget``); ``progress``: as ``evaluate.evaluate``'s."""
        from ..evaluate import evaluate as run_evaluation

        from ..evaluate import run_test_set

        folder = self.adapter_path(run_id)
        limit = 0
        if test_file:
            data: str | Path = self.keep_upload(test_file)
        else:
            own = run_test_set(self.run_dir(run_id.partition("@")[0]))
            if own is None:
                raise ServiceError("give a test file (prompts and reference answers), or set one (or a held-out test "
                                   "split) in the Dataset tab before training")
            data, limit = own.source, own.limit
        if not 0 <= max_new_tokens <= 4096:
            raise ServiceError(f"max_new_tokens must be 0 (sized from the references) or 1 to 4096, got "
                               f"{max_new_tokens}")
        try:
            return run_evaluation(folder, data, checkpoints=checkpoints, max_new_tokens=max_new_tokens,
                                  progress=progress, label=run_id, limit=limit)
        except UserError as e:  # a bad test file is said by the name it was uploaded with
            raise as_uploaded(e, test_file, Path(data)) from None

    def benchmark(self, run_id: str, tasks: str | list[str], *, limit: int = 0, test_file: str | Path | None = None,
                  progress: Callable[[BenchProgress], None] | None = None) -> dict[str, Any]:
        """General ability of one of the owner's runs beside its base: lm-eval's tasks, the bundled ones and an
        uploaded test file (:func:`bench_actions.run`); the report is also written into the run folder."""
        return bench_actions.run(self, run_id, tasks, limit=limit, test_file=test_file, progress=progress)

    def benchmark_plan(self, run_id: str, tasks: str | list[str], *, limit: int = 0,
                       test_file: str | Path | None = None) -> dict[str, Any]:
        """What a benchmark would score and its rough time on this machine (:func:`bench_actions.plan`)."""
        return bench_actions.plan(self, run_id, tasks, limit=limit, test_file=test_file)

    def make_dataset(self, recipe_yaml: str, documents: list[str] | None = None, *, token: str | None = None,
                     progress: Callable[[SynthProgress], None] | None = None) -> tuple[Path, SynthSummary]:
        """A dataset made from a recipe and the owner's uploaded documents, into the owner's folder
        (:func:`synth_actions.make`; a shared server refuses a generator URL)."""
        from ..hub import MOCK_OAUTH_TOKEN

        token = None if token == MOCK_OAUTH_TOKEN else token
        return synth_actions.make(self, recipe_yaml, documents, token=token, on_progress=progress)

    def eval_report(self, run_id: str) -> dict[str, Any] | None:
        """The latest evaluation report of one of the owner's runs (None when it has none)."""
        return runs.read_eval_report(self.run_dir(run_id.partition("@")[0]))

    def adapter_zip(self, run_id: str, out_dir: Path) -> Path:
        """The adapter folder as a zip file to download."""
        folder = self.adapter_path(run_id)
        self.check_download_room(folder, "zipping the adapter")
        out_dir.mkdir(parents=True, exist_ok=True)
        target = out_dir / f"{run_id}-adapter.zip"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    z.write(f, f.relative_to(folder))
        target.write_bytes(buf.getvalue())
        return target

    def chat_models(self, base_model: str | None, adapter: str | None) -> tuple[str | None, str]:
        """What the Playground, ``/chat``, ``/compare`` and ``/exact_prompt`` load: the adapter folder (one of the
        owner's runs or checkpoints, else a Hub adapter repo, else None for the base alone) and the base model (the
        one given, else the adapter's own base; empty: the embedded default). On a shared server the base an adapter
        names (``base_model_name_or_path``, which anyone can write into a Hub adapter) is checked as a typed one is."""
        from .. import inference, refs

        base = check_model_ref(self.ws, base_model or "")
        text = (adapter or "").strip()
        if not text:
            return None, base
        try:
            path = str(self.adapter_path(text))
        except ServiceError:
            ref = refs.classify(text, strict=False, local_first=False)
            if not (ref.kind == "hub" and ref.has_namespace):
                raise
            path = check_model_ref(self.ws, text, "adapter")  # a Hub repo id
        if not base and self.ws.multi_user:
            base = check_model_ref(self.ws, inference.adapter_base(path), f"base model of the adapter {text[:80]}")
        return path, base

    def export(self, run_id: str, fmt: str, quant: str, out_dir: Path, *,
                   push: str | None = None, token: str | None = None, private: bool = True,
                   progress: Callable[[float, str], None] | None = None) -> ExportDownload:
        """Export a finished run of this owner (see ``export.export_model``) into a new folder under ``out_dir``.

        A folder export (merged, ollama) is zipped for download; a Space is only pushed."""
        import shutil
        import uuid

        from ..export import default_out, export_model

        if push:
            token = hub_token(self.ws, token)
        folder = self.adapter_path(run_id)
        self.check_download_room(folder, "exporting a run")
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

    def arena_battle(self, contenders: list[str], prompt: str, *, base_model: str = "",
                     temperature: float = 0.0, max_new_tokens: int = 256, top_p: float = 0.9,
                     repetition_penalty: float = 1.0, seed: int = 0) -> dict[str, Any]:
        """Two to four contenders answer ``prompt`` in a hidden order (:func:`arena_actions.battle`)."""
        return arena_actions.battle(self, contenders, prompt, base_model=base_model, temperature=temperature,
                                    max_new_tokens=max_new_tokens, top_p=top_p,
                                    repetition_penalty=repetition_penalty, seed=seed)

    def arena_vote(self, battle_id: str, verdict: str) -> dict[str, Any]:
        """Record a vote on one of the owner's open battles (:func:`arena_actions.vote`)."""
        return arena_actions.vote(self, battle_id, verdict)

    def arena_votes(self) -> int:
        """How many votes the owner has cast."""
        return arena_actions.votes(self)

    def arena_standings(self) -> list[dict[str, Any]]:
        """The owner's arena standings, best first (:func:`arena_actions.standings`)."""
        return arena_actions.standings(self)

    def arena_export(self, out_dir: Path) -> Path:
        """A copy of the owner's votes (JSON lines) to download."""
        return arena_actions.export(self, out_dir)

    def run_dir(self, run_id: str | None) -> Path:
        if not run_id:  # a page's run picker left empty (None)
            raise ServiceError("pick a run first (the run list shows yours)")
        try:
            path = runs.run_path(run_id, self.root)
        except runs.RunError as e:
            raise ServiceError(str(e)).in_app(app_message(e)) from e
        if not (path / runs.CONFIG_FILE).exists():
            raise ServiceError(f"no run '{run_id}' among your runs; pick one from the run list")
        return path

    def _backend_for(self, path: Path, *, token: str | None = None, api: Any = None,
                     sync_every_s: float | None = None) -> Backend:
        """The backend a run started on (recorded in its folder), with this request's settings. On a shared server a
        Hugging Face job is read and cancelled with the caller's sign-in only (:func:`checks.hub_token`)."""
        from ..backends import backend_for

        if self.ws.multi_user and backend_of(path) == "hf-jobs":
            token = hub_token(self.ws, token, "follow or stop a Hugging Face job")
        try:
            every = SYNC_EVERY_S if sync_every_s is None else sync_every_s
            return backend_for(path, queue_dir=queue_dir(self.ws), token=token, api=api, sync_every_s=every,
                               caps=run_caps(self.ws))
        except runs.RunError as e:
            raise ServiceError(str(e)).in_app(app_message(e)) from e


def _checkpoint_adapter(run_dir: Path, run_id: str, step: str) -> Path:
    from ..adapter import checkpoint_step, find_adapter_dir

    kept = {checkpoint_step(c): c for c in runs.adapter_checkpoints(run_dir)}
    listed = ", ".join(f"{run_id}@{s}" for s in kept) or "none yet"
    if step == "best" or step.startswith("best-"):
        from ..evaluate import METRICS, best_checkpoint

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
    from ..adapter import adapter_file_missing

    missing = adapter_file_missing(kept[int(step)], f"run '{run_id}': {runs.CHECKPOINTS}/checkpoint-{int(step)}")
    if missing:
        raise ServiceError(missing)
    if folder is None or folder == kept[int(step)]:
        raise ServiceError(f"checkpoint {step} of run '{run_id}' has no adapter folder (saved by an older "
                           "version); use the finished run")
    return folder
