"""Gradio components of our own. Only component classes live here: gradio writes a type stub (widgets.pyi) beside
the module that defines one, copying the module's other code once and never again, so anything else here would go
stale in the stub (tests/test_types.py checks)."""

from __future__ import annotations

from typing import Any, cast

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
class StepPlot(gr.LinePlot):
    """A line plot over training steps (whole numbers). Up to ``ORDINAL_UP_TO`` steps the x axis is ordinal, one
    labelled place per step (a quantitative axis puts ticks at 0.5, 1.5... on a run of a few steps); beyond, it is
    quantitative (its ticks are whole then).

    The page draws the chart once, with the series (colours) and axis kind of the data it has then, and later data
    only replaces the points: a curve added later (a second run, the eval loss) would not show. So an event that
    sets the data is followed by one that sets ``style(frame, series)`` (``restyle``): a colour per series, named
    in the legend, and the axis kind; when they differ from what is drawn, the page draws the chart anew, with the
    data it has by then."""

    ORDINAL_UP_TO = 30
    # vega's category10 colours, one per series in the order they come (the page compares the map by value)
    COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
               "#17becf")

    @classmethod
    def ordinal(cls, frame: Any, x: str = "step") -> bool:
        return frame is not None and 0 < frame[x].nunique() <= cls.ORDINAL_UP_TO

    @classmethod
    def style(cls, frame: Any, series: str, x: str = "step") -> dict[str, Any]:
        names = [] if frame is None else list(dict.fromkeys(frame[series]))
        return {"color_map": {name: cls.COLOURS[i % len(cls.COLOURS)] for i, name in enumerate(names)} or None,
                "sort": "x" if cls.ordinal(frame, x) else None}

    @classmethod
    def restyle(cls, style: dict[str, Any] | None) -> Any:
        return cls(**style) if style else gr.skip()

    def postprocess(self, value: Any) -> Any:
        data = super().postprocess(value)
        if (data is not None and not isinstance(data, dict) and isinstance(self.x, str) and self.x in data.datatypes
                and self.ordinal(value, self.x)):
            # vega-lite's ordinal type, which gradio passes on as it is (its type hint lists the three it infers)
            cast("dict[str, str]", data.datatypes)[self.x] = "ordinal"
        return data
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component

    