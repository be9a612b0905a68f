"""Gradio reads the type hints of every event function (typing.get_type_hints) to pass it the request and the
signed-in user; when one hint does not resolve at runtime (a name imported under TYPE_CHECKING only) it gets no
hints at all, silently, and every caller becomes the same "local" owner. Every hint must resolve."""

from __future__ import annotations

import inspect
import typing

from gradio import utils

from finetune.service import Workspace
from finetune.ui import build_app

SPECIAL = ("request", "profile", "oauth")  # the parameters gradio fills from its type hint


def test_event_functions_have_type_hints_gradio_can_read(tmp_path):
    demo = build_app(Workspace(tmp_path / "runs", multi_user=True), tmp_path / "downloads", zerogpu=True)
    fns = [b.fn for b in demo.fns.values() if b.fn is not None]
    assert fns
    problems = []
    for fn in fns:
        name = getattr(fn, "__qualname__", repr(fn))
        try:
            typing.get_type_hints(fn if inspect.isroutine(fn) else fn.__call__)
        except (NameError, TypeError) as e:
            problems.append(f"{name}: {e}")
            continue
        hints = utils.get_type_hints(fn)
        problems += [f"{name}: {p} is not given by gradio (hint {hints.get(p)})"
                     for p in inspect.signature(fn).parameters if p in SPECIAL
                     and not utils.is_special_typed_parameter(p, hints)]
    assert not problems, problems
