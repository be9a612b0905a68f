"""Hyperparameters tab: presets, base model, LoRA, quantization, training settings, the config as YAML."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, NamedTuple, TypedDict

import gradio as gr
import pandas as pd  # loaded by gradio already; event functions' hints must resolve at runtime

from ..config import RunConfig
from ..durations import rough
from ..errors import UserError, app_message
from ..presets import DEFAULT_PRESET, intended_gpu, load_preset, preset_description, preset_paths
from . import forms
from .common import Api, config_warnings_markdown, page_errors, user_errors
from .forms import FormWidget

if TYPE_CHECKING:  # for annotations only: the estimator loads when a verdict is first shown
    from ..memory import MemoryEstimate


class HparamsWidgets(TypedDict):
    """The widgets of the tab besides the config fields, by name."""

    preset: gr.Dropdown
    preset_info: gr.Markdown
    preset_switch: gr.Button  # takes the preset's Dataset-tab values that were kept as the user's
    preset_data: gr.State  # the Dataset-tab values (key -> value) the last preset set or suggested
    preset_suggests: gr.State  # the preset's Dataset-tab values not taken, the user's being kept (key -> value)
    method_info: gr.Markdown
    config_code: gr.Code
    verdict: gr.Markdown
    gpu: gr.Dropdown
    auto: gr.Button
    breakdown: gr.Dataframe
    download: gr.Button
    yaml_file: gr.File
    upload: gr.UploadButton


# What the sync handler shows: the YAML (or gr.Code() to keep it), the verdict markdown and the breakdown table.
SyncOutput = tuple["gr.Code | str", str, "gr.Dataframe | pd.DataFrame"]


def create_hparams_tab(api: Api, components: dict[str, FormWidget]) -> HparamsWidgets:
    """Creates the model/quantization/LoRA/training widgets into ``components`` (key -> widget)."""
    default = load_preset(DEFAULT_PRESET)
    paths = preset_paths()
    with gr.Row():
        preset = gr.Dropdown(choices=[*paths, CUSTOM], value=DEFAULT_PRESET, label="Preset", scale=2, elem_id="preset",
                             info="A starting point; every value below can be changed")
        with gr.Column(scale=3):
            preset_info = gr.Markdown(preset_description(paths[DEFAULT_PRESET]), elem_id="preset-info")
            preset_switch = gr.Button("Use the preset's dataset settings", visible=False, size="sm",
                                      elem_id="preset-data-switch")
    # a shared server never runs a model repo's code (service.check_config_code): the box says so, off
    locked = {"model.trust_remote_code": "Off on this shared app: a model repo's own code never runs on the server "
              "(train such a model with the command line on your own machine)"} if api.workspace.multi_user else {}
    sections = (("Model", forms.MODEL_FIELDS), ("Quantization", forms.QUANT_FIELDS),
                ("LoRA", forms.LORA_FIELDS), ("Training", forms.TRAIN_FIELDS), ("Several GPUs", forms.SCALE_FIELDS))
    method = default.training.method
    with gr.Accordion("Method", open=True, elem_id="method-section"):
        method_info = gr.Markdown(method_markdown(method), elem_id="method-info")
        with gr.Row(equal_height=False):
            for f, shown in zip(forms.METHOD_FIELDS + forms.REWARD_FIELDS, forms.shown_for(method)):
                with gr.Column(min_width=220):
                    components[f.key] = forms.make_component(f, forms.get_value(default, f.key), shown)
    for title, fields in sections:
        with gr.Accordion(title, open=title in ("Model", "LoRA")):
            with gr.Row(equal_height=False):
                for f in fields:
                    with gr.Column(min_width=220):
                        components[f.key] = forms.make_component(f, forms.get_value(default, f.key),
                                                                 locked=locked.get(f.key, ""))
    model = components["model.id"]
    if hub_search_allowed(api) and isinstance(model, gr.Dropdown):  # the list grows with the Hub's matches as one types
        model.key_up(page_errors(search_hub_models), None, model, api_visibility="private", show_progress="hidden",
                     trigger_mode="always_last")
    with gr.Row():
        from ..memory import GPUS

        gpu = gr.Dropdown(choices=list(GPUS), value=intended_gpu(paths[DEFAULT_PRESET]), label="Target GPU", scale=2,
                          elem_id="gpu", info="Where the run will train: the verdict below says whether it fits, "
                          "how long it takes and what it costs")
        auto = gr.Button("✨ Auto-configure for my GPU", scale=1, elem_id="auto-configure")
    verdict = gr.Markdown(elem_id="fit-verdict")
    breakdown = gr.Dataframe(headers=["part", "GB"], label="Peak memory breakdown", interactive=False,
                             elem_id="fit-breakdown")
    with gr.Accordion("Config (YAML)", open=False):
        config_code = gr.Code(default.to_yaml(), language="yaml", label="config.yaml", interactive=False,
                              elem_id="config-yaml")
        with gr.Row():
            download = gr.Button("⬇ Download config")
            yaml_file = gr.File(label="config.yaml", interactive=False)
            upload = gr.UploadButton("⬆ Load a config YAML", file_types=[".yaml", ".yml"])
    return {"preset": preset, "preset_info": preset_info, "preset_switch": preset_switch,
            "preset_data": gr.State(data_values(default)), "preset_suggests": gr.State({}),
            "method_info": method_info, "config_code": config_code,
            "verdict": verdict,
            "gpu": gpu, "auto": auto, "breakdown": breakdown,
            "download": download, "yaml_file": yaml_file, "upload": upload}


def hub_search_allowed(api: Api) -> bool:
    """The base-model picker searches the Hub as one types only on one's own machine, online: on a shared server a
    visitor's typing would have the server call the Hub for them at every key (a public Space is hostile ground:
    DESIGN.md), and offline there is no Hub to ask (the tests run offline)."""
    from huggingface_hub import constants

    return not api.workspace.multi_user and not constants.HF_HUB_OFFLINE


def search_hub_models(key: gr.KeyUpData) -> gr.Dropdown:
    """The picker's models, then the Hub's text-generation models whose id holds what was typed (most downloaded
    first; anonymous, never the server's token)."""
    from ..hub import search_models
    from ..models import model_choices

    offered = model_choices()
    known = {model_id for _, model_id in offered}
    found = [(m, m) for m in search_models(str(key.input_value or "")) if m not in known]
    return gr.Dropdown(choices=offered + found)


CUSTOM = "custom"  # the preset shown once a loaded config has changed the form

DATA_KEYS = tuple(f.key for f in forms.DATA_FIELDS)  # the fields of the Dataset tab that a preset may set
RUN_KEYS = tuple(f.key for f in forms.RUN_FIELDS)  # the run's own fields (its name): no preset sets them


def data_values(cfg: RunConfig) -> dict[str, Any]:
    """The Dataset tab's form values of ``cfg`` (key -> widget value)."""
    return {k: forms.get_value(cfg, k) for k in DATA_KEYS}


def _same(a: Any, b: Any) -> bool:
    """Two widget values are the same choice (an empty text is None; 0.1 from a slider is the YAML's 0.1)."""
    if a in (None, "") and b in (None, ""):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return bool(a == b)


class PresetData(NamedTuple):
    """What a preset does to the Dataset tab (:func:`preset_data_choice`)."""

    values: dict[str, Any]  # the value each Dataset-tab field gets
    kept: list[tuple[str, Any, Any]]  # (key, the user's value, kept; the preset's, not taken)
    changed: list[tuple[str, Any, Any]]  # (key, before, the preset's value: taken, the user had not chosen)


def preset_data_choice(current: dict[str, Any], baseline: dict[str, Any], proposed: dict[str, Any]) -> PresetData:
    """A preset's Dataset-tab values laid over the form: a field still at what the last preset set (``baseline``:
    the user never chose it) takes the preset's value; one the user changed keeps the user's choice.

    >>> r = preset_data_choice({"data.template": "llama2"}, {"data.template": "model"}, {"data.template": "chatml"})
    >>> r.values, r.kept
    ({'data.template': 'llama2'}, [('data.template', 'llama2', 'chatml')])
    """
    values = dict(current)
    kept: list[tuple[str, Any, Any]] = []
    changed: list[tuple[str, Any, Any]] = []
    for key, new in proposed.items():
        old = current.get(key)
        if _same(old, new):
            continue
        if key in baseline and not _same(old, baseline[key]):  # the user's choice: kept, the preset's suggested
            kept.append((key, old, new))
        else:
            values[key] = new
            changed.append((key, old, new))
    return PresetData(values, kept, changed)


def _label(key: str) -> str:
    return next(f.label for f in forms.FORM_FIELDS if f.key == key)


def _shown(value: Any) -> str:
    text = str(value)
    return f"`{text if len(text) <= 60 else text[:59] + '…'}`" if value not in (None, "") else "(empty)"


def preset_data_note(result: PresetData) -> str:
    """The preset's effect on the Dataset tab, said next to the preset (empty when it has none)."""
    lines = []
    if result.kept:
        lines.append("**1 · Dataset: kept your choices** (the preset suggests others; the button below takes them):\n"
                     + "\n".join(f"- {_label(k)}: kept your {_shown(mine)}, the preset suggests {_shown(theirs)}"
                                  for k, mine, theirs in result.kept))
    if result.changed:
        lines.append("**1 · Dataset: changed by the preset**:\n"
                     + "\n".join(f"- {_label(k)}: {_shown(old)} → {_shown(new)}" for k, old, new in result.changed))
    return "\n\n".join(lines)


def switch_label(suggests: dict[str, Any]) -> str:
    """The button that takes the preset's Dataset-tab values: named after the one value, if one."""
    if len(suggests) == 1:
        (key, value), = suggests.items()
        return f"Use the preset's {_label(key).lower()}: {_shown(value).strip('`')}"
    return "Use the preset's dataset settings"


def method_markdown(method: str) -> str:
    """What the picked method learns from and the data it needs (shown above its fields)."""
    from ..methods import get

    return f"**{method.upper()}**: {get(method).description}. Data: {get(method).data}."


VERDICT_ICON = {"fits": "✅", "tight": "⚠️", "does not fit": "❌"}


def verdict_markdown(est: MemoryEstimate) -> str:
    lines = [f"### {VERDICT_ICON.get(est.verdict, '')} {est.verdict.capitalize()} on {est.gpu.name}: "
             f"peak {est.peak_gb:.1f} GB of {est.gpu.nominal_gb:.0f} GB", est.explanation]
    lines += [f"- {s}" for s in est.suggestions[:3]]
    text = "\n\n".join(lines[:2]) + ("\n\n" + "\n".join(lines[2:]) if lines[2:] else "")
    return text + f"\n\n*{est.source}*"  # measured on this GPU, or an estimate


def estimate_view(cfg: RunConfig, gpu: str) -> tuple[str, pd.DataFrame]:
    """(verdict markdown, breakdown table) for the form's config on a GPU; errors become the verdict."""
    from ..memory import estimate

    try:
        est = estimate(cfg, gpu=gpu)
    except UserError as e:  # an unknown model is a hint here, not a failure (a bug is not: it propagates)
        return f"Cannot estimate memory: {app_message(e)}", pd.DataFrame(columns=["part", "GB"])
    rows = [{"part": k.replace("_", " "), "GB": round(v, 2)} for k, v in est.breakdown.items()]
    return verdict_markdown(est) + "\n\n" + time_cost_markdown(cfg, gpu), pd.DataFrame(rows, columns=["part", "GB"])


def time_cost_markdown(cfg: RunConfig, gpu_name: str) -> str:
    """How long the run takes on ``gpu_name`` and what it costs there (Jobs price, ZeroGPU quota, or nothing on
    this machine), next to the fit verdict."""
    from .. import memory

    t = cfg.training
    if t.max_steps <= 0:
        return "⏱ Time and cost: set training.max_steps for an estimate (an epochs-based run depends on the data)."
    gpu = memory.get_gpu(gpu_name)
    setup = memory.setup_for(cfg, gpu)  # on several GPUs (training.distributed), each process trains its batches
    tokens = t.max_steps * t.batch_size * t.grad_accum * t.max_length * setup.gpus  # every example at max_length
    est = memory.estimate_time(memory.spec_for_config(cfg), setup, gpu, tokens)
    took = f"⏱ **about {rough(est.seconds)}** for {t.max_steps} steps (every example filling max_length: at most)"
    if gpu.is_cpu:
        cost = "no charge: it trains on this machine"
    elif est.zerogpu_quota_minutes is not None:
        days = ", ".join(f"{k} {v:g}" for k, v in (est.zerogpu_days or {}).items())
        cost = f"{est.zerogpu_quota_minutes:.1f} min of ZeroGPU quota (days of daily quota: {days})"
    elif est.usd is not None:
        flavor = est.flavor or f"{setup.gpus} x {gpu.hf_flavor}"  # the flavor of the run's GPU count
        cost = f"**${est.usd:.2f}** on Hugging Face Jobs `{flavor}` ({memory.prices_source()})"
    else:
        cost = "no listed Hugging Face Jobs price for this GPU"
    return f"{took} · 💲 {cost}" + layouts_markdown(cfg, tokens)


def layouts_markdown(cfg: RunConfig, tokens: int) -> str:
    """The cheapest Hugging Face Jobs flavor the run fits, and the cheapest of each layout ("1 GPU", "N GPUs data
    parallel", "N GPUs sharded") with its memory per GPU and cost (memory.layout_options)."""
    from .. import memory

    options = [o for o in memory.layout_options(cfg, tokens) if o.fits and o.usd is not None]
    if not options:
        return "\n\n🧮 No Hugging Face Jobs flavor fits this run, even sharded over 8 GPUs."
    best: dict[str, memory.LayoutOption] = {}
    for o in options:  # cheapest first: the first of each kind
        best.setdefault(o.strategy, o)
    kinds = " · ".join(f"{o.label} `{o.flavor}`: {o.peak_gb:.1f} GB per GPU, ${o.usd:.2f}" for o in best.values())
    top = options[0]
    return f"\n\n🧮 Cheapest Jobs flavor that fits: **`{top.flavor}`** ({top.label}). Layouts: {kinds}"


def auto_configure_form(cfg: RunConfig, gpu: str) -> tuple[list[Any], str]:
    """The form values of ``cfg`` auto-configured for ``gpu`` and the reason for the choice.

    Raises :class:`finetune.memory.EstimateError` (a message for the user) when no setup fits ``gpu``.
    """
    from ..memory import configure_for

    configured, plan = configure_for(cfg, gpu)
    return forms.config_to_values(configured), plan.reason


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfigEvents:
    """The form's events: the YAML view and fit verdict kept in sync, presets, the auto-configure button, a loaded
    or saved config. ``extra_to_config`` lays the values after the form's (the Dataset tab's source) over a
    config."""

    def __init__(self, api: Api, extra_to_config: Callable[Concatenate[RunConfig, ...], RunConfig]) -> None:
        self.api, self.extra_to_config = api, extra_to_config
        self.keys = [f.key for f in forms.FORM_FIELDS]

    def build(self, *values: Any) -> RunConfig:
        """The config of the form's values, then the extra inputs' (the last value is the GPU)."""
        n = len(self.keys)
        return self.extra_to_config(forms.values_to_config(RunConfig(), list(values[:n])), *values[n:-1])

    def sync(self, *values: Any) -> SyncOutput:
        try:
            cfg = self.build(*values)
        except UserError as e:  # shown next to the form, the YAML keeps its last good value
            return gr.Code(), f"⚠️ {app_message(e)}", gr.Dataframe()
        verdict, table = estimate_view(cfg, values[-1])
        return cfg.to_yaml(), config_warnings_markdown(cfg) + verdict, table

    def auto_configure(self, *values: Any) -> list[Any]:
        form, reason = auto_configure_form(self.build(*values), values[-1])
        gr.Info(reason)
        return form

    def apply_preset(self, name: str, baseline: dict[str, Any], *data: Any) -> list[Any]:
        """Fill the form with a preset; a Dataset-tab choice of the user's is kept, and the note says so (and what
        the preset changed there)."""
        keys = self.keys
        if name == CUSTOM:  # set by a loaded config: the form is already what it should be
            return [gr.skip()] * (len(keys) + 3) + [{}, gr.Button(visible=False)]
        cfg = load_preset(name)
        path = preset_paths()[name]
        values = forms.config_to_values(cfg)
        proposed = data_values(cfg)
        result = preset_data_choice(dict(zip(DATA_KEYS, data)), baseline, proposed)
        for i, key in enumerate(keys):
            if key in result.values:
                values[i] = result.values[key]
            elif key in RUN_KEYS:  # a preset names no run: the name typed stays
                values[i] = gr.skip()
        note = "\n\n".join(t for t in (preset_description(path), preset_data_note(result)) if t)
        suggests = {k: theirs for k, _, theirs in result.kept}
        return [*values, note, intended_gpu(path), proposed, suggests,
                gr.Button(switch_label(suggests), visible=bool(suggests))]


    @staticmethod
    def take_suggested(suggests: dict[str, Any], name: str) -> list[Any]:
        """The switch: the preset's Dataset-tab values replace the user's that were kept."""
        paths = preset_paths()
        taken = "**1 · Dataset: took the preset's**:\n" + "\n".join(f"- {_label(k)}: {_shown(v)}"
                                                                      for k, v in suggests.items())
        note = f"{preset_description(paths[name])}\n\n{taken}" if name in paths else taken
        return [*(suggests[k] if k in suggests else gr.skip() for k in DATA_KEYS), note, {},
                gr.Button(visible=False)]


    @staticmethod
    def show_method(method: str) -> list[Any]:  # only the picked method's fields
        return [method_markdown(method), *(gr.update(visible=v) for v in forms.shown_for(method))]

    def from_yaml(self, file: str, *values: Any) -> list[Any]:  # the upload's file path, then the form
        """Lay the uploaded (possibly partial) config over the form: what it leaves out keeps its value; the
        fields it changed are listed, and the preset reads "custom"."""
        from pathlib import Path

        from ..config import ConfigError, changed_fields, merge_yaml

        name = Path(file).name  # never the server's temporary path
        try:
            text = Path(file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"cannot read the file ({e.__class__.__name__}); save it as UTF-8 text"], name) from None
        current = self.build(*values)
        merged = merge_yaml(current, text, name)
        shown = {f.key for f in forms.FORM_FIELDS}
        changed = [c for c in changed_fields(current, merged) if c[0] in shown]
        if changed:
            lines = "\n".join(f"- `{k}`: {_short(a)} → {_short(b)}" for k, a, b in changed)
            note = f"**Loaded {name}**: {len(changed)} field(s) changed, the rest of the form is kept:\n{lines}"
        else:
            note = f"**Loaded {name}**: it changes nothing in the form."
        left = [k for k, _, _ in changed_fields(current, merged) if k not in shown]  # the form cannot hold them
        if left:
            why = {"rewards.module": "reward code runs only from the command line, on your own machine"}
            note += ("\n\n⚠️ **Not taken** (the app has no field for them; use the command line with this file):\n"
                     + "\n".join(f"- `{k}`" + (f": {why[k]}" if k in why else "") for k in left))
        gr.Info(f"{name}: {len(changed)} field(s) changed")
        return [*forms.config_to_values(merged), CUSTOM if changed else gr.skip(), note]


    def save_yaml(self, text: str) -> str:
        out = self.api.downloads / "configs"
        out.mkdir(parents=True, exist_ok=True)
        import hashlib

        path = out / f"config-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
        path.write_text(text, encoding="utf-8")
        return str(path)


