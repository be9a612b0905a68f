"""Hyperparameters tab: presets, base model, LoRA, quantization, training settings, the config as YAML."""

from __future__ import annotations

import gradio as gr

from ..config import RunConfig
from ..presets import DEFAULT_PRESET, load_preset, preset_description, preset_paths
from . import forms
from .common import Api, user_errors


def create_hparams_tab(api: Api, components: dict):
    """Creates the model/quantization/LoRA/training widgets into ``components`` (key -> widget)."""
    default = load_preset(DEFAULT_PRESET)
    paths = preset_paths()
    with gr.Row():
        preset = gr.Dropdown(choices=list(paths), value=DEFAULT_PRESET, label="Preset", scale=2, elem_id="preset",
                             info="A starting point; every value below can be changed")
        preset_info = gr.Markdown(preset_description(paths[DEFAULT_PRESET]))
    sections = (("Model", forms.MODEL_FIELDS), ("Quantization", forms.QUANT_FIELDS),
                ("LoRA", forms.LORA_FIELDS), ("Training", forms.TRAIN_FIELDS))
    for title, fields in sections:
        with gr.Accordion(title, open=title in ("Model", "LoRA")):
            with gr.Row(equal_height=False):
                for f in fields:
                    with gr.Column(min_width=220):
                        components[f.key] = forms.make_component(f, forms.get_value(default, f.key))
    verdict = gr.Markdown(elem_id="fit-verdict")
    with gr.Accordion("Config (YAML)", open=False):
        config_code = gr.Code(default.to_yaml(), language="yaml", label="config.yaml", interactive=False,
                              elem_id="config-yaml")
        with gr.Row():
            download = gr.Button("⬇ Download config")
            yaml_file = gr.File(label="config.yaml", interactive=False)
            upload = gr.UploadButton("⬆ Load a config YAML", file_types=[".yaml", ".yml"])
    return {"preset": preset, "preset_info": preset_info, "config_code": config_code, "verdict": verdict,
            "download": download, "yaml_file": yaml_file, "upload": upload}


def wire_config(api: Api, components: dict, hp: dict, extra_inputs: list, extra_to_config, estimate=None):
    """Keep the YAML view (and the fit verdict) in sync with every widget; presets and uploads fill the form."""
    keys = [f.key for f in forms.FORM_FIELDS]
    widgets = [components[k] for k in keys]
    n = len(widgets)

    def build(*values) -> RunConfig:
        return extra_to_config(forms.values_to_config(RunConfig(), list(values[:n])), *values[n:])

    def sync(*values):
        try:
            cfg = build(*values)
        except Exception as e:  # noqa: BLE001 - shown next to the form, the YAML keeps its last good value
            return gr.Code(), f"⚠️ {e}"
        text = estimate(cfg) if estimate else ""
        return cfg.to_yaml(), text

    for w in widgets + list(extra_inputs):
        w.change(sync, widgets + list(extra_inputs), [hp["config_code"], hp["verdict"]], api_visibility="private",
                 show_progress="hidden", trigger_mode="always_last")

    @user_errors
    def apply_preset(name: str):
        cfg = load_preset(name)
        return [*forms.config_to_values(cfg), preset_description(preset_paths()[name])]

    hp["preset"].change(apply_preset, hp["preset"], widgets + [hp["preset_info"]], api_visibility="private")

    @user_errors
    def from_yaml(file):
        cfg = RunConfig.load(file)
        gr.Info("config loaded into the form")
        return forms.config_to_values(cfg)

    hp["upload"].upload(from_yaml, hp["upload"], widgets, api_visibility="private")

    def save_yaml(text: str):
        out = api.downloads / "configs"
        out.mkdir(parents=True, exist_ok=True)
        import hashlib

        path = out / f"config-{hashlib.sha256(text.encode()).hexdigest()[:10]}.yaml"
        path.write_text(text, encoding="utf-8")
        return str(path)

    hp["download"].click(save_yaml, hp["config_code"], hp["yaml_file"], api_visibility="private")
    return sync
