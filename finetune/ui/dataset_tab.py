"""Dataset tab: upload a file or name a Hub dataset, map columns, pick the template, see exactly what the
model will be trained on (trained-on part highlighted), token lengths, row problems, download or push."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence, TypedDict

import gradio as gr
import pandas as pd
from gradio.events import Dependency

from .. import methods, service
from ..data import parse_column_mapping
from ..errors import UserError, app_message
from ..templates import template_label
from . import forms
from .make_dataset import create_make_dataset_section
from .common import NEW_ACTION_JS, Api, Caller, page_errors, push_row, scoped, user_errors

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..config import RunConfig

FILE_TYPES = [".csv", ".tsv", ".json", ".jsonl", ".parquet"]
# The methods a file's columns may call for when SFT is picked (pairs: dpo, orpo; labelled answers: kto): one button each
SUGGESTABLE = tuple(name for name, m in methods.REGISTRY.items() if m.shape in methods.JUDGED_SHAPES)


def preview_caption(template: str, method: str) -> str:
    """What a preview was rendered with, above it: the template and the method (a run of other settings renders
    other text)."""
    label = template_label(template)
    shown = f"<code>{html.escape(template)}</code>" + (f" ({html.escape(label)})" if label != template else "")
    return f"<div class='ft-caption'>Rendered with template {shown} · method {html.escape(method.upper())}</div>"


def preview_html(examples: list[dict[str, Any]], limit: int = 5, caption: str = "") -> str:
    """Each example's text with the trained-on spans highlighted, under ``caption``."""
    if not examples:
        return "<div class='ft-preview'>Nothing to show yet: upload a file or name a Hub dataset.</div>"
    blocks = []
    for ex in examples[:limit]:
        text, pos, parts = ex["text"], 0, []
        for a, b in ex["spans"]:
            parts.append(html.escape(text[pos:a]))
            parts.append(f"<mark class='ft-trained'>{html.escape(text[a:b])}</mark>")
            pos = b
        parts.append(html.escape(text[pos:]))
        blocks.append(f"<div class='ft-example'><div class='ft-row'>row {html.escape(str(ex['row']))}</div>"
                      f"<pre style='white-space:pre-wrap'>{''.join(parts)}</pre></div>")
    legend = ("<div class='ft-legend'><mark class='ft-trained'>highlighted</mark> = trained on (carries the loss); "
              "the rest is context the model reads but is not trained to produce.</div>")
    return "<div class='ft-preview' id='ft-preview'>" + caption + legend + "".join(blocks) + "</div>"


def histogram(lengths: list[int], max_length: int | None) -> Figure:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 2.6))
    if lengths:
        ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#6366f1")
        longest = max(lengths)
        if max_length and max_length <= longest * 1.05:  # a cut-off inside the data: drawn where it cuts
            ax.axvline(max_length, color="#dc2626", linestyle="--", label=f"max_length {max_length}")
            ax.legend()
        elif max_length:  # far beyond every example: said, not drawn (the axis would run to it, the data a sliver)
            ax.set_title(f"every example fits max_length {max_length} (longest {longest})", fontsize=9)
        ax.set_xlim(0, max(longest, max_length if max_length and max_length <= longest * 1.05 else 0) * 1.05)
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    fig.tight_layout()
    plt.close(fig)
    return fig


class DatasetTab(TypedDict):
    """What the Dataset tab gives the app: its source widgets, and ``wire`` to connect its events once the
    hyperparameters tab has made the widgets it reads."""
    data_file: gr.File
    hub_id: gr.Textbox
    hub_config: gr.Textbox
    split: gr.Textbox
    columns: gr.Textbox
    wire: Callable[..., tuple[Dependency, Dependency, Dependency]]


class FormatPreview(TypedDict):
    """What the Dataset tab shows of a formatted dataset (:func:`preview_report`)."""
    summary: str  # markdown
    examples: list[dict[str, Any]]  # {"row": int, "text": str, "spans": [[start, end], ...]} (trained characters)
    lengths: list[int]  # tokens per example
    problems: list[list[Any]]  # [row, field, reason, fix] of each rejected row
    warnings: list[str]
    file: str  # the formatted JSONL
    suggests: list[str]  # SFT picked for answers labelled good or bad: the methods that train on them


