"""The single mapping between widget values and the run config.

Every config field the UI edits is listed once in ``FIELDS`` (key, widget kind, label, range). The
widgets are created from it with the field's one-line help as their hint, and values go back into a
``RunConfig`` through ``values_to_config``: no defaults repeated, no values read by string id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..config import RunConfig, apply_overrides, field_help, parse_target_modules
from ..methods import METHODS
from ..templates import TEMPLATE_NAMES


@dataclass(frozen=True)
class Field:
    key: str  # section.name in RunConfig
    kind: str  # text | number | int | slider | checkbox | dropdown | radio
    label: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None


DATA_FIELDS = (
    Field("data.template", "dropdown", "Prompt template", TEMPLATE_NAMES),
    Field("data.system_prompt", "text", "System prompt"),
    Field("data.train_on", "radio", "Train on", ("assistant", "all")),
    Field("data.val_fraction", "slider", "Validation fraction", minimum=0.0, maximum=0.5, step=0.01),
    Field("data.test_split", "slider", "Hold out as test set (fraction)", minimum=0.0, maximum=0.5, step=0.01),
    Field("data.keep_duplicates", "checkbox", "Keep duplicate rows"),
    Field("data.test_source", "text", "Test file (scored when the run ends)"),
)

MODEL_FIELDS = (
    Field("model.id", "text", "Base model"),
    Field("model.trust_remote_code", "checkbox", "Trust remote code"),
)

QUANT_FIELDS = (
    Field("quantization.load_in", "radio", "Base weights", ("4bit", "8bit", "none")),
    Field("quantization.quant_type", "dropdown", "4-bit type", ("nf4", "fp4")),
    Field("quantization.double_quant", "checkbox", "Double quantization"),
    Field("quantization.compute_dtype", "dropdown", "Compute dtype", ("auto", "bfloat16", "float16", "float32")),
)

LORA_FIELDS = (
    Field("lora.r", "slider", "LoRA rank r", minimum=1, maximum=256, step=1),
    Field("lora.alpha", "number", "LoRA alpha", minimum=0.1),
    Field("lora.dropout", "slider", "LoRA dropout", minimum=0.0, maximum=0.5, step=0.01),
    Field("lora.target_modules", "text", "Target modules"),
)

TRAIN_FIELDS = (
    Field("training.learning_rate", "number", "Learning rate", minimum=0.0),
    Field("training.epochs", "number", "Epochs", minimum=0.0),
    Field("training.max_steps", "int", "Max steps", minimum=0),
    Field("training.batch_size", "slider", "Batch size", minimum=1, maximum=64, step=1),
    Field("training.grad_accum", "slider", "Gradient accumulation", minimum=1, maximum=64, step=1),
    Field("training.max_length", "int", "Max length (tokens)", minimum=16),
    Field("training.packing", "checkbox", "Packing"),
    Field("training.padding_free", "checkbox", "Padding-free batches"),
    Field("training.gradient_checkpointing", "checkbox", "Gradient checkpointing"),
    Field("training.warmup_ratio", "slider", "Warmup ratio", minimum=0.0, maximum=0.5, step=0.01),
    Field("training.lr_scheduler", "dropdown", "LR scheduler", ("cosine", "linear", "constant", "constant_with_warmup")),
    Field("training.optim", "dropdown", "Optimizer", ("auto", "adamw_torch", "paged_adamw_32bit", "paged_adamw_8bit", "adamw_8bit")),
    Field("training.precision", "dropdown", "Precision", ("auto", "bf16", "fp16", "fp32")),
    Field("training.eval_steps", "int", "Eval every (steps)", minimum=0),
    Field("training.save_steps", "int", "Checkpoint every (steps)", minimum=1),
    Field("training.seed", "int", "Seed", minimum=0),
    Field("training.report_to", "dropdown", "Experiment tracking", ("none", "trackio", "tensorboard", "wandb", "mlflow")),
)

# The training method and the fields only one method uses (shown when it is picked: METHOD_OF).
METHOD_FIELDS = (
    Field("training.method", "radio", "Method", METHODS),
    Field("training.init_adapter", "text", "Start from adapter"),  # every method: not in METHOD_OF
    Field("training.dpo_beta", "number", "DPO beta", minimum=0.0),
    Field("training.orpo_lambda", "number", "ORPO lambda", minimum=0.0),
    Field("training.kto_beta", "number", "KTO beta", minimum=0.0),
    Field("training.kto_desirable_weight", "number", "KTO desirable weight", minimum=0.0),
    Field("training.kto_undesirable_weight", "number", "KTO undesirable weight", minimum=0.0),
    Field("training.grpo_num_generations", "slider", "GRPO group size", minimum=2, maximum=32, step=1),
    Field("training.max_completion_length", "int", "Max completion length (tokens)", minimum=1),
    Field("training.grpo_beta", "number", "GRPO KL beta", minimum=0.0),
    Field("training.grpo_temperature", "number", "GRPO temperature", minimum=0.0),
)

# GRPO's built-in rewards (a weight of 0 turns one off). rewards.module is not here: the app runs no user code.
REWARD_FIELDS = (
    Field("rewards.exact_match", "number", "Exact match weight"),
    Field("rewards.numeric_match", "number", "Numeric match weight"),
    Field("rewards.regex", "text", "Regex the answer must match"),
    Field("rewards.regex_weight", "number", "Regex weight"),
    Field("rewards.json_valid", "number", "Valid JSON weight"),
    Field("rewards.json_schema", "text", "JSON schema"),
    Field("rewards.contains", "text", "Must contain (comma-separated)"),
    Field("rewards.contains_weight", "number", "Contains weight"),
    Field("rewards.excludes", "text", "Must not contain (comma-separated)"),
    Field("rewards.excludes_weight", "number", "Excludes weight"),
    Field("rewards.length_target", "int", "Target length (characters)", minimum=0),
    Field("rewards.length_weight", "number", "Length weight"),
    Field("rewards.judge_model", "text", "Judge: local reward model folder"),
    Field("rewards.judge_weight", "number", "Judge weight"),
)

# The method each method-specific field belongs to.
METHOD_OF = {
    "training.dpo_beta": "dpo", "training.orpo_lambda": "orpo", "training.kto_beta": "kto",
    "training.kto_desirable_weight": "kto", "training.kto_undesirable_weight": "kto",
    "training.grpo_num_generations": "grpo", "training.max_completion_length": "grpo", "training.grpo_beta": "grpo",
    "training.grpo_temperature": "grpo", **{f.key: "grpo" for f in REWARD_FIELDS},
}
LIST_FIELDS = ("lora.target_modules", "rewards.contains", "rewards.excludes")  # lists shown as "a, b"

FORM_FIELDS = DATA_FIELDS + MODEL_FIELDS + QUANT_FIELDS + LORA_FIELDS + TRAIN_FIELDS + METHOD_FIELDS + REWARD_FIELDS


def shown_for(method: str) -> list[bool]:
    """Whether each field of METHOD_FIELDS + REWARD_FIELDS is shown when ``method`` is picked."""
    return [METHOD_OF.get(f.key, method) == method for f in METHOD_FIELDS + REWARD_FIELDS]


# A widget's value (Any: str, int, float, bool or None by the field's kind, as gradio hands it over)


def get_value(cfg: RunConfig, key: str) -> Any:
    section, name = key.split(".")
    value = getattr(getattr(cfg, section), name)
    if key in LIST_FIELDS and isinstance(value, list):
        return ", ".join(value)
    return value


def config_to_values(cfg: RunConfig) -> list[Any]:
    return [get_value(cfg, f.key) for f in FORM_FIELDS]


def values_to_config(base: RunConfig, values: list[Any]) -> RunConfig:
    """Apply widget values onto ``base`` (fields the form does not show, like data.source, are kept)."""
    overrides: dict[str, Any] = {}
    for f, v in zip(FORM_FIELDS, values):
        if f.key == "lora.target_modules" and isinstance(v, str):
            v = parse_target_modules(v)
        elif f.key in LIST_FIELDS and isinstance(v, str):
            v = [w.strip() for w in v.split(",") if w.strip()]
        if f.kind == "int" and isinstance(v, float) and v.is_integer():
            v = int(v)
        overrides[f.key] = v
    return apply_overrides(base, overrides)


# The widgets make_component creates for the config fields: one of these per field key.
FormWidget = gr.Textbox | gr.Number | gr.Slider | gr.Checkbox | gr.Dropdown | gr.Radio


def make_component(f: Field, value: Any, visible: bool = True, locked: str = "") -> FormWidget:
    """The widget of one config field; ``locked``: why this server keeps it at ``value`` (shown as its help, the
    widget not editable)."""
    section, name = f.key.split(".")
    info = locked or field_help(section, name)
    common = dict(label=f.label, info=info, value=value, elem_id=f.key.replace(".", "-"), visible=visible)
    if locked:
        common["interactive"] = False
    if f.kind == "text":
        return gr.Textbox(**common, lines=1)
    if f.kind in ("number", "int"):
        return gr.Number(**common, minimum=f.minimum, maximum=f.maximum, precision=0 if f.kind == "int" else None)
    if f.kind == "slider":
        assert f.minimum is not None and f.maximum is not None, f"slider {f.key} needs a range"
        return gr.Slider(**common, minimum=f.minimum, maximum=f.maximum, step=f.step)
    if f.kind == "checkbox":
        return gr.Checkbox(**common)
    if f.kind == "dropdown":
        return gr.Dropdown(**common, choices=list(f.choices))
    if f.kind == "radio":
        return gr.Radio(**common, choices=list(f.choices))
    raise ValueError(f.kind)
