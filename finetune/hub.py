"""Push adapters and formatted datasets to the Hub.

Tokens come from the signed-in user (OAuth), ``HF_TOKEN`` or an explicit argument; they are passed to
huggingface_hub calls only, never logged, stored or written into a file.
"""

from __future__ import annotations

import os
from pathlib import Path

# Locally, Gradio's OAuth hands out this literal instead of a real token: it must never reach the Hub.
MOCK_OAUTH_TOKEN = "mock-oauth-token-for-local-dev"


class HubError(ValueError):
    """A push that cannot happen; the message says what to change (and never contains the token)."""


def resolve_token(token: str | None) -> str:
    token = token or os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if not token or token == MOCK_OAUTH_TOKEN:
        raise HubError("no Hugging Face token: sign in with the button at the top (on a Space) or set HF_TOKEN")
    return token


def check_repo_id(repo_id: str) -> str:
    parts = (repo_id or "").strip().split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise HubError(f"'{repo_id}' is not a repo id; use user/name, e.g. alice/llama2-guanaco-adapter")
    return "/".join(parts)


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def push_folder(folder: Path, repo_id: str, *, token: str | None = None, private: bool = True,
                repo_type: str = "model", revision: str | None = None,
                commit_message: str = "Upload with finetune", api=None) -> str:
    """Create the repo if missing (and the branch), upload the folder, return the repo URL."""
    from huggingface_hub import HfApi

    repo_id = check_repo_id(repo_id)
    token = resolve_token(token)
    api = api or HfApi()
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type=repo_type, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, token=token, repo_type=repo_type, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=str(folder), token=token, repo_type=repo_type,
                          revision=revision, commit_message=commit_message)
    except HubError:
        raise
    except Exception as e:  # noqa: BLE001 - network/auth/permission errors become one message
        raise HubError(_scrub(f"push to {repo_id} failed: {str(e).splitlines()[0] if str(e) else e}", token)) from None
    return str(getattr(url, "url", url))


def push_adapter(adapter_dir: Path, repo_id: str, **kw) -> str:
    """Push a run's ``adapter/`` folder (PEFT weights, template, config, metrics, model card)."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").exists():
        raise HubError(f"{adapter_dir} holds no adapter; push a finished run")
    return push_folder(adapter_dir, repo_id, repo_type="model", **kw)


def push_dataset(jsonl_file: Path, repo_id: str, **kw) -> str:
    """Push a formatted JSONL file as a dataset repo (``data/train.jsonl``)."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "data").mkdir()
        shutil.copy(jsonl_file, Path(tmp) / "data" / "train.jsonl")
        (Path(tmp) / "README.md").write_text(
            "---\nconfigs:\n- config_name: default\n  data_files: data/train.jsonl\ntags:\n- finetune\n---\n\n"
            "Formatted with finetune: columns `text`, `prompt`, `completion`, `messages`.\n"
        )
        return push_folder(Path(tmp), repo_id, repo_type="dataset", **kw)
