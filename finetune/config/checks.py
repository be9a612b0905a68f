"""Checking a config: each field's declared rule (``rule``, ``choices``, ``field_help``), its choices and range
checked from that rule (``range_problem``), the cross-field checks written out (``problems``, per method
``method_problems``), the risky settings warned about (``config_warnings``), and ``validate``, which raises once
with every problem.

>>> problems(RunConfig())
[]
"""

from __future__ import annotations

import dataclasses
import math
import typing
import warnings
from typing import Any, Iterator, Mapping

from .fields import REPORTERS, RunConfig, reporters
from .reading import ConfigError, ConfigWarning


MAX_NAME = 80  # characters of a run's name (its run id carries the first 40, letters and digits only)


def rule(key: str) -> Mapping[str, Any]:
    """The declared rule of field ``section.name`` (or of ``name``, a field of the config itself): its help,
    choices and range (see ``doc``)."""
    section, _, name = key.partition(".")
    cls: Any = RunConfig if not name else typing.get_type_hints(RunConfig).get(section)
    name = name or section
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata
    raise KeyError(key)


def rules() -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(section.name, rule)`` of every field of every section, in the config's order."""
    for section, cls in typing.get_type_hints(RunConfig).items():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                yield f"{section}.{f.name}", f.metadata


def choices(key: str) -> tuple[str, ...]:
    """The values field ``key`` allows (empty: any)."""
    return tuple(rule(key).get("choices", ()))


def field_help(section: str, name: str) -> str:
    """The one-line help of a config field, its choices included (for UI hints and CLI --help).

    >>> field_help("lora", "bias")
    'Train biases too: none, all or lora_only'
    """
    meta = rule(f"{section}.{name}")
    text: str = meta.get("help", "")
    allowed = meta.get("choices", ())
    if not allowed:
        return text
    glossed = allowed.items() if isinstance(allowed, Mapping) else ((value, "") for value in allowed)
    items = [f"{value} ({gloss})" if gloss else value for value, gloss in glossed]
    return f"{text}: {', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else f"{text}: {items[0]}"


def _number(value: float, thousands: bool = False) -> str:
    if float(value).is_integer():
        return f"{int(value):,}" if thousands and value >= 10_000 else str(int(value))
    return str(value)


def range_problem(key: str, value: float) -> str | None:
    """What is wrong with ``value`` for field ``key`` by its declared range and ceiling, naming field and fix;
    None when it is within them.

    >>> range_problem("data.val_fraction", 0.9)
    'data.val_fraction must be between 0 and 0.5, got 0.9'
    """
    if not math.isfinite(value):
        return f"{key} must be a finite number, got {value}"
    meta = rule(key)
    lo: float | None = meta.get("min")
    hi: float | None = meta.get("max")
    top: float | None = meta.get("ceiling")
    opened: str = meta.get("exclusive", "")
    lo_open, hi_open = opened in ("min", "both"), opened in ("max", "both")
    unit = f" {meta['unit']}" if "unit" in meta else ""
    fix = f"; {meta['fix']}" if "fix" in meta else ""
    below = lo is not None and (value <= lo if lo_open else value < lo)
    over = hi is not None and (value >= hi if hi_open else value > hi)
    if lo is not None and hi is not None and (below or over):
        if opened:
            span = f"in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
        else:
            span = f"between {_number(lo)} and {_number(hi)}"
        return f"{key} must be {span}{unit}, got {value}{fix}"
    if lo is not None and below:
        note = f" {meta['note']}" if "note" in meta else ""
        return f"{key} must be {'>' if lo_open else '>='} {_number(lo)}{unit}{note}, got {value}{fix}"
    if hi is not None and over:
        return f"{key} must be {'<' if hi_open else '<='} {_number(hi)}{unit}, got {value}{fix}"
    if top is not None and (value >= top if hi_open else value > top):
        limit = f"less than {_number(top, True)}" if hi_open else f"at most {_number(top, True)}"
        note = f" {meta['ceiling_note']}" if "ceiling_note" in meta else ""
        return f"{key} {value} is {meta.get('too_high', 'out of range')}; use {limit}{unit}{note}{fix}"
    return None


