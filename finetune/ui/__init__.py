"""The Gradio app: one gr.Blocks of four tabs over the library. The only package that imports gradio."""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import gradio as gr

from .. import limits
from ..config import RunConfig
from ..data import parse_column_mapping
from ..service import Workspace, default_workspace
from . import forms
from .common import BROWSER_KEY_STORAGE, Api, adopt_old_browser_runs, browser_secret, page_errors, scoped
from .form_store import FormStore, form_inputs
from .dataset_tab import create_dataset_tab
from .export_tab import create_export_tab
from .hparams_tab import create_hparams_tab, wire_config
from .playground_tab import create_playground_tab
from .train_tab import create_train_tab

CSS = """
.ft-trained { background: #bbf7d0; color: #14532d; border-radius: 3px; padding: 0 1px; }
.ft-example { border: 1px solid #e5e7eb; border-radius: 8px; padding: 8px 12px; margin: 8px 0; }
.ft-row { font-size: 0.8em; color: #6b7280; }
.ft-progress { padding: 8px 0; }
.ft-msg { color: #b91c1c; margin-top: 4px; }
/* the badges and buttons use emoji: a colour emoji font after the theme's, where the theme's font lacks them */
.gradio-container, .gradio-container button, .gradio-container input, .gradio-container textarea {
  font-family: var(--font), "Noto Color Emoji", "Apple Color Emoji", "Segoe UI Emoji", "Twemoji Mozilla", sans-serif;
}
"""

INTRO = """# finetune
Fine-tune an open LLM on your own data with QLoRA, then chat with it and share the adapter.
**1 · Dataset** → **2 · Hyperparameters** → **3 · Train** → **4 · Playground** → **5 · Export**."""


def _read_live_prices() -> None:
    """Hugging Face Jobs prices from the live hardware listing when online; else the dated offline table stays."""
    import logging

    from .. import memory

    try:
        memory.refresh_jobs_prices()
    except memory.EstimateError as e:  # offline or unreachable: said in the log
        logging.getLogger("finetune.ui").info("Jobs prices: %s; %s", e, memory.prices_source())


def launch_options(workspace: Workspace, *, mcp: bool = False) -> dict[str, Any]:
    """What every ``launch()`` of the app passes (app.py and the tests): the owner cookie's middleware, whose
    secret lives in the workspace root (read on the first request). ``mcp``: also serve the API's endpoints as MCP
    tools (gradio's MCP server at ``/gradio_api/mcp/``; each tool described by its endpoint's docstring), under the
    same owners and limits (an MCP client names its owner with the ``X-Finetune-Key`` header: ``common.key_owner``)."""
    from starlette.middleware import Middleware

    from .owner_cookie import OwnerCookie

    options: dict[str, Any] = {"app_kwargs": {"middleware": [Middleware(OwnerCookie, root=workspace.root)]}}
    if mcp:
        options["mcp_server"] = True
    return options


