"""``adapter/``, the bundle a finished run leaves: a plain PEFT adapter with its tokenizer and trained template,
the run config, metrics and a model card, checked to prompt as it was trained."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import runs
from .adapter import write_run_files, write_tokenizer
from .config import RunConfig
from .dialogs import TrainedDialogs
from .events import EventSink

if TYPE_CHECKING:
    from torch import Tensor
    from transformers import Trainer

    from .models import Model, Tokenizer


def save_adapter(trainer: Trainer, tokenizer: Tokenizer, config: RunConfig, base_name: str, run_dir: Path,
                 metrics: dict[str, Any], data_summary: dict[str, Any], device: str,
                 dialogs: TrainedDialogs | None = None, log: EventSink | None = None,
                 weights: dict[str, Tensor] | None = None) -> Path:
    """Write ``adapter/``: a plain PEFT adapter plus the template, config, metrics and a model card.

    The tokenizer carries the trained template as its chat template; the adapter is then checked with
    :func:`verify.check_template` (on ``dialogs`` and the built-in probes), the result a ``template_check``
    event and a line on the model card."""
    from .card import write_model_card
    from .verify import check_template

    out = run_dir / runs.ADAPTER
    tmp = run_dir / (runs.ADAPTER + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model: Model = trainer.model  # a PeftModel: transformers types it as PreTrainedModel | Module | None
    model.peft_config["default"].base_model_name_or_path = base_name
    # the trained adapter only: a run that started from an adapter also holds trl's frozen copy of it ("ref")
    # ``weights``: a sharded run's LoRA weights gathered whole on this process (distributed.gathered_adapter)
    model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"], state_dict=weights)
    system = dialogs.system_prompt if dialogs is not None else None
    write_tokenizer(tmp, config, tokenizer, system)
    write_run_files(tmp, config, tokenizer, metrics, system)
    check = check_template(tmp, dialogs=dialogs.dialogs if dialogs is not None else [], base_tokenizer=tokenizer)
    if log is not None:
        log.emit("template_check", **check.to_event())
    write_model_card(tmp, config, base_name, metrics, trainer.state.log_history, data_summary, device,  # + loss_curve.png
                     template_check=("Template check: " + check.message()))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
