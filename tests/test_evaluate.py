"""Evaluation: `python -m finetune eval` scores greedy answers against references (exactly the answers
`finetune generate --temperature 0` gives), beside the base model's, for every kept checkpoint; the metrics."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from finetune import runs
from finetune.cli import main
from finetune.config import DataConfig, RunConfig
from finetune.evaluate import (EvalError, best_checkpoint, contains, exact_match, normalize, read_test_set, rouge_l,
                               scores, token_f1)
from finetune.train import train

ROOT = Path(__file__).resolve().parent.parent
TEST_ROWS = [{"prompt": "Question number 100?", "completion": "OK"},
             {"prompt": "Question number 101?", "completion": "ok."},  # matches after normalisation
             {"prompt": "Question number 102?", "completion": " OK "},
             {"prompt": "Question number 103?", "completion": "OK"},
             {"prompt": "Question number 104?", "completion": "NO"},
             {"prompt": "Question number 105?", "completion": "Not OK at all"}]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def matches(answer: str, reference: str) -> bool:
    """The issue's exact match, written independently: case, whitespace and trailing punctuation ignored."""
    def norm(s: str) -> str:
        return " ".join(s.lower().split()).rstrip(string.punctuation + " ")
    return norm(answer) == norm(reference)


@pytest.fixture(scope="module")
def ok_run(tiny_model_dir, tmp_path_factory):
    """A tiny model taught to answer every question with "OK" (30 steps, a checkpoint every 10, 2 kept)."""
    folder = tmp_path_factory.mktemp("ok-data")
    data = write_jsonl(folder / "train.jsonl", [{"prompt": f"Question number {i}?", "completion": "OK"} for i in range(32)])
    cfg = RunConfig()
    cfg.model.id = str(tiny_model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.source, cfg.data.template = str(data), "chatml"
    cfg.data.test_source = str(write_jsonl(folder / "test.jsonl", TEST_ROWS[:3]))  # scored at each save
    cfg.data.test_max_new_tokens = 8  # the random base never stops on its own
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.save_total_limit = 30, 4, 64, 10, 2
    t.learning_rate, t.gradient_checkpointing, t.warmup_ratio = 1e-2, False, 0.0
    result = train(cfg, runs_root=tmp_path_factory.mktemp("runs"))
    result.test_source = cfg.data.test_source
    result.report = runs.read_eval_report(result.run_dir)  # the run's own report (`evaluated` writes another later)
    return result


@pytest.fixture(scope="module")
def evaluated(ok_run, tmp_path_factory):
    """`finetune eval --checkpoints all` of the run on TEST_ROWS: (test file, report, what it printed)."""
    import contextlib
    import io

    folder = tmp_path_factory.mktemp("eval")
    test, out = write_jsonl(folder / "test.jsonl", TEST_ROWS), folder / "report.json"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["eval", "--adapter", str(ok_run.run_dir), "--data", str(test), "--checkpoints", "all",
                     "--max-new-tokens", "8", "--out", str(out)]) == 0
    return test, json.loads(out.read_text()), printed.getvalue()


def test_eval_exact_match_is_the_share_of_greedy_generate_answers_that_match(ok_run, evaluated, tmp_path):
    test, report, printed = evaluated
    for key in ("exact_match", "contains", "f1", "rouge_l", "loss", "n"):
        assert key in report and key in report["base"]
    assert report["n"] == 6 and len(report["answers"]) == 6 and len(report["examples"]) == 6

    # the same prompts through `finetune generate --temperature 0`
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": json.loads(line)["prompt"]}
                                                       for line in test.read_text().splitlines()])
    answers_file = tmp_path / "answers.jsonl"
    assert main(["generate", "--adapter", str(ok_run.run_dir), "--prompts", str(prompts), "--temperature", "0",
                 "--max-new-tokens", "8", "--out", str(answers_file)]) == 0
    answers = [json.loads(line)["answer"] for line in answers_file.read_text().splitlines()]
    references = [json.loads(line)["completion"] for line in test.read_text().splitlines()]
    assert answers == report["answers"]
    share = sum(matches(a, r) for a, r in zip(answers, references)) / len(references)
    assert report["exact_match"] == pytest.approx(share)
    assert report["exact_match"] == pytest.approx(4 / 6)  # the model learned "OK"; two references say otherwise
    assert report["base"]["exact_match"] < report["exact_match"]
    assert report["base"]["loss"] > report["loss"]  # the held-out answers are likelier after training

    # every kept checkpoint, with its metrics
    kept = [int(p.name.rsplit("-", 1)[1]) for p in runs.checkpoints(ok_run.run_dir)]
    assert kept == [20, 30]
    assert [c["step"] for c in report["checkpoints"]] == kept
    for c in report["checkpoints"]:
        assert all(c[k] is not None for k in ("exact_match", "contains", "f1", "rouge_l", "loss")) and c["n"] == 6
    assert report["best"]["exact_match"]["step"] in kept
    # the same report in the run folder, and the table on stdout
    assert json.loads((ok_run.run_dir / runs.EVAL_REPORT).read_text())["answers"] == report["answers"]
    assert "checkpoint-20" in printed and "base model" in printed


