"""Gradio components of our own. Only component classes live here: gradio writes a type stub (widgets.pyi) beside
the module that defines one, copying the module's other code once and never again, so anything else here would go
stale in the stub (tests/test_types.py checks)."""

from __future__ import annotations

from typing import Any

import gradio as gr

from gradio.events import Dependency

class FreeDropdown(gr.Dropdown):
    """A dropdown whose value may be any text (``allow_custom_value``): the API documents it as a string, not as
    the choices the page happened to offer when it was built (``Literal['']``)."""

    def api_info(self) -> dict[str, Any]:
        return {"type": "string"}

    def get_block_name(self) -> str:  # drawn by the page as the dropdown it is
        return "dropdown"
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component