"""The app as a newcomer meets it, in a real browser (Debian chromium driven by Playwright): what a run will use
is shown before it starts, the bundled sample is used only when confirmed, a file error does not leave the last
file's preview on screen, a partial config upload merges onto the form, rows with their own system message are
counted, and a reloaded page comes back to the user's latest run."""

from __future__ import annotations

import pytest
from apps import SAMPLE, launched, needs_chromium, open_page, set_text, text_of, wait_text

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl")) as (_, url):
        yield url, root


ERROR_BADGES = "[data-testid=status-tracker] .error"  # gradio's mark on each output of a failed event


def refusal_toast(page, timeout_s: float = 30) -> str:
    """The message of a refused request (a warning toast: the outputs are not marked as failed), then closed."""
    page.wait_for_selector(".toast-body.warning", timeout=timeout_s * 1000)
    text = page.locator(".toast-body.warning").first.inner_text()
    for close in page.locator(".toast-close").all():
        close.click()
    return text.strip().splitlines()[-1]  # the message, under the toast's title and close button


def error_toast(page, timeout_s: float = 30) -> str:
    page.wait_for_selector(".toast-body.error", timeout=timeout_s * 1000)
    text = page.locator(".toast-body.error").first.inner_text()
    for close in page.locator(".toast-close").all():
        close.click()
    return text


def test_train_tab_says_what_a_run_uses_and_asks_before_using_the_sample(app, browser, tiny_model_dir):
    url, root = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        set_text(page, "model-id", str(tiny_model_dir))
        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "run-summary", str(tiny_model_dir))
        summary = text_of(page, "run-summary")
        assert "no dataset chosen" in summary and "bundled sample" in summary and "240 rows" in summary, summary
        assert "template" in summary and "steps" in summary and "this machine" in summary, summary
        assert page.locator("#use-sample").is_visible()
        page.locator("#start-training").click()
        assert "no dataset chosen" in error_toast(page)
        assert page.locator("#run-id textarea, #run-id input").first.input_value() == ""
        assert not any(d.is_dir() for d in root.rglob("*-*-*") if (d / "config.yaml").exists())  # nothing started

        page.get_by_role("tab", name="1 · Dataset").click()
        page.locator("#data-file input[type=file]").set_input_files(str(SAMPLE))
        page.get_by_role("tab", name="3 · Train").click()
        wait_text(page, "run-summary", "city_year.jsonl")
        summary = text_of(page, "run-summary")
        assert "no dataset chosen" not in summary and "240 rows" in summary, summary
        assert not page.locator("#use-sample").is_visible()
    finally:
        context.close()


def test_a_file_error_clears_the_last_files_preview(app, browser, tmp_path):
    url, _ = app
    bad = tmp_path / "broken.jsonl"
    bad.write_text('{"foo": 1}\n{"foo": 2}\n', encoding="utf-8")  # no shape the app knows
    context, page = open_page(browser, url)
    try:
        page.locator("#data-file input[type=file]").set_input_files(str(SAMPLE))
        page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
        assert "240" in text_of(page, "format-summary")
        page.locator("#data-file button[aria-label='Clear']").first.click()
        page.locator("#data-file input[type=file]").set_input_files(str(bad))
        wait_text(page, "format-summary", "could not be formatted")
        summary = text_of(page, "format-summary")
        assert "broken.jsonl" in summary and "240" not in summary, summary
        assert "/tmp" not in summary and "gradio" not in summary, summary  # no server path
        assert page.locator("#ft-preview mark.ft-trained").count() == 0  # the sample's preview is gone
        assert "broken.jsonl could not be formatted" in page.locator("#ft-preview-cleared").inner_text()
        assert page.locator("#problems tbody tr td", has_text="trained").count() == 0
        assert page.locator(ERROR_BADGES).count() == 0  # no error badge on the outputs
    finally:
        context.close()


