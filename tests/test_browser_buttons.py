"""A real browser (Debian chromium driven by Playwright) clicks every visible button of every tab, once on the
empty form a new visitor sees and once after uploading and formatting a small dataset. Every button must give a
result or a friendly refusal. The test fails on
- a message (toast or page text) that says "internal error";
- a message that reads like a Python exception leaking out of the code ("'NoneType' object has no attribute
  ...", a bare KeyError's one-word text, ...);
- an output that turns to gradio's "Error" state with no error message at all: an exception in a handler that
  gradio hides (show_error off), a programming error by construction, since every refusal is a gr.Error toast;
- a run started by "Start training" (the tiny model) that fails, or a training process that outlives the test.
Everything else (friendly refusals such as "format the dataset first") is printed as a button -> outcome summary.

How buttons are found: each tab is opened, its closed accordions are opened, then every ``button:visible`` inside
the selected tab panel is collected again after each click (a click can show new buttons) and clicked once, in page
order. What is not clicked, and why:
- tab headers and the tab overflow menu: they only switch tabs (each tab is visited anyway);
- everything outside the tab panels: the header row (on a Space the Hugging Face sign-in button, which navigates
  away to an external OAuth page), gradio's footer (API page, settings, "built with" link) and the toasts' close
  buttons (used here to dismiss messages);
- accordion headers (``button.label-wrap``): opened once on entering the tab; a second click would only hide the
  content whose buttons are being clicked;
- gradio's per-component icon buttons (``.icon-button``: copy, copy table data, fullscreen, download of a code
  or plot, share), buttons inside tables (sort and cell menus) and the "Clear" of a status tracker (it dismisses
  an output's error state): browser-side widget chrome that calls no handler of the app (copying needs clipboard
  permission; a download starts a browser download);
  the exception is the icon button "Clear", which does fire the component's clear/change events: those are clicked
  in a second pass over the tabs, last, because they empty the inputs the other buttons work on.
A file picker that a click opens (the dataset drop zone, "Load a config YAML") is answered by the test: the
config loader gets a tiny-model config (so no real model loads anywhere), the dataset drop zone is cancelled on
the empty form (the form stays empty). "Start training" trains the tiny model for two steps (on the empty form it is
refused: no dataset is chosen and the bundled sample is not confirmed; Stop and Resume then have no run); after
formatting, the test waits for the run to finish so Download and Push act on a finished one.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
from apps import SAMPLE, VIEWPORT, launched, needs_chromium

TABS = ["1 · Dataset", "2 · Hyperparameters", "3 · Train", "4 · Playground"]

pytestmark = needs_chromium

# a programming error shown to the user: the app's own wording, or an exception's text leaking through a toast
INTERNAL = re.compile(r"internal error", re.I)
LEAKS = [re.compile(p) for p in (
    r"Traceback", r"object has no attribute", r"NoneType", r"KeyError", r"TypeError", r"AttributeError",
    r"IndexError", r"NameError", r"is not subscriptable", r"unexpected keyword", r"positional argument",
    r"unsupported operand", r"object is not (iterable|callable)", r"referenced before assignment",
    r"index out of range",
)]
BARE = re.compile(r"^\S*$")  # an error toast of one word or none: str(KeyError('x')) is "'x'", str(Exception()) ""

# Every toast is recorded the moment it appears (error toasts vanish after 10 s, several can merge into one).
TOAST_RECORDER = """
window.__ftToasts = [];
const seen = new WeakMap();
setInterval(() => {
  for (const el of document.querySelectorAll('.toast-body')) {
    const text = el.innerText.replace(/\\s+/g, ' ').trim();
    if (seen.get(el) !== text) {
      seen.set(el, text);
      const kind = ['error', 'warning', 'info', 'success'].find(k => el.classList.contains(k)) || 'message';
      window.__ftToasts.push({kind, text});
    }
  }
}, 50);
"""

# The visible buttons of the selected tab panel, each tagged with a stable key (text + order among equal texts)
# and sorted into: click, clear (second pass), accordion, chrome (not clicked).
DISCOVER = """
(pass2) => {
  const panel = [...document.querySelectorAll('[role=tabpanel]')].find(p => p.getClientRects().length);
  if (!panel) return [];
  const count = {}, out = [];
  for (const b of panel.querySelectorAll('button')) {
    if (!b.getClientRects().length || getComputedStyle(b).visibility === 'hidden') continue;
    const block = b.closest('.block');
    const where = block && block.querySelector('[data-testid=block-info], [data-testid=block-label], label span');
    let name = (b.innerText || b.getAttribute('aria-label') || b.getAttribute('title') || '?')
      .replace(/\\s+/g, ' ').trim();
    if (b.classList.contains('icon-button') || b.classList.contains('reset-button') || name === '?')
      name = `${name} [${(where && where.innerText.trim()) || (block && block.id) || 'unnamed'}]`;
    const key = `${name} #${count[name] = (count[name] || 0) + 1}`;
    b.setAttribute('data-ft-key', key);
    let kind = 'click';
    if (b.classList.contains('label-wrap')) kind = 'accordion';
    else if (b.closest('table, [data-testid=status-tracker]')) kind = 'chrome';
    else if (b.classList.contains('icon-button'))
      kind = (b.getAttribute('aria-label') || '') === 'Clear' ? 'clear' : 'chrome';
    out.push({key, kind, open: b.classList.contains('open')});
  }
  return out;
}
"""

# An event whose handler raised shows "Error" in the status tracker of its outputs. A gr.Error also makes a toast;
# any other exception makes no toast at all (gradio hides it unless show_error): the tracker is all that shows.
NEW_ERROR_STATES = """() => {
  const out = [];
  for (const e of document.querySelectorAll('[data-testid=status-tracker] .error')) {
    if (e.dataset.ftSeen) continue;
    e.dataset.ftSeen = '1';
    const block = e.closest('.block');
    const label = block && block.querySelector('[data-testid=block-label], [data-testid=block-info], label span');
    out.push((label && label.innerText.trim()) || (block && block.id) || 'a component');
  }
  return out;
}"""

# A pending or streaming event shows gradio's status tracker (timer, progress bar, spinner) on its outputs.
BUSY = """() => [...document.querySelectorAll(
  '.eta-bar, .progress-text, .progress-level, .meta-text, .meta-text-center, .loader, .wrap.generating, .wrap.pending')
].some(e => e.getClientRects().length)"""


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("dl")) as (demo, url):
        yield demo, url, root


def training_processes(root: Path) -> list[int]:
    """The training processes the app started for runs under ``root`` (they run in their own session)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and str(root) in cmd and "finetune" in cmd:
            pids.append(int(proc.name))
    return pids


