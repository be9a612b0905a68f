"""bench/gpu_check.py --dry-run: the GPU check's code runs on CPU with tiny dimensions and writes every section
and key a GPU run writes, so the script is ready (and cannot rot) between GPU loans."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, cwd=str(tmp_path_factory.mktemp("cwd")), timeout=600)
    return proc, out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def test_dry_run_writes_every_section_with_the_keys_of_a_gpu_run(dry_run):
    check = load_check()
    proc, out = dry_run
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    # the sections and keys the issue names, the same for a GPU run (empty_report is where both start from)
    assert {"device", "throughput", "estimator", "resume", "inference", "flow"} <= set(report)
    template = check.empty_report(dry=False)
    assert set(report) == set(template)
    for name, keys in check.SECTION_KEYS.items():
        assert set(report[name]) == set(keys), name
    for side in ("recipe", "ours"):
        assert {"tokens_per_s", "peak_vram_gb", "loss"} <= set(report["throughput"][side])
    assert set(report["throughput"]["ratios"]) >= {"tokens_per_s", "peak_vram_gb", "loss"}
    assert report["device"]["dry_run"] is True and report["device"]["kind"] == "cpu"
    # every part ran and measured something
    for name in check.PARTS:
        assert report[name]["ok"] is True, (name, report[name]["error"])
    t = report["throughput"]
    for side in ("recipe", "ours", "ours_filled"):
        assert _number(t[side]["tokens_per_s"]) and _number(t[side]["peak_vram_gb"]) and _number(t[side]["loss"])
    assert t["recipe"]["real_tokens"] == t["ours"]["real_tokens"] == t["data"]["real_tokens_per_side"]  # equal work
    assert t["ratios"]["tokens_per_s"] == round(t["ours"]["tokens_per_s"] / t["recipe"]["tokens_per_s"], 3)
    assert t["recipe"]["settings"]["lora_r"] == 64 and t["recipe"]["settings"]["optim"] in ("paged_adamw_32bit", "adamw_torch")
    # the estimator: at least four configurations, r 16/64, two lengths, batch 1/4, predicted and measured
    e = report["estimator"]["configurations"]
    assert len(e) >= 4 and {c["lora_r"] for c in e} == {16, 64} and {c["batch_size"] for c in e} == {1, 4}
    assert len({c["seq_len"] for c in e}) == 2
    for c in e:
        assert set(c) == set(check.ESTIMATE_KEYS) and c["error"] is None
        assert all(_number(c[k]) for k in ("predicted_peak_gb", "measured_peak_gb", "predicted_step_s", "measured_step_s"))
    # chunked (ZeroGPU) training ends with the uninterrupted run's adapter
    r = report["resume"]
    assert r["calls"] >= 2 and r["tolerance"] == check.RESUME_ATOL and _number(r["max_abs_diff"])
    assert r["same_adapter"] is True, r
    i = report["inference"]
    assert i["new_tokens"] > 0 and _number(i["tokens_per_s"]) and i["adapter_switch_s"] < i["base_reload_s"]
    assert list(report["flow"]["steps"]) == ["format", "train", "generate", "merge", "export"]
    assert all(s["ok"] is True and _number(s["seconds"]) for s in report["flow"]["steps"].values())
    # the Markdown table
    md = (out / "gpu_check.md").read_text()
    assert "| **ours / recipe** |" in md and "dry run" in md and "| r16-len64-b1 |" in md


def test_the_resume_tolerance_is_the_cpu_tests():
    from test_train import SAME_ADAPTER_ATOL

    assert load_check().RESUME_ATOL == SAME_ADAPTER_ATOL


def test_only_and_out_are_options_and_a_bad_part_is_refused(tmp_path):
    check = load_check()
    with pytest.raises(SystemExit):
        check.main(["--dry-run", "--only", "nonsense", "--out", str(tmp_path)])
    assert not (tmp_path / "gpu_check.json").exists()


def test_the_sharded_part_says_why_it_skips_without_two_gpus(dry_run):
    _, out = dry_run
    sec = json.loads((out / "gpu_check.json").read_text())["sharded"]
    assert sec["ok"] is True and sec["gpus"] == 0
    assert sec["skipped"] == "needs 2 or more CUDA GPUs; this machine has 0 (dry run: CPU)"
    assert set(sec["fsdp"]) == set(sec["ddp"]) == {"per_gpu_peak_gb", "tokens_per_s", "final_loss"}
    assert "skipped: needs 2 or more CUDA GPUs" in (out / "gpu_check.md").read_text()
