"""The export acceptance on the real embedded SmolLM2-135M (slow: a real training run): train with the llama2
template, export with the command line, and llama.cpp answers the held-out prompts exactly like
`finetune generate --temperature 0`, for the merged model as GGUF (f16, q8_0; q4_0 at least 90%) and for the LoRA
GGUF applied to the base GGUF."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llamacpp import LlamaCpp

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "finetune" / "samples" / "city_year_heldout.jsonl"
PROMPTS = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines()[:10]]
MAX_NEW = 32

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "finetune", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True, timeout=3600)


@pytest.fixture(scope="module")
def run_and_answers(tmp_path_factory):
    work = tmp_path_factory.mktemp("real-export")
    run_dir = work / "run"
    cli("train", "--template", "llama2", "--max-steps", "30", "--run-dir", str(run_dir), "--quiet")
    rows = work / "prompts.jsonl"
    rows.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cli("generate", "--adapter", str(run_dir), "--prompts", str(rows), "--temperature", "0",
        "--max-new-tokens", str(MAX_NEW), "--out", str(work / "answers.jsonl"))
    answers = [json.loads(line)["answer"].strip() for line in (work / "answers.jsonl").read_text().splitlines()]
    return run_dir, answers, work


def llama_answers(gguf: Path, lora: Path | None = None) -> list[str]:
    with LlamaCpp(gguf, lora=lora) as cpp:
        return [cpp.chat([{"role": "user", "content": p}], max_tokens=MAX_NEW).strip() for p in PROMPTS]


@pytest.mark.parametrize("quant,least", [("q8_0", 1.0), ("f16", 1.0), ("q4_0", 0.9)])
def test_llama_cpp_answers_like_finetune_generate(run_and_answers, quant, least):
    run_dir, want, work = run_and_answers
    out = work / f"m-{quant}.gguf"
    cli("export", "--adapter", str(run_dir), "--format", "gguf", "--quant", quant, "--out", str(out))
    got = llama_answers(out)
    same = sum(a == b for a, b in zip(got, want))
    assert same >= least * len(want), list(zip(got, want))


def test_lora_gguf_on_the_base_gguf_answers_like_finetune_generate(run_and_answers):
    run_dir, want, work = run_and_answers
    out = work / "lora.gguf"
    cli("export", "--adapter", str(run_dir), "--format", "lora-gguf", "--quant", "f16", "--with-base", "--out", str(out))
    assert llama_answers(work / "lora-base.gguf", lora=out) == want