def preview_report(f: service.Formatted, preview_rows: int = 5) -> FormatPreview:
    """A formatted dataset as the tab shows it: the summary, the first examples with their trained spans (a
    preference pair as its chosen and its rejected answer), token lengths, row problems, warnings and the file."""
    from ..data import summary_markdown
    from ..data.format import FormatResult
    from ..data.preference import FeedbackExample, PairExample, PromptExample

    problems = [[p.row, p.field, p.reason, p.fix] for p in f.result.problems]
    if isinstance(f.result, FormatResult):
        return {"summary": summary_markdown(f.result),
                "examples": [{"row": ex.row, "text": ex.text, "spans": [list(s) for s in ex.spans]}
                             for ex in f.result.examples[:preview_rows]],
                "lengths": list(f.lengths), "problems": problems,
                "warnings": [f"row {p.row}: {p.reason}" for p in f.result.warnings], "file": str(f.file),
                "suggests": list(f.suggests)}
    shown: list[dict[str, Any]] = []
    for ex in f.result.examples[:preview_rows]:
        if isinstance(ex, PairExample):
            for label, answer in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                shown.append({"row": f"{ex.row} ({label})", "text": ex.prompt + answer,
                              "spans": [[len(ex.prompt), len(ex.prompt) + len(answer)]]})
        elif isinstance(ex, FeedbackExample):
            shown.append({"row": f"{ex.row} ({'thumbs up' if ex.label else 'thumbs down'})",
                          "text": ex.prompt + ex.completion,
                          "spans": [[len(ex.prompt), len(ex.prompt) + len(ex.completion)]]})
        elif isinstance(ex, PromptExample):
            shown.append({"row": f"{ex.row} (reference: {ex.answer if ex.answer is not None else 'none'})",
                          "text": ex.prompt, "spans": []})
    skipped = ", ".join(f"{n} {c}" for c, n in f.result.skipped.most_common())
    summary = (f"**{f.method.upper()} data** from `{f.source}`: {len(f.result.examples)} examples of "
               f"{f.result.rows_in} rows, shape `{f.result.shape}`" + (f"; skipped: {skipped}" if skipped else "") +
               ". Highlighted: the answer each example trains on.")
    return {"summary": summary, "examples": shown, "lengths": list(f.lengths), "problems": problems, "warnings": [],
            "file": str(f.file), "suggests": list(f.suggests)}


