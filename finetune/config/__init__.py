"""The run config: everything a run needs, in one typed object that round-trips through YAML.

The UI edits one, the CLI reads one (``--set section.key=value`` overrides), a backend receives one,
and ``train(config)`` executes it. Secrets (HF tokens) are never part of it.

Its parts: ``fields`` (the sections and their declared rules, ``RunConfig``), ``reading`` (YAML and dicts into
the dataclasses, ``ConfigError``), ``overrides`` (``--set``, a YAML laid over a config, what changed) and
``checks`` (each field's rule checked, the cross-field checks, ``validate``).

>>> cfg = RunConfig()
>>> cfg = apply_overrides(cfg, ["lora.r=64", "training.learning_rate=1e-4"])
>>> (cfg.lora.r, cfg.training.learning_rate)
(64, 0.0001)
>>> RunConfig.from_yaml(cfg.to_yaml()) == cfg
True
"""

from __future__ import annotations

from .checks import (choices, config_warnings, field_help, method_problems, problems, range_problem, rule, rules,
                     validate)
from .fields import (ALL_LINEAR, MAX_BATCH, MAX_EPOCHS, MAX_LENGTH, MAX_STEPS, METHOD_SAMPLE_DATA, REPORTERS,
                     SAMPLE_DATA, SEED_MAX, DataConfig, HubSettings, LoraSettings, ModelConfig, QuantizationConfig,
                     RewardSettings, RunConfig, TrainingConfig, doc, parse_target_modules, reporters, sample_data)
from .overrides import apply_overrides, changed_fields, merge_yaml
from .reading import ALIASES, ConfigError, ConfigWarning

__all__ = [
    "ALIASES", "ALL_LINEAR", "MAX_BATCH", "MAX_EPOCHS", "MAX_LENGTH", "MAX_STEPS", "METHOD_SAMPLE_DATA", "REPORTERS",
    "SAMPLE_DATA", "SEED_MAX", "ConfigError", "ConfigWarning", "DataConfig", "HubSettings", "LoraSettings",
    "ModelConfig", "QuantizationConfig", "RewardSettings", "RunConfig", "TrainingConfig", "apply_overrides",
    "changed_fields", "choices", "config_warnings", "doc", "field_help", "merge_yaml", "method_problems",
    "parse_target_modules", "problems", "range_problem", "reporters", "rule", "rules", "sample_data", "validate",
]
