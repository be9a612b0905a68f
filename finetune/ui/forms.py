"""The single mapping between widget values and the run config.

Every config field the UI edits is listed once in ``FORM_FIELDS`` (key, widget kind, label). The widgets are
created from it with what the field declares (``config.doc``: its help as their hint, its choices, its range as
their minimum and maximum, the method it belongs to), and values go back into a ``RunConfig`` through
``values_to_config``: no defaults, choices or ranges repeated, no values read by string id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr

from ..config import REPORTERS, RunConfig, apply_overrides, choices, field_help, parse_target_modules, rule, rules


@dataclass(frozen=True)
class Field:
    key: str  # section.name in RunConfig
    kind: str  # text | number | int | slider | checkbox | dropdown | radio | model (models.model_choices, any text)
    label: str
    choices: tuple[str, ...] = ()  # a suggestion list of a field that declares no choices (training.report_to)
    # the widget's own range where it is narrower than the field's rule (a slider's end) or the rule spans fields
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None

    def options(self) -> tuple[str, ...]:
        """The values offered: the field's declared choices."""
        return self.choices or choices(self.key)

    def bounds(self) -> tuple[float | None, float | None]:
        """The widget's minimum and maximum: the field's declared range unless the widget narrows it."""
        meta = rule(self.key)
        return (self.minimum if self.minimum is not None else meta.get("min"),
                self.maximum if self.maximum is not None else meta.get("max"))


DATA_FIELDS = (
    Field("data.template", "dropdown", "Prompt template"),
    Field("data.system_prompt", "text", "System prompt"),
    Field("data.train_on", "radio", "Train on"),
    Field("data.val_fraction", "slider", "Validation fraction", step=0.01),
    Field("data.test_split", "slider", "Hold out as test set (fraction)", step=0.01),
    Field("data.keep_duplicates", "checkbox", "Keep duplicate rows"),
    Field("data.test_source", "text", "Test file (scored when the run ends)"),
)

MODEL_FIELDS = (
    Field("model.id", "model", "Base model"),  # a searchable list that takes any typed id or folder too
    Field("model.trust_remote_code", "checkbox", "Trust remote code"),
)

QUANT_FIELDS = (
    Field("quantization.load_in", "radio", "Base weights"),
    Field("quantization.quant_type", "dropdown", "4-bit type"),
    Field("quantization.double_quant", "checkbox", "Double quantization"),
    Field("quantization.compute_dtype", "dropdown", "Compute dtype"),
)

LORA_FIELDS = (
    Field("lora.r", "slider", "LoRA rank r", maximum=256, step=1),
    Field("lora.alpha", "number", "LoRA alpha"),
    Field("lora.dropout", "slider", "LoRA dropout", maximum=0.5, step=0.01),
    Field("lora.target_modules", "text", "Target modules"),
)

TRAIN_FIELDS = (
    Field("training.learning_rate", "number", "Learning rate"),
    Field("training.epochs", "number", "Epochs", minimum=0.0),  # its rule spans fields: > 0 or max_steps set
    Field("training.max_steps", "int", "Max steps"),
    Field("training.batch_size", "slider", "Batch size", maximum=64, step=1),
    Field("training.grad_accum", "slider", "Gradient accumulation", maximum=64, step=1),
    Field("training.max_length", "int", "Max length (tokens)"),
    Field("training.packing", "checkbox", "Packing"),
    Field("training.padding_free", "checkbox", "Padding-free batches"),
    Field("training.gradient_checkpointing", "checkbox", "Gradient checkpointing"),
    Field("training.warmup_ratio", "slider", "Warmup ratio", maximum=0.5, step=0.01),
    Field("training.lr_scheduler", "dropdown", "LR scheduler"),
    Field("training.optim", "dropdown", "Optimizer"),
    Field("training.precision", "dropdown", "Precision"),
    Field("training.eval_steps", "int", "Eval every (steps)"),
    Field("training.save_steps", "int", "Checkpoint every (steps)"),
    Field("training.seed", "int", "Seed"),
    Field("training.report_to", "dropdown", "Experiment tracking", REPORTERS[:5]),  # the common ones; any typed
)