def test_a_partial_config_upload_merges_onto_the_form(app, browser, tmp_path):
    url, _ = app
    partial = tmp_path / "steps.yaml"
    partial.write_text("training:\n  max_steps: 7\nlora:\n  r: 4\n", encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        page.locator("button.label-wrap", has_text="Config (YAML)").first.click()
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Load a config YAML").click()
        chooser.value.set_files(str(partial))
        wait_text(page, "preset-info", "Loaded steps.yaml")
        note = text_of(page, "preset-info")
        assert "2 field(s) changed" in note and "training.max_steps: 60 → 7" in note and "lora.r: 16 → 4" in note, note
        page.wait_for_function("() => document.querySelector('#config-yaml').innerText.includes('max_steps: 7')",
                               timeout=30_000)
        yaml_text = page.locator("#config-yaml").inner_text()
        # what the file left out kept the preset's values, not the library defaults (4-bit, max_length 1024)
        assert "load_in: none" in yaml_text and "max_length: 256" in yaml_text and "r: 4" in yaml_text, yaml_text
        assert page.locator("#preset input").first.input_value() == "custom"

        broken = tmp_path / "broken.yaml"
        broken.write_text("training:\n  max_steps: [\n", encoding="utf-8")
        with page.expect_file_chooser() as chooser:
            page.get_by_role("button", name="Load a config YAML").click()
        chooser.value.set_files(str(broken))
        message = refusal_toast(page)
        assert "broken.yaml" in message and "not valid YAML" in message and "/tmp" not in message, message
        # one message, not an error badge on each of the ~60 fields the upload fills; the form is as it was
        assert page.locator(ERROR_BADGES).count() == 0
        assert "max_steps: 7" in page.locator("#config-yaml").inner_text()
        assert page.locator("#preset input").first.input_value() == "custom"
    finally:
        context.close()


def test_a_refused_request_shows_one_message_and_no_error_badges(app, browser):
    """Export with no finished run and Compare with no adapter are refused: the reason is shown once, and no output
    of the event is marked as failed."""
    url, _ = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="5 · Export").click()
        page.locator("#export-btn").click()
        wait_text(page, "export-result", "Not exported")
        said = text_of(page, "export-result")
        assert refusal_toast(page) in said and "pick a run first" in said, said  # the reason, in the result too
        assert page.locator(ERROR_BADGES).count() == 0

        page.get_by_role("tab", name="4 · Playground").click()
        set_text(page, "compare-input", "What is the capital of France?")
        page.locator("#compare-btn").click()
        message = refusal_toast(page)
        assert "adapter" in message, message
        assert page.locator(ERROR_BADGES).count() == 0
    finally:
        context.close()


