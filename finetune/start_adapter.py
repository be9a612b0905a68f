"""The adapter a run starts from: ``training.init_adapter`` checked before anything loads.

:func:`start_adapter` turns the folder the config names (a run folder, one of its checkpoints or an adapter folder;
the CLI and the app turn ``RUN``, ``RUN@STEP`` and ``RUN@best`` into these) into a :class:`StartAdapter`: a LoRA
adapter in safetensors, trained on the run's base model, with the LoRA settings the run trains with
(:func:`lora_note` says when they differ from the config's own).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import TrainingError

if TYPE_CHECKING:
    from .config import LoraSettings, RunConfig


@dataclass(frozen=True)
class StartAdapter:
    """``training.init_adapter`` checked: the adapter folder, how cards name it, and its LoRA settings (which the
    run trains with: the weights only fit their own rank and layers)."""

    folder: Path
    label: str
    lora: LoraSettings


def start_adapter(config: RunConfig, base_name: str) -> StartAdapter | None:
    """The adapter ``training.init_adapter`` names (a run folder, a checkpoint or an adapter folder; the CLI and
    the app turn ``RUN``, ``RUN@STEP`` and ``RUN@best`` into these), checked before anything loads: a LoRA adapter
    in safetensors, trained on this run's base model (``base_name``, as adapters record it). None: a fresh LoRA."""
    from .adapter import (adapter_label, adapter_file_missing, check_adapter_files, find_adapter_dir, lora_settings, lora_weights_path,
                          read_base_model, read_lora_config)

    text = config.training.init_adapter.strip()
    if not text:
        return None
    folder = find_adapter_dir(Path(text).expanduser())
    if folder is None and (missing := adapter_file_missing(Path(text).expanduser())):
        raise TrainingError(f"training.init_adapter: {missing}")
    if folder is None:
        raise TrainingError(f"training.init_adapter {text}: no adapter there (no adapter_config.json); give a "
                            "finished run, one of its checkpoints (RUN@STEP) or an adapter folder")
    label = adapter_label(folder)
    check_adapter_files(folder, label)
    lora_weights_path(folder)
    kind = str(read_lora_config(folder).get("peft_type") or "LORA")
    if kind.upper() != "LORA":
        raise TrainingError(f"training.init_adapter {label} is a {kind} adapter; a run can only continue a LoRA "
                            "adapter")
    base = read_base_model(folder)
    if base and not _same_model(base, base_name):
        raise TrainingError(f"training.init_adapter {label} was trained on {base}, but this run's base model is "
                            f"{base_name}; set model.id to {base}, or start from an adapter trained on {base_name}")
    return StartAdapter(folder, label, lora_settings(folder))


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def lora_note(config: RunConfig, start: StartAdapter) -> str | None:
    """What the run does with the config's own LoRA fields when it starts from an adapter (None: they agree)."""
    from .config import parse_target_modules

    lo, own = config.lora, start.lora
    targets = parse_target_modules(lo.target_modules)
    same_targets = targets == "all-linear" or sorted(targets) == own.target_modules  # all-linear: peft's own list
    if same_targets and dataclasses.replace(lo, target_modules=own.target_modules) == own:
        return None
    shown = ", ".join(own.target_modules) if isinstance(own.target_modules, list) else own.target_modules
    return (f"LoRA settings come from the adapter {start.label} (r={own.r}, alpha={own.alpha:g}, "
            f"dropout={own.dropout:g}, targets {shown}); the config's lora.* (r={lo.r}, alpha={lo.alpha:g}, "
            f"dropout={lo.dropout:g}) are not used")
