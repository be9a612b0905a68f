"""One refused request shows one message, not an error badge on every output of the event: the page's events with
several outputs go through ``page_errors`` (a refusal leaves the outputs as they were, or says why in one of
them); the API's events with several outputs have their own hidden trigger and raise for the caller."""

from __future__ import annotations

import gradio as gr
import pytest

from finetune.errors import UserError
from finetune.service import Workspace
from finetune.ui import build_app
from finetune.ui.common import PAGE_ERRORS, InternalError, page_errors, user_errors


def test_every_page_event_with_several_outputs_turns_refusals_into_a_message(tmp_path):
    demo = build_app(Workspace(tmp_path / "runs", multi_user=True), tmp_path / "downloads", zerogpu=True)
    several = [fn for fn in demo.fns.values() if len(fn.outputs) > 1]
    assert len(several) > 20
    unguarded, api_on_page = [], []
    for fn in several:
        if fn.api_visibility == "public":  # an endpoint: the caller must get the error, so no widget of the page
            shown = [demo.blocks[t[0]] for t in fn.targets if t[0] is not None and demo.blocks[t[0]].visible]
            if shown:
                api_on_page.append(f"/{fn.api_name} is triggered by a visible {type(shown[0]).__name__}")
        elif not getattr(fn.fn, PAGE_ERRORS, False):
            unguarded.append(f"{fn.name} ({len(fn.outputs)} outputs)")
    assert not unguarded, f"page events that would mark all their outputs as failed: {unguarded}"
    assert not api_on_page, api_on_page
    publics = {fn.api_name: fn for fn in several if fn.api_visibility == "public"}
    assert {"compare", "exact_prompt", "export_model", "format_dataset"} <= set(publics)  # still endpoints
    for name, fn in publics.items():  # the page's twin of an endpoint shares its queue: one limit for both
        twins = [f for f in several if f.api_visibility == "private" and f.concurrency_id == fn.concurrency_id]
        assert twins, f"/{name}: the page's event does not share the endpoint's concurrency_id"
        assert {f.concurrency_limit for f in twins} == {fn.concurrency_limit}, name


def test_a_refusal_keeps_the_outputs_or_shows_the_fallback_and_a_bug_still_raises():
    def refuse(x: str) -> tuple[str, str]:
        raise UserError(f"row 3: {x} is not a number; write a number")

    assert page_errors(refuse)("abc") == gr.skip()
    assert page_errors(refuse, lambda m: ("", m))("abc") == ("", "row 3: abc is not a number; write a number")

    def stream(x: str):
        yield "first"
        raise gr.Error("type a message first")

    assert list(page_errors(stream, lambda m: m.upper())("x")) == ["first", "TYPE A MESSAGE FIRST"]


@pytest.mark.allow_internal_errors
def test_a_bug_is_not_dressed_as_a_refusal():
    def bug(x: str) -> str:
        return {}[x]  # KeyError: ours, not the user's

    with pytest.raises(gr.Error, match="internal error"):
        page_errors(bug)("k")
    with pytest.raises(InternalError, match="internal error"):  # already turned into the message by a helper
        page_errors(user_errors(bug))("k")