@pytest.mark.slow  # the count itself is checked without a browser in tests/test_prompt_defaults.py
def test_the_dataset_tab_counts_rows_whose_own_system_message_wins(app, browser, tmp_path):
    import json

    rows = [{"messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": f"q{i}"},
                          {"role": "assistant", "content": f"a{i}"}]} for i in range(2)]
    rows.append({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    url, _ = app
    context, page = open_page(browser, url)
    try:
        set_text(page, "data-system_prompt", "You are helpful.")
        page.locator("#data-file input[type=file]").set_input_files(str(data))
        wait_text(page, "format-summary", "system prompt")
        summary = text_of(page, "format-summary")
        assert "ignored for 2 of 3 rows" in summary and "own system message" in summary, summary
    finally:
        context.close()


def start_long_run(page, tiny_model_dir) -> str:
    """Start a long run of the tiny model on the bundled sample from the page; its run id."""
    page.get_by_role("tab", name="2 · Hyperparameters").click()
    set_text(page, "model-id", str(tiny_model_dir))
    page.locator("button.label-wrap", has_text="Training").first.click()
    set_text(page, "training-max_steps", "5000")
    set_text(page, "training-max_length", "128")
    page.get_by_role("tab", name="3 · Train").click()
    wait_text(page, "run-summary", "5,000 steps")
    page.locator("#use-sample input").check()
    page.locator("#start-training").click()
    page.wait_for_function("() => (document.querySelector('#run-id textarea, #run-id input') || {}).value",
                           timeout=60_000)
    return page.locator("#run-id textarea, #run-id input").first.input_value()


def shown_run(page) -> str:
    page.get_by_role("tab", name="3 · Train").click()
    page.wait_for_function("() => (document.querySelector('#run-id textarea, #run-id input') || {}).value",
                           timeout=60_000)
    return page.locator("#run-id textarea, #run-id input").first.input_value()


def step_shown(page) -> int:
    import re

    found = re.search(r"step (\d+)", text_of(page, "ft-progress"))
    return int(found.group(1)) if found else -1


@pytest.mark.slow  # two real runs (the tiny model), about 90 s
def test_a_reloaded_page_reopens_its_own_latest_run_live_and_never_anothers(app, browser, tiny_model_dir,
                                                                            monkeypatch):
    monkeypatch.setenv("FINETUNE_MAX_STEPS", "5000")  # long runs, stopped by the test (the shared server caps 1000)
    url, root = app
    alice, page_a = open_page(browser, url)
    bob, page_b = open_page(browser, url)
    try:
        run_a = start_long_run(page_a, tiny_model_dir)
        wait_text(page_a, "ft-progress", "running", 120)
        page_a.wait_for_function("() => /step [1-9]/.test(document.querySelector('#ft-progress').innerText)",
                                 timeout=120_000)

        page_a.reload()  # mid-run: the same run comes back, live (its step keeps moving without a click)
        assert shown_run(page_a) == run_a
        wait_text(page_a, "ft-progress", "running", 60)
        first = step_shown(page_a)
        page_a.wait_for_function(f"() => {{ const m = /step (\\d+)/.exec(document.querySelector('#ft-progress')"
                                 f".innerText); return m && +m[1] > {first}; }}", timeout=60_000)
        wait_text(page_a, "runs-table", run_a)
        gauge = text_of(page_a, "ft-gauge")  # the live memory and utilisation gauge
        assert "GB" in gauge and "CPU" in gauge, gauge

        # another anonymous visitor sees none of it, starts their own (it waits for the slot), keeps it on reload
        page_b.get_by_role("tab", name="3 · Train").click()
        page_b.wait_for_timeout(1000)
        assert page_b.locator("#run-id textarea, #run-id input").first.input_value() == ""
        assert run_a not in text_of(page_b, "runs-table")
        run_b = start_long_run(page_b, tiny_model_dir)
        page_b.reload()
        assert shown_run(page_b) == run_b
        wait_text(page_b, "runs-table", run_b)
        assert run_a not in text_of(page_b, "runs-table")
        page_a.reload()
        assert shown_run(page_a) == run_a
        wait_text(page_a, "runs-table", run_a)
        assert run_b not in text_of(page_a, "runs-table")
        for page in (page_b, page_a):
            page.locator("#stop-training").click()
            wait_text(page, "ft-progress", "stopped", 120)
    finally:
        alice.close()
        bob.close()


def test_fit_time_and_cost_show_on_first_open_for_the_presets_hardware(app, browser):
    url, _ = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="2 · Hyperparameters").click()
        wait_text(page, "fit-verdict", "GB")  # nothing touched: the page opened with it
        verdict = text_of(page, "fit-verdict")
        assert "on cpu" in verdict and "⏱" in verdict and "60 steps" in verdict and "no charge" in verdict, verdict
        assert page.locator("#gpu input").first.input_value() == "cpu"
        font = page.evaluate("getComputedStyle(document.querySelector('#auto-configure')).fontFamily")
        assert "Noto Color Emoji" in font, font  # the button's emoji has a font to come from
        page.locator("#gpu input").first.click()
        page.get_by_role("option", name="t4", exact=True).click()
        wait_text(page, "fit-verdict", "on t4")
        verdict = text_of(page, "fit-verdict")
        assert "$" in verdict and "t4-small" in verdict and "offline table" in verdict, verdict
    finally:
        context.close()
