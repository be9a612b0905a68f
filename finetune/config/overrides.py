"""Changing a config: ``section.key=value`` overrides (the CLI's ``--set``, the form), a partial YAML laid over a
config, and the fields that differ between two.

>>> apply_overrides(RunConfig(), ["lora.r=64"]).lora.r
64
"""

from __future__ import annotations

from typing import Any

import yaml

from .fields import RunConfig
from .reading import ConfigError, _load_yaml


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Return a copy with dotted ``section.key=value`` overrides applied (values parsed as YAML scalars).

    All malformed or unknown overrides are reported together.
    """
    data = cfg.to_dict()
    problems: list[str] = []
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o, problems) for o in overrides]
    for key, value in items:
        if key is None:
            continue
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                problems.append(f"{key}: unknown section '{parts[0]}'; use section.key, e.g. lora.r=64")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return RunConfig.from_dict(data, "--set")



def merge_yaml(base: RunConfig, text: str, source: str | None = None) -> RunConfig:
    """``base`` with a (possibly partial) YAML config laid over it: keys the YAML leaves out keep ``base``'s
    values (not the defaults). Unknown keys and wrong types are all reported, naming ``source``.

    >>> merge_yaml(RunConfig.from_dict({"lora": {"r": 8}}), "training:\n  max_steps: 5").lora.r
    8
    """
    data = base.to_dict()

    def lay(node: dict[str, Any], over: dict[Any, Any]) -> None:
        for key, value in over.items():
            if isinstance(node.get(key), dict) and (value is None or isinstance(value, dict)):
                lay(node[key], value or {})  # a section: merged key by key (an empty one changes nothing)
            else:
                node[key] = value

    lay(data, _load_yaml(text, source))
    return RunConfig.from_dict(data, source)


def changed_fields(before: RunConfig, after: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(section.key, before, after)`` for every field that differs."""
    out: list[tuple[str, Any, Any]] = []
    a, b = before.to_dict(), after.to_dict()
    for section, fields in b.items():
        if not isinstance(fields, dict):  # a top-level field (name)
            if a[section] != fields:
                out.append((section, a[section], fields))
            continue
        for key, value in fields.items():
            if a[section][key] != value:
                out.append((f"{section}.{key}", a[section][key], value))
    return out


def _split_override(text: str, problems: list[str]) -> tuple[str | None, Any]:
    if "=" not in text:
        problems.append(f"{text}: expected key=value, e.g. training.max_steps=100")
        return None, None
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