class DatasetEndpoints:
    """The Dataset tab's endpoints and page events; those that act for a caller take ``me`` (``common.Caller``)
    first, as ``common.scoped`` hands it."""

    def __init__(self, api: Api) -> None:
        self.api = api

    def format_dataset(self, me: Caller, data_file: str | None = None, hub_id: str = "", hub_config: str = "",
                       split: str = "train", template: str = "llama2", system_prompt: str = "", columns: str = "",
                       model: str = "", max_length: int = 1024, train_on: str = "assistant",
                       keep_duplicates: bool = False, method: str = "sft", val_fraction: float = 0.0,
                       test_split: float = 0.0) -> tuple[str, str, Any, pd.DataFrame, str]:
        # (the Any is histogram's matplotlib Figure: gradio evaluates these hints, so no name imported lazily)
        """Format an uploaded file (or a Hub dataset) with a template: summary, preview, token-length
        histogram, row problems and the formatted JSONL file. ``method`` (sft, dpo, orpo, kto, grpo) picks the
        data shape: dpo/orpo show each prompt with its chosen and rejected answer, kto each answer with its
        label, grpo each prompt with its reference. ``val_fraction`` and ``test_split`` split the rows as
        training will (validation rows; the test set held out, never trained on): the summary counts each. SFT asked
        of preference pairs is refused with the methods that read them; of answers labelled good or bad, the summary
        names the method that trains on the labels."""
        shown, _ = self.formatted(me, data_file, hub_id, hub_config, split, template, system_prompt, columns, model,
                                  max_length, train_on, keep_duplicates, method, val_fraction, test_split)
        return shown

    def formatted(self, me: Caller, data_file: str | None, hub_id: str, hub_config: str, split: str, template: str,
                  system_prompt: str, columns: str, model: str, max_length: int, train_on: str, keep_duplicates: bool,
                  method: str, val_fraction: float,
                  test_split: float) -> tuple[tuple[str, str, Any, pd.DataFrame, str], list[str]]:
        """:meth:`format_dataset`'s outputs, and the methods the data calls for (SFT picked for labelled answers)."""
        api = self.api
        source = data_file or (hub_id or "").strip()
        if not source:
            raise gr.Error("upload a file or type a Hub dataset id first")
        model = service.check_model_ref(api.workspace, model or "")  # a shared server's folders are no tokenizers
        try:
            report = preview_report(service.format_preview(
                source, template=template, system_prompt=system_prompt or "", columns=parse_column_mapping(columns),
                model=model, max_length=int(max_length or 1024), train_on=train_on or "assistant",
                hub_config=hub_config or None, split=split or "train",
                out_dir=api.downloads / "formatted" / _safe(me.space.owner or ""),
                hub_only=not data_file and api.workspace.multi_user,  # typed text is never a server path
                keep_duplicates=bool(keep_duplicates), method=method or "sft",
                val_fraction=float(val_fraction or 0.0), test_split=float(test_split or 0.0),
            ))
        except UserError as e:  # an upload's name, not where the server keeps it
            raise e.renamed({data_file: Path(data_file).name} if data_file else {}) from None
        if report["warnings"]:  # one toast for the action, however many rows (the summary lists them)
            more = len(report["warnings"]) - 3
            gr.Warning("<br>".join(html.escape(w) for w in report["warnings"][:3])
                       + (f"<br>… and {more} more (see the summary)" if more > 0 else ""))
        probs = pd.DataFrame(report["problems"], columns=["row", "field", "problem", "fix"])
        return ((report["summary"] + suggestion_markdown(report["suggests"]),
                 preview_html(report["examples"], caption=preview_caption(template, method or "sft")),
                 histogram(report["lengths"], max_length), probs, report["file"]), report["suggests"])

    def format_on_page(self, me: Caller, data_file: str | None, hub_id: str, hub_config: str, split: str,
                       template: str, system_prompt: str, columns: str, model: str, max_length: int, train_on: str,
                       keep_duplicates: bool, method: str, val_fraction: float,
                       test_split: float) -> tuple[Any, ...]:
        """The page's format: a file that cannot be formatted clears the last file's preview, histogram, problems
        and download (they would read as this file's) and says why in the summary. Also the settings the preview
        was rendered (or refused) with, an empty stale mark, and a button for each method the data calls for
        (pairs or labelled answers under SFT: one click picks it, and the preview follows)."""
        settings = [template, system_prompt, columns, model, max_length, train_on, keep_duplicates, method,
                    val_fraction, test_split]
        try:
            shown, suggests = self.formatted(me, data_file, hub_id, hub_config, split, template, system_prompt,
                                             columns, model, max_length, train_on, keep_duplicates, method,
                                             val_fraction, test_split)
        except service.WrongMethod as e:  # SFT cannot read pairs: the methods that can, one click each
            name = Path(data_file).name if data_file else (hub_id or "").strip()
            hint = service.method_hint(e.methods, sft_reads=False)
            return (f"💡 **{html.escape(name)}: {html.escape(hint)}** (one click below; the preview follows).",
                    f"<div class='ft-preview' id='ft-preview-cleared'>No preview yet: pick the method for this data "
                    "(above).</div>",
                    None, pd.DataFrame(columns=["row", "field", "problem", "fix"]), None, settings, "",
                    *suggestion_buttons(e.methods))
        except UserError as e:
            name = Path(data_file).name if data_file else (hub_id or "").strip()
            said = app_message(e)
            gr.Warning(html.escape(said))
            return (f"❌ **{html.escape(name)} could not be formatted:** {html.escape(said)}",
                    f"<div class='ft-preview' id='ft-preview-cleared'>No preview: {html.escape(name)} could not be "
                    "formatted (see above); fix it and upload again.</div>",
                    None, pd.DataFrame(columns=["row", "field", "problem", "fix"]), None, settings, "",
                    *suggestion_buttons(()))
        return (*shown, settings, "", *suggestion_buttons(suggests))

    def refresh_preview(self, me: Caller, shown: list[Any] | None, data_file: str | None, hub_id: str,
                        hub_config: str, split: str, template: str, system_prompt: str, columns: str, model: str,
                        max_length: int, train_on: str, keep_duplicates: bool, method: str, val_fraction: float,
                        test_split: float) -> tuple[Any, ...]:
        """A preview on screen follows the settings the run will use: rendered again when they changed since."""
        settings = [template, system_prompt, columns, model, max_length, train_on, keep_duplicates, method,
                    val_fraction, test_split]
        outputs = 7 + len(SUGGESTABLE)
        if shown is None or not (data_file or (hub_id or "").strip()):  # no preview to keep true
            return (gr.skip(),) * outputs
        if settings == shown:
            return (gr.skip(),) * 6 + ("",) + (gr.skip(),) * len(SUGGESTABLE)
        return self.format_on_page(me, data_file, hub_id, hub_config, split, template, system_prompt, columns, model,
                                   max_length, train_on, keep_duplicates, method, val_fraction, test_split)

    def render_if_data(self, me: Caller, data_file: str | None, hub_id: str, hub_config: str, split: str,
                       template: str, system_prompt: str, columns: str, model: str, max_length: int, train_on: str,
                       keep_duplicates: bool, method: str, val_fraction: float, test_split: float) -> tuple[Any, ...]:
        """The page's format when data is chosen (a form brought back with its data); nothing chosen: as it was."""
        if not (data_file or (hub_id or "").strip()):
            return (gr.skip(),) * (7 + len(SUGGESTABLE))
        return self.format_on_page(me, data_file, hub_id, hub_config, split, template, system_prompt, columns, model,
                                   max_length, train_on, keep_duplicates, method, val_fraction, test_split)

    @staticmethod
    def stale_mark(shown: list[Any] | None, *settings: Any) -> str:
        """While a typed setting differs from the preview's, the preview says it is out of date."""
        if shown is None:
            return ""
        changed = [name for name, now, then in zip(SETTING_NAMES, settings, shown) if now != then]
        if not changed:
            return ""
        return (f"⚠️ **The preview below is out of date** ({', '.join(changed)} changed since): it is rendered again "
                "when you leave the field, or press Format and preview.")

    def push(self, file: str | None, repo_id: str, private: bool, oauth: gr.OAuthToken | None = None) -> str:
        if not file:
            raise gr.Error("format the dataset first")
        url = service.push_dataset(self.api.workspace, file, repo_id, token=oauth.token if oauth else None,
                                   private=private)
        return f"Pushed to {url}"

    def keep_test_file(self, me: Caller, path: str | None) -> str:
        """An uploaded test file, checked (prompts, references) and kept in the owner's folder: its path is the
        config's data.test_source."""
        if not path:
            return ""
        from ..evaluate import read_test_set

        kept = me.space.keep_upload(path)
        try:
            read_test_set(kept)  # a bad test file is refused now, naming the row, not when the run ends
        except UserError as e:  # by the name the user gave it
            raise service.as_uploaded(e, path, kept) from None
        return str(kept.resolve())


