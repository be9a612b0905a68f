"""GRPO's rewards: built-in checks chosen and weighted in the config (``rewards`` section), combined by trl as
the weighted sum, and the user's own Python reward functions, from the command line only.

Each built-in check scores one answer between 0 and 1 and is named after its config field, so the run's events
show ``rewards/exact_match/mean`` and so on. A shared app never runs code from a user: it refuses a config with
``rewards.module`` (finetune/service.py); ``python -m finetune train --reward-module my_rewards.py`` sets it on
the user's own machine.

>>> from finetune.config import RewardSettings
>>> funcs, weights = builtin_rewards(RewardSettings(exact_match=1.0, contains=["Paris"], contains_weight=0.5))
>>> [f.__name__ for f in funcs], weights
(['exact_match', 'contains'], [1.0, 0.5])
>>> funcs[0](prompts=["p", "p"], completions=[" Paris ", "Rome"], answer=["Paris", "Paris"])
[1.0, 0.0]
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from .errors import UserError

RewardFunc = Callable[..., list[float]]  # trl's signature: (prompts=, completions=, **dataset columns) -> scores


class RewardError(ValueError, UserError):
    """A reward that cannot be built: a missing module, a judge model that is not local, a bad schema."""


def _text(completion: Any) -> str:
    """A completion as text: trl passes strings for text prompts and message lists for conversational ones."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    return str(completion)


def _norm(text: str) -> str:
    return " ".join(text.split())


NUMBER = re.compile(r"-?\d+(?:[.,]\d+)*(?:\.\d+)?")


def last_number(text: str) -> float | None:
    """The last number written in ``text`` (thousands separators allowed), or None.

    >>> last_number("2 + 2 = 4."), last_number("about 1,250.5 km"), last_number("none")
    (4.0, 1250.5, None)
    """
    found = NUMBER.findall(text)
    if not found:
        return None
    try:
        return float(found[-1].replace(",", ""))
    except ValueError:
        return None


def _references(kwargs: dict[str, Any], n: int) -> list[str | None]:
    refs = kwargs.get("answer")
    if refs is None:
        return [None] * n
    return [None if r is None else str(r) for r in refs]


