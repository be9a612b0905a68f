"""An evaluation says how far it is and how long it has left, stops when its progress says to (a cancel), and sizes
its answers from the references: the library, then the /evaluate and /cancel_evaluation endpoints through the real
gradio_client against a launched app."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from apps import launched
from test_app import client

from finetune import runs

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "finetune" / "samples" / "city_year_heldout.jsonl"


def tiny_run(model_dir: Path, runs_root: Path):
    """A tiny run of 6 steps that keeps the checkpoints of steps 3 and 6."""
    from finetune.config import RunConfig
    from finetune.train import train

    cfg = RunConfig()
    cfg.model.id, cfg.quantization.load_in, cfg.data.template, cfg.lora.r = str(model_dir), "none", "chatml", 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 6, 4, 96, 3, False
    return train(cfg, runs_root=runs_root)


def heldout_file(tmp_path: Path, rows: int) -> Path:
    path = tmp_path / f"test-{rows}.jsonl"
    lines = HELDOUT.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join((lines * (rows // len(lines) + 1))[:rows]), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    return tiny_run(tiny_model_dir, tmp_path_factory.mktemp("runs"))


def test_progress_counts_every_models_answers_and_says_the_time_left(run, tmp_path):
    from finetune.evaluate import EvalProgress, evaluate

    seen: list[EvalProgress] = []
    report = evaluate(run.run_dir, heldout_file(tmp_path, 10), checkpoints="all", max_new_tokens=4, progress=seen.append,
                      write_to_run=False)
    assert len(report["checkpoints"]) == 2
    total = 10 * 4  # the adapter, the base and two checkpoints answer the 10 prompts
    assert {p.total for p in seen} == {total} and seen[-1].done == total
    assert [p.done for p in seen] == sorted(p.done for p in seen)  # it only moves forward
    assert seen[0].eta_s is None and all(p.eta_s is not None for p in seen if p.done)
    assert {p.what for p in seen} == {"adapter", "base model", "checkpoint 3", "checkpoint 6"}
    # after each chunk of answers, not only between models
    assert len([p for p in seen if p.what == "adapter"]) >= 3


def test_a_progress_that_raises_stops_the_evaluation_there(run, tmp_path):
    from finetune.evaluate import EvalProgress, evaluate

    class Stop(Exception):
        pass

    seen: list[EvalProgress] = []

    def stop_after_first_chunk(p: EvalProgress) -> None:
        seen.append(p)
        if p.done:
            raise Stop

    report_file = run.run_dir / runs.EVAL_REPORT
    before = report_file.read_bytes() if report_file.exists() else None
    with pytest.raises(Stop):
        evaluate(run.run_dir, heldout_file(tmp_path, 24), checkpoints="all", max_new_tokens=4,
                 progress=stop_after_first_chunk)
    assert seen[-1].done == 8 and seen[-1].total == 24 * 4  # one chunk of the adapter's answers, then no more
    assert (report_file.read_bytes() if report_file.exists() else None) == before  # nothing written


def test_max_new_tokens_0_is_sized_from_the_references(run, tmp_path, smollm2_tokenizer):
    from finetune.evaluate import answer_budget, evaluate, read_test_set

    test = heldout_file(tmp_path, 4)
    longest = max(len(smollm2_tokenizer(e.reference, add_special_tokens=False)["input_ids"])
                  for e in read_test_set(test))
    report = evaluate(run.run_dir, test, max_new_tokens=0, write_to_run=False, base=False)
    assert report["settings"]["max_new_tokens"] == max(16, math.ceil(longest * 1.25) + 8) < 256
    assert answer_budget(read_test_set(test), smollm2_tokenizer) == report["settings"]["max_new_tokens"]


# -- the endpoints, through gradio_client against a launched app


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("app-runs")
    with launched(root, tmp_path_factory.mktemp("downloads"), css=False) as (_, url):
        yield url, root


def session_run(root: Path, c, model_dir: Path) -> str:
    from finetune.service import Workspace

    return tiny_run(model_dir, Workspace(root, multi_user=True).for_owner("session:" + c.session_hash)).run_id


def test_evaluate_endpoint_reports_answers_done_and_time_left_and_sizes_answers(app, tiny_model_dir, tmp_path):
    from gradio_client import handle_file

    url, root = app
    c = client(url)
    run_id = session_run(root, c, tiny_model_dir)
    job = c.submit(run_id, handle_file(str(heldout_file(tmp_path, 24))), "all", 0, api_name="/evaluate")
    units = []
    while not job.done():
        status = job.status()
        units += [u for u in status.progress_data or [] if u not in units]
        time.sleep(0.05)
    report = job.result()
    assert report["settings"]["max_new_tokens"] < 256  # sized from the references' lengths
    assert units and {u.unit for u in units} == {"answers"} and {u.length for u in units} == {24 * 4}, units
    assert any("left" in (u.desc or "") for u in units), [u.desc for u in units]
    assert [u.index for u in units] == sorted(u.index for u in units)


def test_cancel_evaluation_stops_a_running_evaluation(app, tiny_model_dir, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    url, root = app
    c = client(url)
    run_id = session_run(root, c, tiny_model_dir)
    assert c.predict(api_name="/cancel_evaluation") == "No evaluation of yours is running."
    # 48 prompts x 4 models x up to 256 tokens: minutes of answers, unless cancelled
    job = c.submit(run_id, handle_file(str(heldout_file(tmp_path, 48))), "all", 256, api_name="/evaluate")
    deadline = time.time() + 120
    while not any(u.index for u in job.status().progress_data or []) and time.time() < deadline:
        time.sleep(0.1)
    assert "cancelled" in c.predict(api_name="/cancel_evaluation")
    with pytest.raises(AppError, match=r"cancelled after (\d+) of 192 answers; nothing was written") as e:
        job.result(timeout=120)
    assert int(e.value.args[0].split("after ")[1].split(" ")[0]) < 192  # it stopped before the end
    assert c.predict(api_name="/cancel_evaluation") == "No evaluation of yours is running."  # it ended
    [run_dir] = [p for p in root.rglob(run_id) if p.is_dir()]
    assert not (run_dir / runs.EVAL_REPORT).exists()


def test_a_runs_own_test_set_is_answered_within_a_budget_sized_from_its_references(tiny_model_dir, tmp_path,
                                                                                  smollm2_tokenizer):
    from finetune.config import RunConfig
    from finetune.evaluate import answer_budget, read_test_set
    from finetune.train import train

    test = heldout_file(tmp_path, 4)
    cfg = RunConfig()
    assert cfg.data.test_max_new_tokens == 0  # the default: sized from the references, not 256 tokens each
    cfg.model.id, cfg.quantization.load_in, cfg.data.template, cfg.lora.r = str(tiny_model_dir), "none", "chatml", 4
    cfg.data.test_source = str(test)
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 4, 4, 96, 2, False
    result = train(cfg, runs_root=tmp_path / "runs")
    report = runs.read_eval_report(result.run_dir)
    budget = answer_budget(read_test_set(test), smollm2_tokenizer)
    assert report["settings"]["max_new_tokens"] == budget < 256
    # the end of the run took the checkpoints' figures (same test set, same budget): one entry each
    assert not report.get("in_progress") and [c["step"] for c in report["checkpoints"]] == [2, 4]
    events = runs.read_events(result.run_dir)
    assert len([e for e in events if e["type"] == "evaluation" and e.get("step") == 2]) == 1