def wait_for_training_processes(root: Path, timeout_s: float = 150.0) -> list[int]:
    """Wait until every training process of this app has ended; ends the ones still there at the deadline and
    returns their ids (a run that never ends is a failure, and must not outlive the test)."""
    deadline = time.monotonic() + timeout_s
    while (left := training_processes(root)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        os.kill(pid, signal.SIGTERM)
    return left


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory, tiny_model_dir) -> Path:
    """What "Load a config YAML" is given: the default preset on the tiny model, a two-step run."""
    from finetune.presets import DEFAULT_PRESET, load_preset

    cfg = load_preset(DEFAULT_PRESET)
    cfg.model.id = str(tiny_model_dir)
    cfg.training.max_steps = 2
    cfg.training.max_length = 128
    cfg.training.batch_size = 2
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(cfg.to_yaml(), encoding="utf-8")
    return path


class Clicker:
    """Clicks through one browser session (a new user) and records what every click showed."""

    def __init__(self, demo, url: str, browser, config_yaml: Path, *, let_runs_finish: bool):
        """``let_runs_finish``: wait after "Start training" until the run ends (the buttons after it then act on
        a finished run), else go on at once (they act on a starting or running run)."""
        self.demo, self.config_yaml, self.let_runs_finish = demo, config_yaml, let_runs_finish
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = page = self.context.new_page()
        page.add_init_script(TOAST_RECORDER)
        self.page_errors: list[str] = []
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("filechooser", self.choose_file)
        page.goto(url)
        page.wait_for_selector("text=1 · Dataset", timeout=60_000)
        self.outcomes: list[tuple] = []  # (tab, button key, messages[, seconds])
        self.failures: list[str] = []
        self.excluded: set[str] = set()  # seen and not clicked, with the reason
        self.settle()
        self.record("(page load)", "-", "")

    def choose_file(self, chooser):
        accept = chooser.element.get_attribute("accept") or ""
        if ".yaml" in accept or ".yml" in accept:
            chooser.set_files(str(self.config_yaml))
        else:  # the dataset drop zone: the upload itself is done by the test, through the file input
            chooser.set_files([])

    def server_busy(self) -> bool:
        q = getattr(self.demo, "_queue", None)
        try:
            waiting = any(len(e.queue) for e in q.event_queue_per_concurrency_id.values())
            return q.get_active_worker_count() > 0 or waiting
        except Exception:  # noqa: BLE001 - gradio internals moved: the page's indicators still tell
            return False

    def settle(self, timeout_s: float = 60.0) -> None:
        """Wait until no event is pending or streaming, in the page or on the server, for 0.45 s in a row."""
        self.page.wait_for_timeout(150)
        quiet, deadline = 0, time.monotonic() + timeout_s
        while time.monotonic() < deadline and quiet < 3:
            quiet = 0 if (self.page.evaluate(BUSY) or self.server_busy()) else quiet + 1
            self.page.wait_for_timeout(150)

    def take_toasts(self) -> list[dict]:
        toasts = self.page.evaluate("() => window.__ftToasts.splice(0)")
        # dismiss them, so that the next click's messages are its own
        self.page.evaluate("() => document.querySelectorAll('.toast-close').forEach(b => b.click())")
        try:
            self.page.wait_for_function("() => !document.querySelector('.toast-body')", timeout=3000, polling=50)
        except Exception:  # noqa: BLE001 - one lingers: its text is already recorded, a merge shows as new text
            pass
        self.page.evaluate("() => window.__ftToasts.splice(0)")
        return toasts

    def record(self, tab: str, key: str, page_text_before: str) -> None:
        toasts = self.take_toasts()
        failed_outputs = self.page.evaluate(NEW_ERROR_STATES)
        if failed_outputs and not any(t["kind"] == "error" for t in toasts):
            self.failures.append(f"{tab} / {key}: a handler raised with no message (gradio hides the exception; its "
                                 f"traceback is in the server log); outputs in error: {', '.join(failed_outputs)}")
            toasts = toasts + [{"kind": "error state, no message", "text": ", ".join(failed_outputs)}]
        self.outcomes.append((tab, key, toasts))
        for t in toasts:
            if INTERNAL.search(t["text"]):
                self.failures.append(f"{tab} / {key}: internal error shown: {t['text']}")
            elif any(p.search(_message(t["text"])) for p in LEAKS):
                self.failures.append(f"{tab} / {key}: a Python exception leaks into a {t['kind']} toast: {t['text']}")
            elif t["kind"] == "error" and BARE.match(_message(t["text"])):
                self.failures.append(f"{tab} / {key}: an error toast that is no sentence (an exception's bare "
                                     f"text or an unhandled exception): {t['text']!r}")
        # messages shown in the page itself (a verdict, a progress line): only what this click made appear
        new = set(self.page_lines()) - set(page_text_before.splitlines())
        for line in sorted(new):
            if INTERNAL.search(line) or any(p.search(line) for p in LEAKS):
                self.failures.append(f"{tab} / {key}: the page now shows: {line[:300]}")

    def page_lines(self) -> list[str]:
        return self.page.locator("body").inner_text().splitlines()

    def open_tab(self, tab: str):
        self.page.get_by_role("tab", name=tab).first.click()
        self.page.wait_for_timeout(300)

    def sweep(self, kinds: tuple[str, ...] = ("click",)) -> None:
        """Click every button of the given kinds in every tab, once each."""
        for tab in TABS:
            self.open_tab(tab)
            done: set[str] = set()
            for _ in range(60):  # a bound in case a click keeps making new buttons
                buttons = self.page.evaluate(DISCOVER)
                closed = [b for b in buttons if b["kind"] == "accordion" and not b["open"]]
                if closed:
                    for b in closed:
                        self.button(b["key"]).click()
                    self.page.wait_for_timeout(300)
                    continue
                todo = [b for b in buttons if b["kind"] in kinds and b["key"] not in done]
                if not todo:
                    break
                key = todo[0]["key"]
                done.add(key)
                before = "\n".join(self.page_lines())
                self.page.evaluate(NEW_ERROR_STATES)  # mark the error states shown before this click
                t0 = time.monotonic()
                try:
                    self.button(key).click(timeout=2000)
                except Exception as e:  # noqa: BLE001 - covered by another element: said in the summary
                    why = [ln.strip() for ln in str(e).splitlines() if "intercepts pointer events" in ln][:1]
                    self.outcomes.append((tab, key, [{"kind": "not clickable", "text": (why or [str(e)])[0]}]))
                    continue
                self.settle()
                if key.startswith("▶ Start training") and self.let_runs_finish:
                    self.wait_for_run_end(tab, key)
                self.record(tab, key, before)
                self.outcomes[-1] += (time.monotonic() - t0,)
            self.excluded |= {f"{tab} / {b['key']} ({b['kind']})" for b in self.page.evaluate(DISCOVER)
                              if b["kind"] in ("accordion", "chrome")}

    def button(self, key: str):
        return self.page.locator(f'[role=tabpanel] button[data-ft-key="{key}"]').first

    def wait_for_run_end(self, tab: str, key: str, timeout_s: float = 150.0) -> None:
        """Wait until the run shown in the Train tab has ended (the tiny model, two steps); a run that failed is
        a failure of the button that started it."""
        if not self.page.locator("#run-id input, #run-id textarea").first.input_value():
            return  # refused: nothing started
        ended = ("() => { const p = document.querySelector('#ft-progress');"
                 " return !!p && /finished|failed|stopped|interrupted/.test(p.innerText); }")
        self.page.wait_for_function(ended, timeout=timeout_s * 1000, polling=500)
        status = self.page.locator("#ft-progress").inner_text()
        self.outcomes.append((tab, f"{key}: the run ended", [{"kind": "status", "text": " ".join(status.split())}]))
        if "failed" in status:
            self.failures.append(f"{tab} / {key}: the run failed: {status}")

    def runs_ended(self, root: Path) -> None:
        """Wait for the training processes this session started to end (none may outlive the test)."""
        t0 = time.monotonic()
        if left := wait_for_training_processes(root):
            self.failures.append(f"training processes still running after 150 s (ended by the test): {left}")
        self.outcomes.append(("3 · Train", "(training processes ended)", [], time.monotonic() - t0))

    def summary(self, title: str) -> str:
        lines = [f"== {title}: button -> outcome"]
        for tab, key, toasts, *took in self.outcomes:
            shown = "; ".join(f"{t['kind']}: {_message(t['text'])[:160]}" for t in toasts) or "ok (no message)"
            lines.append(f"  {tab} / {key} -> {shown}" + (f"  [{took[0]:.1f} s]" if took else ""))
        lines.append(f"  not clicked: {', '.join(sorted(self.excluded))}")
        if self.page_errors:
            lines.append(f"  browser-side errors: {self.page_errors}")
        return "\n".join(lines)

    def close(self):
        self.context.close()


