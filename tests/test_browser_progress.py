"""The Train tab's progress line and charts in a real browser (Debian chromium driven by Playwright): a run that
trains no more shows no ETA, a resumed run's elapsed time goes on, the CPU gauge says cores, the loss chart's step
axis has whole steps, and Compare runs draws every chosen run at once, each named."""

from __future__ import annotations

import json
import time

import pytest
from apps import launched, needs_chromium, open_page, pick, text_of, wait_text

pytestmark = needs_chromium

GONE = 2**22 + 7  # the pid of a process that is not running


def fake_run(root, run_id: str, losses: list[float], *, end: str = "finished", resumed_after: int | None = None):
    """A run folder as training leaves it: steps with loss, elapsed, ETA and the CPU gauge, then ``end``; with
    ``resumed_after``, a second process (a resume) goes on from that step, its elapsed time counted from its start."""
    from finetune import runs
    from finetune.config import RunConfig
    from finetune.events import EventLog

    run_dir = root / run_id
    run_dir.mkdir()
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    runs.record_backend(run_dir, "local")
    log = EventLog(run_dir)
    n = len(losses)
    log.emit("started", max_steps=n, pid=GONE, device="cpu", cpu_threads=2)
    t0 = 0.0
    for i, loss in enumerate(losses, 1):
        if i - 1 == resumed_after:
            log.emit("stopped", step=i - 1, pid=GONE)
            log.emit("started", max_steps=n, pid=GONE, device="cpu", cpu_threads=2, resumed_from=f"checkpoints/{i - 1}")
            t0 = 2.0 * (i - 1)
        log.emit("step", step=i, max_steps=n, loss=loss, elapsed_s=2.0 * i - t0, eta_s=2.0 * (n - i), mem_gb=1.0,
                 mem_total_gb=8.0, util_pct=82.0)
    log.emit(end, step=n, pid=GONE)
    return run_dir


SHORT = "20261207-100000-aaaa"
OTHER = "20261207-110000-bbbb"
RESUMED = "20261207-120000-cccc"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fake_run(root, SHORT, [2.0, 1.8, 1.5, 1.4, 1.2, 1.1])
    fake_run(root, OTHER, [2.2, 1.9, 1.7, 1.3, 1.25, 1.0])
    fake_run(root, RESUMED, [2.0, 1.9, 1.8, 1.7, 1.6, 1.5, 1.4, 1.3], end="stopped", resumed_after=5)
    with launched(root, tmp_path_factory.mktemp("dl"), multi_user=False) as (_, url):
        yield url, root


def open_train_tab(browser, url):
    context, page = open_page(browser, url)
    page.get_by_role("tab", name="3 · Train").click()
    return context, page


def x_ticks(page, elem_id: str, expected: list[str], timeout_s: float = 30) -> list[str]:
    """The tick labels of the chart's x axis (vega's svg), once they are ``expected`` (else, after the timeout, as
    they are)."""
    read = (f"() => [...document.querySelectorAll('#{elem_id} svg [aria-roledescription=axis]"
            "[aria-label^=\"X-axis\"] text')].map(t => t.textContent).filter(t => t !== 'step')")
    from playwright.sync_api import TimeoutError as PageTimeout

    try:
        page.wait_for_function(f"() => JSON.stringify(({read})()) === {json.dumps(json.dumps(expected))}",
                               timeout=timeout_s * 1000)
    except PageTimeout:  # the labels as they are, for the assertion's message
        pass
    return list(page.evaluate(read))


def test_a_stopped_resumed_run_shows_no_eta_its_whole_elapsed_time_and_cpu_cores(app, browser):
    context, page = open_train_tab(browser, app[0])
    try:
        pick(page, "runs-pick", RESUMED)
        wait_text(page, "ft-progress", RESUMED)
        wait_text(page, "ft-progress", "stopped")
        line = text_of(page, "ft-progress")
        assert "ETA" not in line, line  # its last step event had one: a stopped run has no time left
        assert "elapsed 0m16s" in line, line  # 5 steps of 2 s, then 3 more after the resume
        assert "CPU: 0.8 of 2 cores busy (41%)" in line, line
    finally:
        context.close()


def test_the_loss_chart_has_whole_steps(app, browser):
    context, page = open_train_tab(browser, app[0])
    try:
        pick(page, "runs-pick", SHORT)
        wait_text(page, "ft-progress", SHORT)
        # one place per step, labelled 1 to 6 (not a linear scale with ticks at 1.5, 2.5...)
        expected = ["1", "2", "3", "4", "5", "6"]
        assert x_ticks(page, "loss-plot", expected) == expected
    finally:
        context.close()


