"""Presets: short, commented YAML overrides of the config defaults in ``presets/**/*.yaml``.

>>> "smollm2-135m-cpu" in preset_names()
True
>>> load_preset("llama-2-7b-guanaco-t4").lora.r
64
"""

from __future__ import annotations

from pathlib import Path

from .config import ConfigError, RunConfig
from .config.reading import _load_yaml

PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"
DEFAULT_PRESET = "smollm2-135m-cpu"


def default_preset(method: str | None = None) -> str:
    """The preset a run starts from when none is named: the embedded model's preset of ``method`` (sft: the
    plain CPU preset).

    >>> default_preset(), default_preset("dpo")
    ('smollm2-135m-cpu', 'smollm2-135m-dpo')
    """
    if method and method != "sft" and f"smollm2-135m-{method}" in preset_paths():
        return f"smollm2-135m-{method}"
    return DEFAULT_PRESET


RECIPES = "recipes"  # presets/recipes/ holds data recipes (finetune/synth), not run presets


def preset_paths(root: Path = PRESETS_DIR) -> dict[str, Path]:
    """Every preset below ``root`` (recursively), by file stem; the data recipes in ``recipes/`` are not presets."""
    return {p.stem: p for p in sorted(root.rglob("*.yaml")) if p.relative_to(root).parts[0] != RECIPES}


def preset_names() -> list[str]:
    return list(preset_paths())


def load_preset(name_or_path: str) -> RunConfig:
    """The defaults with a preset's overrides applied (a name from presets/ or a YAML path)."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        paths = preset_paths()
        if name_or_path not in paths:
            raise ConfigError([f"preset '{name_or_path}' not found; choose one of: {', '.join(paths)}"])
        path = paths[name_or_path]
    return RunConfig.load(path)


def preset_description(path: Path) -> str:
    """The first comment line of a preset file: what it is for."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def intended_gpu(path: Path) -> str:
    """The hardware a preset is written for (its ``# hardware: NAME`` line, a name in memory.GPUS); "t4" when it
    names none."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# hardware:"):
            return line.split(":", 1)[1].split("#", 1)[0].strip()
    return "t4"


__all__ = ["DEFAULT_PRESET", "default_preset", "intended_gpu", "PRESETS_DIR", "load_preset", "preset_description", "preset_names", "preset_paths", "_load_yaml"]
