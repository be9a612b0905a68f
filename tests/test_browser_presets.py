"""A real browser (Debian chromium driven by Playwright) on what a preset does to the Dataset tab: a template the
user picked there is kept when a preset suggests another, and the page says so with a one-click switch; the
preview shows the template the run will use, and the Train tab's "This run" line names that template and the
method."""

from __future__ import annotations

import json

import pytest

from apps import SAMPLE, dropdown_value, launched, needs_chromium, open_page, pick, text_of, wait_text
from finetune.presets import load_preset

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("dl")) as (_, url):
        yield url


def test_a_preset_keeps_the_template_picked_in_the_dataset_tab_and_says_so(url, browser, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("\n".join(json.dumps({"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
                                           "rejected": "no" if i % 2 == 0 else "yes"}) for i in range(12)) + "\n",
                     encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("#training-method").get_by_label("dpo", exact=True).check()
        page.get_by_role("tab", name="1 · Dataset").click()
        pick(page, "data-template", "llama2")  # the user's choice of format
        page.locator("#data-file input[type=file]").set_input_files(str(pairs))
        page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
        assert "[INST] Is 0 even? [/INST]" in text_of(page, "ft-preview")

        # the DPO preset writes `template: model`: the user's llama2 stays, and the page says what it suggests
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        pick(page, "preset", "smollm2-135m-dpo")
        wait_text(page, "preset-info", "llama2")
        note = text_of(page, "preset-info")
        assert "kept" in note.lower() and "llama2" in note and "model" in note, note
        steps = load_preset("smollm2-135m-dpo").training.max_steps
        wait_text(page, "fit-verdict", f"for {steps} steps")  # the preset's own values arrived
        page.locator("button.label-wrap", has_text="Config (YAML)").first.click()  # open the accordion
        wait_text(page, "config-yaml", "template: llama2")  # the config a run starts from
        assert dropdown_value(page, "data-template") == "llama2"

        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "run-summary", "pairs.jsonl")
        summary = text_of(page, "run-summary")
        assert "template llama2" in summary and "method DPO" in summary, summary

        page.get_by_role("tab", name="1 · Dataset").click()
        preview = text_of(page, "ft-preview")
        assert "[INST] Is 0 even? [/INST]" in preview and "template llama2" in preview, preview

        # one click takes the preset's template: the preview follows without pressing Format, and so does the run
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("#preset-data-switch").click()
        page.wait_for_function("() => document.querySelector('#config-yaml').innerText.includes('template: model')",
                               timeout=30_000)
        assert dropdown_value(page, "data-template") == "model"
        page.get_by_role("tab", name="1 · Dataset").click()
        page.wait_for_function("() => (document.querySelector('#ft-preview') || {}).innerText?.includes("
                               "'<|im_start|>user')", timeout=120_000)
        preview = text_of(page, "ft-preview")
        assert "[INST]" not in preview and "the model's own chat template" in preview, preview
        # a typed setting: the preview says it is out of date while typing, and follows when the field is left
        box = page.locator("#data-system_prompt textarea").first
        box.fill("Answer in one word.")
        wait_text(page, "preview-stale", "out of date")
        assert "system prompt" in text_of(page, "preview-stale")
        box.press("Tab")
        wait_text(page, "ft-preview", "Answer in one word.", timeout_s=120)
        page.wait_for_function("() => !document.querySelector('#preview-stale').innerText.includes('out of date')",
                               timeout=30_000)
        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "run-summary", "the model's own chat template")
        assert "method DPO" in text_of(page, "run-summary")
    finally:
        context.close()


def test_a_template_the_user_never_touched_follows_the_preset_with_a_note(url, browser):
    """Nothing picked in the Dataset tab: the preset's template is applied, the note names the change, and the
    preview no longer shows the old template (re-rendered, or cleared when the preset's model cannot be read)."""
    context, page = open_page(browser, url)
    try:
        page.locator("#data-file input[type=file]").set_input_files(str(SAMPLE))
        page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
        assert "<|im_start|>user" in text_of(page, "ft-preview")  # the default preset's `model` template
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        pick(page, "preset", "falcon-7b-qlora")
        wait_text(page, "preset-info", "→ falcon")
        note = text_of(page, "preset-info")
        assert "Prompt template" in note and "model → falcon" in note, note
        assert not page.locator("#preset-data-switch").is_visible()  # nothing of the user's was kept
        assert dropdown_value(page, "data-template") == "falcon"
        page.get_by_role("tab", name="1 · Dataset").click()
        page.wait_for_function("() => !document.querySelector('#ft-preview')?.innerText.includes('<|im_start|>user')",
                               timeout=120_000)
    finally:
        context.close()
