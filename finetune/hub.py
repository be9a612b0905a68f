"""Push adapters, formatted datasets and any model folder to the Hub, and explain Hub failures in one line.

(A merged model is pushed by ``export.push_merged``: merging is export's, the upload is ``push_folder``.)

Tokens come from the signed-in user (OAuth), ``HF_TOKEN`` or an explicit argument; they are passed to
huggingface_hub calls only, never logged, stored or written into a file, and scrubbed from every message.

>>> push_adapter("runs/20261123-101500-3f9c2a7d1b", "alice/city-year-lora", revision="v1")  # doctest: +SKIP
'https://huggingface.co/alice/city-year-lora'
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .adapter import CONFIG_FILE, check_adapter_files, find_adapter_dir
from .errors import UserError, is_programming_error
from .refs import classify

if TYPE_CHECKING:
    from huggingface_hub import HfApi

# Locally, Gradio's OAuth hands out this literal instead of a real token: it must never reach the Hub.
MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"
TOKENS_PAGE = "https://huggingface.co/settings/tokens"


class HubError(ValueError, UserError):
    """A push or download that cannot happen; the message says what to change (and never contains the token)."""


def resolve_token(token: str | None) -> str:
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token or token == MOCK_OAUTH_TOKEN:
        raise HubError("no Hugging Face token: sign in with the button at the top (on a Space) or set HF_TOKEN")
    return token


SERVER_TOKEN_READS_ENV = "FINETUNE_SERVER_TOKEN_READS"


def withhold_server_token() -> bool:
    """For a shared server, at start: huggingface_hub stops sending this machine's token (``HF_TOKEN``) with
    requests it is not handed explicitly, so what a visitor names (a private model, a dataset) is read as an
    anonymous reader would read it, not with the Space owner's access. ``FINETUNE_SERVER_TOKEN_READS=1`` keeps the
    token for reads (gated or private models the owner wants every visitor to use). Pushes and jobs never use it
    there (``service.hub_token``). Returns whether reads still carry the token."""
    from huggingface_hub import constants

    if os.environ.get(SERVER_TOKEN_READS_ENV, "0") == "1":
        return True
    constants.HF_HUB_DISABLE_IMPLICIT_TOKEN = True  # read by huggingface_hub at each request (utils/_headers.py)
    return False


def check_repo_id(repo_id: str) -> str:
    """``user/name`` by the Hub's naming rule (a push target: never looked up as a local path), stripped."""
    text = (repo_id or "").strip()
    ref = classify(text, local_first=False)
    if ref.kind != "hub" or not ref.has_namespace:
        raise HubError(f"'{repo_id}' is not a repo id; use user/name, e.g. alice/llama2-guanaco-adapter")
    return text