def test_a_run_with_a_test_set_scores_each_checkpoint_as_it_is_saved(ok_run, tmp_path):
    from finetune.events import read_events

    events = read_events(ok_run.run_dir)
    evals = [e for e in events if e["type"] == "evaluation"]
    # the base model once (at the first save), each save while training, then the adapter: its step was scored
    assert [(e["step"], e["model"]) for e in evals] == [
        (0, "base"), (10, "checkpoints/checkpoint-10"), (20, "checkpoints/checkpoint-20"),
        (30, "checkpoints/checkpoint-30"), (30, "adapter")]
    assert all(e["n"] == 3 and e["exact_match"] is not None and e["loss"] is not None for e in evals)
    assert evals[-1]["exact_match"] == 1.0 and evals[0]["exact_match"] == 0.0  # "OK" learned; the base never says it
    assert evals[-1]["exact_match"] == evals[-2]["exact_match"] and evals[-1]["loss"] == evals[-2]["loss"]
    kinds = [(e["type"], e.get("step")) for e in events]
    for step in (10, 20, 30):  # each scored right after its save, while training goes on
        at = kinds.index(("evaluation", step))
        assert kinds.index(("checkpoint", step)) < at < kinds.index(("finished", 30))
        assert step == 30 or any(k == "step" and s > step for k, s in kinds[at:])

    # the report the run wrote lists each kept checkpoint once (checkpoint-10 was deleted by save_total_limit)
    report = ok_run.report
    kept = [int(p.name.rsplit("-", 1)[1]) for p in runs.checkpoints(ok_run.run_dir)]
    assert [c["step"] for c in report["checkpoints"]] == kept == [20, 30] and "in_progress" not in report
    assert report["step"] == 30 and report["answers"] == report["checkpoints"][-1]["answers"]

    # scored at the save with the training model = `finetune eval` of that checkpoint folder afterwards
    refs = [[str(ok_run.run_dir / report["checkpoints"][0]["checkpoint"])],  # the checkpoint folder, and RUN@STEP
            ["--runs-root", str(ok_run.run_dir.parent), f"{ok_run.run_dir.name}@{report['checkpoints'][1]['step']}"]]
    for entry, ref in zip(report["checkpoints"], refs):
        out = tmp_path / f"ck{entry['step']}.json"
        assert main(["eval", "--adapter", ref[-1], *ref[:-1], "--data", ok_run.test_source, "--no-base",
                     "--max-new-tokens", "8", "--out", str(out)]) == 0
        again = json.loads(out.read_text())
        assert again["step"] == entry["step"] and again["answers"] == entry["answers"]
        for key in ("n", "exact_match", "contains", "f1", "rouge_l"):
            assert again[key] == entry[key], key
        assert again["loss"] == pytest.approx(entry["loss"], rel=1e-5)
    # and the base model's figure, computed once during training, is `finetune eval`'s base
    out = tmp_path / "base.json"
    assert main(["eval", "--adapter", str(ok_run.run_dir / "checkpoints" / "checkpoint-20"), "--out",
                 str(out)]) == 0  # no --data: the run's own test set and answer length
    base = json.loads(out.read_text())["base"]
    assert base["answers"] == report["base"]["answers"] and base["exact_match"] == report["base"]["exact_match"]
    assert base["loss"] == pytest.approx(report["base"]["loss"], rel=1e-5)


