"""The acceptance of evaluation on the real embedded model (slow: ~8-12 minutes on 2 CPU cores): after training the
smollm2-135m-cpu preset on the bundled sample, `finetune eval` on the bundled held-out file reports the share of
`finetune generate --temperature 0` answers that match the references; the base model's is lower; every kept
checkpoint is listed with its metrics, the same figures the run scored with the training model at each save."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "finetune" / "samples" / "city_year_heldout.jsonl"


def matches(answer: str, reference: str) -> bool:
    def norm(s: str) -> str:
        return " ".join(s.lower().split()).rstrip(string.punctuation + " ")
    return norm(answer) == norm(reference)


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=3600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_eval_on_the_bundled_heldout_file_after_training_the_embedded_model(tmp_path):
    from finetune import runs

    # the held-out file is also the run's test set: each checkpoint is scored as it is saved
    cli("train", "presets/smollm2-135m-cpu.yaml", "--runs-root", str(tmp_path / "runs"), "--quiet",
        "--set", f"data.test_source={HELDOUT}", "--set", "data.test_max_new_tokens=32")
    [run_dir] = [d for d in (tmp_path / "runs").iterdir() if d.is_dir()]
    during = json.loads((run_dir / runs.EVAL_REPORT).read_text())
    out = tmp_path / "report.json"
    cli("eval", "--adapter", str(run_dir), "--data", str(HELDOUT), "--checkpoints", "all",
        "--max-new-tokens", "32", "--out", str(out))
    report = json.loads(out.read_text())

    prompts = tmp_path / "prompts.jsonl"
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    prompts.write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in rows))
    answers_file = tmp_path / "answers.jsonl"
    cli("generate", "--adapter", str(run_dir), "--prompts", str(prompts), "--temperature", "0",
        "--max-new-tokens", "32", "--out", str(answers_file))
    answers = [json.loads(line)["answer"] for line in answers_file.read_text().splitlines()]
    share = sum(matches(a, r["completion"]) for a, r in zip(answers, rows)) / len(rows)

    figures = ("exact_match", "contains", "f1", "rouge_l", "loss", "n")
    print(json.dumps({k: report[k] for k in figures}), json.dumps({k: report["base"][k] for k in figures}),
          [(c["step"], c["exact_match"], round(c["loss"], 4)) for c in report["checkpoints"]],
          "during training:", [(c["step"], c["exact_match"], round(c["loss"], 4)) for c in during["checkpoints"]])
    assert report["n"] == 40
    assert report["exact_match"] == pytest.approx(share)
    assert report["exact_match"] >= 0.5
    assert report["base"]["exact_match"] < report["exact_match"]
    assert report["base"]["loss"] > report["loss"]
    kept = [int(p.name.rsplit("-", 1)[1]) for p in runs.checkpoints(run_dir)]
    assert kept and [c["step"] for c in report["checkpoints"]] == kept
    for c in report["checkpoints"]:
        assert all(isinstance(c[k], float) for k in ("exact_match", "contains", "f1", "rouge_l", "loss"))
    # the figures scored during training (the training model itself) are `finetune eval`'s, step by step
    assert [c["step"] for c in during["checkpoints"]] == kept
    for mine, theirs in zip(during["checkpoints"], report["checkpoints"]):
        assert mine["answers"] == theirs["answers"] and mine["exact_match"] == theirs["exact_match"]
        assert mine["loss"] == pytest.approx(theirs["loss"], rel=1e-4)
    assert during["base"]["exact_match"] == report["base"]["exact_match"]
    assert during["exact_match"] == report["exact_match"]
