"""What the service checks before it acts: the errors it raises, the caller's Hub token on a shared server, the
model and dataset names a visitor may give, the backend names and the machine's queue. No owner here: these read
only whether the workspace is shared (:class:`Shared`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from .. import limits, runs
from ..config import RunConfig, validate
from ..data import is_hub_dataset_id
from ..errors import UserError, app_message
from ..limits import RunCaps


class Shared(Protocol):
    """What a check reads of a workspace (``service.Workspace``): its root and whether many users share it."""

    @property
    def root(self) -> Path: ...

    @property
    def multi_user(self) -> bool: ...


class Owner(Protocol):
    """What an action module (``arena_actions``, ``bench_actions``, ``synth_actions``) needs of an owner's space:
    ``space.OwnerSpace`` is one, and the modules need not import it (it imports them)."""

    @property
    def root(self) -> Path: ...

    @property
    def ws(self) -> Shared: ...

    def adapter_path(self, run_id: str | None) -> Path: ...

    def run_dir(self, run_id: str | None) -> Path: ...

    def keep_upload(self, path: str | Path) -> Path: ...

    def check_download_room(self, source: Path, what: str) -> None: ...


class ServiceError(ValueError, UserError):
    """A request the user can fix; the message says how. Made from a library's error, it chains it: the original
    type (``RunError``, ``HubError``...) stays its ``__cause__``."""


SIGN_IN_TO = "sign in with Hugging Face to {action}: on this shared app only your own sign-in acts on the Hub"


def hub_token(ws: Shared, token: str | None, action: str = "push") -> str | None:
    """The token a caller's Hub action (push, job) uses. On a shared server only the caller's own sign-in token:
    without one the action is refused, never done with the server's ``HF_TOKEN`` (an anonymous visitor would act as
    the Space's owner). On a single-user machine ``None`` lets the library fall back to ``HF_TOKEN``."""
    from ..hub import MOCK_OAUTH_TOKEN

    token = None if token == MOCK_OAUTH_TOKEN else (token or None)  # gradio's local stand-in is no sign-in
    if ws.multi_user and not token:
        raise ServiceError(SIGN_IN_TO.format(action=action))
    return token


def check_config_code(ws: Shared, config: RunConfig) -> None:
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


def one_process_here(ws: Shared, config: RunConfig, backend: str) -> None:
    """On a shared server a run on this machine trains in one process: several (``training.distributed`` ddp or
    fsdp, ``training.num_processes`` over 1) would take more of the machine than the limits count for one run, so
    they are refused, and ``auto`` is made ``none`` (one GPU), whatever GPUs the server has. A Hugging Face Job
    runs on the visitor's own flavor, with as many GPUs as it has."""
    t = config.training
    if not ws.multi_user or backend != "local":
        return
    if t.distributed in ("ddp", "fsdp") or t.num_processes > 1:
        raise ServiceError(f"training.distributed {t.distributed} / training.num_processes {t.num_processes}: this "
                           "shared server trains each run in one process on one GPU; set training.distributed auto "
                           "and training.num_processes 0, or train on several GPUs as a Hugging Face Job (a "
                           "multi-GPU flavor such as l40sx4) or on your own machine")
    t.distributed = "none"


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


def check_model_ref(ws: Shared, text: str, what: str = "base model") -> str:
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


def parse_config(config_yaml: str) -> RunConfig:
    cfg = RunConfig.from_yaml(config_yaml or "", source="config")
    return validate(cfg, source="config")


BACKEND_NAMES = {"local": "local", "": "local", "zerogpu": "zerogpu", "hf-jobs": "hf-jobs", "hfjobs": "hf-jobs"}


def backend_name(backend: str | None) -> str:
    """``local`` | ``zerogpu`` | ``hf-jobs`` (``hfjobs`` is accepted too)."""
    name = BACKEND_NAMES.get((backend or "").strip().lower())
    if name is None:
        raise ServiceError(f"unknown backend '{backend}'; choose local, zerogpu or hf-jobs")
    return name


def backend_of(path: Path) -> str:
    """Where a run trains: ``local`` | ``zerogpu`` | ``hf-jobs`` (recorded in its folder: runs.read_backend)."""
    try:
        return runs.read_backend(path)
    except runs.RunError as e:
        raise ServiceError(str(e)).in_app(app_message(e)) from e


def queue_dir(ws: Shared) -> Path:
    """The machine-wide training queue: one for every owner of the workspace."""
    from .. import slots

    return slots.queue_dir(ws.root)


def run_caps(ws: Shared) -> RunCaps | None:
    """How far one run may train here: the server's caps on a shared server (limits.run_caps), none on one's own."""
    try:
        return limits.run_caps() if ws.multi_user else None
    except ValueError as e:  # an unreadable FINETUNE_MAX_STEPS / FINETUNE_MAX_RUN_MINUTES on the server
        raise ServiceError(str(e)) from None


def check_zerogpu(available: tuple[bool, str]) -> None:
    """Refuse a ZeroGPU run where ZeroGPU is not offered (``available``: zerogpu.available() or the app's
    setting), saying why and what to choose instead."""
    ok, why = available
    if not ok:
        raise ServiceError(f"ZeroGPU is not available: {why}; choose 'This machine' or Hugging Face Jobs")


def check_data_chosen(config_yaml: str, data_file: str | Path | None, use_sample: bool) -> None:
    """The app's Start button: a run with no dataset trains on the bundled sample only when the user said so."""
    if not data_file and not parse_config(config_yaml).data.source and not use_sample:
        raise ServiceError("no dataset chosen: upload a file or give a Hub dataset id (1 · Dataset), or tick "
                           "'Train on the bundled sample' to try the app on its city/year example")


def push_dataset(ws: Shared, formatted: str | Path, repo_id: str, *, token: str | None = None,
                 private: bool = True) -> str:
    """Push a formatted dataset (the Dataset tab's JSONL) to a Hub dataset repo; returns the URL."""
    from ..hub import push_dataset as push_jsonl
    from ..synth.card import card_for

    token = hub_token(ws, token)
    return push_jsonl(Path(formatted), repo_id, card=card_for(Path(formatted)), token=token, private=private)