def test_a_resumed_run_keeps_one_entry_per_checkpoint(tiny_model_dir, tmp_path):
    """Paused at step 4 (a chunk's end: that save is not scored then), resumed to 6: every checkpoint is in the
    report once, the one the pause skipped scored when the run ends, and no step twice."""
    from finetune.events import read_events

    cfg = RunConfig()
    cfg.model.id, cfg.quantization.load_in, cfg.lora.r = str(tiny_model_dir), "none", 4
    cfg.data.source = str(write_jsonl(tmp_path / "train.jsonl",
                                      [{"prompt": f"Question number {i}?", "completion": "OK"} for i in range(16)]))
    cfg.data.template = "chatml"
    cfg.data.test_source = str(write_jsonl(tmp_path / "test.jsonl", TEST_ROWS[:2]))
    cfg.data.test_max_new_tokens = 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.save_total_limit = 6, 4, 64, 2, 3
    t.gradient_checkpointing = False
    first = train(cfg, runs_root=tmp_path / "runs", until_step=4)
    assert first.status == "paused"
    partial = runs.read_eval_report(first.run_dir)
    assert partial["in_progress"] and [c["step"] for c in partial["checkpoints"]] == [2]
    done = train(None, first.run_dir)
    assert done.status == "finished"
    report = runs.read_eval_report(done.run_dir)
    assert [c["step"] for c in report["checkpoints"]] == [2, 4, 6]
    evals = [(e["step"], e["model"]) for e in read_events(done.run_dir) if e["type"] == "evaluation"]
    assert evals == [(0, "base"), (2, "checkpoints/checkpoint-2"), (6, "checkpoints/checkpoint-6"),
                     (4, "checkpoints/checkpoint-4"), (6, "adapter")]


def test_a_shared_server_takes_only_the_owners_own_test_file(tmp_path):
    from finetune import service

    ws = service.Workspace(tmp_path / "ws", multi_user=True)
    cfg = RunConfig()
    for bad in ("/etc/passwd", "../../etc/passwd", str(ROOT / "finetune" / "samples" / "city_year_heldout.jsonl")):
        cfg.data.test_source = bad
        with pytest.raises(service.ServiceError, match="test_source must be a test file uploaded"):
            ws.owner_space("user:alice").start_config(cfg)


def test_a_checkpoint_is_an_adapter(ok_run):
    from finetune.adapter import find_adapter_dir, read_template_info
    from finetune.inference import adapter_base, adapter_dir

    ck = runs.checkpoints(ok_run.run_dir)[0]
    folder = adapter_dir(ck)  # refuses pickles: the checkpoint's optimizer.pt etc. are not in it
    assert folder == find_adapter_dir(ck) == ck / "adapter"
    assert read_template_info(folder)["template"] == "chatml"
    assert adapter_base(folder) == adapter_base(ok_run.run_dir)
    assert runs.run_of(folder) == runs.run_of(ck) == runs.run_of(ok_run.adapter_dir) == ok_run.run_dir


def test_checkpoints_all_needs_a_run(ok_run, tmp_path, capsys):
    test = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "Q?", "answer": "OK"}])
    import shutil

    lone = tmp_path / "lone"
    shutil.copytree(ok_run.adapter_dir, lone)
    assert main(["eval", "--adapter", str(lone), "--data", str(test), "--checkpoints", "all"]) == 2
    assert "not a run folder" in capsys.readouterr().err


def test_metrics():
    assert normalize("  Hello,   World!! ") == "hello, world"
    assert exact_match("Paris.", "paris") and not exact_match("Paris is nice", "Paris")
    assert contains("It is Paris.", "paris") and not contains("Lyon", "Paris")
    assert token_f1("the cat sat", "the cat") == pytest.approx(0.8)
    assert token_f1("dog", "cat") == 0.0
    assert rouge_l("a b c d", "a c d") == pytest.approx(2 * 1.0 * 0.75 / 1.75)
    assert rouge_l("d c b a", "a b c d") == pytest.approx(0.25)
    s = scores(["OK", "no", "x"], ["ok", "yes", None], [(2.0, 2), (4.0, 2)])
    assert s["n"] == 2 and s["exact_match"] == 0.5 and s["loss"] == pytest.approx(1.5)
    assert scores(["a"], [None])["exact_match"] is None
    report = {"checkpoints": [{"step": 10, "checkpoint": "a", "exact_match": 0.5, "loss": 1.0},
                              {"step": 20, "checkpoint": "b", "exact_match": 0.5, "loss": 2.0},
                              {"step": 30, "checkpoint": "c", "exact_match": 0.25, "loss": 0.5}]}
    assert best_checkpoint(report, "exact_match")["step"] == 20  # a tie goes to the later step
    assert best_checkpoint(report, "loss")["step"] == 30  # lower is better
    with pytest.raises(EvalError, match="unknown metric"):
        best_checkpoint(report, "bleu")


