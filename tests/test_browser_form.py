"""The form on a newcomer's second walk, in a real browser (Debian chromium driven by Playwright): the data suggests
its method (preference pairs under SFT: one click picks DPO or ORPO, and the preview follows the method and the
template without pressing Format), and a CPU method preset shows its verdict for the CPU."""

from __future__ import annotations

import json

import pytest

from apps import launched, needs_chromium, open_page, text_of, wait_text

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl")) as (_, url):
        yield url, root


def pick(page, elem_id: str, option: str) -> None:
    """Choose ``option`` in the dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


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