def build_app(workspace: Workspace | None = None, downloads: str | Path | None = None, *,
              zerogpu: bool | None = None, zerogpu_steps_per_call: int | None = None) -> gr.Blocks:
    """Build the app. It serves nothing until launched; torch and transformers start loading in the background,
    and chat/compare generations use the CPU threads that local training runs leave free.

    ``zerogpu``: offer training on ZeroGPU; None detects a ZeroGPU Space (the platform sets SPACES_ZERO_GPU).
    True offers it anywhere (off a ZeroGPU Space ``spaces.GPU`` runs the calls in this process: for tests).
    ``zerogpu_steps_per_call`` caps the steps of each ZeroGPU call (default: planned from the step time).
    """
    api = Api(workspace or default_workspace(), Path(downloads or tempfile.mkdtemp(prefix="finetune-downloads-")))
    components: dict[str, forms.FormWidget] = {}
    demo: gr.Blocks
    # gradio's own copies of files it served (uploads, downloads) go after a day too, checked every hour
    age_s = int(limits.downloads_max_age_s())
    with gr.Blocks(title="finetune", delete_cache=(min(3600, age_s), age_s)) as demo:
        with gr.Row():
            gr.Markdown(INTRO)
            if os.environ.get("SPACE_ID"):  # OAuth exists on Spaces only; locally HF_TOKEN is used
                gr.LoginButton(scale=0)
        with gr.Row():  # a reloaded page brings the form back (form_store.py) and says so
            restored = gr.Markdown(visible=False, elem_id="form-restored")
            start_over = gr.Button("Start over from the preset", visible=False, size="sm", scale=0,
                                   elem_id="form-start-over")
        with gr.Tab("1 · Dataset", id="dataset"):
            ds = create_dataset_tab(api, components)
        with gr.Tab("2 · Hyperparameters", id="hparams"):
            hp = create_hparams_tab(api, components)
        with gr.Tab("3 · Train", id="train"):
            tr = create_train_tab(api, hp["config_code"], ds["data_file"], zerogpu_enabled=zerogpu,
                                  zerogpu_steps_per_call=zerogpu_steps_per_call, components=components)
        with gr.Tab("4 · Playground", id="playground"):
            pg = create_playground_tab(api)
        with gr.Tab("5 · Export", id="export"):
            ex = create_export_tab(api)

        def extra_to_config(cfg: RunConfig, hub_id: str | None, hub_config: str | None, split: str | None,
                            columns: str, data_file: str | None) -> RunConfig:
            cfg.data.source = "" if data_file else (hub_id or "").strip()
            cfg.data.hub_config = hub_config or None
            cfg.data.split = split or "train"
            cfg.data.columns = parse_column_mapping(columns)
            return cfg

        page_load: list[tuple[Any, list[Any], list[Any]]] = list(tr["on_load"])
        wire_config(api, components, hp, [ds["hub_id"], ds["hub_config"], ds["split"], ds["columns"], ds["data_file"]],
                    extra_to_config, on_load=page_load)
        # an anonymous visitor's runs follow their browser's owner cookie (launch_options); the key pages kept in
        # localStorage before it is read once, its runs moved to the cookie's owner, then cleared
        old_key = gr.BrowserState("", storage_key=BROWSER_KEY_STORAGE, secret=browser_secret(api.workspace.root))

        def adopt(key: str | None, request: gr.Request) -> str:
            return adopt_old_browser_runs(api.workspace, key, request)

        loaded = demo.load(adopt, old_key, old_key, api_visibility="private", show_progress="hidden")
        # the owner's form comes back first: what the page computes when it opens (the verdict) reads it
        source = [ds["data_file"], ds["hub_id"], ds["hub_config"], ds["split"], ds["columns"]]
        kept: list[Any] = [*form_inputs(components), *source, hp["gpu"], hp["preset"]]
        store = FormStore(kept, api.downloads)
        form_back = loaded.then(page_errors(scoped(api)(store.restore)), None,
                                [*form_inputs(components), *source, hp["gpu"], hp["preset"], restored, start_over],
                                api_visibility="private", show_progress="hidden")
        # a preset (or a loaded config) fills the form: the preview follows; a form brought back: its data previewed
        ds["wire"]([hp["preset_info"].change], [form_back])
        for fn, outputs in (tr["load"], pg["load"], ex):
            form_back.then(fn, None, outputs, api_visibility="private", show_progress="hidden")
        for fn, inputs, outputs in page_load:
            form_back.then(fn, inputs, outputs, api_visibility="private", show_progress="hidden")
        # kept after every change, for the next page of this owner
        gr.on([w.change for w in kept], page_errors(scoped(api)(store.save)), set(kept), None,
              api_visibility="private", show_progress="hidden", trigger_mode="always_last")
        start_over.click(page_errors(scoped(api)(store.forget)), None, None, api_visibility="private").then(
            None, None, None, js="() => { window.location.reload(); }")
    demo.queue(default_concurrency_limit=4)
    # torch/transformers/peft load in the background while the page opens (a few seconds on a CPU), once
    from .. import inference
    from ..backends import local
    from ..models import ml_imports
    from ..service import queue_dir

    threading.Thread(target=ml_imports, name="ml-imports", daemon=True).start()
    threading.Thread(target=_read_live_prices, name="jobs-prices", daemon=True).start()
    # prepared downloads (zips, exports, votes) are removed FINETUNE_DOWNLOADS_MAX_AGE_H after they were written
    limits.start_cleanup([api.downloads], every_s=min(600.0, age_s / 4))
    # chat and compare use the cores that the runs training on this machine leave free
    inference.set_cpu_threads(lambda: local.cpu_threads_left(queue_dir(api.workspace)))
    return demo