def test_reference_columns_and_conversations(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello"}]},
            {"messages": [{"role": "user", "content": "Bye"}]}]
    conv = read_test_set(write_jsonl(tmp_path / "c.jsonl", rows))
    assert conv[0].reference == "Hello" and conv[0].prompt[-1] == {"role": "user", "content": "Hi"}
    assert conv[1].reference is None and conv[1].prompt == [{"role": "user", "content": "Bye"}]
    for col in ("reference", "answer", "label", "completion", "output"):
        [ex] = read_test_set(write_jsonl(tmp_path / f"{col}.jsonl", [{"question": "Q", col: "A"}]))
        assert (ex.prompt, ex.reference) == ("Q", "A")
    [alpaca] = read_test_set(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "Sum", "input": "1 2", "output": "3"}]))
    assert alpaca.prompt == "Sum\n\n1 2" and alpaca.reference == "3"
    [bare] = read_test_set(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "only a prompt"}]))
    assert bare.reference is None


def test_bad_test_files_name_the_file_row_and_fix(tmp_path):
    from finetune.data import DataError

    with pytest.raises(DataError, match=re.escape("x.jsonl") + r".*no prompt column.*reference"):
        read_test_set(write_jsonl(tmp_path / "x.jsonl", [{"foo": "a", "answer": "b"}]))
    with pytest.raises(DataError, match=re.escape("y.jsonl:2") + r": prompt: 'prompt' is empty"):
        read_test_set(write_jsonl(tmp_path / "y.jsonl", [{"prompt": "a", "answer": "b"}, {"prompt": " ", "answer": "c"}]))


def test_pushed_card_carries_the_measured_evaluation_as_model_index(ok_run, evaluated, tmp_path, monkeypatch):
    from huggingface_hub import ModelCard, metadata_load
    from huggingface_hub import constants
    from test_hub import FAKE_TOKEN, FakeHub

    from finetune.hub import push_adapter

    report = evaluated[1]  # also the run folder's report: the card is made from it
    assert runs.read_eval_report(ok_run.run_dir) == report
    hub = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        push_adapter(ok_run.run_dir, "testorg/ok-lora", token=FAKE_TOKEN)
        ck = runs.checkpoints(ok_run.run_dir)[0]  # a checkpoint is pushed with its own figures
        push_adapter(ck, "testorg/ok-lora-ck", token=FAKE_TOKEN)
        files, ck_files = hub.files("testorg/ok-lora"), hub.files("testorg/ok-lora-ck")
    finally:
        hub.close()
    readme = tmp_path / "README.md"
    readme.write_bytes(files["README.md"])
    meta = metadata_load(readme)
    [result] = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == "ok-lora"
    values = {m["type"]: m["value"] for m in result["metrics"]}
    for key in ("exact_match", "contains", "f1", "rouge_l", "loss"):
        assert values[key] == pytest.approx(report[key], abs=1e-4), key
    assert result["dataset"]["name"] == "test.jsonl"
    card = ModelCard(files["README.md"].decode())
    parsed = {r.metric_type: r.metric_value for r in card.data.eval_results}  # one EvalResult per metric
    assert parsed == pytest.approx({k: report[k] for k in ("exact_match", "contains", "f1", "rouge_l", "loss")}, abs=1e-4)
    assert {r.dataset_name for r in card.data.eval_results} == {"test.jsonl"}
    # the table beside the base model, the curve, the report itself and the exact prompt of a test example
    assert f"| Exact match | {report['base']['exact_match']:.4f} | {report['exact_match']:.4f} | 6 |" in card.text
    assert "![test-set metrics by step](eval_curve.png)" in card.text and files["eval_curve.png"].startswith(b"\x89PNG")
    assert json.loads(files["eval_report.json"])["answers"] == report["answers"]
    assert "<|im_start|>user\nQuestion number 100?<|im_end|>\n<|im_start|>assistant\n" in card.text
    ck_card = ModelCard(ck_files["README.md"].decode())
    step = int(ck.name.rsplit("-", 1)[1])
    [entry] = [c for c in report["checkpoints"] if c["step"] == step]
    ck_values = {r.metric_type: r.metric_value for r in ck_card.data.eval_results}
    assert ck_values["exact_match"] == pytest.approx(entry["exact_match"], abs=1e-4)
    assert ck_values["loss"] == pytest.approx(entry["loss"], abs=1e-4)
    assert not any(n.endswith((".pt", ".pth", ".bin")) for n in ck_files)  # no optimizer or RNG pickles


