"""A real browser (Debian chromium driven by Playwright) clicks through all four tabs: upload a file, see
the highlighted preview, set the model, see the fit verdict, start and finish a short run, see the loss
plot, and get a streamed chat reply. Screenshots go to tests/screenshots/."""

from __future__ import annotations

from pathlib import Path

import pytest
from apps import SAMPLE, launched, needs_chromium, open_page, set_text

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "tests" / "screenshots"

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("dl")) as (_, url):
        yield url


@pytest.fixture(scope="module")
def page(app_url, browser):
    context, pg = open_page(browser, app_url)
    yield pg
    context.close()


def shot(page, name: str):
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_click_through_all_tabs(page, tiny_model_dir):
    # 1 · Dataset: upload, detected shape, highlighted preview
    page.get_by_role("tab", name="1 · Dataset").click()
    page.locator("#data-file input[type=file]").set_input_files(str(SAMPLE))
    page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
    assert "240" in page.locator("#format-summary").inner_text()
    shot(page, "1-dataset")

    # 2 · Hyperparameters: the tiny model, few steps; the verdict and YAML follow the form
    page.get_by_role("tab", name="2 · Hyperparameters").click()
    set_text(page, "model-id", str(tiny_model_dir))
    page.locator("button.label-wrap", has_text="Training").first.click()  # open the accordion
    set_text(page, "training-max_steps", "6")
    set_text(page, "training-max_length", "128")
    page.wait_for_function("document.querySelector('#fit-verdict').innerText.includes('GB')", timeout=60_000)
    assert "on cpu" in page.locator("#fit-verdict").inner_text()  # the preset's own hardware
    page.locator("#gpu input").first.click()
    page.get_by_role("option", name="a100-80gb").click()
    # the verdict follows the control
    page.wait_for_function("document.querySelector('#fit-verdict').innerText.includes('on a100-80gb')",
                           timeout=60_000)
    shot(page, "2-hyperparameters")

    # 3 · Train: start, live progress, finish, loss plot
    page.get_by_role("tab", name="3 · Train").click()
    page.locator("#start-training").click()
    page.wait_for_function("document.querySelector('#ft-progress') && "
                           "document.querySelector('#ft-progress').innerText.includes('finished')", timeout=240_000)
    run_id = page.locator("#run-id textarea, #run-id input").first.input_value()
    assert run_id
    page.wait_for_selector("#loss-plot canvas, #loss-plot svg", timeout=30_000)
    page.wait_for_timeout(1500)  # let the chart draw its line before the screenshot
    shot(page, "3-train")

    # 4 · Playground: pick the adapter, chat, see a streamed reply
    page.get_by_role("tab", name="4 · Playground").click()
    adapter = page.locator("#adapter-pick input").first
    adapter.fill(run_id)
    adapter.press("Enter")
    set_text(page, "chat-input", "Extract the city and the year as JSON.\nIvan moved to Oslo in 1972.")
    page.locator("#chat-send").click()
    page.wait_for_selector("#chatbot .bot, #chatbot [data-testid='bot']", timeout=120_000)
    shot(page, "4-playground")
    assert page.locator("#chatbot").inner_text().strip()

    # the system prompt field and the exact prompt the model receives, with its token count
    page.wait_for_function("() => (document.querySelector('#chat-input textarea') || {}).value === ''",
                           timeout=120_000)  # the reply is complete: Send clears the message box after it
    page.get_by_text("Show exact prompt").first.click()  # opens the accordion
    set_text(page, "chat-input", "Extract the city and the year as JSON.\nIvan moved to Oslo in 1972.")
    set_text(page, "system-prompt", "Answer in one word.")
    page.locator("#exact-prompt-btn").click()
    page.wait_for_function(
        "() => (document.querySelector('#exact-prompt textarea') || {}).value?.includes('Answer in one word.')",
        timeout=60_000)
    assert "tokens" in page.locator("#exact-prompt-count").inner_text()
    assert "Ivan moved to Oslo in 1972." in page.locator("#exact-prompt textarea").first.input_value()