def test_compare_runs_draws_both_curves_at_once_each_named(app, browser):
    context, page = open_train_tab(browser, app[0])
    try:
        page.get_by_text("Compare runs").click()
        pick(page, "compare-runs", SHORT)
        wait_text(page, "compare-plot", SHORT)
        pick(page, "compare-runs", OTHER)
        wait_text(page, "compare-plot", OTHER)  # the legend names the second run: its curve is drawn
        legend = text_of(page, "compare-plot")
        assert SHORT in legend and OTHER in legend, legend
        lines = page.locator("#compare-plot svg [aria-roledescription='line mark']")
        assert lines.count() >= 2, lines.count()
    finally:
        context.close()


def test_evaluate_shows_answers_done_and_time_left_and_cancel_stops_it(app, browser, tiny_model_dir, tmp_path):
    from test_evaluate_progress import heldout_file, tiny_run

    from finetune import runs

    url, root = app
    run = tiny_run(tiny_model_dir, root)
    context, page = open_train_tab(browser, url)
    try:
        pick(page, "runs-pick", run.run_id)
        wait_text(page, "ft-progress", run.run_id)
        page.get_by_text("Evaluation on a test set").click()
        page.locator("#eval-test-file input[type=file]").set_input_files(str(heldout_file(tmp_path, 48)))
        tokens = page.locator("#eval-max-new input[type=number]").first
        assert tokens.input_value() == "0"  # sized from the references unless set
        tokens.fill("256")  # 48 prompts x 4 models x 256 tokens: minutes, unless cancelled
        tokens.press("Tab")
        assert not page.locator("#evaluate-cancel").is_visible()
        page.locator("#evaluate").click()
        wait_text(page, "eval-table", "answers", timeout_s=60)  # the progress bar: done / total answers
        wait_text(page, "eval-table", "left", timeout_s=120)  # and the time left, once the first answers are in
        bar = text_of(page, "eval-table")
        assert "/192" in bar.replace(" ", ""), bar
        page.locator("#evaluate-cancel").click()
        wait_text(page, "eval-status", "cancelled")
        page.wait_for_selector("#evaluate-cancel", state="hidden", timeout=30_000)
        assert page.locator("#evaluate").is_enabled()
        # The app runs in this process: once the evaluation has really stopped, its CPU time stands still (a
        # generation that went on after Cancel would keep a core busy for minutes)
        deadline, busy = time.time() + 60, 1.0
        while busy > 0.3 and time.time() < deadline:
            before = time.process_time()
            time.sleep(1)
            busy = time.process_time() - before
        assert busy <= 0.3, f"the evaluation kept computing after Cancel ({busy:.1f} s of CPU a second)"
        assert not (run.run_dir / runs.EVAL_REPORT).exists()  # stopped: nothing written
        assert "No evaluation yet" in text_of(page, "eval-best")
    finally:
        context.close()


def test_a_live_runs_eval_loss_is_drawn_as_soon_as_it_comes(app, browser):
    import os

    from finetune import runs
    from finetune.config import RunConfig
    from finetune.events import EventLog

    url, root = app
    run_dir = root / "20261207-230000-live"
    run_dir.mkdir()
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    runs.record_backend(run_dir, "local")
    log = EventLog(run_dir)
    log.emit("started", max_steps=10, pid=os.getpid(), device="cpu", cpu_threads=2)  # this process: it trains
    for i in range(1, 4):
        log.emit("step", step=i, max_steps=10, loss=2 - i / 10, elapsed_s=2.0 * i, eta_s=2.0 * (10 - i))
    context, page = open_train_tab(browser, url)
    try:
        pick(page, "runs-pick", run_dir.name)
        wait_text(page, "ft-progress", "ETA 0m14s")  # running: its ETA shows
        wait_text(page, "loss-plot", "train")
        log.emit("eval", step=3, eval_loss=1.95)
        log.emit("step", step=4, max_steps=10, loss=1.6, elapsed_s=8.0, eta_s=12.0)
        log.emit("eval", step=4, eval_loss=1.9)
        wait_text(page, "loss-plot", "eval")  # the timer's next read: the legend names it, its curve is drawn
        lines = page.locator("#loss-plot svg [aria-roledescription='line mark']")
        page.wait_for_function("() => document.querySelectorAll(\"#loss-plot svg [aria-roledescription='line mark']\")"
                               ".length >= 2", timeout=30_000)
        assert lines.count() >= 2
    finally:
        log.emit("stopped", step=4, pid=os.getpid())
        context.close()
