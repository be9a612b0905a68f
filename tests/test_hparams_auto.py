"""The Hyperparameters tab's "Auto-configure for my GPU" button, called through the built app for every
preset (recursive) and every GPU of the catalog: it returns form values that make a valid config, or refuses
with the estimator's own error naming what does not fit; any other exception is a bug."""

from __future__ import annotations

from typing import Any

import pytest

from finetune.config import RunConfig, validate
from finetune.memory import GPUS, EstimateError
from finetune.presets import load_preset, preset_paths


@pytest.fixture(scope="module")
def auto_handler(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any]]:
    """The auto-configure button's function as the app registers it (unwrapped from the message wrapper, so
    an internal error surfaces as itself), and the event's input components."""
    from finetune.service import Workspace
    from finetune.ui import build_app

    demo = build_app(Workspace(tmp_path_factory.mktemp("runs")), tmp_path_factory.mktemp("downloads"))
    button = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "auto-configure")
    handlers = [f for f in demo.fns.values() if any(t[0] == button._id for t in f.targets)]
    assert len(handlers) == 1, handlers
    fn = handlers[0].fn
    return getattr(fn, "__wrapped__", fn), list(handlers[0].inputs)


PRESETS = sorted(preset_paths())


@pytest.mark.parametrize("preset", PRESETS)
def test_auto_configure_button_gives_a_config_or_a_refusal_for_every_gpu(auto_handler, preset):
    from finetune.ui import forms

    fn, inputs = auto_handler
    cfg = load_preset(preset)
    form = forms.config_to_values(cfg)
    n = len(form)
    extras = [c.value for c in inputs[n:-1]]  # the dataset tab's fields at their initial values
    outcomes = {}
    for gpu in GPUS:
        try:
            values = fn(*form, *extras, gpu)
        except EstimateError as e:
            assert "nothing fits" in str(e) and gpu in str(e), (preset, gpu, str(e))
            outcomes[gpu] = "refused"
            continue
        assert isinstance(values, list) and len(values) == n, (preset, gpu)
        out = validate(forms.values_to_config(RunConfig(), values))
        # what the user did not ask to change stays; the plan's settings are written into the form
        assert out.model.id == cfg.model.id and out.lora.r == cfg.lora.r and out.data.template == cfg.data.template
        assert out.training.max_length == cfg.training.max_length
        outcomes[gpu] = "configured"
    assert outcomes["h200"] == "configured" and outcomes["cpu"] in ("configured", "refused")
    assert set(outcomes) == set(GPUS)


def test_every_preset_is_covered():
    from finetune.presets import PRESETS_DIR

    assert len(PRESETS) == len([p for p in PRESETS_DIR.rglob("*.yaml") if "recipes" not in p.parts]) >= 6


def test_auto_configure_shards_a_run_too_big_for_one_gpu_over_the_fewest_that_hold_it(auto_handler):
    """The 70B preset fits no single L40S (48 GB): the button proposes it sharded over two of them, into the form's
    Several GPUs fields; on one 80 GB GPU it stays one process."""
    from finetune.memory import estimate_training, get_gpu, setup_for, spec_for_config
    from finetune.ui import forms

    fn, inputs = auto_handler
    cfg = load_preset("llama-3.1-70b-qlora-4xl40s")
    form = forms.config_to_values(cfg)
    extras = [c.value for c in inputs[len(form):-1]]
    out = validate(forms.values_to_config(RunConfig(), fn(*form, *extras, "l40s")))
    assert (out.training.distributed, out.training.num_processes) == ("fsdp", 2)
    l40s = get_gpu("l40s")
    spec = spec_for_config(out, allow_hub=False)
    one = setup_for(out, l40s).with_(strategy="none", gpus=1)
    assert not estimate_training(spec, one, l40s, advise=False).fits  # why it is sharded
    assert estimate_training(spec, setup_for(out, l40s), l40s, advise=False).fits  # and that two hold it
    big = validate(forms.values_to_config(RunConfig(), fn(*form, *extras, "a100-80gb")))
    assert (big.training.distributed, big.training.num_processes) == ("auto", 0)
