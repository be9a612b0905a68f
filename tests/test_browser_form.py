"""The form on a newcomer's second walk, in a real browser (Debian chromium driven by Playwright): the data suggests
its method (preference pairs under SFT: one click picks DPO or ORPO, and the preview follows the method and the
template without pressing Format), a CPU method preset shows its verdict for the CPU, and a run is named on the
page (its config, the run list, the pickers; never markup or a path) and deleted there with its files."""

from __future__ import annotations

import json

import pytest
from apps import dropdown_value, launched, needs_chromium, open_page, pick, set_text, text_of, wait_text

from finetune.config import RunConfig

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl")) as (_, url):
        yield url, root


def method_is(page, method: str) -> bool:
    """Whether the Method picker (2 · Hyperparameters) has ``method``; back on the Dataset tab after."""
    page.get_by_role("tab", name="2 · Hyperparameters").click()
    checked = bool(page.locator("#training-method").get_by_label(method, exact=True).is_checked())
    page.get_by_role("tab", name="1 · Dataset").click()
    return checked


def test_preference_pairs_under_sft_suggest_their_method_and_the_preview_follows(app, browser, tmp_path):
    url, _ = app
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
                                         "rejected": "no" if i % 2 == 0 else "yes"}) + "\n" for i in range(8)),
                     encoding="utf-8")
    feedback = tmp_path / "thumbs.jsonl"
    feedback.write_text("".join(json.dumps({"prompt": f"Is {i} even?", "completion": "yes", "label": i % 2 == 0})
                                + "\n" for i in range(8)), encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.locator("#data-file input[type=file]").set_input_files(str(pairs))  # the method is SFT
        wait_text(page, "format-summary", "preference pairs")
        summary = text_of(page, "format-summary")
        assert "pairs.jsonl" in summary and "pick DPO or ORPO" in summary, summary
        assert page.locator("#use-method-dpo").is_visible() and page.locator("#use-method-orpo").is_visible()
        assert not page.locator("#use-method-kto").is_visible()

        page.locator("#use-method-dpo").click()  # one click: the method is DPO and the preview shows the pairs
        wait_text(page, "ft-preview", "(chosen)", timeout_s=120)
        assert "method DPO" in text_of(page, "ft-preview") and "DPO data" in text_of(page, "format-summary")
        assert not page.locator("#use-method-dpo").is_visible()
        assert method_is(page, "dpo")

        pick(page, "data-template", "llama2")  # a template picked: rendered again, no Format pressed
        wait_text(page, "ft-preview", "[INST] Is 0 even? [/INST]", timeout_s=120)
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("#training-method").get_by_label("orpo", exact=True).check()  # a method picked: the same
        page.get_by_role("tab", name="1 · Dataset").click()
        wait_text(page, "ft-preview", "method ORPO", timeout_s=120)
        assert "template llama2" in text_of(page, "ft-preview")

        # answers labelled good or bad read as SFT prompt/completion rows: SFT would imitate the bad ones too
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("#training-method").get_by_label("sft", exact=True).check()
        page.get_by_role("tab", name="1 · Dataset").click()
        page.locator("#data-file button[aria-label='Clear']").first.click()
        page.locator("#data-file input[type=file]").set_input_files(str(feedback))
        wait_text(page, "format-summary", "pick KTO")
        assert "labelled good or bad" in text_of(page, "format-summary")
        page.locator("#use-method-kto").click()
        wait_text(page, "ft-preview", "thumbs up", timeout_s=120)
        assert method_is(page, "kto") and "KTO data" in text_of(page, "format-summary")
    finally:
        context.close()


def test_a_cpu_method_preset_shows_its_verdict_for_the_cpu(app, browser):
    url, _ = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        wait_text(page, "fit-verdict", "on cpu")
        pick(page, "preset", "smollm2-135m-dpo")
        wait_text(page, "preset-info", "DPO on SmolLM2")
        page.wait_for_function("() => document.querySelector('#gpu input').value === 'cpu'", timeout=30_000)
        wait_text(page, "fit-verdict", "for 20 steps")  # the preset's own steps: its verdict, not the last one's
        verdict = text_of(page, "fit-verdict")
        assert "on cpu" in verdict and "no charge" in verdict, verdict
    finally:
        context.close()


@pytest.mark.slow  # a real run (the tiny model, one step), about 45 s; tests/test_app.py names, lists and deletes one through the API
def test_a_run_is_named_on_the_page_listed_by_its_name_and_deleted_with_its_files(app, browser, tiny_model_dir):
    url, root = app
    name = "Oslo <img src=x onerror=window.pwned=1> & co"  # anyone's text: shown as text, never markup or a path
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        set_text(page, "model-id", str(tiny_model_dir))
        page.locator("button.label-wrap", has_text="Training").first.click()
        set_text(page, "training-max_steps", "1")
        set_text(page, "training-max_length", "64")
        page.get_by_role("tab", name="3 · Train").click()
        set_text(page, "run-name", name)
        wait_text(page, "run-summary", "1 steps")
        page.locator("#use-sample input").check()
        page.locator("#start-training").click()
        page.wait_for_function("() => (document.querySelector('#run-id textarea, #run-id input') || {}).value",
                               timeout=60_000)
        run_id = page.locator("#run-id textarea, #run-id input").first.input_value()
        folder = next(root.rglob(run_id))  # the name's letters and digits only in the id: a folder of the owner's
        assert run_id.split("-")[2:6] == ["oslo", "img", "src", "x"] and folder.resolve().is_relative_to(root.resolve())
        assert RunConfig.load(folder / "config.yaml").name == name  # stored in the run's config
        wait_text(page, "ft-progress", "finished", 180)
        assert name in text_of(page, "ft-progress")
        wait_text(page, "runs-table", name)
        page.locator("#runs-pick input").first.click()
        page.get_by_role("option", name=f"{name} · {run_id}", exact=True).wait_for(timeout=10_000)
        page.keyboard.press("Escape")
        assert page.evaluate("() => window.pwned") is None and page.locator("#runs-table img").count() == 0

        page.locator("#delete-run").click()
        page.wait_for_function("() => !(document.querySelector('#run-id textarea, #run-id input') || {}).value",
                               timeout=30_000)
        wait_text(page, "disk-usage", "MB")
        assert not folder.exists()  # checkpoints, adapter and events with it
        page.wait_for_function(f"() => !document.querySelector('#runs-table').innerText.includes({run_id!r})",
                               timeout=30_000)
        page.wait_for_selector("#ft-progress", state="detached", timeout=30_000)  # "No run selected" instead
    finally:
        context.close()


def kept_form(root, needle: str, timeout_s: float = 30) -> None:
    """Wait until a kept form (the owner's form.json) holds ``needle``."""
    import time

    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if any(needle in p.read_text() for p in root.rglob("form.json")):
            return
        time.sleep(0.2)
    raise AssertionError(f"no kept form with {needle!r}")


def test_a_reloaded_page_keeps_the_form_and_says_so_and_another_visitor_starts_fresh(app, browser, tmp_path):
    url, root = app
    pairs = tmp_path / "my_pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Is {i} even?", "chosen": "yes" if i % 2 == 0 else "no",
                                         "rejected": "no" if i % 2 == 0 else "yes"}) + "\n" for i in range(8)),
                     encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.locator("#data-file input[type=file]").set_input_files(str(pairs))
        page.locator("#use-method-dpo").click()
        page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
        pick(page, "data-template", "chatml")
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("button.label-wrap", has_text="Training").first.click()
        set_text(page, "training-max_steps", "7")
        kept_form(root, "max_steps: 7")

        page.reload()
        page.wait_for_selector("text=1 · Dataset", timeout=60_000)
        wait_text(page, "form-restored", "back as you left it")
        note = text_of(page, "form-restored")
        assert "my_pairs.jsonl" in note and "chatml" in note and "DPO" in note and "7 steps" in note, note
        assert "my_pairs.jsonl" in text_of(page, "data-file").replace("\n", "")  # the upload itself, not only its name
        assert dropdown_value(page, "data-template") == "chatml"
        wait_text(page, "ft-preview", "method DPO", timeout_s=120)  # the data previewed again, as the run uses it
        assert "template chatml" in text_of(page, "ft-preview") and "DPO data" in text_of(page, "format-summary")
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        assert page.locator("#training-method").get_by_label("dpo", exact=True).is_checked()
        page.locator("button.label-wrap", has_text="Training").first.click()
        assert page.locator("#training-max_steps input").first.input_value() == "7"
        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "run-summary", "my_pairs.jsonl")  # what a run would use: the restored form
        summary = text_of(page, "run-summary")
        assert "7 steps" in summary and "method DPO" in summary and "8 rows" in summary, summary

        other, fresh = open_page(browser, url)  # another visitor (their own cookie): the preset's form
        try:
            fresh.wait_for_timeout(1500)
            assert not fresh.locator("#form-restored").is_visible()
            assert dropdown_value(fresh, "data-template") == "model"
        finally:
            other.close()

        with page.expect_navigation(timeout=60_000):  # start over: the page opens with the preset again
            page.locator("#form-start-over").click()
        page.wait_for_selector("text=1 · Dataset", timeout=60_000)
        page.wait_for_timeout(1500)
        assert not page.locator("#form-restored").is_visible()
        assert dropdown_value(page, "data-template") == "model"
    finally:
        context.close()


def test_the_base_model_is_picked_from_a_searchable_list_or_typed(app, browser, tiny_model_dir):
    url, _ = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("button.label-wrap", has_text="Config (YAML)").first.click()
        box = page.locator("#model-id input").first
        box.click()
        box.fill("qwen")  # filters the list: the presets' models, the embedded one, those downloaded here
        option = page.get_by_role("option", name="Qwen/Qwen2.5-7B-Instruct (preset qwen2.5-7b-qlora)", exact=True)
        option.click()
        wait_text(page, "config-yaml", "id: Qwen/Qwen2.5-7B-Instruct")
        set_text(page, "model-id", str(tiny_model_dir))  # any id or folder can still be typed
        wait_text(page, "config-yaml", f"id: {tiny_model_dir}")
        assert box.input_value() == str(tiny_model_dir)
    finally:
        context.close()