def create_dataset_tab(api: Api, components: dict[str, forms.FormWidget]) -> DatasetTab:
    with gr.Row():
        with gr.Column():
            data_file = gr.File(label="Upload a dataset", file_types=FILE_TYPES, type="filepath", elem_id="data-file")
        with gr.Column():
            hub_id = gr.Textbox(value="", label="…or a Hub dataset id", placeholder="mlabonne/guanaco-llama2-1k",
                                info="Used when no file is uploaded")
            with gr.Row():
                hub_config = gr.Textbox(value="", label="Config (subset)", placeholder="default")
                split = gr.Textbox(label="Split", value="train")
    with gr.Row():
        for f in forms.DATA_FIELDS[:2]:
            with gr.Column():
                components[f.key] = forms.make_component(f, forms.get_value(service_default(), f.key))
    with gr.Row():
        columns = gr.Textbox(value="", label="Column mapping", placeholder="instruction=question, output=answer",
                             info="Only when detection picks the wrong columns: field=your_column, comma separated",
                             elem_id="columns")
        for f in forms.DATA_FIELDS[2:]:
            with gr.Column():
                components[f.key] = forms.make_component(f, forms.get_value(service_default(), f.key))
    with gr.Row():
        test_upload = gr.File(label="Upload a test file (optional): prompts with reference answers (reference, answer, "
                              "label, completion or output), scored at each checkpoint, at the end of the run and by "
                              "Evaluate; or hold out a test set from the data above",
                              file_types=FILE_TYPES, type="filepath", elem_id="test-file")
    fmt = gr.Button("Format and preview", variant="primary", elem_id="format-btn")
    summary = gr.Markdown(elem_id="format-summary")
    with gr.Row():  # the data calls for another method than the one picked: one click picks it
        suggest = [gr.Button(f"Use {name.upper()}", visible=False, size="sm", variant="primary",
                             elem_id=f"use-method-{name}") for name in SUGGESTABLE]
    stale = gr.Markdown(elem_id="preview-stale")  # the settings changed since the preview below was rendered
    preview = gr.HTML(preview_html([]))
    shown_with = gr.State(None)  # the settings the preview on screen was rendered or refused with (None: none yet)
    with gr.Row():
        hist = gr.Plot(label="Token lengths")
        problems = gr.Dataframe(headers=["row", "field", "problem", "fix"], label="Row problems",
                                interactive=False, wrap=True, elem_id="problems")
    with gr.Row():
        formatted = gr.File(label="Formatted JSONL (text, prompt, completion, messages)", interactive=False)
    ds = push_row("dataset", "Push the formatted dataset to", "you/my-dataset")
    ds_repo, ds_private, ds_push, ds_result = ds.repo, ds.private, ds.button, ds.result
    create_make_dataset_section(api)

    ep = DatasetEndpoints(api)
    mine = scoped(api)
    format_on_page = page_errors(mine(ep.format_on_page))
    test_upload.upload(user_errors(mine(ep.keep_test_file)), test_upload, components["data.test_source"],
                       api_visibility="private")

    def wire(refresh_on: Sequence[Callable[..., Dependency]] = (),
             render_after: Sequence[Dependency] = ()) -> tuple[Dependency, Dependency, Dependency]:
        """Connect the events once the hyperparameters tab has made the model and max_length widgets;
        ``refresh_on``: more events after which a preview on screen follows the form (a preset filled it);
        ``render_after``: events after which the data chosen, if any, is previewed (a kept form brought back)."""
        typed: list[gr.Textbox | gr.Number] = []
        picked = [components[k] for k in ("data.template", "data.train_on", "data.keep_duplicates", "training.method",
                                          "data.val_fraction", "data.test_split")]
        for w in (components["data.system_prompt"], columns, components["model.id"], components["training.max_length"]):
            if isinstance(w, gr.Dropdown):  # a picked value (typed text too: it counts once the field is left)
                picked.append(w)
            else:
                assert isinstance(w, (gr.Textbox, gr.Number)), f"{w} is typed into: a Textbox or a Number"
                typed.append(w)
        inputs = [data_file, hub_id, hub_config, split, components["data.template"], components["data.system_prompt"],
                  columns, components["model.id"], components["training.max_length"], components["data.train_on"],
                  components["data.keep_duplicates"], components["training.method"], components["data.val_fraction"],
                  components["data.test_split"]]
        outputs = [summary, preview, hist, problems, formatted]
        on_page = outputs + [shown_with, stale, *suggest]
        for name, button in zip(SUGGESTABLE, suggest):  # the Method picker changes: the preview follows it
            button.click(lambda m=name: m, None, components["training.method"], api_visibility="private")
        api_event = gr.Button(visible=False).click(user_errors(mine(ep.format_dataset)), inputs, outputs,
                                                   api_name="format_dataset", concurrency_id="format_dataset",
                                                   concurrency_limit=4)
        fmt.click(format_on_page, inputs, on_page, api_visibility="private", concurrency_id="format_dataset",
                  concurrency_limit=4, js=NEW_ACTION_JS)
        # a picked setting renders the preview again at once, a typed one when the field is left
        gr.on([w.change for w in picked] + [e for w in typed for e in (w.blur, w.submit)] + list(refresh_on),
              page_errors(mine(ep.refresh_preview)), [shown_with, *inputs], on_page, api_visibility="private",
              trigger_mode="always_last", js=NEW_ACTION_JS,
              concurrency_id="format_dataset", concurrency_limit=4, show_progress="minimal")
        gr.on([w.change for w in typed], ep.stale_mark, [shown_with, *inputs[4:]], stale, api_visibility="private",
              show_progress="hidden")
        for after in render_after:
            after.then(page_errors(mine(ep.render_if_data)), inputs, on_page, api_visibility="private",
                       concurrency_id="format_dataset", concurrency_limit=4, show_progress="minimal")
        return (
            api_event,
            data_file.upload(format_on_page, inputs, on_page, api_visibility="private",
                             concurrency_id="format_dataset", concurrency_limit=4, js=NEW_ACTION_JS),
            ds_push.click(user_errors(ep.push), [formatted, ds_repo, ds_private], ds_result, api_name="push_dataset"),
        )

    return {"data_file": data_file, "hub_id": hub_id, "hub_config": hub_config, "split": split, "columns": columns,
            "wire": wire}


def suggestion_markdown(suggests: list[str]) -> str:
    """Under a formatted SFT dataset's summary: the methods its judged answers call for (empty when none)."""
    if not suggests:
        return ""
    return f"\n\n💡 **{html.escape(service.method_hint(suggests, sft_reads=True))}**."


def suggestion_buttons(suggests: Sequence[str]) -> list[Any]:
    """The suggestion buttons: those of ``suggests`` shown, the others hidden."""
    return [gr.Button(visible=name in suggests) for name in SUGGESTABLE]


# The settings a preview is rendered with, as the stale mark names them (the order of the format inputs after the
# data source: template, system prompt, columns, model, max_length, train_on, keep_duplicates, method, fractions).
SETTING_NAMES = ("template", "system prompt", "column mapping", "base model", "max length", "train on",
                 "keep duplicates", "method", "validation fraction", "test split")


def _safe(who: str) -> str:
    import hashlib

    return hashlib.sha256(who.encode()).hexdigest()[:16]


def service_default() -> RunConfig:
    from ..presets import DEFAULT_PRESET, load_preset

    return load_preset(DEFAULT_PRESET)
