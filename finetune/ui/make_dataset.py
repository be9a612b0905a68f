"""The Dataset tab's "Make a dataset" section: a recipe (YAML) and documents in, a made dataset and its summary out,
through ``OwnerSpace.make_dataset`` (the same function as `python -m finetune synth`); the endpoint ``/make_dataset``."""

from __future__ import annotations

import gradio as gr

from ..synth import Progress, bundled_recipes
from .common import NEW_ACTION_JS, Api, Caller, page_errors, scoped, user_errors

HELP = ("No dataset yet? A recipe turns documents (.txt, .md, .html, .pdf) or a few examples into training rows: "
        "questions and answers from each chunk, instructions in the style of your examples, or preference pairs. "
        "A judge scores each row; duplicates and rows that overlap the test set are dropped and counted. The "
        "example recipe reads three bundled documents; upload yours to use them instead.")


def make_dataset(caller: Caller, recipe_yaml: str, documents: list[str] | None = None,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, str]:
    """Make the dataset a recipe describes (from the uploaded documents, when any); returns the JSONL file and a
    summary (rows made and kept, each filter's count, the generator and the judge)."""

    def show(p: Progress) -> None:
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        progress((p.kept, p.target), desc=f"made {p.made}, kept {p.kept} of {p.target}{eta}")

    out, summary = caller.space.make_dataset(recipe_yaml, list(documents or []) or None, token=caller.token,
                                             progress=show)
    return str(out), "\n".join(f"- {line}" for line in summary.lines())


def create_make_dataset_section(api: Api) -> None:
    """The section's widgets and its endpoint (laid out where it is called, inside the Dataset tab)."""
    with gr.Accordion("Make a dataset", open=False, elem_id="make-dataset"):
        gr.Markdown(HELP)
        recipe = gr.Code(bundled_recipes()["qa-from-documents"].read_text(encoding="utf-8"), language="yaml",
                         label="Recipe", elem_id="make-recipe")
        documents = gr.File(file_count="multiple", type="filepath", label="Documents (.txt .md .html .pdf)",
                            elem_id="make-documents")
        go = gr.Button("Make the dataset", elem_id="make-go")
        made = gr.File(label="Made dataset (JSONL: messages or prompt/chosen/rejected, plus score)", interactive=False)
        summary = gr.Markdown(elem_id="make-summary")
    mine = scoped(api, token=True)
    # the endpoint first (it takes the name), then the page's button (a refusal: one message, the outputs kept),
    # sharing one queue
    gr.Button(visible=False).click(user_errors(mine(make_dataset)), [recipe, documents], [made, summary],
                                   api_name="make_dataset", concurrency_id="make_dataset", concurrency_limit=1)
    go.click(page_errors(mine(make_dataset)), [recipe, documents], [made, summary], api_visibility="private",
             concurrency_id="make_dataset", concurrency_limit=1, js=NEW_ACTION_JS)