# ---------------------------------------------------------------------------------------------
# validation


def problems(cfg: RunConfig, model_max_length: int | None = None) -> list[str]:
    """Every problem in the config, each naming the field and the fix. Empty when valid.

    Each field's declared rule (``doc``: choices, range, ceiling) is checked here for every field; the checks
    below it are those that span fields."""
    out: list[str] = []
    t, lo, d = cfg.training, cfg.lora, cfg.data

    nonfinite: set[str] = set()  # reported once as such, not again by the checks below

    def need(cond: bool, msg: str) -> None:
        if not cond and msg.split(" ", 1)[0] not in nonfinite:
            out.append(msg)

    for key, meta in rules():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key} must be a finite number, got {value}")
            nonfinite.add(key)
        elif meta.get("method", t.method) != t.method:
            continue  # another method's field: not used by this run
        elif "choices" in meta:
            need(value in meta["choices"],
                 f"{key} '{value}' {meta.get('unknown', 'is not one of')}: {', '.join(choices(key))}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_problem(key, value)
            if problem:
                out.append(problem)
    need(not (d.test_split > 0 and d.test_source.strip()), "data.test_split and data.test_source both name a test "
         "set; keep one (test_split holds out training rows, test_source is a separate file)")
    need(d.test_split == 0 or t.method == "sft", f"data.test_split holds out rows of sft data; for "
         f"training.method {t.method} give a data.test_source file of prompts and references instead")
    if isinstance(lo.target_modules, list):
        need(bool(lo.target_modules), "lora.target_modules is empty; use all-linear or names such as [q_proj, v_proj]")
    else:
        need(bool(lo.target_modules.strip()), "lora.target_modules is empty; use all-linear")
    need(t.epochs > 0 or t.max_steps > 0, "training.epochs must be > 0 (or set training.max_steps)")
    unknown = [r for r in reporters(t.report_to) if r not in REPORTERS]
    need(not unknown, f"training.report_to: unknown tracker {', '.join(map(repr, unknown))}; use none or one of "
         f"{', '.join(REPORTERS[1:])} (comma separated)")
    if model_max_length:
        need(
            t.max_length <= model_max_length,
            f"training.max_length {t.max_length} exceeds the model's {model_max_length}; lower it to {model_max_length}",
        )
    if cfg.quantization.load_in == "4bit" and t.precision == "fp16" and cfg.quantization.compute_dtype == "bfloat16":
        out.append("quantization.compute_dtype bfloat16 conflicts with training.precision fp16; use float16 or auto")
    if cfg.hub.repo_id:
        parts = cfg.hub.repo_id.split("/")
        need(
            len(parts) == 2 and all(parts),
            f"hub.repo_id '{cfg.hub.repo_id}' must look like user/name",
        )
    out += method_problems(cfg)
    need(t.distributed != "fsdp" or t.method in SHARDED_METHODS,
         f"training.distributed fsdp: {t.method} cannot train sharded ({UNSHARDED_WHY.get(t.method, '')}); use "
         f"training.distributed ddp or none, or training.method {' or '.join(SHARDED_METHODS)}")
    need(not t.fsdp_offload or t.distributed in ("fsdp", "auto"),
         f"training.fsdp_offload keeps the shards of a sharded run in CPU RAM; training.distributed {t.distributed} "
         "does not shard: set training.distributed fsdp, or training.fsdp_offload false")
    need("/" not in cfg.name and "\\" not in cfg.name and ".." not in cfg.name,
         f"name '{cfg.name[:80]}' must not contain '/', '\\' or '..'")
    need(len(cfg.name) <= MAX_NAME and cfg.name.isprintable(),
         f"name must be one line of at most {MAX_NAME} printable characters (it names the run in the run list)")
    return out


# The methods a sharded (FSDP) run trains, and why the others are refused before anything loads.
SHARDED_METHODS = ("sft", "dpo")
UNSHARDED_WHY = {
    "grpo": "it samples answers at every step, and a sharded model generates only with every process gathering each "
            "layer in step, which trl's GRPO does not do for a PEFT model",
    "orpo": "its trainer is not run sharded by this app's tests",
    "kto": "its trainer is not run sharded by this app's tests",
}


def method_problems(cfg: RunConfig) -> list[str]:
    """The problems of ``training.method``'s own settings and the rewards that span fields (each field's declared
    range is ``problems``'); only the chosen method's are checked."""
    import json
    import re

    t, rw = cfg.training, cfg.rewards
    out: list[str] = []
    method = t.method
    if method != "sft" and t.packing:
        out.append(f"training.packing works with method sft only; set it to false for {method}")
    if method == "kto" and t.batch_size < 2:
        out.append(f"training.batch_size must be >= 2 for kto (its KL term pairs rows of a batch), got {t.batch_size}")
    if method == "grpo":
        g = t.grpo_num_generations
        if g >= 2 and (t.batch_size * t.grad_accum) % g:
            out.append(f"training.batch_size x grad_accum ({t.batch_size} x {t.grad_accum}) must be a multiple of "
                       f"training.grpo_num_generations ({g}); e.g. set training.batch_size to {g * max(1, t.batch_size // g)}")
        if not any(rw.weights().values()) and not rw.module:
            out.append("rewards: grpo needs at least one reward; give one a weight, e.g. rewards.exact_match=1")
    if rw.regex_weight and not rw.regex:
        out.append("rewards.regex is empty but rewards.regex_weight is set; give the pattern, e.g. ^\\d+$")
    if rw.regex:
        try:
            re.compile(rw.regex)
        except re.error as e:
            out.append(f"rewards.regex is not a valid regular expression ({e}); fix the pattern")
    if rw.json_schema:
        try:
            schema = json.loads(rw.json_schema)
        except ValueError as e:
            out.append(f"rewards.json_schema is not valid JSON ({e}); write the schema as JSON text")
        else:
            from ..rewards import schema_problem

            why = schema_problem(schema)
            if why is not None:
                out.append(f"rewards.json_schema {why}; e.g. {{\"type\": \"object\", \"required\": [\"answer\"]}}")
    if rw.contains_weight and not rw.contains:
        out.append("rewards.contains is empty but rewards.contains_weight is set; list the keywords")
    if rw.excludes_weight and not rw.excludes:
        out.append("rewards.excludes is empty but rewards.excludes_weight is set; list the keywords")
    if rw.length_weight and rw.length_target <= 0:
        out.append(f"rewards.length_target must be > 0 characters when rewards.length_weight is set, got {rw.length_target}")
    if rw.judge_weight and not rw.judge_model:
        out.append("rewards.judge_model is empty but rewards.judge_weight is set; give a local reward model folder")
    return out




def config_warnings(cfg: RunConfig) -> list[str]:
    """Settings that are allowed but risky, each saying what it does and how to turn it off."""
    out = []
    if cfg.model.trust_remote_code:
        out.append("model.trust_remote_code is on: Python code from the model repo will run on this machine with "
                   "your permissions; turn it off unless you have read and trust that code")
    return out


def validate(cfg: RunConfig, model_max_length: int | None = None, source: str | None = None) -> RunConfig:
    """Raise one ConfigError listing every problem; return the config unchanged when it is valid.

    Risky but valid settings (``config_warnings``) are issued as ``ConfigWarning``.
    """
    found = problems(cfg, model_max_length)
    if found:
        raise ConfigError(found, source)
    for text in config_warnings(cfg):
        warnings.warn(text, ConfigWarning, stacklevel=2)
    return cfg
