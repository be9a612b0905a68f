"""Every training method is one entry of ``methods.REGISTRY``: each entry has every part, and training, the
estimator, the model card, the Dataset tab's preview and the Method picker read the entry, so a method added
as one entry reaches all of them."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from finetune import card, methods, service
from finetune.config import RunConfig, TrainingConfig, choices
from finetune.data.preference import SHAPE_OF_METHOD, SHAPES
from finetune.memory.estimate import TrainSetup


@pytest.mark.parametrize("name", list(methods.REGISTRY))
def test_every_entry_has_every_part(name):
    m = methods.REGISTRY[name]
    t = TrainingConfig(method=name)
    assert m.name == name and m.description and m.data
    assert m.shape == methods.ANY_SHAPE or (m.shape in SHAPES and SHAPE_OF_METHOD[name] == m.shape)
    assert callable(m.datasets) and callable(m.trainer)
    assert isinstance(m.card(t), str) and m.card(t)
    assert m.sequences(t) >= 1 and isinstance(m.reference(t), bool) and m.beta(t) >= 0
    assert all(isinstance(k, str) for k in m.metrics)


def test_the_method_names_are_the_registrys():
    assert methods.METHODS == tuple(methods.REGISTRY) == choices("training.method")


def test_callers_ask_the_registry_not_a_method_name():
    """No caller compares ``training.method`` with a name: training, the callbacks, the card, the estimator,
    the template check, the preview and the picker ask the method's entry."""
    from finetune import callbacks, train, verify
    from finetune.ui import hparams_tab

    for fn in (train.load_data, train.load_model, train.build_trainer, train.save_run, train._scores_in_memory,
               callbacks.events_callback, card._method_line, card._method_results, TrainSetup.from_config,
               verify.run_dialogs, service.format_preview, hparams_tab.method_markdown):
        src = inspect.getsource(fn).split('"""')[-1]  # the code, not the docstring
        assert not any(f'"{name}"' in src for name in methods.REGISTRY), fn.__qualname__


@pytest.fixture
def toy(monkeypatch):
    """A made-up method registered as one entry: orpo's data and trainer, its own metric and counts."""
    entry = dataclasses.replace(methods.REGISTRY["orpo"], name="toy", description="learn from toy rows",
                                data="toy rows", card=lambda t: "toy settings", metrics=("toy_metric",),
                                sequences=lambda t: 3, reference=lambda t: True, beta=lambda t: 0.5)
    monkeypatch.setitem(methods.REGISTRY, "toy", entry)
    return entry


def test_a_new_method_is_one_entry(toy):
    from finetune.ui.hparams_tab import method_markdown

    config = RunConfig()
    config.training.method = "toy"
    assert method_markdown("toy") == "**TOY**: learn from toy rows. Data: toy rows."
    setup = TrainSetup.from_config(config)
    assert (setup.sequences, setup.reference, setup.tuning) == (3, True, "toy")
    assert "toy: 3 sequence(s) per example, reference pass" in setup.describe()
    assert methods.beta(config) == 0.5
    assert methods.get("toy").step_metrics({"loss": 1.0, "toy_metric": 0.25}) == {"toy_metric": 0.25}
    assert methods.get("toy").run_metrics([{"loss": 1.0, "toy_metric": 0.5}]) == {"method": "toy", "toy_metric": 0.5}
    assert card._method_line(config) == "TOY (toy settings)"
    assert card._method_results("toy", {"toy_metric": 0.5, "loss": 1.0}) == ["- final toy_metric: 0.5000"]
    assert methods.get("toy").text_rows


def test_the_preview_of_a_new_method_reads_its_entry(toy, tmp_path):
    rows = tmp_path / "pairs.jsonl"
    rows.write_text('{"prompt": "Capital of France?", "chosen": "Paris", "rejected": "Lyon"}\n', encoding="utf-8")
    from finetune.ui.dataset_tab import preview_report

    out = preview_report(service.format_preview(str(rows), template="chatml", method="toy", out_dir=tmp_path / "out"))
    assert out["summary"].startswith("**TOY data**") and out["examples"][0]["row"] == "1 (chosen)"
    with pytest.raises(service.ServiceError, match="not one of: sft, dpo, orpo, kto, grpo, toy"):
        service.format_preview(str(rows), template="chatml", method="nope", out_dir=tmp_path / "out")