def exact_match(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1 when the answer equals the reference (whitespace trimmed and collapsed), else 0 (also without one)."""
    refs = _references(kwargs, len(completions))
    return [0.0 if r is None else float(_norm(_text(c)) == _norm(r)) for c, r in zip(completions, refs)]


def numeric_match(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
    """1 when the answer's last number equals the reference's last number (relative tolerance 1e-6)."""
    out = []
    for c, r in zip(completions, _references(kwargs, len(completions))):
        want = last_number(r) if r is not None else None
        got = last_number(_text(c))
        out.append(float(want is not None and got is not None and math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-9)))
    return out


def _named(fn: RewardFunc, name: str) -> RewardFunc:
    fn.__name__ = fn.__qualname__ = name  # trl logs each reward under its function's name
    return fn


def regex_reward(pattern: str) -> RewardFunc:
    rx = re.compile(pattern, re.DOTALL)

    def regex(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [float(rx.fullmatch(_text(c).strip()) is not None) for c in completions]

    return _named(regex, "regex")


SCHEMA_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,), "array": (list,), "string": (str,), "integer": (int,), "number": (int, float),
    "boolean": (bool,), "null": (type(None),),
}
SCHEMA_KEYS = {"type", "properties", "required", "additionalProperties", "items", "enum", "const", "minimum",
               "maximum", "minLength", "maxLength", "minItems", "maxItems", "title", "description", "$schema"}


def schema_problem(schema: Any, where: str = "schema") -> str | None:
    """Why ``schema`` is outside the JSON Schema subset :func:`fits` checks (None: it is inside).

    >>> schema_problem({"type": "object", "required": ["a"]}), schema_problem({"type": "obj"})
    (None, "schema: type 'obj' is not one of array, boolean, integer, null, number, object, string")
    """
    if not isinstance(schema, dict):
        return f"{where}: must be an object"
    unknown = sorted(set(schema) - SCHEMA_KEYS)
    if unknown:
        return f"{where}: '{unknown[0]}' is not supported; use {', '.join(sorted(SCHEMA_KEYS - {'title', 'description', '$schema'}))}"
    types = schema.get("type")
    for t in ([types] if isinstance(types, str) else types or []):
        if t not in SCHEMA_TYPES:
            return f"{where}: type '{t}' is not one of {', '.join(sorted(SCHEMA_TYPES))}"
    for name, sub in (schema.get("properties") or {}).items():
        if (why := schema_problem(sub, f"{where}.properties.{name}")) is not None:
            return why
    if isinstance(schema.get("items"), dict):
        return schema_problem(schema["items"], f"{where}.items")
    return None


def fits(value: Any, schema: dict[str, Any]) -> bool:
    """Whether a JSON value fits a schema of the subset :data:`SCHEMA_KEYS` (types, properties, required,
    additionalProperties, items, enum/const, numeric and length bounds).

    >>> fits({"a": 1}, {"type": "object", "required": ["a"], "properties": {"a": {"type": "integer"}}})
    True
    """
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        ok = any(isinstance(value, SCHEMA_TYPES[t]) and not (t in ("integer", "number") and isinstance(value, bool))
                 for t in allowed)
        if not ok:
            return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"] or "maximum" in schema and value > schema["maximum"]:
            return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            return False
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            return False
        if isinstance(schema.get("items"), dict) and not all(fits(v, schema["items"]) for v in value):
            return False
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        if any(k not in value for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and any(k not in props for k in value):
            return False
        if not all(fits(value[k], sub) for k, sub in props.items() if k in value):
            return False
    return True


def json_reward(schema_text: str) -> RewardFunc:
    """1 for valid JSON (fitting the schema when one is given); 0.5 for valid JSON that does not fit it."""
    schema: dict[str, Any] | None = None
    if schema_text:
        try:
            schema = json.loads(schema_text)
        except ValueError as e:
            raise RewardError(f"rewards.json_schema is not valid JSON ({e}); write the schema as JSON text") from e
        why = schema_problem(schema)
        if why is not None:
            raise RewardError(f"rewards.json_schema {why}")

    def json_valid(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        out = []
        for c in completions:
            try:
                value = json.loads(_text(c).strip())
            except ValueError:
                out.append(0.0)
                continue
            out.append(1.0 if schema is None or fits(value, schema) else 0.5)
        return out

    return _named(json_valid, "json_valid")


def contains_reward(words: list[str]) -> RewardFunc:
    wanted = [w.lower() for w in words]

    def contains(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [sum(w in _text(c).lower() for w in wanted) / len(wanted) for c in completions]

    return _named(contains, "contains")


def excludes_reward(words: list[str]) -> RewardFunc:
    banned = [w.lower() for w in words]

    def excludes(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [float(not any(w in _text(c).lower() for w in banned)) for c in completions]

    return _named(excludes, "excludes")


def length_reward(target: int) -> RewardFunc:
    def length(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return [max(0.0, 1.0 - abs(len(_text(c).strip()) - target) / target) for c in completions]

    return _named(length, "length")


def judge_reward(folder: str, device: str = "cpu") -> RewardFunc:
    """A local reward model (sequence classification, one score) rating the user's prompt and the answer."""
    from .refs import classify

    ref = classify(folder)
    if ref.kind != "path" or not Path(folder).expanduser().is_dir():
        raise RewardError(f"rewards.judge_model '{folder}' must be a local folder holding a reward model "
                          "(sequence classification); download it first, a judge is never fetched during training")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = str(Path(folder).expanduser())
    try:
        # as every model the app loads: safetensors weights only (a pickle can run code; a folder without
        # safetensors fails here), never the folder's own Python
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        model = AutoModelForSequenceClassification.from_pretrained(path, use_safetensors=True,
                                                                   trust_remote_code=False).to(device).eval()
    except (OSError, ValueError) as e:
        raise RewardError(f"rewards.judge_model '{folder}' cannot be loaded as a reward model ({e}); give a folder "
                          "with a sequence-classification model and its tokenizer") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def judge(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        users = kwargs.get("user_text") or [_text(p) for p in prompts]
        texts = []
        for u, c in zip(users, completions):
            msgs = [{"role": "user", "content": str(u)}, {"role": "assistant", "content": _text(c)}]
            if getattr(tok, "chat_template", None):
                texts.append(str(tok.apply_chat_template(msgs, tokenize=False)))
            else:
                texts.append(f"{u}\n\n{_text(c)}")
        batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=1024).to(device)
        with torch.inference_mode():
            scores = model(**batch).logits[:, 0].float().tolist()
        return [float(s) for s in scores]

    return _named(judge, "judge")


# The check each weight of the config's ``rewards`` section turns on (RewardSettings.weights() names them).
_BUILTIN: dict[str, Callable[[Any, str], RewardFunc]] = {
    "exact_match": lambda rw, device: exact_match,
    "numeric_match": lambda rw, device: numeric_match,
    "regex_weight": lambda rw, device: regex_reward(rw.regex),
    "json_valid": lambda rw, device: json_reward(rw.json_schema),
    "contains_weight": lambda rw, device: contains_reward(rw.contains),
    "excludes_weight": lambda rw, device: excludes_reward(rw.excludes),
    "length_weight": lambda rw, device: length_reward(rw.length_target),
    "judge_weight": lambda rw, device: judge_reward(rw.judge_model, device),
}


def builtin_rewards(rw: Any, device: str = "cpu") -> tuple[list[RewardFunc], list[float]]:
    """The built-in checks with a weight, and their weights (in the config's order). ``rw``: the run config's
    ``rewards`` (config.RewardSettings; not imported here: the config's validation imports this module)."""
    chosen = [(name, weight) for name, weight in rw.weights().items() if weight]
    return [_BUILTIN[name](rw, device) for name, _ in chosen], [float(weight) for _, weight in chosen]


def load_reward_module(path: str) -> list[RewardFunc]:
    """The reward functions of a Python file: its ``REWARD_FUNCS`` list, else every function named ``reward_*``.

    Runs the file's code: only for the command line on the user's own machine (``--reward-module``)."""
    file = Path(path).expanduser()
    if file.suffix != ".py" or not file.is_file():
        raise RewardError(f"--reward-module '{path}' is not a Python file; give the path of a .py file that defines "
                          "reward_* functions")
    name = f"finetune_user_rewards_{abs(hash(str(file.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None, "a .py file always has a loader"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    funcs = getattr(module, "REWARD_FUNCS", None)
    if funcs is None:
        funcs = [v for k, v in sorted(vars(module).items()) if k.startswith("reward_") and callable(v)]
    if not isinstance(funcs, (list, tuple)) or not funcs or not all(callable(f) for f in funcs):
        raise RewardError(f"--reward-module '{path}' defines no reward function; define functions named reward_* "
                          "taking (prompts, completions, **kwargs) and returning one float per completion")
    return list(funcs)


def reward_functions(rw: Any, device: str = "cpu") -> tuple[list[RewardFunc], list[float]]:
    """Everything GRPO scores with: the built-in checks, then the module's functions (weight 1 each)."""
    funcs, weights = builtin_rewards(rw, device)
    if rw.module:
        extra = load_reward_module(rw.module)
        funcs += extra
        weights += [1.0] * len(extra)
    if not funcs:
        raise RewardError("grpo needs at least one reward; give one a weight, e.g. rewards.exact_match=1")
    return funcs, weights
