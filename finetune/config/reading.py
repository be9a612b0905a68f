"""Reading a config: YAML text and nested dicts checked and converted into typed dataclasses, every problem
(unknown keys, wrong types, a likely alias) collected into one ``ConfigError``.

>>> _coerce("64", int, "lora.r", [])
64
"""

from __future__ import annotations

import dataclasses
import difflib
import reprlib
import typing
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from ..errors import UserError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigWarning(UserWarning):
    """A valid config with a risky setting (e.g. trust_remote_code); shown, not refused."""


# Values quoted in messages are cut short: a hostile YAML (nested aliases, "billion laughs") must not turn
# one error message into gigabytes of text.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 60, 60, 4, 4


def _show(value: Any) -> str:
    return _repr.repr(value)


class ConfigError(ValueError, UserError):
    """One or more problems in a config; ``problems`` lists each as 'field: what is wrong; the fix'."""

    what = "config"  # what the file is, in the message's head

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        head = f"{where}{len(self.problems)} problem(s) in the {self.what}"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))



def _load_yaml(text: str, source: str | None) -> dict[Any, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}not valid YAML ({reason}); check indentation and quoting"], source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, not {type(data).__name__}"], source)
    return data


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: object, name: str, problems: list[str]) -> Any:
    """Check/convert one leaf value against its annotation (int, float, bool, str, optional, list, dict)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, a, name, trial)
            if not trial:
                return out
            errors += trial
        problems.append(errors[0] if errors else f"{name}: invalid value {_show(value)}")
        return None
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        problems.append(f"{name}: expected a list of names, got {_show(value)}")
        return None
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        problems.append(f"{name}: expected a mapping of names to names, got {_show(value)}")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        problems.append(f"{name}: expected true or false, got {_show(value)}")
        return None
    if tp is int:
        if isinstance(value, bool):
            problems.append(f"{name}: expected a whole number, got {_show(value)}")
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        problems.append(f"{name}: expected a whole number, got {_show(value)}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{name}: expected a number, got {_show(value)}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{name}: expected text, got {_show(value)}")
        return None
    problems.append(f"{name}: unsupported type {_type_name(tp)}")
    return None


# Names other tools use for our fields: suggested when a config uses them.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target": "target_modules",
    "lr": "learning_rate", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length", "max_seq_len": "max_length",
    "lr_scheduler_type": "lr_scheduler", "model_id": "id", "model_name": "id", "dataset": "source",
    "bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant",
}


_D = TypeVar("_D", bound="DataclassInstance")


def _build(cls: type[_D], data: Any, prefix: str, problems: list[str]) -> _D:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{prefix}{_show(key)}: a key must be a name, e.g. {prefix or 'training.'}max_steps")
            continue
        name = f"{prefix}{key}"
        if key not in fields:
            close = [ALIASES[key]] if ALIASES.get(key) in fields else difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known: {', '.join(fields)}"
            problems.append(f"{name}: unknown key{hint}")
            continue
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a section (hints of fields are classes)
            kwargs[key] = _build(tp, value if value is not None else {}, f"{name}.", problems)
        else:
            before = len(problems)
            out = _coerce(value, tp, name, problems)
            if len(problems) == before:
                kwargs[key] = out
    return cls(**kwargs)

