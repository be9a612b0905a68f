"""A reloaded page keeps its form: the owner's settings (the data, the template, the hyperparameters, the method, the
target GPU) are kept on the server per owner after each change (``service.OwnerSpace.save_form``, like the runs) and
put back when a page of the same owner opens, which the page says, with a way to start over from the preset.

Kept on the server, not in the browser: the uploaded file is a server path, and a path a browser sends back could
name any file of the server; a kept form is written only from what gradio accepted as this owner's upload."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import gradio as gr

from ..config import ConfigError, RunConfig
from ..presets import DEFAULT_PRESET
from ..service import kept_name
from . import forms
from .common import Caller

VERSION = 1
SOURCE_KEYS = ("hub_id", "hub_config", "split", "columns")  # the Dataset tab's source boxes, in this order


def restored_note(cfg: RunConfig, data: str) -> str:
    """What the page says it brought back."""
    t = cfg.training
    steps = f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs:g} epochs"
    model = cfg.model.id or "the embedded SmolLM2-135M-Instruct"
    named = f" · run name `{html.escape(cfg.name)}`" if cfg.name else ""
    return (f"↺ **Your form is back as you left it:** data {data} · template `{html.escape(cfg.data.template)}` · "
            f"method {html.escape(t.method.upper())} · model `{html.escape(model)}` · {steps}{named}")


class FormStore:
    """The page's events that keep the form and bring it back (``me``: the caller, as ``common.scoped`` hands it)."""

    def __init__(self, kept: list[Any], downloads: Path) -> None:
        self.kept = kept  # the form's widgets (forms.FORM_FIELDS), the upload, the source boxes, GPU and preset
        self.n_fields = len(forms.FORM_FIELDS)
        self.downloads = downloads  # where a kept upload is handed back to the page (cleaned up with the downloads)

    def save(self, me: Caller, given: dict[Any, Any]) -> None:
        """Keep the form as it is now (``given``: widget -> value of :attr:`kept`, as gradio hands a set of inputs).
        A form that is no config yet (a number being typed) is not kept: the last one stays. The upload is copied
        into the owner's folder once (gradio drops its own copy when the page closes)."""
        from ..service import ServiceError

        values = [given.get(w) for w in self.kept]
        n = self.n_fields
        data_file, hub_id, hub_config, split, columns, gpu, preset = values[n:n + 7]
        try:
            config_yaml = forms.values_to_config(RunConfig(), list(values[:n])).to_yaml()
        except ConfigError:  # mid-typing; the form shows the problem (hparams_tab's sync)
            return
        try:
            before = me.space.load_form() or {}
        except ServiceError:  # a damaged kept form is replaced by this one
            before = {}
        kept, name = None, None
        same = before.get("kept") and data_file in (before.get("data_file"), self.hand_back_path(me, before))
        if data_file and same:  # the file kept already (or its copy handed back to a reloaded page)
            kept, name = before["kept"], before.get("data_name")
        elif data_file:
            name = kept_name(Path(str(data_file)).name)
            try:
                kept = str(me.space.keep_upload(data_file))
            except ServiceError:  # over the owner's disk quota: the form is kept without its file, whose
                kept = None       # refusal the Start button says; the next page asks for the file again
        if before.get("kept") and before["kept"] != kept:  # the form moved on: its last file goes, unless a run uses it
            me.space.drop_upload(before["kept"])
        me.space.save_form({"version": VERSION, "config": config_yaml or "", "data_file": data_file or None,
                            "kept": kept, "data_name": name, "hub_id": hub_id or "", "hub_config": hub_config or "",
                            "split": split or "train", "columns": columns or "", "gpu": gpu or "",
                            "preset": preset or ""})

    def hand_back_path(self, me: Caller, form: dict[str, Any]) -> str | None:
        """Where the form's kept upload is handed back to a page: one place per owner and file (a reload reuses it,
        and takes no more room), under the file's own name; None: no kept upload."""
        import hashlib

        kept = form.get("kept")
        if not isinstance(kept, str) or not kept:
            return None
        owner = hashlib.sha256(str(me.space.root).encode("utf-8")).hexdigest()[:16]
        return str(self.downloads / "forms" / owner / Path(kept).parent.name / kept_name(str(form.get("data_name"))))

    def handed_back(self, me: Caller, form: dict[str, Any]) -> str | None:
        """The kept upload as a file the page can show again under its own name (None: none, no longer kept, or no
        room for its copy in the owner's quota)."""
        import shutil

        from ..service import UPLOADS, ServiceError

        kept, out = form.get("kept"), self.hand_back_path(me, form)
        if not isinstance(kept, str) or out is None:
            return None
        path = Path(kept)
        if not (path.is_file() and path.resolve().is_relative_to((me.space.root / UPLOADS).resolve())):
            return None  # only the owner's own kept uploads, and only while they are there
        target = Path(out)
        if target.is_file() and target.stat().st_size == path.stat().st_size:
            return out
        try:
            me.space.check_download_room(path, "bringing back your form's file")
        except ServiceError:
            return None
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        return out

    def restore(self, me: Caller) -> list[Any]:
        """The kept form into the widgets (each form field, the upload, the source boxes, GPU, preset), and the note
        that says so; nothing kept: every widget as it is."""
        from ..memory import GPUS

        unchanged: list[Any] = [gr.skip()] * (self.n_fields + 1 + len(SOURCE_KEYS) + 2) + [gr.skip(), gr.skip()]
        form = me.space.load_form()
        if not form or form.get("version") != VERSION:
            return unchanged
        try:
            cfg = RunConfig.from_yaml(str(form.get("config") or ""), source="your saved form")
        except ConfigError as e:  # kept by an older version of the app: said, and the page starts from the preset
            gr.Warning(f"Your last form could not be brought back: {e}")
            return unchanged
        upload = self.handed_back(me, form)
        gone = form.get("data_file") and not upload
        hub = str(form.get("hub_id") or "")
        if upload:
            data = f"`{html.escape(Path(upload).name)}`"
        elif hub:
            data = f"`{html.escape(hub)}` (Hub)"
        else:
            data = "none chosen"
        note = restored_note(cfg, data)
        if gone:
            note += "\n\n⚠️ The file you had uploaded is no longer on the server: upload it again in 1 · Dataset."
        elif upload or hub:
            note += " (its preview is in 1 · Dataset)."
        gpu = form.get("gpu")
        preset = form.get("preset")
        return [*forms.config_to_values(cfg), upload,
                *(str(form.get(k) or ("train" if k == "split" else "")) for k in SOURCE_KEYS),
                gpu if gpu in GPUS else gr.skip(),
                # another preset than the page opens with: "custom", so that the preset does not fill the form again
                gr.skip() if preset == DEFAULT_PRESET else "custom",
                gr.Markdown(note, visible=True), gr.Button(visible=True)]

    @staticmethod
    def forget(me: Caller) -> None:
        """Start over: the kept form is dropped (the page reloads with the preset)."""
        me.space.forget_form()


def form_inputs(components: dict[str, forms.FormWidget]) -> list[forms.FormWidget]:
    """The form's widgets in forms.FORM_FIELDS order."""
    return [components[f.key] for f in forms.FORM_FIELDS]


__all__ = ["FormStore", "SOURCE_KEYS", "form_inputs", "restored_note"]
