"""The base-model picker: a searchable list (the embedded model, the presets' models, the models downloaded here)
that still takes any typed id or folder; the Hub is searched as one types only on one's own machine online, never
for a shared server's visitors, never with the server's token, and never in the (offline) tests."""

from __future__ import annotations

import pytest

from finetune.models import model_choices
from finetune.presets import load_preset, preset_paths
from finetune.service import Workspace


def test_the_picker_offers_the_embedded_model_and_every_presets_model_once():
    offered = model_choices()
    ids = [model_id for _, model_id in offered]
    assert ids[0] == "" and "embedded" in offered[0][0]
    assert {load_preset(n).model.id for n in preset_paths()} <= set(ids)
    assert len(ids) == len(set(ids))


def test_the_hub_is_searched_only_on_ones_own_machine_online(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from finetune.ui.common import Api
    from finetune.ui.hparams_tab import hub_search_allowed

    shared, mine = (Api(Workspace(tmp_path / n, multi_user=m), tmp_path) for n, m in (("a", True), ("b", False)))
    assert not hub_search_allowed(mine)  # the tests run offline: no search, ever
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    assert hub_search_allowed(mine) and not hub_search_allowed(shared)


def test_a_hub_search_is_anonymous_and_asks_for_text_generation_models(monkeypatch):
    from types import SimpleNamespace

    from huggingface_hub import HfApi

    from finetune.hub import search_models

    asked: list[dict] = []

    def list_models(self, **kw):
        asked.append(kw)
        return [SimpleNamespace(id="someone/tiny-llama")]

    monkeypatch.setattr(HfApi, "list_models", list_models)
    assert search_models("ll") == [] and not asked  # too short to ask
    assert search_models("llama") == ["someone/tiny-llama"]
    assert asked[0]["token"] is False and asked[0]["pipeline_tag"] == "text-generation" and asked[0]["search"] == "llama"


@pytest.mark.parametrize("multi_user", [True, False])
def test_the_base_model_field_is_a_filterable_list_that_takes_any_text(tmp_path, monkeypatch, multi_user):
    from huggingface_hub import constants

    from finetune.ui import build_app

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # as if online (nothing is called: the app is only built)
    demo = build_app(Workspace(tmp_path / "runs", multi_user=multi_user), tmp_path / "dl")
    picker = next(b for b in demo.blocks.values() if getattr(b, "elem_id", None) == "model-id")
    assert picker.get_block_name() == "dropdown" and picker.allow_custom_value and picker.filterable
    assert ("Qwen/Qwen2.5-7B-Instruct (preset qwen2.5-7b-qlora)", "Qwen/Qwen2.5-7B-Instruct") in picker.choices
    searches = [fn for fn in demo.fns.values() if (picker._id, "key_up") in fn.targets]
    assert len(searches) == (0 if multi_user else 1)  # a shared server's visitors never make it search the Hub
