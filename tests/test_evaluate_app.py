"""The /evaluate endpoint through the real gradio_client against a launched app: a run of the caller's and its
checkpoints scored on an uploaded test file; the report lands in the run folder; another session cannot use it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apps import launched
from test_app import client

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "finetune" / "samples" / "city_year_heldout.jsonl"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("downloads"), css=False) as (_, url):
        yield url, root


@pytest.mark.slow  # ~25 s of CPU (an app, a tiny run, five evaluations): the default suite covers the library and CLI
def test_evaluate_endpoint_scores_the_run_and_each_checkpoint(app, tiny_model_dir, tmp_path):
    from gradio_client import handle_file

    from finetune import runs
    from finetune.config import RunConfig
    from finetune.service import Workspace
    from finetune.train import train

    url, root = app
    c = client(url)
    # a run of this session's (trained here, in its folder: the app serves it as one of the session's runs)
    cfg = RunConfig()
    cfg.model.id, cfg.quantization.load_in, cfg.data.template, cfg.lora.r = str(tiny_model_dir), "none", "chatml", 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 6, 4, 96, 3, False
    run_id = train(cfg, runs_root=Workspace(root, multi_user=True).for_owner("session:" + c.session_hash)).run_id
    test = tmp_path / "test.jsonl"
    test.write_text("".join(HELDOUT.read_text().splitlines(keepends=True)[:4]))
    report = c.predict(run_id, handle_file(str(test)), "all", 4, api_name="/evaluate")
    for key in ("exact_match", "contains", "f1", "rouge_l", "loss", "n", "answers", "base", "checkpoints"):
        assert key in report, key
    assert report["n"] == 4 and len(report["answers"]) == 4
    assert [c_["step"] for c_ in report["checkpoints"]] == [3, 6]
    assert report["loss"] > 0 and report["base"]["loss"] > 0
    [run_dir] = [p for p in root.rglob(run_id) if p.is_dir()]
    assert json.loads((run_dir / runs.EVAL_REPORT).read_text())["answers"] == report["answers"]

    # a checkpoint by RUN@step, and the best one by a metric, evaluate and chat like the run itself
    one = c.predict(f"{run_id}@3", handle_file(str(test)), "none", 4, api_name="/evaluate")
    assert one["step"] == 3 and one["answers"] == report["checkpoints"][0]["answers"]
    history = c.predict(message="Hi", adapter=f"{run_id}@best-loss", temperature=0.0, max_new_tokens=8, api_name="/chat")
    assert history[-1]["role"] == "assistant"

    # another session cannot evaluate this run
    from gradio_client.exceptions import AppError

    with pytest.raises(AppError, match="no run"):
        client(url).predict(run_id, handle_file(str(test)), "all", 4, api_name="/evaluate")
    with pytest.raises(AppError, match="no checkpoint '9'.*@3"):
        c.predict(f"{run_id}@9", handle_file(str(test)), "none", 4, api_name="/evaluate")


def test_dataset_tab_counts_the_held_out_test_rows(app):
    from gradio_client import handle_file

    summary, *_ = client(app[0]).predict(data_file=handle_file(str(ROOT / "finetune" / "samples" / "city_year.jsonl")),
                                         template="chatml", val_fraction=0.1, test_split=0.2,
                                         api_name="/format_dataset")
    # 240 rows: 48 held out as the test set, then a tenth of the other 192 for validation
    assert "rows written: 240 (173 train, 19 validation, 48 test)" in summary
    assert "test set: 48 rows held out" in summary
