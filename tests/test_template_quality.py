"""Acceptance of the trained template everywhere, on the quality task (slow: one ~2-minute training on CPU).

The smollm2-135m-cpu preset learns bench/quality_task.py's task with the ``llama2`` template and a system prompt
(so the trained prompt is not SmolLM2's own ChatML and the default system prompt matters). Then its adapter
answers the 40 held-out prompts as well as ``finetune generate`` (``inference.generate_batch``):

- through plain transformers + peft, with no finetune import: the adapter's own tokenizer and chat template;
- through the app's ``/chat`` endpoint, with and without passing ``system_prompt``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "finetune" / "samples"
SYSTEM = "You extract facts. Reply with one JSON object and nothing else."
MAX_NEW = 32


def _quality_task():
    spec = importlib.util.spec_from_file_location("quality_task", ROOT / "bench" / "quality_task.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


exact_match_rate = _quality_task().exact_match_rate

HELDOUT = [json.loads(line) for line in (SAMPLES / "city_year_heldout.jsonl").read_text(encoding="utf-8").splitlines()]
PROMPTS = [r["prompt"] for r in HELDOUT]
EXPECTED = [r["completion"] for r in HELDOUT]

# Plain transformers + peft, as a user of another tool would load the adapter: argv = adapter folder, base model.
PLAIN = r"""
import json, sys
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

adapter, base, prompts = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
tok = AutoTokenizer.from_pretrained(adapter)
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).eval()
texts, answers = [], []
for p in prompts:
    text = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
    enc = tok(text, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=%d, do_sample=False, pad_token_id=tok.pad_token_id)
    texts.append(text)
    answers.append(tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
assert not any(m == "finetune" or m.startswith("finetune.") for m in sys.modules), "finetune was imported"
print(json.dumps({"texts": texts, "answers": answers, "eos": tok.eos_token}))
""" % MAX_NEW


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(runs folder, run id, adapter folder, rate of ``finetune generate`` on the held-out prompts)."""
    from finetune.inference import generate_batch
    from finetune.presets import load_preset
    from finetune.train import train

    cfg = load_preset("smollm2-135m-cpu")
    cfg.data.source = str(SAMPLES / "city_year.jsonl")
    cfg.data.template, cfg.data.system_prompt = "llama2", SYSTEM
    root = tmp_path_factory.mktemp("runs")
    result = train(cfg, runs_root=root)
    assert result.status == "finished" and result.adapter_dir is not None
    answers = generate_batch(PROMPTS, adapter=str(result.adapter_dir), max_new_tokens=MAX_NEW, temperature=0)
    rate = exact_match_rate(answers, EXPECTED)
    print(f"\nfinetune generate: exact match {rate:.3f} ({round(rate * 40)}/40)")
    assert rate >= 0.6, answers  # the task was learned: otherwise the comparisons below say nothing
    return root, result.run_id, result.adapter_dir, rate


@pytest.mark.slow
def test_plain_transformers_and_peft_answer_as_well_as_finetune_generate(trained, smollm2_dir):
    from finetune.inference import prompt_for

    _, _, adapter, rate_gen = trained
    recorded = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    # The embedded SmolLM2 is recorded by its Hub id; offline, a user loads the same weights from a local copy.
    base = recorded if Path(recorded).is_dir() else str(smollm2_dir)
    done = subprocess.run([sys.executable, "-c", PLAIN, str(adapter), base], input=json.dumps(PROMPTS),
                          capture_output=True, text=True, timeout=900, cwd=adapter.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    # the adapter's own chat template renders the trained prompt (llama2 with the run's system prompt)
    want = [prompt_for(p, adapter=str(adapter)).text for p in PROMPTS]
    assert out["texts"] == want
    assert out["texts"][0].startswith(f"<|im_start|>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\n")

    rate_plain = exact_match_rate(out["answers"], EXPECTED)
    print(f"\nbase recorded {recorded!r}, loaded {base}; finetune generate {rate_gen:.3f}, "
          f"plain transformers+peft {rate_plain:.3f}")
    assert rate_plain >= rate_gen - 0.025, list(zip(PROMPTS, out["answers"]))  # at most one of 40 worse


@pytest.fixture(scope="module")
def app_url(trained, tmp_path_factory):
    from apps import launched

    with launched(trained[0], tmp_path_factory.mktemp("downloads"), multi_user=False, css=False) as (_, url):
        yield url


def _text(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


@pytest.mark.slow
@pytest.mark.parametrize("pass_system", [False, True], ids=["default-system", "system-passed"])
def test_api_chat_answers_within_two_points_of_finetune_generate(trained, app_url, pass_system):
    from gradio_client import Client

    _, run_id, _, rate_gen = trained
    c = Client(app_url, verbose=False)
    extra = {"system_prompt": SYSTEM} if pass_system else {}
    answers = []
    for p in PROMPTS:
        history = c.predict(message=p, history=[], adapter=run_id, temperature=0, max_new_tokens=MAX_NEW, seed=0,
                            api_name="/chat", **extra)
        assert history[-1]["role"] == "assistant"
        answers.append(_text(history[-1]["content"]))
    rate_api = exact_match_rate(answers, EXPECTED)
    print(f"\n/chat ({'system_prompt passed' if pass_system else 'no system_prompt'}): {rate_api:.3f}, "
          f"finetune generate {rate_gen:.3f}")
    assert abs(rate_api - rate_gen) <= 0.02, list(zip(PROMPTS, answers))