def estimate_memory(config_yaml: str, gpu: str = "t4") -> dict[str, Any]:
    """Peak training memory of a config on a GPU: peak_gb, breakdown (name -> GB), fits, verdict, gpu,
    gpu_gb, explanation and suggestions."""
    from ..memory import estimate

    return estimate(RunConfig.from_yaml(config_yaml or "", source="config"), gpu=gpu).to_dict()


def wire_config(api: Api, components: dict[str, FormWidget], hp: HparamsWidgets,
                extra_inputs: Sequence[FormWidget | gr.File],
                extra_to_config: Callable[Concatenate[RunConfig, ...], RunConfig],
                on_load: list[tuple[Callable[..., Any], list[Any], list[Any]]] | None = None) -> Callable[..., SyncOutput]:
    """Keep the YAML view and the fit verdict in sync with every widget; presets, uploads and the
    auto-configure button fill the form. ``on_load`` receives what the page runs when it opens (the verdict)."""
    ev = ConfigEvents(api, extra_to_config)
    widgets = [components[k] for k in ev.keys]
    sync = page_errors(ev.sync)
    inputs = widgets + list(extra_inputs) + [hp["gpu"]]
    for w in inputs:
        w.change(sync, inputs, [hp["config_code"], hp["verdict"], hp["breakdown"]], api_visibility="private",
                 show_progress="hidden", trigger_mode="always_last")
    if on_load is not None:  # the verdict, time and cost are there when the page opens
        on_load.append((sync, inputs, [hp["config_code"], hp["verdict"], hp["breakdown"]]))
    hp["auto"].click(page_errors(ev.auto_configure), inputs, widgets, api_visibility="private")
    estimate_json = gr.JSON(visible=False)
    gr.Button(visible=False).click(user_errors(estimate_memory), [hp["config_code"], hp["gpu"]], estimate_json,
                                   api_name="estimate_memory")
    data_widgets = [components[k] for k in DATA_KEYS]
    hp["preset"].change(page_errors(ev.apply_preset), [hp["preset"], hp["preset_data"], *data_widgets],
                        [*widgets, hp["preset_info"], hp["gpu"], hp["preset_data"], hp["preset_suggests"],
                         hp["preset_switch"]], api_visibility="private")
    hp["preset_switch"].click(page_errors(ev.take_suggested), [hp["preset_suggests"], hp["preset"]],
                              [*data_widgets, hp["preset_info"], hp["preset_suggests"], hp["preset_switch"]],
                              api_visibility="private")
    method_widgets = [components[f.key] for f in forms.METHOD_FIELDS + forms.REWARD_FIELDS]
    components["training.method"].change(page_errors(ev.show_method), components["training.method"],
                                         [hp["method_info"], *method_widgets], api_visibility="private")
    hp["upload"].upload(page_errors(ev.from_yaml), [hp["upload"], *inputs], widgets + [hp["preset"], hp["preset_info"]],
                        api_visibility="private")
    hp["download"].click(ev.save_yaml, hp["config_code"], hp["yaml_file"], api_visibility="private")
    return sync
