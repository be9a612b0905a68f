"""Merge an adapter into its base and write (or push) a plain 16-bit transformers model (no peft needed to load it).

>>> merge_adapter("runs/20261123-101500-3f9c2a7d1b", "merged", dtype="bfloat16")  # doctest: +SKIP
PosixPath('merged')
>>> AutoModelForCausalLM.from_pretrained("merged")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .adapter import CONFIG_FILE, copy_template_info, has_tokenizer, read_base_model
from .models import ModelError
from .refs import is_hub_id

if TYPE_CHECKING:
    from huggingface_hub import HfApi

    from .config import ModelConfig
    from .models import Tokenizer

DTYPES = ("bfloat16", "float16")
MERGED_CARD = "README.md"


def merge_adapter(adapter: str | Path, out: str | Path, *, model: str | None = None, dtype: str = "bfloat16",
                  ignore_template_mismatch: bool = False) -> Path:
    """Load the base unquantized in ``dtype``, merge the LoRA weights into it and save model + tokenizer.

    The merged model keeps the adapter's tokenizer and so its chat template: an adapter whose chat template does
    not render what training rendered (:func:`verify.require_consistent`) is refused unless
    ``ignore_template_mismatch``.

    A QLoRA adapter is merged into the 16-bit base, not the 4-bit one it trained against: rounding the merged
    weights back to 4 bits would lose the update. Peak memory is the base in ``dtype`` (2 bytes/param) on the
    CPU; peft computes each LoRA delta in float32 before adding it.
    """
    import torch
    from peft import PeftModel

    from . import inference, models
    from .config import QuantizationConfig
    from .verify import require_consistent

    if dtype not in DTYPES:
        raise ModelError(f"dtype '{dtype}' is not a 16-bit type; use one of {', '.join(DTYPES)}")
    folder = inference.adapter_dir(adapter)
    require_consistent(folder, action="merge", ignore_mismatch=ignore_template_mismatch)
    base_name = model or read_base_model(folder)
    if not base_name:
        raise ModelError(f"{folder / CONFIG_FILE} names no base model; pass the base with --model")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} is not empty; choose a new folder for the merged model")
    cfg = inference.base_config(base_name)
    base, resolved = models.load_model(cfg, QuantizationConfig(load_in="none"), "cpu", dtype=getattr(torch, dtype))
    try:
        merged = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        raise ModelError(f"the adapter {adapter} does not fit {base_name} (trained on {read_base_model(folder)}): "
                         f"{str(e).strip().splitlines()[0][:200]}") from None
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp, safe_serialization=True)
    _tokenizer(folder, cfg).save_pretrained(tmp)
    copy_template_info(folder, tmp)  # our own inference keeps formatting prompts as training did
    (tmp / MERGED_CARD).write_text(merged_card(base_name, folder, dtype), encoding="utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        out.rmdir()
    os.replace(tmp, out)
    return out


def _tokenizer(folder: Path, cfg: ModelConfig) -> Tokenizer:
    """The tokenizer saved with the adapter (it may carry a pad token set for training), else the base's."""
    from transformers import AutoTokenizer

    from . import models

    if has_tokenizer(folder):
        return AutoTokenizer.from_pretrained(str(folder))
    return models.load_tokenizer(cfg)


def merged_card(base_model: str, adapter_folder: Path, dtype: str) -> str:
    """A short card for the merged model: ``base_model_relation: finetune`` (one base, weights changed)."""
    from .card import UNPUSHED_REPO, base_license

    meta: dict[str, Any] = {"library_name": "transformers"}
    if is_hub_id(base_model):
        meta.update(base_model=base_model, base_model_relation="finetune")
    meta["pipeline_tag"] = "text-generation"
    license = base_license(base_model)
    if license:
        meta["license"] = license
    meta["tags"] = ["finetune", "lora", "merged"]
    name = base_model if is_hub_id(base_model) else Path(base_model).name
    return "\n".join([
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {name} with a merged LoRA adapter", "",
        f"The LoRA adapter was merged into the {dtype} weights of {name}: load it with plain transformers.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{UNPUSHED_REPO}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{UNPUSHED_REPO}")',
        "```", "",
    ])


def push_merged(adapter: str | Path, repo_id: str, *, model: str | None = None, dtype: str = "bfloat16",
                token: str | None = None, private: bool = True, revision: str | None = None,
                commit_message: str = "Upload merged model with finetune", api: HfApi | None = None,
                ignore_template_mismatch: bool = False) -> str:
    """Merge the adapter into a 16-bit copy of its base (see :func:`merge_adapter`) and push the result."""
    from .hub import check_repo_id, push_folder, resolve_token, stage_card

    repo_id = check_repo_id(repo_id)
    resolve_token(token)  # fail before minutes of merging, not after
    with tempfile.TemporaryDirectory(prefix="finetune-merge-") as tmp:
        merged = merge_adapter(adapter, Path(tmp) / "merged", model=model, dtype=dtype,
                               ignore_template_mismatch=ignore_template_mismatch)
        out = Path(tmp) / "staged"
        stage_card(merged, out, repo_id)
        return push_folder(out, repo_id, repo_type="model", token=token, private=private, revision=revision,
                           commit_message=commit_message, api=api)