def test_a_held_out_test_split_is_seeded_and_disjoint_from_training_and_validation():
    from finetune.data import format_dataset

    rows = [{"prompt": f"Question number {i}?", "completion": f"Answer {i}"} for i in range(50)]

    def split(**kw):
        r = format_dataset(rows, DataConfig(template="chatml", **kw))
        return ([e.row for e in r.examples], [e.row for e in r.val_examples], [e.row for e in r.test_examples])

    train_rows, val_rows, test_rows = split(val_fraction=0.1, test_split=0.2)
    assert (len(train_rows), len(val_rows), len(test_rows)) == (36, 4, 10)
    assert not set(train_rows) & set(test_rows) and not set(val_rows) & set(test_rows)
    assert sorted(train_rows + val_rows + test_rows) == list(range(1, 51))
    assert split(val_fraction=0.1, test_split=0.2) == (train_rows, val_rows, test_rows)  # deterministic
    assert split(test_split=0.2)[2] == test_rows  # the test rows do not depend on the validation split
    assert split(test_split=0.2, seed=7)[2] != test_rows  # ...but on the seed
    assert split(val_fraction=0.1)[1] != val_rows and len(split()[2]) == 0


def test_test_split_and_test_source_are_one_or_the_other():
    from finetune.config import ConfigError, validate

    cfg = RunConfig()
    cfg.data.test_split, cfg.data.test_source = 0.1, "test.jsonl"
    with pytest.raises(ConfigError, match="data.test_split and data.test_source both name a test set"):
        validate(cfg)
    cfg.data.test_source, cfg.training.method = "", "dpo"
    with pytest.raises(ConfigError, match="data.test_split holds out rows of sft data"):
        validate(cfg)


def test_a_run_with_a_test_split_is_scored_on_exactly_the_held_out_rows(tiny_model_dir, tmp_path, capsys):
    from finetune.data import format_dataset
    from finetune.evaluate import read_test_set
    from finetune.events import read_events

    rows = [{"prompt": f"Question number {i}?", "completion": "OK"} for i in range(16)]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    cfg = RunConfig()
    cfg.model.id, cfg.quantization.load_in, cfg.lora.r = str(tiny_model_dir), "none", 4
    cfg.data.source, cfg.data.template, cfg.data.test_split, cfg.data.test_max_new_tokens = str(data), "chatml", 0.25, 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 2, 4, 64, 2, False
    result = train(cfg, runs_root=tmp_path / "runs")

    held = format_dataset(str(data), DataConfig(template="chatml", test_split=0.25)).test_examples
    expected = [rows[e.row - 1]["prompt"] for e in held]
    kept = read_test_set(result.run_dir / runs.TEST_SET)
    assert [e.prompt[-1]["content"] for e in kept] == expected and all(e.reference == "OK" for e in kept)
    started = next(e for e in read_events(result.run_dir) if e["type"] == "started")
    assert started["data"]["train_examples"] == 12 and started["data"]["test_examples"] == 4
    report = runs.read_eval_report(result.run_dir)
    assert report["test_set"]["file"] == runs.TEST_SET and report["n"] == 4
    assert [ex["prompt"][-1]["content"] for ex in report["examples"]] == expected
    assert [c["step"] for c in report["checkpoints"]] == [2]

    # `finetune eval` of the run without --data scores the same rows
    capsys.readouterr()
    out = tmp_path / "again.json"
    assert main(["eval", "--adapter", str(result.run_dir), "--no-base", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    assert again["answers"] == report["answers"] and again["n_prompts"] == 4


def test_train_takes_a_test_split_on_the_command_line():
    import argparse

    from finetune.commands import train as train_command

    parser = argparse.ArgumentParser()
    train_command.register(parser.add_subparsers())
    assert train_command.build_config(parser.parse_args(["train", "--test-split", "0.1"])).data.test_split == 0.1
