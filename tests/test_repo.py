"""Repository rules: the README's commands are the ones CI runs, layering, presets."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from finetune.config import ConfigError, RunConfig, validate
from finetune.presets import PRESETS_DIR, load_preset, preset_paths

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", setup, re.S)


def test_readme_has_two_setup_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert len(cmds) == 2
    app_cmd, test_cmd = cmds
    assert app_cmd.endswith("python app.py") and "requirements.txt" in app_cmd
    assert test_cmd.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines()


def test_requirements_pin_torch():
    reqs = (ROOT / "requirements.txt").read_text().splitlines()
    assert "torch==2.13.0" in reqs


def test_no_gradio_outside_ui_and_app():
    offenders = []
    for path in (ROOT / "finetune").rglob("*.py"):
        if "ui" in path.relative_to(ROOT / "finetune").parts[:1]:
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n == "gradio" or n.startswith("gradio.") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_every_preset_found_recursively_loads_and_validates(tmp_path):
    paths = preset_paths()
    assert {"smollm2-135m-cpu", "llama-2-7b-guanaco-t4", "falcon-7b-qlora", "mistral-7b-qlora",
            "llama-3.1-8b-qlora", "qwen2.5-7b-qlora"} <= set(paths)
    assert set(paths) == {p.stem for p in PRESETS_DIR.rglob("*.yaml") if "recipes" not in p.parts}
    for name, path in paths.items():
        cfg = validate(load_preset(name), source=str(path))
        assert path.read_text().lstrip().startswith("#"), f"{name}: first line should say what it is for"
        assert RunConfig.from_yaml(cfg.to_yaml()) == cfg
    # the glob really is recursive
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    (nested / "deep.yaml").write_text("# deep\nlora:\n  r: 8\n")
    assert "deep" in preset_paths(tmp_path)


def test_classic_tutorial_preset_matches_the_recipe():
    cfg = load_preset("llama-2-7b-guanaco-t4")
    assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (64, 16, 0.1)
    assert cfg.training.learning_rate == 2e-4 and cfg.training.epochs == 1
    assert cfg.quantization.load_in == "4bit" and cfg.quantization.quant_type == "nf4"
    assert cfg.data.template == "llama2"


def test_invalid_config_reports_every_problem_at_once(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lora:\n  r: 0\n  alpha: -1\n  rank: 3\ntraining:\n  learning_rate: 0\n  batch_size: two\n"
                   "data:\n  template: nope\n")
    with pytest.raises(ConfigError) as err:
        RunConfig.load(bad)
    assert any("lora.rank: unknown key; did you mean 'lora.r'" in p for p in err.value.problems)
    assert any("training.batch_size: expected a whole number" in p for p in err.value.problems)
    bad.write_text("lora:\n  r: 0\n  alpha: -1\ntraining:\n  learning_rate: 0\ndata:\n  template: nope\n")
    with pytest.raises(ConfigError) as err:
        validate(RunConfig.load(bad), model_max_length=512)
    probs = err.value.problems
    assert len(probs) == 5, probs
    assert "training.max_length 1024 exceeds the model's 512; lower it to 512" in probs
    assert any(p.startswith("lora.r must be >= 1") for p in probs)
    assert any(p.startswith("lora.alpha must be > 0") for p in probs)
    assert any(p.startswith("training.learning_rate must be > 0") for p in probs)
    assert any(p.startswith("data.template 'nope' is unknown") for p in probs)


def test_malformed_yaml_names_the_line(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("lora:\n  r: [1, 2\n")
    with pytest.raises(ConfigError, match=r"(?s)broken.yaml.*line \d+"):
        RunConfig.load(bad)


def test_every_preset_names_the_hardware_its_verdict_is_shown_for():
    """A preset without a ``# hardware:`` line would show its fit verdict, time and cost for a T4 (the fallback):
    a CPU preset read as a GPU run."""
    from finetune.memory import GPUS
    from finetune.presets import intended_gpu

    for name, path in preset_paths().items():
        named = [line for line in path.read_text().splitlines() if line.startswith("# hardware:")]
        assert len(named) == 1, f"{name}: one '# hardware: NAME' line"
        assert intended_gpu(path) in GPUS, name
        if load_preset(name).quantization.load_in == "none" and not load_preset(name).model.id:
            assert intended_gpu(path) == "cpu", f"{name}: the embedded model unquantised is a CPU preset"
