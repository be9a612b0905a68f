"""The app and its API with training.method: the Dataset tab previews preference pairs as training renders them,
and /start_training refuses a config that names reward code (a launched app, a real gradio_client)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from apps import launched

from finetune.config import RunConfig, apply_overrides


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("downloads"), css=False) as (_, url):
        yield url, root


def test_dataset_preview_of_pairs_and_the_refusal_of_reward_code(server, tmp_path):
    from gradio_client import Client, handle_file

    url, root = server
    c = Client(url, verbose=False)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Capital of France?", "response_j": "Paris.", "response_k": "Lyon."},
        {"question": "2+2?", "response_j": "4", "response_k": "4"},
    ]))
    summary, preview, _plot, problems, formatted = c.predict(
        handle_file(str(pairs)), "", "", "train", "llama2", "", "", "", 128, "assistant", False, "dpo",
        api_name="/format_dataset")
    assert "DPO data" in summary and "prompt=question, chosen=response_j, rejected=response_k" in summary
    assert "row 1 (chosen)" in preview and "row 1 (rejected)" in preview
    assert "<mark class='ft-trained'> Paris. &lt;|im_end|&gt;</mark>" in preview  # the model's own end token
    assert problems["data"][0][:3] == [2, "rejected", "is the same as chosen"]
    assert [json.loads(line)["chosen"] for line in Path(formatted).read_text().splitlines()] == [" Paris. <|im_end|>"]

    evil = tmp_path / "evil.py"
    evil.write_text("def reward_x(prompts, completions, **kw):\n    return [1.0] * len(completions)\n")
    cfg = apply_overrides(RunConfig(), ["training.method=grpo", "rewards.exact_match=1", f"rewards.module={evil}"])
    with pytest.raises(Exception, match="the app does not run reward code"):
        c.predict(cfg.to_yaml(), handle_file(str(pairs)), "local", api_name="/start_training")
    assert not list(root.rglob("config.yaml"))  # no run was created


def test_the_api_names_the_method_of_pairs_or_labelled_answers_asked_as_sft(server, tmp_path):
    from gradio_client import Client, handle_file

    url, _ = server
    c = Client(url, verbose=False)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon."}) + "\n")
    with pytest.raises(Exception, match="pairs.jsonl: these are preference pairs .*pick DPO or ORPO as the method"):
        c.predict(handle_file(str(pairs)), "", "", "train", "llama2", "", "", "", 128, "assistant", False, "sft",
                  api_name="/format_dataset")
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text("".join(json.dumps({"prompt": "Capital of France?", "completion": answer, "label": good}) + "\n"
                                for answer, good in (("Paris.", True), ("Lyon.", False))))
    summary, *_ = c.predict(handle_file(str(labelled)), "", "", "train", "llama2", "", "", "", 128, "assistant", False,
                            "sft", api_name="/format_dataset")
    assert "SFT would imitate the bad answers too: pick KTO as the method" in summary, summary
