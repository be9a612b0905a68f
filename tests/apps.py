"""The app launched for real (gradio on a local port) and a real browser (Debian chromium driven by Playwright),
shared by the tests that use them."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path
from typing import Any, Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "finetune" / "samples" / "city_year.jsonl"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
needs_chromium = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                    reason="needs Debian chromium (apt-get install chromium)")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 1000}


def launch(runs: Path, downloads: Path, *, multi_user: bool = True, css: bool = True, mcp: bool = False,
           **options: Any) -> tuple[Any, str]:
    """The app on a free local port over the runs folder ``runs``: (demo, url); the caller closes it. ``mcp``: with
    its MCP server (at ``url + "gradio_api/mcp/"``)."""
    from finetune.service import Workspace
    from finetune.ui import CSS, build_app, launch_options

    workspace = Workspace(runs, multi_user=multi_user)
    demo = build_app(workspace, downloads, **options)
    _, url, _ = demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True,
                            **({"css": CSS} if css else {}), **launch_options(workspace, mcp=mcp))
    return demo, url


@contextlib.contextmanager
def launched(runs: Path, downloads: Path, *, multi_user: bool = True, css: bool = True, mcp: bool = False,
             **options: Any) -> Iterator[tuple[Any, str]]:
    """As ``launch``, closed afterwards."""
    demo, url = launch(runs, downloads, multi_user=multi_user, css=css, mcp=mcp, **options)
    try:
        yield demo, url
    finally:
        demo.close()


def queue_call(url: str, fn_index: int, data: list[Any], session_hash: str, http: Any = None) -> dict[str, Any]:
    """Call an event the way a browser does, over the raw queue protocol (POST queue/join, then read the SSE
    stream of queue/data): its ``process_completed`` message (``success``, ``output``), with the messages the event
    showed on the way (``gr.Warning``/``gr.Info``: their texts under ``logs``). ``http``: an ``httpx.Client`` whose
    cookies go with both requests (a visitor's browser); default none (a bare caller)."""
    import json

    import httpx

    base = url.rstrip("/") + "/gradio_api"
    body = {"data": data, "fn_index": fn_index, "session_hash": session_hash, "event_data": None, "trigger_id": None}
    with contextlib.ExitStack() as stack:
        client = http or stack.enter_context(httpx.Client())
        client.post(f"{base}/queue/join", json=body, timeout=30).raise_for_status()
        logs: list[str] = []
        with client.stream("GET", f"{base}/queue/data", params={"session_hash": session_hash}, timeout=60) as r:
            for line in r.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "log":
                    logs.append(str(msg.get("log")))
                elif msg.get("msg") == "process_completed":
                    return {**msg, "logs": logs}
    raise AssertionError("no answer")


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium (a Playwright Browser)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser: Any, url: str, context: Any = None, **context_options: Any) -> tuple[Any, Any]:
    """A new visitor (its own browser context), or a new tab of ``context``, on the loaded app: (context, page)."""
    context = context or browser.new_context(viewport=VIEWPORT, **context_options)
    page = context.new_page()
    page.goto(url)
    page.wait_for_selector("text=1 · Dataset", timeout=60_000)
    return context, page


def set_text(page: Any, elem_id: str, value: str) -> None:
    """Type into a textbox and leave it (its change/blur events fire)."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(value)
    box.press("Tab")


def text_of(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id}").first.inner_text())


def pick(page: Any, elem_id: str, option: str) -> None:
    """Choose ``option`` in the dropdown ``#elem_id``."""
    page.locator(f"#{elem_id} input").first.click()
    page.get_by_role("option", name=option, exact=True).click()


def dropdown_value(page: Any, elem_id: str) -> str:
    return str(page.locator(f"#{elem_id} input").first.input_value())


def wait_text(page: Any, elem_id: str, needle: str, timeout_s: float = 60) -> None:
    page.wait_for_function(f"() => (document.querySelector('#{elem_id}') || {{}}).innerText?.includes({needle!r})",
                           timeout=timeout_s * 1000)