def _message(toast_text: str) -> str:
    """A toast's message without its title ("Error", "Warning", "Info") and close mark."""
    return re.sub(r"^(Error|Warning|Info|Success)\s*", "", toast_text.replace("×", "").strip()).strip()


def sweep_all(c: Clicker, root: Path, label: str) -> None:
    """Click every button, then every Clear icon; wait for the runs the clicks started; fail on any failure."""
    try:
        c.sweep(("click",))
        c.sweep(("clear",))
    finally:
        c.runs_ended(root)
        print("\n" + c.summary(label))
        c.close()
    assert not c.failures, "\n".join(c.failures)


def test_every_button_on_the_empty_form(app, browser, tiny_config):
    demo, url, root = app
    c = Clicker(demo, url, browser, tiny_config, let_runs_finish=False)
    # with no dataset "Start training" is refused until the bundled sample is confirmed
    sweep_all(c, root, "empty form")


@pytest.mark.slow  # a minute; the empty-form sweep above clicks the same buttons in the default suite
def test_every_button_after_formatting_a_dataset(app, browser, tiny_config, tiny_model_dir):
    demo, url, root = app
    c = Clicker(demo, url, browser, tiny_config, let_runs_finish=True)
    try:
        c.open_tab("2 · Hyperparameters")  # the tokenizer the preview counts with: the tiny model's
        box = c.page.locator("#model-id textarea, #model-id input").first
        box.fill(str(tiny_model_dir))
        box.press("Tab")
        c.settle()
        c.open_tab("1 · Dataset")
        c.page.locator("#data-file input[type=file]").set_input_files(str(SAMPLE))
        c.page.wait_for_selector("#ft-preview mark.ft-trained", timeout=120_000)
        c.settle()
        c.record("1 · Dataset", "(upload and format city_year.jsonl)", "")
    except BaseException:
        c.close()
        raise
    sweep_all(c, root, "after formatting a dataset")
