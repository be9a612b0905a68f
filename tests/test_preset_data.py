"""What a preset does to the Dataset tab's choices (kept when the user made them, taken and said when not), and
what the Train tab's "This run" line and the Dataset preview say a run will use (template and method)."""

from __future__ import annotations

import doctest

from finetune import templates
from finetune.presets import DEFAULT_PRESET, load_preset
from finetune.ui import dataset_tab, hparams_tab
from finetune.ui.hparams_tab import data_values, preset_data_choice, preset_data_note, switch_label


def test_a_choice_the_user_made_is_kept_and_one_left_alone_follows_the_preset():
    baseline = data_values(load_preset(DEFAULT_PRESET))  # what the form opened with
    current = {**baseline, "data.template": "llama2"}  # the user picked llama2 on the Dataset tab
    proposed = {**data_values(load_preset("falcon-7b-qlora")), "data.val_fraction": 0.1}
    result = preset_data_choice(current, baseline, proposed)
    assert result.values["data.template"] == "llama2"
    assert result.kept == [("data.template", "llama2", "falcon")]
    assert result.values["data.val_fraction"] == 0.1  # never touched: the preset's value, and said
    assert ("data.val_fraction", 0.0, 0.1) in result.changed
    note = preset_data_note(result)
    assert "kept your `llama2`, the preset suggests `falcon`" in note
    assert "Validation fraction: `0.0` → `0.1`" in note
    assert switch_label({"data.template": "falcon"}) == "Use the preset's prompt template: falcon"


def test_the_next_preset_still_keeps_the_users_choice_and_a_taken_suggestion_is_the_presets_again():
    first = data_values(load_preset("falcon-7b-qlora"))  # the last preset suggested falcon; the user kept llama2
    mine = {**first, "data.template": "llama2"}
    cpu = data_values(load_preset(DEFAULT_PRESET))
    assert preset_data_choice(mine, first, cpu).kept == [("data.template", "llama2", "model")]
    taken = {**mine, "data.template": "falcon"}  # the switch took the preset's falcon: the next preset replaces it
    result = preset_data_choice(taken, first, cpu)
    assert result.values["data.template"] == "model" and result.kept == []
    assert [c[0] for c in result.changed] == ["data.template"]


def test_equal_values_of_other_widget_types_are_no_choice():
    baseline = {"data.system_prompt": None, "data.val_fraction": 0.1, "data.test_source": ""}
    current = {"data.system_prompt": "", "data.val_fraction": 0.1000000000001, "data.test_source": None}
    proposed = {"data.system_prompt": "Be brief.", "data.val_fraction": 0.2, "data.test_source": ""}
    result = preset_data_choice(current, baseline, proposed)
    assert result.kept == []  # nothing was the user's: all follow the preset
    assert result.values["data.system_prompt"] == "Be brief." and result.values["data.val_fraction"] == 0.2
    assert preset_data_note(preset_data_choice(current, baseline, current)) == ""  # no change, nothing said


def test_this_run_names_the_template_and_the_method(tmp_path):
    cfg = load_preset("smollm2-135m-dpo")
    cfg.data.template = "llama2"
    from finetune.ui.train_tab import run_summary, summary_markdown

    s = run_summary(cfg.to_yaml())
    assert s["template"] == "llama2" and s["method"] == "dpo"

    line = summary_markdown(s)
    assert "template `llama2`" in line and "method DPO" in line, line
    s = run_summary(load_preset(DEFAULT_PRESET).to_yaml())
    assert s["template"] == "the model's own chat template" and s["method"] == "sft"


def test_the_preview_says_what_it_was_rendered_with():
    page = dataset_tab.preview_html([{"row": 1, "text": "[INST] hi [/INST] yo", "spans": [[18, 20]]}],
                                    caption=dataset_tab.preview_caption("llama2", "dpo"))
    assert "Rendered with template <code>llama2</code> · method DPO" in page
    assert "(the model&#x27;s own chat template)" in dataset_tab.preview_caption("model", "sft")


def test_doctests():
    for module in (hparams_tab, templates):
        assert doctest.testmod(module).failed == 0