def _scrub(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _status(e: BaseException) -> int | None:
    return getattr(getattr(e, "response", None), "status_code", None)


def _is_connection_error(e: BaseException) -> bool:
    import httpx2  # huggingface_hub 2.x's HTTP client

    return isinstance(e, (httpx2.TransportError, ConnectionError))


def describe_error(e: BaseException, repo_id: str, *, action: str, revision: str | None = None,
                   token: str | None = None) -> str:
    """One line that says what went wrong with ``action`` (e.g. "push to", "download") and what to do.

    >>> describe_error(ValueError("boom"), "alice/x", action="push to")
    'cannot push to alice/x: boom'
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    namespace = repo_id.split("/")[0]
    status = _status(e)
    pushing = action.startswith("push")
    if isinstance(e, RevisionNotFoundError):
        text = f"{repo_id} has no branch, tag or commit '{revision}'; check the revision name"
    elif isinstance(e, GatedRepoError):
        text = f"{repo_id} is gated: accept its conditions on the Hub page, then sign in or set HF_TOKEN"
    elif status == 401 and (pushing or not isinstance(e, RepositoryNotFoundError)):
        # the Hub answers 401 both for a bad token and (as RepositoryNotFoundError) for a repo a reader may not see
        text = (f"the Hugging Face token was rejected (401: invalid, expired or revoked); create a new one at "
                f"{TOKENS_PAGE} and sign in again or set HF_TOKEN")
    elif status == 403:
        text = (f"the token may not write to '{namespace}' (403 forbidden); use a token with write access "
                f"(fine-grained: 'write' on {namespace}) or push to your own namespace")
    elif isinstance(e, RepositoryNotFoundError):
        text = (f"repo {repo_id} not found on the Hub; check the id (org/name), or, if it is private, sign in "
                "or set HF_TOKEN with read access")
        if pushing:
            text = f"repo {repo_id} could not be created or found; check that '{namespace}' is your user name or one of your organisations"
    elif isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)) and constants.HF_HUB_OFFLINE:
        text = (f"{repo_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 "
                "blocks downloads; download it once online, or point at a local folder")
    elif _is_connection_error(e) or isinstance(e, LocalEntryNotFoundError):
        text = f"cannot reach the Hub at {constants.ENDPOINT}; check the network (or HF_ENDPOINT) and try again"
    else:
        first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
        text = first
    return _scrub(f"cannot {action} {repo_id}: {text}", token)


# ---------------------------------------------------------------------------------------------
# push


def push_folder(folder: Path, repo_id: str, *, token: str | None = None, private: bool = True,
                repo_type: str = "model", revision: str | None = None,
                commit_message: str = "Upload with finetune", api: HfApi | None = None,
                space_sdk: str | None = None) -> str:
    """Create the repo if missing (and the branch ``revision``), upload the folder, return the repo URL.

    ``space_sdk`` ("gradio"): the SDK of a Space repo (``repo_type="space"``) when it is created."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    token = resolve_token(token)
    api = api or HfApi()
    try:
        if space_sdk:
            url = api.create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True,
                                  space_sdk=space_sdk)
        else:
            url = api.create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, token=token, repo_type=repo_type, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type=repo_type,
                          revision=revision, commit_message=commit_message)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - network/auth/permission errors become one message without the token
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise HubError(describe_error(e, repo_id, action="push to", revision=revision, token=token)) from None
    return str(getattr(url, "url", url))


def find_adapter(path: str | Path) -> Path:
    """A run's ``adapter/`` folder from a run folder or an adapter folder."""
    from .adapter import adapter_file_missing

    folder = find_adapter_dir(path)
    if folder is None and (missing := adapter_file_missing(path)):
        raise HubError(missing)
    if folder is None:
        raise HubError(f"{Path(path)} holds no adapter ({CONFIG_FILE}); push a finished run")
    return folder


def stage_card(src: Path, dst: Path, repo_id: str) -> None:
    """Copy a folder for upload with the card's loading snippet naming the repo it is pushed to."""
    from .card import UNPUSHED_REPO

    from .adapter import strip_local_paths

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".*", "*.tmp"))
    strip_local_paths(dst)  # published: this machine's folders left out of the run config
    card = dst / "README.md"
    if card.exists():
        card.write_text(card.read_text(encoding="utf-8").replace(UNPUSHED_REPO, repo_id), encoding="utf-8")


def stage_evaluation(src: Path, dst: Path, repo_id: str) -> bool:
    """Put the run's evaluation (``runs/<id>/eval/report.json``, see ``finetune.evaluate``) on a staged card:
    the results table, ``model-index`` metadata, the metric curve and the report itself. False when the run has
    no evaluation of this adapter's step."""
    from .adapter import adapter_step
    from .card import EVAL_CURVE_FILE, EVAL_REPORT_FILE, add_evaluation, evaluated_metrics, plot_eval_curve
    from .io import atomic_write_json
    from .runs import read_eval_report, run_of

    run_dir = run_of(src)
    report = read_eval_report(run_dir) if run_dir is not None else None
    card = dst / "README.md"
    step = adapter_step(src)
    if report is None or not card.exists() or evaluated_metrics(report, step) is None:
        return False
    curve = EVAL_CURVE_FILE if plot_eval_curve(report, dst / EVAL_CURVE_FILE) else None
    card.write_text(add_evaluation(card.read_text(encoding="utf-8"), report, repo_id.split("/")[-1], step, curve),
                    encoding="utf-8")
    atomic_write_json(dst / EVAL_REPORT_FILE, report)
    return True


