"""Export tab: a finished run as a GGUF file (llama.cpp, LM Studio, Ollama), an Ollama folder, a merged model,
or a demo Space, downloadable here and optionally pushed to the Hub (`/export_model`)."""

from __future__ import annotations

from typing import Callable

import gradio as gr

from .. import service
from ..export import DEFAULT_QUANT, FORMATS, QUANTS, quants_for
from .common import Api, Caller, page_errors, scoped, user_errors
from .train_tab import finished_runs

FORMAT_HELP = {
    "gguf": "one .gguf file of the merged model, with the trained chat template (llama.cpp, LM Studio, Ollama)",
    "lora-gguf": "the LoRA adapter alone as .gguf (llama.cpp --lora, Ollama ADAPTER); apply it to the base's GGUF",
    "ollama": "a folder (zip) with the GGUF and a Modelfile: `ollama create NAME -f Modelfile`",
    "merged": "a folder (zip) with the merged 16-bit safetensors model, for plain transformers",
    "space": "a Gradio chat Space on the Hub showing the adapter (needs a repo id OWNER/NAME to push to)",
}


def create_export_tab(api: Api) -> tuple[Callable[..., gr.Dropdown], list[gr.Dropdown]]:
    gr.Markdown("Take a finished run to where people run models. The trained chat template is verified first "
                "and written into the file, so llama.cpp and Ollama prompt the model exactly as it was trained.")
    with gr.Row():
        run_id = gr.Dropdown(label="Run", choices=[], allow_custom_value=True, elem_id="export-run",
                             info="One of your finished runs")
        refresh = gr.Button("↻", scale=0)
    with gr.Row():
        fmt = gr.Radio(list(FORMATS), value="gguf", label="Format", elem_id="export-format")
        quant = gr.Dropdown(list(QUANTS), value=DEFAULT_QUANT, label="GGUF type", elem_id="export-quant",
                            info="q8_0: near-lossless, half of f16; q4_0: smallest (LoRA GGUF: f16, bf16, q8_0)")
    fmt_help = gr.Markdown(FORMAT_HELP["gguf"])
    with gr.Row():
        repo = gr.Textbox(label="Push to Hub repo (optional)", placeholder="you/my-model-GGUF", elem_id="export-repo")
        private = gr.Checkbox(value=True, label="Private repo")
    export_btn = gr.Button("Export", variant="primary", elem_id="export-btn")
    result = gr.Markdown(elem_id="export-result")
    file = gr.File(label="Download", interactive=False, elem_id="export-file")

    def export(me: Caller, run: str, format: str, quant: str, push_repo: str, private: bool,
               progress: gr.Progress) -> service.ExportDownload:
        def report(fraction: float, message: str) -> None:
            progress(fraction, desc=message)

        return me.space.export(run, format, quant, api.downloads / "exports", push=(push_repo or "").strip() or None,
                               token=me.token, private=private, progress=report)

    @scoped(api, token=True)
    def export_model(me: Caller, run: str, format: str = "gguf", quant: str = DEFAULT_QUANT, push_repo: str = "",
                     private: bool = True, progress: gr.Progress = gr.Progress()) -> tuple[str | None, str]:
        """Export a finished run: format gguf | lora-gguf | ollama | merged | space, quant f16 | bf16 | q8_0 | q4_0
        (GGUF types; a LoRA GGUF: f16 | bf16 | q8_0), push_repo optional (required for space). Returns the file to
        download and a summary (plain text: what was written, its sizes, where it was pushed, how to run it)."""
        out = export(me, run, format, quant, push_repo, private, progress)
        return (str(out.file) if out.file else None), out.summary

    @scoped(api, token=True)
    def export_on_page(me: Caller, run: str, format: str, quant: str, push_repo: str, private: bool,
                       progress: gr.Progress = gr.Progress()) -> tuple[str | None, str]:
        out = export(me, run, format, quant, push_repo, private, progress)
        return (str(out.file) if out.file else None), "```text\n" + out.summary + "\n```"

    @scoped(api)
    def runs(me: Caller) -> gr.Dropdown:
        choices = finished_runs(me.space)
        return gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def describe(name: str, current: str) -> tuple[str, gr.Dropdown]:
        """The format's help, and the GGUF types it is written in: the type picked stays when the format takes it,
        else it goes back to the default (a LoRA GGUF has no q4_0); a format without a GGUF file has none."""
        fitting = quants_for(name)
        value = current if current in fitting else DEFAULT_QUANT if DEFAULT_QUANT in fitting else current
        return FORMAT_HELP.get(name, ""), gr.Dropdown(choices=list(fitting or QUANTS), value=value,
                                                      interactive=bool(fitting))

    fmt.change(page_errors(describe), [fmt, quant], [fmt_help, quant], api_visibility="private")
    refresh.click(runs, None, run_id, api_visibility="private")
    inputs = [run_id, fmt, quant, repo, private]
    gr.Button(visible=False).click(user_errors(export_model), inputs, [file, result], api_name="export_model",
                                   concurrency_id="export_model", concurrency_limit=1)
    # the page: a refusal clears the last export's file and says why in the result (no error badge on both)
    export_btn.click(page_errors(export_on_page, lambda m: (None, f"❌ **Not exported:** {m}")), inputs, [file, result],
                     api_visibility="private", concurrency_id="export_model", concurrency_limit=1)
    return runs, [run_id]
