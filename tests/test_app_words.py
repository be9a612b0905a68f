"""The app speaks its own words: messages name its fields (Column mapping, GGUF type, Push to Hub repo), not the
command line's flags, which the command line keeps; an upload is named by the user's file name, never where the
server keeps it; the API returns data (the exact prompt's token count as a number, the export's summary as plain
text) and the page formats it; the small refusals of the page say what happened (an empty exact-prompt box, a
second vote, an interval of one vote, a download with no adapter) once, with no error badge.

Page checks run in a real browser (Debian chromium + Playwright), API checks through gradio_client, against one
launched app with one finished tiny run."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from apps import launched, needs_chromium, open_page, set_text, text_of, wait_text
from test_template_export import train_tiny

ERROR_BADGES = "[data-testid=status-tracker] .error"  # gradio's mark on each output of a failed event
PLAIN_TEXT = "hello there\nsecond line\n"  # a .jsonl that is plain text
UNKNOWN_COLUMNS = '{"foo": "a"}\n{"foo": "b"}\n'  # JSON lines of no shape the app knows


@pytest.fixture(scope="module")
def app(tiny_model_dir, tmp_path_factory):
    work = tmp_path_factory.mktemp("words-app")
    run = train_tiny(tiny_model_dir, work, "chatml")
    with launched(work / "runs", work / "downloads", multi_user=False) as (_, url):
        yield url, run


@pytest.fixture(scope="module")
def client(app):
    from gradio_client import Client

    return Client(app[0], verbose=False)


# -- the same message in each surface's words ---------------------------------------------------------------------

def test_a_message_has_the_command_lines_words_and_the_apps(tmp_path):
    from finetune.data import load_rows
    from finetune.data.detect import detect_shape
    from finetune.data.validate import DataError
    from finetune.errors import app_message

    with pytest.raises(DataError) as err:
        detect_shape(["foo"], None, [{"foo": "a"}], "d.jsonl")
    assert "--columns prompt=<column>" in str(err.value)  # the command line's flag
    assert "Column mapping" in app_message(err.value) and "--" not in app_message(err.value)
    assert app_message(err.value).startswith("d.jsonl: cannot tell the data's shape")

    plain = tmp_path / "notes.jsonl"
    plain.write_text(PLAIN_TEXT, encoding="utf-8")
    with pytest.raises(DataError, match=r"notes\.jsonl: not JSON lines \(line 1\): not valid JSON"):
        load_rows(plain)


def test_export_refusals_name_the_flag_on_the_command_line(app):
    from finetune.errors import app_message
    from finetune.export import ExportError, export_model

    _, run = app
    with pytest.raises(ExportError) as err:
        export_model(run.run_dir, "lora-gguf", quant="q4_0")
    assert "--quant q4_0" in str(err.value) and "GGUF type q4_0" in app_message(err.value)
    with pytest.raises(ExportError) as err:
        export_model(run.run_dir, "space")
    assert "--push OWNER/NAME" in str(err.value) and "Push to Hub repo" in app_message(err.value)


# -- the API returns data -------------------------------------------------------------------------------------------

def test_exact_prompt_endpoint_returns_the_token_count_as_a_number(app, client, smollm2_tokenizer):
    from gradio_client.exceptions import AppError

    _, run = app
    prompt, tokens, used = client.predict(message="Hello!", adapter=run.run_dir.name, api_name="/exact_prompt")
    assert "Hello!" in prompt and isinstance(tokens, int) and not isinstance(tokens, bool), tokens
    assert used == {"template": "chatml", "system_prompt": "", "warning": ""}, used
    assert tokens == len(smollm2_tokenizer(prompt, add_special_tokens=False)["input_ids"])
    with pytest.raises(AppError, match="type a message first"):
        client.predict(message="", adapter=run.run_dir.name, api_name="/exact_prompt")


def test_export_endpoint_returns_a_plain_summary_and_the_apps_words(app, client):
    from gradio_client.exceptions import AppError

    _, run = app
    path, summary = client.predict(run.run_dir.name, "lora-gguf", "f16", "", True, api_name="/export_model")
    assert Path(path).read_bytes()[:4] == b"GGUF"
    assert summary.startswith("lora-gguf export written to ") and "```" not in summary, summary
    with pytest.raises(AppError) as err:
        client.predict(run.run_dir.name, "lora-gguf", "q4_0", "", True, api_name="/export_model")
    assert "GGUF type q4_0" in str(err.value) and "--quant" not in str(err.value), err.value
    with pytest.raises(AppError) as err:
        client.predict(run.run_dir.name, "space", "q8_0", "", True, api_name="/export_model")
    assert "Push to Hub repo" in str(err.value) and "--push" not in str(err.value), err.value


def test_arena_second_vote_says_already_voted_and_one_vote_has_no_interval(app, client):
    from gradio_client.exceptions import AppError

    _, run = app
    battle = client.predict("base, " + run.run_dir.name, "Hi", "", 0.0, 8, 0.9, 1.0, 0, api_name="/arena_battle")
    result = client.predict(battle["battle_id"], "A", api_name="/arena_vote")
    assert all(r["ci_low"] is None and r["ci_high"] is None for r in result["standings"]), result["standings"]
    with pytest.raises(AppError, match="already voted"):
        client.predict(battle["battle_id"], "B", api_name="/arena_vote")


def test_a_runs_message_names_the_uploaded_file(app, client, tmp_path, tiny_model_dir):
    from gradio_client import handle_file
    from test_app import tiny_yaml

    plain = tmp_path / "my notes.jsonl"
    plain.write_text(PLAIN_TEXT, encoding="utf-8")
    rid = client.predict(tiny_yaml(tiny_model_dir, steps=2), handle_file(str(plain)), "local",
                         api_name="/start_training")
    deadline = time.time() + 180
    while (state := client.predict(rid, api_name="/run_status"))["status"] not in ("failed", "finished"):
        assert time.time() < deadline, state
        time.sleep(1)
    message = state["message"]
    assert "my notes.jsonl: not JSON lines (line 1)" in message, message
    assert "uploads" not in message and "/" not in message.split("my notes.jsonl")[0][-40:], message


def test_evaluate_names_the_uploaded_test_file(app, client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    _, run = app
    bad = tmp_path / "exam.jsonl"
    bad.write_text('{"foo": "a"}\n', encoding="utf-8")
    with pytest.raises(AppError) as err:
        client.predict(run.run_dir.name, handle_file(str(bad)), "none", 4, api_name="/evaluate")
    assert str(err.value).startswith("exam.jsonl: no prompt column"), err.value

    good = tmp_path / "my exam.jsonl"
    good.write_text(json.dumps({"prompt": "Hi", "reference": "Hello"}) + "\n", encoding="utf-8")
    report = client.predict(run.run_dir.name, handle_file(str(good)), "none", 4, api_name="/evaluate")
    assert report["data"] == "my exam.jsonl" and report["test_set"]["file"] == "my exam.jsonl", report


# -- the page, in a real browser ------------------------------------------------------------------------------------

def toasts(page) -> list[str]:
    """The toasts on screen now (one read: a toast may close meanwhile)."""
    return list(page.evaluate("() => [...document.querySelectorAll('.toast-body')].map(t => t.innerText)"))


def close_toasts(page) -> None:
    for close in page.locator(".toast-close").all():
        close.click()


@needs_chromium
def test_dataset_messages_name_the_file_in_the_apps_words_once_per_action(app, browser, tmp_path):
    url, _ = app
    plain, unknown = tmp_path / "notes.jsonl", tmp_path / "my data.jsonl"
    plain.write_text(PLAIN_TEXT, encoding="utf-8")
    unknown.write_text(UNKNOWN_COLUMNS, encoding="utf-8")
    exam = tmp_path / "exam.jsonl"
    exam.write_text('{"foo": "a"}\n', encoding="utf-8")
    formulas = tmp_path / "sums.jsonl"
    formulas.write_text("".join(json.dumps({"prompt": f"Add {i} and 1", "completion": f"={i}+1"}) + "\n"
                                for i in range(3)), encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.locator("#data-file input[type=file]").set_input_files(str(plain))
        wait_text(page, "format-summary", "could not be formatted")
        summary = text_of(page, "format-summary")
        assert "notes.jsonl: not JSON lines (line 1)" in summary, summary
        page.get_by_role("tab", name="3 · Train").click()  # what a run would use says it too, by the file's name
        wait_text(page, "run-summary", "cannot start yet")
        said = text_of(page, "run-summary")
        assert "notes.jsonl: not JSON lines (line 1)" in said and "/tmp" not in said, said
        page.get_by_role("tab", name="1 · Dataset").click()

        page.locator("#data-file button[aria-label='Clear']").first.click()
        page.locator("#data-file input[type=file]").set_input_files(str(unknown))
        wait_text(page, "format-summary", "my data.jsonl could not be formatted")
        summary = text_of(page, "format-summary")
        assert "Column mapping" in summary and "--columns" not in summary, summary
        page.wait_for_selector(".toast-body.warning", timeout=30_000)
        page.locator("#format-btn").click()  # the same refusal again: one toast says it, not "Warning (2)"
        page.wait_for_selector(".toast-body.warning", timeout=30_000)
        time.sleep(1.5)
        shown = toasts(page)
        assert len(shown) == 1 and "(2)" not in shown[0] and shown[0].count("cannot tell") == 1, shown
        close_toasts(page)

        page.locator("#test-file input[type=file]").set_input_files(str(exam))
        page.wait_for_function("() => [...document.querySelectorAll('.toast-body')].some(t => "
                               "t.innerText.includes('no prompt column'))", timeout=60_000)
        message = " ".join(toasts(page))
        assert "exam.jsonl: no prompt column" in message and "uploads" not in message, message
        close_toasts(page)

        # three rows worth a look: one toast says them all, not "Warning (3)"
        page.locator("#data-file button[aria-label='Clear']").first.click()
        page.locator("#data-file input[type=file]").set_input_files(str(formulas))
        wait_text(page, "format-summary", "warnings: 3 rows")
        page.wait_for_selector(".toast-body.warning", timeout=30_000)
        time.sleep(1.5)
        shown = toasts(page)
        assert len(shown) == 1 and not re.match(r"Warning\s*\(\d+\)", shown[0]), shown
        assert all(f"row {i}" in shown[0] for i in (1, 2, 3)), shown
    finally:
        context.close()


@needs_chromium
def test_export_gguf_type_follows_the_format_and_refusals_use_the_apps_words(app, browser):
    url, run = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="5 · Export").click()
        page.wait_for_function("""() => { const i = document.querySelector('#export-run input');
                                          return i && i.value.length > 0; }""", timeout=60_000)
        quant = page.locator("#export-quant input")
        quant.fill("q4_0")
        quant.press("Enter")
        page.wait_for_function("() => document.querySelector('#export-quant input').value === 'q4_0'")
        page.locator("#export-format").get_by_text("lora-gguf", exact=True).click()
        page.wait_for_function("() => document.querySelector('#export-quant input').value === 'q8_0'",
                               timeout=30_000)  # a LoRA GGUF has no q4_0: back to the default
        page.locator("#export-format").get_by_text("space", exact=True).click()
        page.locator("#export-btn").click()
        wait_text(page, "export-result", "Not exported")
        said = text_of(page, "export-result")
        assert "Push to Hub repo" in said and "--push" not in said, said
        close_toasts(page)

        page.locator("#export-format").get_by_text("lora-gguf", exact=True).click()
        page.locator("#export-btn").click()
        wait_text(page, "export-result", "lora-gguf export written", timeout_s=120)
        assert page.locator("#export-result pre, #export-result code").count() > 0  # the page formats the summary
    finally:
        context.close()


@needs_chromium
def test_playground_refusals_explain_themselves(app, browser):
    url, run = app
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="4 · Playground").click()
        page.locator("#exact-prompt-view button.label-wrap, #exact-prompt-view .label-wrap").first.click()
        page.locator("#exact-prompt-btn").click()  # the Message box is empty
        wait_text(page, "exact-prompt-count", "type a message first")
        assert page.locator(ERROR_BADGES).count() == 0
        close_toasts(page)

        set_text(page, "arena-contenders", f"base, {run.run_dir.name}")
        set_text(page, "arena-prompt", "Hi")
        page.locator("#arena-battle").click()
        wait_text(page, "arena-reveal", "Which answer is better", timeout_s=120)
        page.locator("#arena-vote-A").click()
        wait_text(page, "arena-reveal", "You voted")
        wait_text(page, "arena-standings", "needs more votes")
        page.locator("#arena-vote-B").click()  # the same battle again
        page.wait_for_function("() => [...document.querySelectorAll('.toast-body')].some(t => "
                               "t.innerText.includes('already voted'))", timeout=30_000)
    finally:
        context.close()


@needs_chromium
def test_adapter_download_refusal_is_a_message_without_an_error_badge(app, browser):
    url, run = app
    root = run.run_dir.parent
    failed = root / "29990101-000000-0000000001"  # the newest run: the page opens on it; it has no adapter
    failed.mkdir()
    (failed / "config.yaml").write_text((run.run_dir / "config.yaml").read_text(), encoding="utf-8")
    now = time.time()
    (failed / "events.jsonl").write_text(json.dumps({"type": "started", "time": now, "max_steps": 2}) + "\n" +
                                         json.dumps({"type": "failed", "time": now + 1, "message": "stopped"}) + "\n",
                                         encoding="utf-8")
    context, page = open_page(browser, url)
    try:
        page.get_by_role("tab", name="3 · Train").click()
        page.wait_for_function(f"() => (document.querySelector('#run-id textarea, #run-id input') || {{}}).value "
                               f"=== {failed.name!r}", timeout=60_000)
        page.get_by_role("button", name="⬇ Download adapter (.zip)").click()
        page.wait_for_function("() => [...document.querySelectorAll('.toast-body')].some(t => "
                               "t.innerText.includes('no adapter yet'))", timeout=30_000)
        time.sleep(0.5)
        assert page.locator(ERROR_BADGES).count() == 0
    finally:
        context.close()
        import shutil

        shutil.rmtree(failed)


def test_a_failed_runs_message_is_in_the_apps_words_in_the_app_and_the_command_lines_in_its_status(
        tmp_path, tiny_model_dir):
    """A run started from the app on data whose shape needs a mapping fails in the training process: the app's
    status says "Column mapping", the command line's status keeps its flag."""
    from finetune import runs
    from finetune.service import Workspace
    from finetune.train import train
    from test_train import tiny_config

    data = tmp_path / "odd.jsonl"
    data.write_text('{"foo": "a"}\n{"foo": "b"}\n', encoding="utf-8")
    space = Workspace(tmp_path / "runs").owner_space(None)
    cfg = tiny_config(tiny_model_dir, max_steps=1)
    cfg.data.source = str(data)
    with pytest.raises(Exception):
        train(cfg, runs_root=space.root)
    [state] = runs.list_runs(space.root)
    assert state.status == "failed" and "--columns" in state.message  # the command line's status
    shown = space.status(state.run_id)["message"]
    assert "Column mapping" in shown and "--columns" not in shown, shown
    assert "app_message" not in space.status(state.run_id)