def stage_benchmark(src: Path, dst: Path, repo_id: str) -> bool:
    """Put the run's benchmark (``runs/<id>/eval/benchmark.json``, see ``finetune.benchmark``) on a staged card:
    ``model-index`` results, the "General ability" table, and the pushed evaluation report's ``benchmark``. False
    when the run has no benchmark of this adapter's step."""
    from .adapter import adapter_step
    from .card import EVAL_REPORT_FILE, add_benchmark
    from .io import atomic_write_json
    from .runs import read_bench_report, run_of

    run_dir = run_of(src)
    bench = read_bench_report(run_dir) if run_dir is not None else None
    card = dst / "README.md"
    if bench is None or not card.exists() or bench.get("step") != adapter_step(src):
        return False
    card.write_text(add_benchmark(card.read_text(encoding="utf-8"), bench, repo_id.split("/")[-1]), encoding="utf-8")
    report_file = dst / EVAL_REPORT_FILE
    report = json.loads(report_file.read_text(encoding="utf-8")) if report_file.exists() else {}
    atomic_write_json(report_file, {**report, "benchmark": bench})  # joined with the run's evaluation
    return True


def push_adapter(adapter_dir: Path, repo_id: str, *, token: str | None = None, private: bool = True,
                 revision: str | None = None, commit_message: str = "Upload LoRA adapter with finetune",
                 api: HfApi | None = None) -> str:
    """Push a run's ``adapter/`` folder (PEFT weights, template, config, metrics, loss curve, model card).

    ``adapter_dir`` may also be the run folder. Returns the repo URL.
    """
    from .models import ModelError

    folder = find_adapter(adapter_dir)
    repo_id = check_repo_id(repo_id)
    try:  # an adapter our own loader would refuse (pickles, code) is not published either
        check_adapter_files(folder)
    except ModelError as e:
        raise HubError(str(e)) from None
    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staged = Path(tmp) / "adapter"
        stage_card(folder, staged, repo_id)
        stage_evaluation(folder, staged, repo_id)
        stage_benchmark(folder, staged, repo_id)
        return push_folder(staged, repo_id, repo_type="model", token=token, private=private, revision=revision,
                           commit_message=commit_message, api=api)


def push_dataset(jsonl_file: Path, repo_id: str, *, card: str | None = None, **kw: Any) -> str:
    """Push a formatted JSONL file as a dataset repo (``data/train.jsonl``); ``card``: its README (a made dataset's,
    ``synth.card``), else the formatted file's."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        shutil.copy(jsonl_file, Path(tmp) / "data" / "train.jsonl")
        (Path(tmp) / "README.md").write_text(card or (
            "---\nconfigs:\n- config_name: default\n  data_files: data/train.jsonl\ntags:\n- finetune\n---\n\n"
            "Formatted with finetune: columns `text`, `prompt`, `completion`, `messages`.\n"
        ))
        return push_folder(Path(tmp), repo_id, repo_type="dataset", **kw)


HUB_SEARCH_MIN_CHARS = 3  # a shorter text matches half the Hub


def search_models(text: str, limit: int = 20) -> list[str]:
    """Text-generation model repos on the Hub whose id contains ``text``, most downloaded first; anonymous (never
    the server's token). Raises :class:`HubError` when the Hub cannot be reached."""
    from huggingface_hub import HfApi

    text = text.strip()
    if len(text) < HUB_SEARCH_MIN_CHARS:
        return []
    try:
        found = HfApi().list_models(search=text[:100], pipeline_tag="text-generation", sort="downloads", limit=limit,
                                    token=False)
        return [m.id for m in found]
    except Exception as e:  # noqa: BLE001 - the Hub's refusals and connection errors become a message; bugs raise
        if is_programming_error(e):
            raise
        raise HubError(describe_error(e, text, action="search the Hub for models")) from None