# How a run is laid out over several GPUs (finetune/launch_plan.py): one GPU, data parallel or sharded.
SCALE_FIELDS = (
    Field("training.distributed", "radio", "Several GPUs"),
    Field("training.num_processes", "int", "GPUs (processes)"),
    Field("training.fsdp_offload", "checkbox", "Sharded: offload to CPU RAM"),
)

# The fields of the run config itself (no section): the run's name, shown in the run list and the run pickers.
RUN_FIELDS = (
    Field("name", "text", "Run name (optional)"),
)

# The training method and the fields only one method uses (shown when it is picked: METHOD_OF).
METHOD_FIELDS = (
    Field("training.method", "radio", "Method"),
    Field("training.init_adapter", "text", "Start from adapter"),  # every method: not in METHOD_OF
    Field("training.dpo_beta", "number", "DPO beta"),
    Field("training.dpo_sft_weight", "number", "DPO SFT weight"),
    Field("training.orpo_lambda", "number", "ORPO lambda"),
    Field("training.kto_beta", "number", "KTO beta"),
    Field("training.kto_desirable_weight", "number", "KTO desirable weight"),
    Field("training.kto_undesirable_weight", "number", "KTO undesirable weight"),
    Field("training.grpo_num_generations", "slider", "GRPO group size", maximum=32, step=1),
    Field("training.max_completion_length", "int", "Max completion length (tokens)"),
    Field("training.grpo_beta", "number", "GRPO KL beta"),
    Field("training.grpo_temperature", "number", "GRPO temperature"),
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
    Field("rewards.length_target", "int", "Target length (characters)", minimum=0),  # > 0 when its weight is set
    Field("rewards.length_weight", "number", "Length weight"),
    Field("rewards.judge_model", "text", "Judge: local reward model folder"),
    Field("rewards.judge_weight", "number", "Judge weight"),
)

# The method each method-specific field belongs to (as the field declares it; the rewards are GRPO's).
METHOD_OF = {**{key: meta["method"] for key, meta in rules() if "method" in meta},
             **{f.key: "grpo" for f in REWARD_FIELDS}}
LIST_FIELDS = ("lora.target_modules", "rewards.contains", "rewards.excludes")  # lists shown as "a, b"

FORM_FIELDS = (DATA_FIELDS + MODEL_FIELDS + QUANT_FIELDS + LORA_FIELDS + TRAIN_FIELDS + SCALE_FIELDS + METHOD_FIELDS
               + REWARD_FIELDS
               + RUN_FIELDS)


def shown_for(method: str) -> list[bool]:
    """Whether each field of METHOD_FIELDS + REWARD_FIELDS is shown when ``method`` is picked."""
    return [METHOD_OF.get(f.key, method) == method for f in METHOD_FIELDS + REWARD_FIELDS]


# A widget's value (Any: str, int, float, bool or None by the field's kind, as gradio hands it over)


def get_value(cfg: RunConfig, key: str) -> Any:
    section, _, name = key.rpartition(".")
    value = getattr(getattr(cfg, section) if section else cfg, name)
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
    section, _, name = f.key.rpartition(".")
    info = locked or (field_help(section, name) if section else str(rule(name).get("help", "")))
    elem_id = f.key.replace(".", "-") if section else f"run-{name}"
    common = dict(label=f.label, info=info, value=value, elem_id=elem_id, visible=visible)
    if locked:
        common["interactive"] = False
    if f.kind == "text":
        return gr.Textbox(**common, lines=1)
    if f.kind == "model":  # the offered models (embedded, presets', downloaded here); any Hub id or folder typed
        from ..models import model_choices
        from .widgets import FreeDropdown

        return FreeDropdown(**common, choices=model_choices(), allow_custom_value=True, filterable=True)
    minimum, maximum = f.bounds()
    if f.kind in ("number", "int"):
        return gr.Number(**common, minimum=minimum, maximum=maximum, precision=0 if f.kind == "int" else None)
    if f.kind == "slider":
        assert minimum is not None and maximum is not None, f"slider {f.key} needs a range"
        return gr.Slider(**common, minimum=minimum, maximum=maximum, step=f.step)
    if f.kind == "checkbox":
        return gr.Checkbox(**common)
    if f.kind == "dropdown":
        return gr.Dropdown(**common, choices=list(f.options()))
    if f.kind == "radio":
        return gr.Radio(**common, choices=list(f.options()))
    raise ValueError(f.kind)
