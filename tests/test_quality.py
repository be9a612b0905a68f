"""The quality demonstration (slow: ~5 minutes on 2 CPU cores): the smollm2-135m-cpu preset learns a
task the base model cannot do, on held-out prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_finetuned_adapter_beats_the_base_model_on_heldout_prompts(tmp_path):
    done = subprocess.run([sys.executable, "bench/quality_task.py", "--runs", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["heldout_prompts"] == 40
    assert report["base_exact_match"] <= 0.1
    assert report["finetuned_exact_match"] >= 0.6
