"""The DPO preset on its own example data (finetune/samples/city_year_pairs.jsonl): the old settings drove the model
into degenerate answers while the preference metrics looked perfect, and the run now says so; the preset's
settings move the preference without losing the held-out answers.

Held out: finetune/samples/city_year_heldout.jsonl (other sentences), as prompts with references (exact match,
token F1 of greedy answers) and as pairs built by the rule of the training pairs (the preference accuracy)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune.config import SAMPLE_DATA

HELDOUT = SAMPLE_DATA.with_name("city_year_heldout.jsonl")
HELDOUT_PROMPTS, ANSWER_TOKENS = 20, 24  # a JSON answer is ~15 tokens: 24 leaves room and keeps the test short
# The held-out exact match and F1 of the trained adapter may fall this far below the starting model's (the
# greedy answers of 20 prompts: one answer is 0.05).
MARGIN = 0.05


def rejected_answer(i: int, rows: list[dict]) -> str:
    """The rule of the sample pairs: a wrong city (another row's), a wrong year, or a sentence instead of JSON."""
    good = json.loads(rows[i]["completion"])
    if i % 3 == 0:
        other = json.loads(rows[(i + 7) % len(rows)]["completion"])["city"]
        return json.dumps({"city": other if other != good["city"] else "Paris", "year": good["year"]})
    if i % 3 == 1:
        return json.dumps({"city": good["city"], "year": good["year"] + (10 if good["year"] < 2015 else -10)})
    return f"The city is {good['city']} and the year is {good['year']}."


def heldout_pairs(path: Path) -> Path:
    rows = [json.loads(line) for line in HELDOUT.read_text().splitlines()]
    path.write_text("".join(json.dumps({"prompt": r["prompt"], "chosen": r["completion"],
                                        "rejected": rejected_answer(i, rows)}) + "\n" for i, r in enumerate(rows)))
    return path


def heldout_scores(model_dir: Path, adapter: str | Path | None, pairs: Path) -> dict[str, float]:
    """Exact match and F1 of greedy answers to the first HELDOUT_PROMPTS held-out prompts, and the share of held-out
    pairs whose chosen answer the model finds likelier (as the run renders them: the model's own template)."""
    from finetune.evaluate import read_test_set, scores
    from finetune.inference import generate_batch

    from test_methods_quality import accuracy, margins

    examples = read_test_set(HELDOUT)[:HELDOUT_PROMPTS]
    answers = generate_batch([e.prompt for e in examples], adapter=str(adapter) if adapter else None,
                             model=None if adapter else "", max_new_tokens=ANSWER_TOKENS)
    s = scores(answers, [e.reference for e in examples])
    return {"exact_match": s["exact_match"], "f1": round(s["f1"], 3),
            "pair_accuracy": accuracy(margins(model_dir, Path(adapter) if adapter else None, pairs, "model"))}


def test_the_sample_pairs_follow_the_rule():
    """The bundled pairs are the bundled sample with the rejected answers of ``rejected_answer`` (the held-out
    pairs here are built by the same rule)."""
    rows = [json.loads(line) for line in SAMPLE_DATA.read_text().splitlines()]
    pairs = [json.loads(line) for line in SAMPLE_DATA.with_name("city_year_pairs.jsonl").read_text().splitlines()]
    assert [p["prompt"] for p in pairs] == [r["prompt"] for r in rows]
    assert [p["chosen"] for p in pairs] == [r["completion"] for r in rows]
    assert all(p["rejected"] == rejected_answer(i, rows) for i, p in enumerate(pairs))


def test_a_dpo_run_without_data_trains_on_the_sample_pairs(tiny_model_dir, tmp_path):
    from finetune import methods
    from finetune.config import sample_data
    from finetune.models import load_tokenizer
    from finetune.presets import load_preset

    cfg = load_preset("smollm2-135m-dpo")
    assert cfg.data.source == "" and sample_data("dpo").name == "city_year_pairs.jsonl"
    data = methods.load_data(cfg, load_tokenizer(str(tiny_model_dir)))
    assert len(data.examples) + len(data.val_examples) == 240
    assert sample_data("kto").name == "city_year_feedback.jsonl" and sample_data("sft") == SAMPLE_DATA


@pytest.mark.slow
def test_dpo_preset_keeps_heldout_answers_where_the_old_settings_broke_them(smollm2_dir, tmp_path):
    """The old preset (plain DPO: no SFT term, lr 1e-3, 30 steps) on the sample pairs: the run warns (degenerate
    samples or an exploding margin). The preset now (DPO with an SFT term on the chosen answers, lr 1e-4, 20 steps):
    no warning, held-out exact match and F1 within MARGIN of the base's (or above), the held-out preference margin up,
    and the run's own preference accuracy rising.

    Measured on CPU (2 cores, ~100 s a run): the base answers the held-out prompts in sentences (exact match 0.0,
    F1 0.75; it already prefers every held-out chosen answer, so the held-out accuracy starts at 1.0 and the margin
    is what can rise); the preset: exact match 0.55, F1 0.88, final reward margin 1.5, reward accuracy 0 -> 1.0.
    The old settings: margin warning at step 18 (margin 10.1), samples degenerate."""
    from statistics import mean

    from finetune.events import read_events
    from finetune.presets import load_preset
    from finetune.train import train

    from test_methods_quality import margins

    pairs = heldout_pairs(tmp_path / "heldout_pairs.jsonl")
    base = heldout_scores(smollm2_dir, None, pairs)
    base_margin = mean(margins(smollm2_dir, None, pairs, "model"))

    old = load_preset("smollm2-135m-dpo")
    old.training.learning_rate, old.training.max_steps, old.training.save_steps = 1e-3, 30, 10
    old.training.dpo_sft_weight = 0.0
    broken = train(old, runs_root=tmp_path / "old")
    warned = [w for e in read_events(broken.run_dir) if e["type"] in ("samples", "warning")
              for w in (e.get("warnings") or ([e["message"]] if e["type"] == "warning" else []))]
    assert warned, "the old settings' run gave no warning"

    result = train(load_preset("smollm2-135m-dpo"), runs_root=tmp_path / "new")
    events = read_events(result.run_dir)
    assert [e for e in events if e["type"] == "samples"], "no samples were written"
    assert not [e for e in events if e["type"] == "warning" or (e["type"] == "samples" and e["warnings"])]
    tuned = heldout_scores(smollm2_dir, result.adapter_dir, pairs)
    tuned_margin = mean(margins(smollm2_dir, result.adapter_dir, pairs, "model"))
    print(f"base {base} margin {base_margin:.2f}, preset {tuned} margin {tuned_margin:.2f}, old warned: {warned[:2]}")
    assert tuned["exact_match"] >= base["exact_match"] - MARGIN and tuned["f1"] >= base["f1"] - MARGIN, (base, tuned)
    assert tuned["pair_accuracy"] >= base["pair_accuracy"] and tuned_margin > base_margin, (base, tuned)
    accuracy = [e["metrics"]["rewards/accuracies"] for e in events if e["type"] == "step"]
    assert accuracy[-1] > accuracy[0] and accuracy[-1] >= 0.75, accuracy


def test_the_methods_say_when_to_start_from_an_sft_adapter():
    """The Hyperparameters tab's method line (methods.describe) and the presets tell DPO, KTO and GRPO users to
    start from an SFT adapter when the base does not answer like their data; ORPO needs none."""
    from finetune.methods import describe
    from finetune.presets import preset_paths

    for method in ("dpo", "kto", "grpo"):
        assert "start from an SFT adapter" in describe(method) or "start DPO from that adapter" in describe(method)
        assert "training.init_adapter" in describe(method)
    assert "needs no SFT adapter" in describe("orpo")
    for method in ("dpo", "kto"):
        assert "training.init_adapter" in Path(preset_paths()[f"smollm2-135m-{method}"]).read_text()
