"""adapter.py: the adapter folder format (locate, base model, finetune's own files, refused files), no training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from finetune import adapter
from finetune.config import RunConfig
from finetune.models import ModelError


def fake_adapter(folder: Path, base: str = "org/base") -> Path:
    folder.mkdir(parents=True)
    (folder / adapter.CONFIG_FILE).write_text(json.dumps({"base_model_name_or_path": base, "r": 8}))
    (folder / "adapter_model.safetensors").write_bytes(b"")
    return folder


def test_adapter_folder_is_found_in_a_run_folder_or_as_itself(tmp_path):
    run = tmp_path / "run"
    folder = fake_adapter(run / adapter.ADAPTER_DIR)
    assert adapter.find_adapter_dir(run) == folder
    assert adapter.find_adapter_dir(folder) == folder
    assert adapter.find_adapter_dir(str(folder)) == folder
    assert adapter.find_adapter_dir(tmp_path / "missing") is None
    (tmp_path / "empty").mkdir()
    assert adapter.find_adapter_dir(tmp_path / "empty") is None
    assert adapter.is_adapter_dir(folder) and not adapter.is_adapter_dir(run)


def test_base_model_is_read_from_adapter_config(tmp_path):
    assert adapter.read_base_model(fake_adapter(tmp_path / "a", "HuggingFaceTB/SmolLM2-135M-Instruct")) == \
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert adapter.read_base_model(fake_adapter(tmp_path / "b", "")) == ""


def test_run_files_round_trip(tmp_path):
    folder = fake_adapter(tmp_path / "a")
    cfg = RunConfig()
    cfg.data.template, cfg.data.system_prompt = "chatml", "Be brief."
    adapter.write_run_files(folder, cfg, None, {"steps": 3, "final_loss": 1.5})
    info = adapter.read_template_info(folder)
    assert info is not None
    assert info["template"] == "chatml" and info["system_prompt"] == "Be brief."
    assert info["eos"] and info["stop_strings"]  # what inference stops on
    assert json.loads((folder / adapter.METRICS_FILE).read_text()) == {"steps": 3, "final_loss": 1.5}
    assert yaml.safe_load((folder / adapter.RUN_CONFIG_FILE).read_text())["data"]["template"] == "chatml"

    merged = tmp_path / "merged"
    merged.mkdir()
    adapter.copy_template_info(folder, merged)
    assert adapter.read_template_info(merged) == info


def test_model_template_records_no_special_tokens(tmp_path):
    cfg = RunConfig()
    cfg.data.template = "model"
    assert adapter.template_info(cfg, None) == {"template": "model", "system_prompt": cfg.data.system_prompt}


def test_missing_template_and_tokenizer(tmp_path):
    folder = fake_adapter(tmp_path / "a")
    assert adapter.read_template_info(folder) is None
    assert not adapter.has_tokenizer(folder)
    other = tmp_path / "other"
    other.mkdir()
    adapter.copy_template_info(folder, other)  # nothing to copy: no file appears
    assert list(other.iterdir()) == []
    (folder / adapter.TOKENIZER_FILE).write_text("{}")
    assert adapter.has_tokenizer(folder)


@pytest.mark.parametrize("name", ["training_args.bin", "pytorch_model.BIN", "x.pt", "opt.pth", "a.pkl", "a.pickle",
                                  "m.ckpt", "m.joblib", "w.npy", "w.npz"])
def test_pickles_are_unsafe(name):
    assert adapter.unsafe_file(name) == "a pickle file (can run code when loaded)"


@pytest.mark.parametrize("name", ["modeling.py", "x.pyc", "x.so", "run.sh", "a.exe", "lib.dylib"])
def test_code_is_unsafe(name):
    assert adapter.unsafe_file(name) == "a code file"


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "README.md", "tokenizer.model"])
def test_adapter_files_are_safe(name):
    assert adapter.unsafe_file(name) is None


def test_a_folder_with_pickles_or_code_is_refused_naming_each_file(tmp_path):
    folder = fake_adapter(tmp_path / "a")
    assert adapter.check_adapter_files(folder) == folder
    (folder / "training_args.bin").write_bytes(b"")
    (folder / "sub").mkdir()
    (folder / "sub" / "hook.py").write_text("")
    (folder / ".cache.pt").write_bytes(b"")  # hidden files (caches) are not part of the adapter
    with pytest.raises(ModelError) as e:
        adapter.check_adapter_files(folder, source="alice/x")
    msg = str(e.value)
    assert "the adapter alice/x contains" in msg
    assert "training_args.bin (a pickle file" in msg and "sub/hook.py (a code file)" in msg
    assert ".cache.pt" not in msg


def test_refuse_unsafe_files_accepts_a_clean_listing():
    adapter.refuse_unsafe_files("alice/x", ["adapter_config.json", "adapter_model.safetensors"])
    with pytest.raises(ModelError, match="x.pkl"):
        adapter.refuse_unsafe_files("alice/x", ["x.pkl"])

