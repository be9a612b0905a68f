"""The adapter folder: what a finished run leaves in ``<run>/adapter`` and an adapter repo on the Hub holds.

A plain PEFT adapter (``adapter_config.json`` naming the base model, ``adapter_model.safetensors``; written
by peft), the tokenizer, a model card, and finetune's own files: the prompt template the run trained with,
the run's config and its metrics. This module is the only one that names, reads or writes these files, and
it decides which files an adapter may hold at all (no pickles, no code).

>>> find_adapter_dir("runs/20261123-101500-3f9c2a7d1b")  # doctest: +SKIP
PosixPath('runs/20261123-101500-3f9c2a7d1b/adapter')
>>> read_template_info(find_adapter_dir("runs/20261123-101500-3f9c2a7d1b"))  # doctest: +SKIP
{'template': 'chatml', 'system_prompt': '', 'bos': '', 'eos': '<|im_end|>', 'stop_strings': ['<|im_end|>']}
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .io import atomic_write_json, atomic_write_text
from .models import ModelError

if TYPE_CHECKING:
    from .config import LoraSettings, RunConfig

ADAPTER_DIR = "adapter"  # a run folder's finished adapter: <run>/adapter
CONFIG_FILE = "adapter_config.json"  # peft's; its base_model_name_or_path names the base model
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's LoRA weights
TEMPLATE_FILE = "finetune_template.json"  # the prompt template training used, so inference formats alike
RUN_CONFIG_FILE = "run_config.yaml"  # the run's full config (no secrets), to reproduce the run
METRICS_FILE = "metrics.json"  # final losses, steps, runtime
TOKENIZER_FILE = "tokenizer_config.json"  # present when the tokenizer was saved next to the adapter
WEIGHTS_FILE = "adapter_model.safetensors"  # peft's LoRA weights
# What an adapter repo needs for inference (weights, config, tokenizer, template, card); not checkpoints.
ADAPTER_FILES = ["*.json", "*.safetensors", "*.md", "*.yaml", "*.jinja", "*.model", "*.txt"]
# Files an adapter must not carry: pickles run code when unpickled (torch.load, joblib), and code files are
# what a `trust_remote_code` load would import. An adapter that holds any of them is refused as a whole,
# whether it comes from a folder or a Hub repo: weights load from safetensors only.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
CODE_SUFFIXES = (".py", ".pyc", ".pyo", ".so", ".dll", ".dylib", ".sh", ".exe")
# Prompts of an adapter saved without a template (trained elsewhere) use the tokenizer's chat template.
DEFAULT_TEMPLATE_INFO: Mapping[str, Any] = MappingProxyType({"template": "model", "system_prompt": ""})


# ---------------------------------------------------------------------------------------------
# where the adapter is


def is_adapter_dir(folder: str | Path) -> bool:
    """A folder holding a PEFT adapter: its ``adapter_config.json`` and its weights (an adapter without weights is
    not an adapter: :func:`adapter_file_missing` is the message that names the missing file)."""
    return (Path(folder) / CONFIG_FILE).is_file() and (Path(folder) / WEIGHTS_FILE).is_file()


def adapter_file_missing(path: str | Path, label: str | None = None) -> str | None:
    """When ``path`` (an adapter folder, a run or a checkpoint folder) holds an adapter that lost one of its two files
    (``adapter_config.json`` or ``adapter_model.safetensors``; for a run or checkpoint, its ``adapter/`` folder
    without either): the message naming the missing file and the fix, with ``label`` for the folder (a run id, so a
    server's paths stay private). None when the adapter is whole or there is none at all."""
    p = Path(path)
    for folder, shown in ((p / ADAPTER_DIR, f"{label}/{ADAPTER_DIR}" if label else str(p / ADAPTER_DIR)),
                          (p, label or str(p))):
        config, weights = (folder / CONFIG_FILE).is_file(), (folder / WEIGHTS_FILE).is_file()
        if config and weights:
            return None
        own = folder.name == ADAPTER_DIR and folder.is_dir() and any(folder.iterdir())  # a run's adapter/, emptied
        if config or weights or own:
            missing = WEIGHTS_FILE if config else CONFIG_FILE
            what = "weights" if config else "LoRA settings"
            fix = ("resume the run (`finetune train --run-dir RUN`, or Resume in the app) to write it again from its "
                   "last checkpoint, or use one of its checkpoints (RUN@STEP)"
                   if folder.name == ADAPTER_DIR and checkpoint_step(folder) is None  # a run's, not a checkpoint's
                   else "restore the file, or use another checkpoint or adapter")
            return f"{shown}/{missing} is missing: the adapter has no {what} without it; {fix}"
    return None


def find_adapter_dir(path: str | Path) -> Path | None:
    """The adapter folder of a run folder (``<run>/adapter``) or of a checkpoint
    (``<run>/checkpoints/checkpoint-N/adapter``, see :func:`write_checkpoint_adapter`), or ``path`` itself when it
    is one; else None."""
    p = Path(path)
    if is_adapter_dir(p / ADAPTER_DIR):
        return p / ADAPTER_DIR
    if is_adapter_dir(p):
        return p
    return None


def checkpoint_step(path: str | Path) -> int | None:
    """The step of a checkpoint folder (``.../checkpoint-40`` or its ``adapter`` folder), else None."""
    p = Path(path)
    name = p.parent.name if p.name == ADAPTER_DIR else p.name
    step = name.rsplit("-", 1)[-1]
    return int(step) if name.startswith("checkpoint-") and step.isdigit() else None


def adapter_step(folder: str | Path) -> int | None:
    """The training step an adapter folder holds: its checkpoint's, else the steps in its metrics; None if unknown."""
    step = checkpoint_step(folder)
    if step is not None:
        return step
    try:
        steps = json.loads((Path(folder) / METRICS_FILE).read_text()).get("steps")
    except (OSError, ValueError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


def write_checkpoint_adapter(checkpoint: Path, config: RunConfig, tokenizer: Any, base_name: str,
                             metrics: dict[str, Any], system_prompt: str | None = None) -> Path:
    """Make a training checkpoint usable as an adapter: ``<checkpoint>/adapter/`` holds its LoRA weights and
    config (naming ``base_name``), the tokenizer with the trained template, and finetune's files, and none of
    the checkpoint's pickles (optimizer, scheduler, RNG state). ``find_adapter_dir(checkpoint)`` then finds it,
    so evaluation, the Playground, push and merge take a checkpoint as they take a finished run.

    >>> write_checkpoint_adapter(Path("runs/ID/checkpoints/checkpoint-40"), cfg, tok, "org/base", {})  # doctest: +SKIP
    PosixPath('runs/ID/checkpoints/checkpoint-40/adapter')
    """
    out = Path(checkpoint) / ADAPTER_DIR
    tmp = Path(checkpoint) / (ADAPTER_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    peft_config = json.loads((Path(checkpoint) / CONFIG_FILE).read_text())
    peft_config["base_model_name_or_path"] = base_name
    atomic_write_json(tmp / CONFIG_FILE, peft_config)
    shutil.copy(Path(checkpoint) / WEIGHTS_FILE, tmp / WEIGHTS_FILE)
    write_tokenizer(tmp, config, tokenizer, system_prompt)
    write_run_files(tmp, config, tokenizer, metrics, system_prompt)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def read_base_model(folder: str | Path) -> str:
    """The base model an adapter was trained on (``base_model_name_or_path``; empty when it names none)."""
    cfg = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return str(cfg.get("base_model_name_or_path") or "")


def read_lora_config(folder: str | Path) -> dict[str, Any]:
    """peft's ``adapter_config.json`` of an adapter folder, as a dict (r, lora_alpha, target_modules, ...)."""
    cfg: dict[str, Any] = json.loads((Path(folder) / CONFIG_FILE).read_text())
    return cfg


def lora_weights_path(folder: str | Path) -> Path:
    """The adapter's LoRA weights (``adapter_model.safetensors``); ModelError when the folder has none."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.exists():
        raise ModelError(f"{folder} has no {WEIGHTS_FILE}; finetune reads adapter weights from safetensors only")
    return path


def lora_settings(folder: str | Path) -> LoraSettings:
    """The LoRA settings an adapter was trained with (its ``adapter_config.json``), as a run config's ``lora``.

    >>> lora_settings("runs/ID/adapter").r  # doctest: +SKIP
    8
    """
    from .config import LoraSettings

    cfg = read_lora_config(folder)
    targets = cfg.get("target_modules") or []
    return LoraSettings(r=int(cfg.get("r") or 8), alpha=float(cfg.get("lora_alpha") or 8),
                        dropout=float(cfg.get("lora_dropout") or 0.0),
                        target_modules=targets if isinstance(targets, str) else sorted(targets),
                        bias=str(cfg.get("bias") or "none"), use_rslora=bool(cfg.get("use_rslora")),
                        use_dora=bool(cfg.get("use_dora")))


def adapter_label(folder: str | Path) -> str:
    """How cards and events name an adapter folder: ``RUN`` (a run's adapter), ``RUN@STEP`` (a checkpoint's),
    else the folder's own name (never the rest of a path on this machine).

    >>> adapter_label("runs/20261202-sft/checkpoints/checkpoint-40/adapter"), adapter_label("runs/20261202-sft/adapter")
    ('20261202-sft@40', '20261202-sft')
    """
    p = Path(folder)
    step = checkpoint_step(p)
    if step is not None:
        checkpoint = p.parent if p.name == ADAPTER_DIR else p
        return f"{checkpoint.parent.parent.name}@{step}"
    return p.parent.name if p.name == ADAPTER_DIR else p.name


def has_tokenizer(folder: str | Path) -> bool:
    """Whether the tokenizer was saved with the adapter (it may carry a pad token set for training)."""
    return (Path(folder) / TOKENIZER_FILE).exists()


# ---------------------------------------------------------------------------------------------
# finetune's own files


def template_info(config: RunConfig, tokenizer: Any, system_prompt: str | None = None) -> dict[str, Any]:
    """What inference needs to format prompts exactly as training did.

    ``system_prompt``: the run's default system prompt (the one every training row shared, see
    ``data.FormatResult.default_system_prompt``); None: the one the config sets (``data.system_prompt``)."""
    from .templates import MODEL_TEMPLATE, TEMPLATES, special_tokens

    name = config.data.template
    system = config.data.system_prompt if system_prompt is None else system_prompt
    info: dict[str, Any] = {"template": name, "system_prompt": system}
    if name != MODEL_TEMPLATE:
        tok = special_tokens(name, tokenizer)
        info.update(bos=tok.bos, eos=tok.eos, stop_strings=list(TEMPLATES[name].stop_strings))
    return info


def write_run_files(folder: Path, config: RunConfig, tokenizer: Any, metrics: dict[str, Any],
                    system_prompt: str | None = None) -> None:
    """Write finetune's files next to a saved PEFT adapter: the template, the run config and the metrics."""
    atomic_write_json(folder / TEMPLATE_FILE, template_info(config, tokenizer, system_prompt))
    atomic_write_text(folder / RUN_CONFIG_FILE, config.to_yaml())
    atomic_write_json(folder / METRICS_FILE, metrics)


def write_tokenizer(folder: Path, config: RunConfig, tokenizer: Any, system_prompt: str | None = None) -> None:
    """Save the training tokenizer next to the adapter, carrying the trained template as its chat template.

    ``tokenizer_config.json`` / ``chat_template.jinja`` then make every tool that reads the standard files
    (transformers' ``apply_chat_template``, vLLM, TGI, llama.cpp converters) prompt the adapter exactly as
    training did, with the run's default system prompt when a conversation has none. The bos/eos strings
    training wrote are declared as the tokenizer's special tokens when they differ from the base's and are
    one token of its vocabulary already (a new token would tokenize the training text differently). The
    tokenizer object is left as it was.
    """
    info = template_info(config, tokenizer, system_prompt)
    saved = {k: getattr(tokenizer, k) for k in ("chat_template", "bos_token", "eos_token")}
    try:
        tokenizer.chat_template = chat_template(info, saved["chat_template"])
        for key in ("bos", "eos"):
            text = info.get(key) or ""
            if text and text != saved[f"{key}_token"] and len(tokenizer.encode(text, add_special_tokens=False)) == 1:
                setattr(tokenizer, f"{key}_token", text)
        tokenizer.save_pretrained(folder)
    finally:
        for k, v in saved.items():
            setattr(tokenizer, k, v)


def chat_template(info: Mapping[str, Any], base_template: Any) -> Any:
    """The Jinja chat template of a saved template info (:func:`template_info`) over the base's own."""
    from .templates import MODEL_TEMPLATE, SpecialTokens, chat_template_jinja

    name = str(info.get("template") or MODEL_TEMPLATE)
    system = str(info.get("system_prompt") or "")
    if name == MODEL_TEMPLATE and not isinstance(base_template, str):
        return base_template  # none, or several named templates: kept as they are
    tokens = SpecialTokens(str(info.get("bos") or ""), str(info.get("eos") or ""))
    return chat_template_jinja(name, tokens, system, base_template)


def read_template_info(folder: str | Path) -> dict[str, Any] | None:
    """The template saved with an adapter, or None when it has none (an adapter trained elsewhere)."""
    path = Path(folder) / TEMPLATE_FILE
    if not path.exists():
        return None
    info: dict[str, Any] = json.loads(path.read_text())
    return info


def read_run_config(folder: str | Path) -> RunConfig | None:
    """The config of the run that trained an adapter, or None when the adapter carries none."""
    from .config import RunConfig

    path = Path(folder) / RUN_CONFIG_FILE
    return RunConfig.load(path) if path.exists() else None


def strip_local_paths(folder: str | Path) -> None:
    """In a copy of an adapter folder staged for publishing: the run config with this machine's absolute paths
    reduced to file names (``RunConfig.without_local_paths``)."""
    config = read_run_config(folder)
    if config is not None:
        atomic_write_text(Path(folder) / RUN_CONFIG_FILE, config.without_local_paths().to_yaml())


def copy_template_info(src: str | Path, dst: str | Path) -> None:
    """Copy the saved template (when there is one) into another model folder, e.g. a merged model."""
    path = Path(src) / TEMPLATE_FILE
    if path.exists():
        shutil.copy(path, Path(dst) / TEMPLATE_FILE)


# ---------------------------------------------------------------------------------------------
# what an adapter may hold


def unsafe_file(name: str) -> str | None:
    """Why a file has no place in an adapter (pickle or code), or None when it is harmless.

    >>> unsafe_file("training_args.bin")
    'a pickle file (can run code when loaded)'
    """
    lower = name.lower()
    if lower.endswith(PICKLE_SUFFIXES):
        return "a pickle file (can run code when loaded)"
    if lower.endswith(CODE_SUFFIXES):
        return "a code file"
    return None


def refuse_unsafe_files(source: str, names: list[str]) -> None:
    """Raise ModelError naming every pickle or code file among ``names`` (files of the adapter ``source``)."""
    bad = [(n, why) for n in sorted(names) if (why := unsafe_file(n))]
    if bad:
        listed = ", ".join(f"{n} ({why})" for n, why in bad)
        raise ModelError(
            f"the adapter {source} contains {listed}; finetune loads adapters from safetensors only and runs no "
            "code from them: use an adapter saved with safe_serialization (adapter_model.safetensors) and remove "
            "the other files, or ask the repo owner to"
        )


def check_adapter_files(folder: str | Path, source: str | None = None) -> Path:
    """Refuse an adapter folder holding pickles or code (named in the message), or without its weights; return the
    folder."""
    folder = Path(folder)
    missing = adapter_file_missing(folder, source)
    if missing:
        raise ModelError(missing)
    names = [str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file() or f.is_symlink()]
    refuse_unsafe_files(source or str(folder), [n for n in names if not n.startswith(".")])
    return folder


# ---------------------------------------------------------------------------------------------
# where to load it


def pick_device() -> str:
    """The device models load on for training and inference: the GPU when there is one, else the CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"
