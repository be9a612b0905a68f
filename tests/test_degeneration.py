"""Degenerate answers are caught where users look: the judge of sample answers, the samples a preference run
writes at each save, the reward margin's warning, the run state and the Train tab."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from finetune.degeneration import MARGIN_LIMIT, Sample, judge, margin_warning, repetition, sample_tokens

COLLAPSED = "negative negative negative negative negative negative negative negative negative negative"


def test_collapsed_answers_get_every_warning():
    """The answers of the broken DPO adapter: one repeated word, to every prompt, never ending."""
    samples = [Sample(f"Review {i}: ...", COLLAPSED, ended=False, reference=ref)
               for i, ref in enumerate(["positive", "negative", "positive", "negative"])]
    warnings = judge(samples)
    assert len(warnings) == 3, warnings
    assert warnings[0].startswith("4 of 4 sample answers repeat themselves")
    assert warnings[1] == "4 of 4 sample answers ran to the token limit without the end token"
    assert warnings[2].startswith("all 4 sample prompts got the same answer")
    # against the starting model's answers: what training broke is said with the starting point...
    healthy = [Sample(s.prompt, ref, True) for s, ref in zip(samples, ["positive", "negative"] * 2)]
    against = judge(samples, healthy)
    assert len(against) == 3 and against[0].endswith("(the starting model: 0 of 4)"), against
    # ...and a model that answered so before training is not the training's doing
    assert judge(samples, samples) == []
    rambling = [Sample(s.prompt, why, False) for s, why in zip(samples, ["positive: the acting is great", "negative: "
                "a dull plot", "positive, for the lovely music", "negative since it drags on"])]
    assert judge(samples, rambling) == [w for w in against if "end token" not in w]


def test_healthy_answers_get_none():
    samples = [Sample("Ivan moved to Oslo in 1972.", '{"city": "Oslo", "year": 1972}', True, '{"city": "Oslo", "year": 1972}'),
               Sample("Priya arrived in Lima in 1963.", '{"city": "Lima", "year": 1963}', True, '{"city": "Lima", "year": 1963}'),
               Sample("Dana relocated to Accra in 2000.", "The city is Accra and the year is 2000, as the sentence "
                      "says.", True, '{"city": "Accra", "year": 2000}'),
               Sample("Long one", "A list: apples, pears, plums, cherries, grapes and figs, then more apples.", False)]
    assert judge(samples) == []


def test_each_sign_alone():
    # one answer cut at the limit among four is a long answer, half of them a model that no longer stops
    ok = [Sample(f"p{i}", f"answer number {i}", True) for i in range(4)]
    assert judge(ok[:3] + [Sample("p3", "a long answer", False)]) == []
    assert judge(ok[:2] + [Sample("p2", "x", False), Sample("p3", "y", False)]) == [
        "2 of 4 sample answers ran to the token limit without the end token"]
    # the same label for every prompt is fine when the data wants that label everywhere; not when it differs
    same = [Sample(f"p{i}", "positive", True, "positive") for i in range(4)]
    assert judge(same) == []
    differing = [Sample(f"p{i}", "positive", True, ref) for i, ref in enumerate(["positive", "negative"] * 2)]
    assert judge(differing) == ['all 4 sample prompts got the same answer ("positive")']
    # punctuation repeats count: a model stuck on a bracket
    assert repetition("}" * 20) > 0.9 and judge([Sample("p", "}" * 20, True)])[0].startswith("1 of 1")


def test_margin_warning_only_past_the_limit_and_only_for_reference_methods():
    assert margin_warning("dpo", {"rewards/margins": MARGIN_LIMIT * 0.9}, 0.1) is None
    warning = margin_warning("dpo", {"rewards/margins": 19.8}, 0.1)
    assert warning is not None and "198 nats" in warning and "init_adapter" in warning
    assert margin_warning("kto", {"rewards/margins": 12.0}, 0.1) is not None
    assert margin_warning("orpo", {"rewards/margins": 19.8}, 0.1) is None  # orpo's margin is not a log ratio
    assert margin_warning("dpo", {}, 0.1) is None


def test_sample_tokens_follow_the_references(smollm2_tokenizer):
    short = sample_tokens(['{"city": "Oslo", "year": 1972}'], smollm2_tokenizer)
    assert 16 <= short <= 40
    assert sample_tokens([None], smollm2_tokenizer) == 256 and sample_tokens(["word " * 500], smollm2_tokenizer) == 256


def test_margin_past_the_limit_writes_one_warning_event(tmp_path):
    """The step callback of a dpo run: a margin past the limit writes a ``warning`` event (once), which the run
    state carries and the Train tab shows above the progress bar."""
    from finetune.events import EventLog, read_events
    from finetune.runs import read_run
    from finetune.callbacks import events_callback
    from finetune.halt import Halt
    from finetune.ui.train_tab import progress_html

    (tmp_path / "config.yaml").write_text("{}\n")
    log = EventLog(tmp_path)
    log.emit("started", pid=None, max_steps=10)
    callback = events_callback(log, tmp_path, Halt(started_at=0.0), "dpo", beta=0.1)
    args, control = SimpleNamespace(logging_steps=1), SimpleNamespace()
    for step, margin in ((1, 2.0), (2, 19.8), (3, 25.0)):
        state = SimpleNamespace(global_step=step, max_steps=10, epoch=0.1, num_input_tokens_seen=0)
        callback.on_log(args, state, control, logs={"loss": 0.0, "rewards/margins": margin, "rewards/accuracies": 1.0})
    warnings = [e for e in read_events(tmp_path) if e["type"] == "warning"]
    assert [(w["step"], w["kind"]) for w in warnings] == [(2, "margin")]
    run = read_run(tmp_path)
    assert len(run.warnings) == 1 and run.warnings[0].startswith("step 2: reward margin 19.8")
    page = progress_html(run.to_dict())
    assert "id='ft-warnings'" in page and "reward margin 19.8" in page


@pytest.fixture(scope="module")
def collapsing_dpo(tiny_model_dir, tmp_path_factory):
    """A dpo run of the tiny random model (its greedy answers are noise that never ends): 4 steps, a save every 2."""
    from finetune.train import train

    from test_methods import method_config, pairs_file

    tmp = tmp_path_factory.mktemp("collapse")
    cfg = method_config(tiny_model_dir, pairs_file(tmp / "pairs.jsonl"), "dpo", max_steps=4, save_steps=2,
                        batch_size=2, learning_rate=1e-2)
    return train(cfg, runs_root=tmp / "runs")


def test_a_preference_run_writes_judged_samples_at_each_save(collapsing_dpo):
    from finetune.events import read_events
    from finetune.runs import read_run
    from finetune.ui.train_tab import progress_html

    assert collapsing_dpo.status == "finished"
    samples = [e for e in read_events(collapsing_dpo.run_dir) if e["type"] == "samples"]
    assert [e["step"] for e in samples] == [2, 4]
    for e in samples:
        assert len(e["samples"]) == 4 and {"prompt", "answer", "ended"} <= set(e["samples"][0])
        assert e["samples"][0]["prompt"].startswith("Colour for item")
    # the first save also records the starting model's answers; every warning is judged against them (the tiny
    # random model's answers are noise before training as after: a warning only for what training changed)
    baseline = [Sample(a["prompt"], a["answer"], a["ended"]) for a in samples[0]["baseline"]]
    assert len(baseline) == 4 and "baseline" not in samples[1]
    for e in samples:
        answers = [Sample(a["prompt"], a["answer"], a["ended"]) for a in e["samples"]]
        assert e["warnings"] == judge(answers, baseline) != judge(answers), e
    page = progress_html(read_run(collapsing_dpo.run_dir).to_dict())
    assert "id='ft-samples'" in page and "Sample answers at step 4" in page


def test_a_samples_warning_reaches_the_run_state_and_the_train_tab(collapsing_dpo, tmp_path):
    import shutil

    from finetune.events import EventLog
    from finetune.runs import read_run
    from finetune.ui.train_tab import progress_html

    run_dir = Path(shutil.copytree(collapsing_dpo.run_dir, tmp_path / collapsing_dpo.run_dir.name))
    EventLog(run_dir).emit("samples", step=4, samples=[{"prompt": "p", "answer": "no no no", "ended": False}],
                           warnings=["1 of 1 sample answers repeat themselves"])
    run = read_run(run_dir)
    assert run.samples_step == 4 and run.warnings == ["step 4: 1 of 1 sample answers repeat themselves"]
    page = progress_html(run.to_dict())
    assert "id='ft-warnings'" in page and "repeat themselves" in page


def test_an_sft_run_writes_no_samples(tiny_model_dir, tmp_path):
    """SFT's answers are scored by the evaluation at each save (with a test set); no samples pass is added."""
    from finetune.events import read_events
    from finetune.train import train

    from test_train import tiny_config

    cfg = tiny_config(tiny_model_dir, max_steps=2, save_steps=2)
    result = train(cfg, runs_root=tmp_path / "runs")
    assert result.status == "finished"
    assert not [e for e in read_events(result.run_dir) if e["type"] in ("samples", "warning")]
