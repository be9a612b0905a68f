"""Each method moves the model the right way on held-out data.

The task (our own): a brand palette, cool colours preferred over warm ones (see COOL_*/WARM_*). The base model
prefers common colour names, and the pairs are built so that the common name is the chosen one half of the time:
it is near chance on held-out pairs; after preference tuning the adapter should give the chosen colour the higher
log-probability. GRPO's task: capitals, answered with the city alone (exact match), after a short SFT.

The SmolLM2 tests (slow) train through the CLI or ``train`` exactly as a user would; the tiny-model tests (in the
default suite) check the direction of ORPO and KTO on a one-answer preference in seconds."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from finetune.config import RunConfig
from finetune.data.preference import PairExample, format_for_method
from finetune.train import train

from test_methods import method_config, pairs_file

ROOT = Path(__file__).resolve().parent.parent


# A brand palette: cool colours are preferred over warm ones. Half the pairs put a common cool colour against a
# rare warm one, half a rare cool colour against a common warm one, so the base model (which prefers common
# words) is near chance; the adapter must learn the palette.
COOL_COMMON, COOL_RARE = ["Blue", "Green"], ["Teal", "Cyan", "Indigo", "Azure"]
WARM_COMMON, WARM_RARE = ["Red", "Orange", "Yellow", "Pink"], ["Crimson", "Amber", "Scarlet", "Maroon"]
ITEMS = ("bike, mug, notebook, scarf, lamp, backpack, kettle, umbrella, sofa, desk, phone case, water bottle, curtain, "
         "rug, hat, jacket, pen, wallet, towel, blanket, clock, vase, chair, bowl, kite, bench, door, fence, boat, tent, "
         "helmet, glove, sock, candle, frame, shelf, basket, pillow, apron, badge, bucket, cup, drum, flag, jar, "
         "key ring, ladder, mask, oar, plate, quilt, ribbon, sign, tray, van, wagon, yoyo, zipper, brush, card").split(", ")


def palette_rows(items: list[str], rnd: random.Random) -> list[dict]:
    rows = []
    for i, item in enumerate(items):
        good, bad = ((rnd.choice(COOL_COMMON), rnd.choice(WARM_RARE)) if i % 2 else
                     (rnd.choice(COOL_RARE), rnd.choice(WARM_COMMON)))
        rows.append({"prompt": [{"role": "user", "content": f"Pick a colour for the {item}."}],
                     "chosen": [{"role": "assistant", "content": good}],
                     "rejected": [{"role": "assistant", "content": bad}]})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def palette_task(tmp_path: Path) -> tuple[Path, Path]:
    """40 training pairs and 20 held-out pairs (other items)."""
    rnd = random.Random(1)
    return (write_jsonl(tmp_path / "pairs.jsonl", palette_rows(ITEMS[:40], rnd)),
            write_jsonl(tmp_path / "heldout.jsonl", palette_rows(ITEMS[40:], rnd)))


def margins(model_dir: str | Path, adapter: Path | None, heldout: Path, template: str) -> list[float]:
    """log p(chosen) - log p(rejected) of each held-out pair, as the run renders them (its template)."""
    from transformers import AutoModelForCausalLM

    from finetune.models import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()

    def logp(prompt: str, answer: str) -> float:
        n = len(tok(prompt, add_special_tokens=False)["input_ids"])
        ids = torch.tensor([tok(prompt + answer, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float().log_softmax(-1)
        picked = logits[torch.arange(ids.shape[1] - 1), ids[0, 1:]]
        return float(picked[n - 1:].sum())

    pairs = [ex for ex in format_for_method(heldout, "dpo", template=template, tokenizer=tok).examples
             if isinstance(ex, PairExample)]
    return [logp(ex.prompt, ex.chosen) - logp(ex.prompt, ex.rejected) for ex in pairs]


def accuracy(values: list[float]) -> float:
    return sum(v > 0 for v in values) / len(values)


# ---------------------------------------------------------------------------------------------
# tiny model, default suite: the direction of ORPO and KTO


@pytest.mark.parametrize("method", ["orpo", pytest.param("kto", marks=pytest.mark.slow)])
def test_orpo_and_kto_move_heldout_preference_the_right_way(method, tiny_model_dir, tmp_path):
    """Trained to prefer "blue" over "green" (kto: blue thumbs up, green thumbs down) on some prompts, the
    adapter prefers blue more on prompts it never saw."""
    data = pairs_file(tmp_path / "pairs.jsonl")
    if method == "kto":
        rows = [json.loads(line) for line in data.read_text().splitlines()]
        feedback = [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
                    for r in rows for side in ("chosen", "rejected")]
        data = write_jsonl(tmp_path / "feedback.jsonl", feedback)
    heldout = write_jsonl(tmp_path / "heldout.jsonl", [
        {"prompt": [{"role": "user", "content": f"Which colour is lucky today, {name}?"}],
         "chosen": [{"role": "assistant", "content": "blue"}], "rejected": [{"role": "assistant", "content": "green"}]}
        for name in ("Ada", "Bo", "Cy", "Di", "Ed", "Flo")])
    cfg = method_config(tiny_model_dir, data, method, max_steps=6, batch_size=4, learning_rate=1e-2)
    if method == "orpo":
        cfg.training.orpo_lambda = 1.0
    before = margins(tiny_model_dir, None, heldout, "llama2")
    result = train(cfg, runs_root=tmp_path / "runs")
    after = margins(tiny_model_dir, result.adapter_dir, heldout, "llama2")
    assert result.metrics["method"] == method
    assert sum(after) / len(after) > sum(before) / len(before) + 0.5, (before, after)
    assert accuracy(after) == 1.0, after


# ---------------------------------------------------------------------------------------------
# SmolLM2, slow: the acceptance runs


@pytest.mark.slow
def test_dpo_cli_makes_the_adapter_prefer_chosen_on_heldout_pairs(smollm2_dir, tmp_path):
    """`python -m finetune train --method dpo --data pairs.jsonl --template llama2 --max-steps N --run-dir D`:
    the base is near chance on held-out pairs, the adapter prefers the chosen answer on >= 90% of them.

    Measured (2 CPU cores shared with other work): base 10/20 held-out pairs (50%), adapter 20/20 (100%) after
    20 steps of the smollm2-135m-dpo preset (batch 4, lr 1e-3); final training margin 6.2, loss 0.003."""
    pairs, heldout = palette_task(tmp_path)
    base = margins(smollm2_dir, None, heldout, "llama2")
    assert 0.3 <= accuracy(base) <= 0.7, base  # near chance: the base has no reason to prefer either name
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "finetune", "train", "--method", "dpo", "--data", str(pairs),
                           "--template", "llama2", "--max-steps", "20", "--run-dir", str(run_dir), "--quiet",
                           # the rate this was measured with (the preset's is lower now: on its own sample data
                           # 1e-3 degenerates the answers; the palette's one-word answers ended at margin 6.2)
                           "--set", "training.learning_rate=1e-3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stderr[-2000:]
    tuned = margins(smollm2_dir, run_dir / "adapter", heldout, "llama2")
    print(f"held-out preference for chosen: base {accuracy(base):.0%}, DPO adapter {accuracy(tuned):.0%}")
    assert accuracy(tuned) >= 0.9, tuned


@pytest.mark.slow
@pytest.mark.parametrize("method", ["orpo", "kto"])
def test_orpo_and_kto_on_smollm2_prefer_chosen_on_heldout_pairs(method, smollm2_dir, tmp_path):
    pairs, heldout = palette_task(tmp_path)
    data = pairs
    if method == "kto":
        rows = [json.loads(line) for line in pairs.read_text().splitlines()]
        data = write_jsonl(tmp_path / "feedback.jsonl", [
            {"prompt": r["prompt"], "completion": r[side], "label": side == "chosen"}
            for r in rows for side in ("chosen", "rejected")])
    from finetune.presets import load_preset

    cfg: RunConfig = load_preset(f"smollm2-135m-{method}")
    cfg.data.source, cfg.data.template, cfg.training.max_steps = str(data), "llama2", 20
    base = margins(smollm2_dir, None, heldout, "llama2")
    result = train(cfg, runs_root=tmp_path / "runs")
    tuned = margins(smollm2_dir, result.adapter_dir, heldout, "llama2")
    print(f"{method}: held-out preference for chosen: base {accuracy(base):.0%}, adapter {accuracy(tuned):.0%}")
    assert sum(tuned) / len(tuned) > sum(base) / len(base)
    assert accuracy(tuned) >= 0.8, tuned


def greedy_answers(model_dir: Path, adapter: Path | None, prompts: Path, template: str,
                   tokens: int = 8) -> tuple[list[str], list[str]]:
    """Greedy answers to the prompts of a GRPO data file, as the run renders them (one left-padded batch), and
    their reference answers."""
    from transformers import AutoModelForCausalLM

    from finetune.data.preference import PromptExample
    from finetune.models import load_tokenizer

    tok = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    examples = [ex for ex in format_for_method(prompts, "grpo", template=template, tokenizer=tok).examples
                if isinstance(ex, PromptExample)]
    side, tok.padding_side = tok.padding_side, "left"
    try:
        batch = tok([ex.prompt for ex in examples], add_special_tokens=False, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = side
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=tokens, do_sample=False, pad_token_id=tok.pad_token_id)
    answers = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers, [ex.answer or "" for ex in examples]


def mean_exact_match(model_dir: Path, adapter: Path | None, prompts: Path, template: str, tokens: int = 8) -> float:
    """The exact-match reward of greedy answers to held-out prompts, as the run renders them."""
    from finetune.rewards import exact_match

    answers, references = greedy_answers(model_dir, adapter, prompts, template, tokens)
    scores = exact_match(prompts=[], completions=answers, answer=references)
    return sum(scores) / len(scores)


# Capitals the base model names correctly, in a sentence ("The capital of France is Paris."): the answers GRPO's
# exact-match reward wants are one short step away. Held out: never trained on, by SFT or GRPO.
CAPITALS_HELD = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
                 ("China", "Beijing"), ("Russia", "Moscow"), ("the United Kingdom", "London"), ("Egypt", "Cairo"),
                 ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Norway", "Oslo"), ("Austria", "Vienna"),
                 ("Thailand", "Bangkok"), ("Cuba", "Havana"), ("Kenya", "Nairobi")]
CAPITALS_TRAIN = [
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("India", "New Delhi"), ("Mexico", "Mexico City"),
    ("Ireland", "Dublin"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Switzerland", "Bern"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Saudi Arabia", "Riyadh"), ("South Korea", "Seoul"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"),
    ("Nigeria", "Abuja"), ("Ethiopia", "Addis Ababa"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"),
    ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Pakistan", "Islamabad"), ("Afghanistan", "Kabul"),
    ("Syria", "Damascus"), ("Lebanon", "Beirut"), ("Jordan", "Amman"), ("Morocco", "Rabat"), ("Venezuela", "Caracas"),
    ("Malaysia", "Kuala Lumpur"), ("Nepal", "Kathmandu"), ("Bangladesh", "Dhaka"), ("New Zealand", "Wellington")]


def capitals_files(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(SFT data: prompt/completion, GRPO data: prompt/answer, held-out prompts: prompt/answer)."""
    def question(country: str) -> str:
        return f"What is the capital of {country}? Reply with the city name only."

    return (write_jsonl(tmp_path / "sft.jsonl", [{"prompt": question(c), "completion": a} for c, a in CAPITALS_TRAIN]),
            write_jsonl(tmp_path / "grpo.jsonl", [{"prompt": question(c), "answer": a} for c, a in CAPITALS_TRAIN]),
            write_jsonl(tmp_path / "held.jsonl", [{"prompt": question(c), "answer": a} for c, a in CAPITALS_HELD]))


