"""A config field declares its help, choices and range once (``config.doc``); the checks, the form, the estimator,
the rewards and the data formatting follow from it."""

from __future__ import annotations

import dataclasses

import pytest

from finetune import rewards
from finetune.config import (DataConfig, RewardSettings, RunConfig, apply_overrides, choices, field_help, problems,
                             rule, rules)
from finetune.data import DataError, format_dataset
from finetune.memory import OPTIMIZERS, TrainSetup
from finetune.settings import AUTO_OPTIM

CHOICE_FIELDS = [key for key, meta in rules() if "choices" in meta]
RANGED = [key for key, meta in rules() if {"min", "max", "ceiling"} & set(meta)]


def with_(key: str, value: object) -> RunConfig:
    method = rule(key).get("method")
    base = apply_overrides(RunConfig(), {"training.method": method}) if method else RunConfig()
    return apply_overrides(base, {key: value})


@pytest.mark.parametrize("key", CHOICE_FIELDS)
def test_every_choice_is_accepted_and_anything_else_named_with_the_choices(key):
    for value in choices(key):
        assert not [p for p in problems(with_(key, value)) if p.startswith(key)], (key, value)
    [problem] = [p for p in problems(with_(key, "nonsense")) if p.startswith(key)]
    assert problem == f"{key} 'nonsense' {rule(key).get('unknown', 'is not one of')}: {', '.join(choices(key))}"
    assert all(c in field_help(*key.split(".")) for c in choices(key))  # the help lists them


@pytest.mark.parametrize("key", RANGED)
def test_every_declared_bound_is_checked_at_its_edge(key):
    meta = rule(key)
    section, name = key.split(".")
    whole = isinstance(getattr(getattr(RunConfig(), section), name), int)
    step = 1 if whole else 1e-6
    named = lambda v: [p for p in problems(with_(key, v)) if p.startswith(key)]  # noqa: E731
    if "min" in meta:
        lo = meta["min"]
        inside = lo + step if meta.get("exclusive") in ("min", "both") else lo
        assert not named(inside) and named(inside - step), key
    top = meta.get("max", meta.get("ceiling"))
    if top is not None:
        inside = top - step if meta.get("exclusive") in ("max", "both") else top
        assert not named(inside) and named(inside + step), key


def test_another_methods_fields_are_not_checked():
    cfg = apply_overrides(RunConfig(), {"training.dpo_beta": 0})
    assert not problems(cfg)
    assert any(p.startswith("training.dpo_beta must be > 0") for p in problems(
        apply_overrides(cfg, {"training.method": "dpo"})))


def test_the_form_offers_the_declared_choices_and_range():
    from finetune.ui import forms

    by_key = {f.key: f for f in forms.FORM_FIELDS}
    assert by_key["training.optim"].options() == choices("training.optim") and "sgd" in choices("training.optim")
    assert by_key["training.method"].options() == ("sft", "dpo", "orpo", "kto", "grpo")
    for f in forms.FORM_FIELDS:
        if f.kind in ("radio", "dropdown") and "choices" in rule(f.key):
            assert f.options() == choices(f.key), f.key
        lo, hi = f.bounds()
        if f.minimum is None and "min" in rule(f.key):
            assert lo == rule(f.key)["min"], f.key
    assert by_key["training.max_length"].bounds()[0] == 16
    assert forms.METHOD_OF["training.kto_beta"] == "kto" and forms.METHOD_OF["rewards.exact_match"] == "grpo"


def test_the_estimator_takes_every_optimizer_training_can_use():
    concrete = [o for o in choices("training.optim") if o != "auto"] + list(AUTO_OPTIM.values())
    assert sorted(OPTIMIZERS) == sorted(set(concrete))
    for optim in concrete:
        TrainSetup().with_(optim=optim)


def test_one_list_of_reward_weights():
    weights = RewardSettings().weights()
    assert list(weights) == list(rewards._BUILTIN)
    assert set(weights) == {f.name for f in dataclasses.fields(RewardSettings) if f.type in (float, "float")}
    cfg = apply_overrides(RunConfig(), {"training.method": "grpo", "rewards.numeric_match": 2.0})
    assert not problems(cfg)
    funcs, w = rewards.builtin_rewards(cfg.rewards)
    assert [f.__name__ for f in funcs] == ["numeric_match"] and w == [2.0]


def test_format_dataset_defaults_are_the_data_sections():
    rows = [{"prompt": "q", "completion": "a"}]
    with pytest.raises(DataError, match="template 'model' needs the model's tokenizer"):
        format_dataset(rows)  # DataConfig's template: the model's own
    assert format_dataset(rows, DataConfig(template="chatml")).examples[0].text.startswith("<|im_start|>")