SFT_STEPS, SFT_LR, GRPO_STEPS = 3, 1e-3, 16


@pytest.mark.slow
def test_grpo_exact_match_raises_heldout_reward(smollm2_dir, tmp_path):
    """SFT briefly (SFT_STEPS steps: it starts to answer with the city alone, but not every time), then GRPO with the
    exact-match reward from that adapter (``training.init_adapter``): the mean reward of greedy answers to held-out
    prompts rises.

    From the base SmolLM2 GRPO gets no signal: it answers in sentences ("The capital of France is Paris."), so every
    sampled answer scores 0.

    Measured (2 CPU cores shared with other work): SFT adapter (3 steps) 31% of the 16 held-out capitals, after 16
    GRPO steps from it 50%, the same in two runs; 527 s and 354 s in all, most of it waiting for the CPU (a GRPO
    step takes ~4.5 s on idle cores)."""
    import time

    from finetune.presets import load_preset

    sft_data, grpo_data, heldout = capitals_files(tmp_path)
    began = time.time()
    sft_cfg = load_preset("smollm2-135m-cpu")
    sft_cfg.data.source, sft_cfg.training.max_steps, sft_cfg.training.learning_rate = str(sft_data), SFT_STEPS, SFT_LR
    sft = train(sft_cfg, runs_root=tmp_path / "runs")
    before = mean_exact_match(smollm2_dir, sft.adapter_dir, heldout, "model")

    cfg = load_preset("smollm2-135m-grpo")
    cfg.data.source, cfg.training.init_adapter = str(grpo_data), str(sft.run_dir)
    cfg.training.max_steps, cfg.training.max_completion_length = GRPO_STEPS, 6  # a city and the end token
    result = train(cfg, runs_root=tmp_path / "runs")
    after = mean_exact_match(smollm2_dir, result.adapter_dir, heldout, "model")
    print(f"held-out exact match: SFT adapter {before:.0%} -> GRPO from it {after:.0%} ({time.time() - began:.0f} s)")
    assert "rewards/exact_match/mean" in result.metrics
    assert f"continued from the adapter `{sft.run_id}`" in (result.adapter_dir / "README.md").read_text()
    assert after >= before + 0.1, (before, after)  # at least 2 more of the 16 held-out prompts
