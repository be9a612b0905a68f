"""The Train tab's backends through gradio_client against a launched app: ZeroGPU (forced on; off a ZeroGPU Space
``spaces.GPU`` is the no-op it is locally) trains a tiny run in chained, checkpointed calls inside the app and
streams progress; off a ZeroGPU Space the option says why it is unavailable; Hugging Face Jobs submits with the
token as a job secret only (the Jobs API faked at huggingface_hub's HfApi), shows the job's status and loss in the
run list, and stop cancels the job. The token appears in no response, event or file."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from apps import launched

from finetune import runs, service
from finetune.events import read_events
from test_app import client, tiny_yaml
from test_backends import LOG, TOKEN, FakeJobsApi, job_config


@pytest.fixture(scope="module")
def zerogpu_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("downloads"), css=False, zerogpu=True,
                  zerogpu_steps_per_call=3) as (_, url):
        yield url, root


@pytest.fixture(scope="module")
def plain_app(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    with launched(root, tmp_path_factory.mktemp("downloads"), css=False) as (_, url):  # no ZeroGPU Space here
        yield url, root


def test_zerogpu_run_trains_in_chained_calls_and_streams_progress(zerogpu_app, tiny_model_dir):
    url, root = zerogpu_app
    c = client(url)
    quota = c.predict(tiny_yaml(tiny_model_dir, steps=6), None, api_name="/zerogpu_quota")  # what the tab shows
    assert quota["max_steps"] == 6 and set(quota["share_of_daily_quota"]) == {"unauthenticated", "free", "pro", "team", "enterprise"}
    job = c.submit(tiny_yaml(tiny_model_dir, steps=6), None, "zerogpu", api_name="/start_training")
    progress_seen = []
    while not job.done():
        status = job.status()
        if status.progress_data:
            progress_seen.append(status.progress_data[0].index)
        time.sleep(0.05)
    run_id = job.result()
    outputs = job.outputs()
    assert outputs[0] == run_id and len(outputs) >= 3, outputs  # the id at once, then after each call

    state = c.predict(run_id, api_name="/run_status")
    assert state["status"] == "finished" and state["step"] == 6 and state["has_adapter"], state
    assert state["backend"] == "zerogpu" and len(state["losses"]) == 6
    run_dir = next(root.glob(f"users/*/{run_id}"))
    kinds = [e["type"] for e in read_events(run_dir)]
    # two calls of 3 steps: each resumes from the checkpoint the previous one wrote
    assert kinds.count("started") == 2 and "paused" in kinds and kinds[-1] == "finished", kinds
    started = [e for e in read_events(run_dir) if e["type"] == "started"]
    assert started[0]["resumed_from"] is None and started[1]["resumed_from"] == "checkpoints/checkpoint-3"
    assert progress_seen and max(i or 0 for i in progress_seen) >= 3, progress_seen
    listed = {r["run_id"]: r for r in c.predict(api_name="/list_runs")}
    assert listed[run_id]["backend"] == "zerogpu"


def test_zerogpu_stop_between_calls_ends_the_run_and_resume_continues(tmp_path, tiny_model_dir):
    from finetune.backends import zerogpu

    cfg = service.parse_config(tiny_yaml(tiny_model_dir, steps=4))
    run_id = zerogpu.start(cfg, tmp_path)
    run_dir = runs.run_path(run_id, tmp_path)
    calls = []

    def chunk(rd, until_step, duration_s):  # a call that trains nothing and ends at a checkpoint
        from finetune.events import EventLog

        calls.append(until_step)
        EventLog(Path(rd)).emit("paused", step=0, max_steps=4)
        return {"status": "paused", "step": 0, "max_steps": 4}

    runs.request_stop(run_dir)
    states = list(zerogpu.run_chunked(None, run_dir, chunk=chunk))
    assert calls == [] and states[-1]["status"] == "stopped"
    assert not runs.stop_requested(run_dir)
    assert list(zerogpu.run_chunked(None, run_dir, chunk=chunk, max_calls=1)) and calls == []  # stays stopped
    list(zerogpu.run_chunked(None, run_dir, chunk=chunk, max_calls=2, resume=True))
    assert len(calls) == 2  # resume=True makes calls again


def test_zerogpu_quota_shown_before_start():
    from finetune.ui.train_tab import quota_markdown

    cfg = job_config()  # Llama-2-7B, QLoRA, batch 4 x 512 tokens
    cfg.training.max_steps = 600
    est = service.zerogpu_quota(cfg)
    assert est["max_steps"] == 600 and est["calls"] >= 2 and est["gpu_seconds"] > 600 * est["per_step_s"]
    text = quota_markdown(est)
    assert f"{est['calls']} call(s)" in text
    for tier in ("unauthenticated 2 min", "free 5 min", "pro 40 min", "team 40 min", "enterprise 60 min"):
        assert tier in text, text
    assert "$1 per 10 minutes" in text  # beyond the quota: credits
    # an epochs-based run counts the rows of its data: more epochs, more quota
    cfg.training.max_steps, cfg.training.epochs, cfg.data.source = 0, 1, ""  # the bundled sample: 240 rows
    one = service.zerogpu_quota(cfg)
    cfg.training.epochs = 3
    three = service.zerogpu_quota(cfg)
    assert three["max_steps"] == 3 * one["max_steps"] and three["gpu_seconds"] > one["gpu_seconds"]
    big = dict(est, gpu_seconds=3 * 3600)
    assert "More than a day's quota for: unauthenticated, free, pro, team, enterprise" in quota_markdown(big)


@pytest.fixture(scope="module")
def own_app(tmp_path_factory):
    """The app on one's own machine (single-user): Jobs may use the machine's HF_TOKEN."""
    root = tmp_path_factory.mktemp("own-runs")
    with launched(root, tmp_path_factory.mktemp("own-downloads"), multi_user=False, css=False) as (_, url):
        yield url, root


def test_zerogpu_is_refused_off_a_zerogpu_space_with_the_reason(plain_app, tiny_model_dir):
    from gradio_client.exceptions import AppError

    url, root = plain_app
    with pytest.raises(AppError, match="not running on a ZeroGPU Space"):
        client(url).predict(tiny_yaml(tiny_model_dir, steps=2), None, "zerogpu", api_name="/start_training")
    assert not list(root.glob("users/*/*/config.yaml"))  # nothing was created


def test_mock_oauth_token_is_never_used():
    import gradio as gr

    from finetune.hub import MOCK_OAUTH_TOKEN
    from finetune.ui.common import oauth_token

    assert oauth_token(gr.OAuthToken(token=MOCK_OAUTH_TOKEN, scope="", expires_at=0)) is None  # then HF_TOKEN, or a clear message
    assert oauth_token(None) is None
    assert oauth_token(gr.OAuthToken(token=TOKEN, scope="", expires_at=0)) == TOKEN


def test_hf_jobs_submit_status_and_cancel_keep_the_token_secret(plain_app, own_app, monkeypatch):
    import huggingface_hub

    fake = FakeJobsApi(LOG.splitlines())
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda *a, **k: fake)
    monkeypatch.setattr(service.space, "SYNC_EVERY_S", 0.0)
    monkeypatch.setenv("SPACE_ID", "me/finetune")
    cfg = job_config("HuggingFaceTB/SmolLM2-135M-Instruct")
    cfg.training.max_steps = 40
    responses = []

    from gradio_client.exceptions import AppError

    # a shared app: an anonymous visitor rents nothing with the server's token
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    with pytest.raises(AppError, match="sign in with Hugging Face to start a Hugging Face job"):
        client(plain_app[0]).predict(cfg.to_yaml(), None, "hf-jobs", "l4x1", "me/out", api_name="/start_training")
    assert fake.sent == []
    # one's own machine: the machine's token, passed to the job as a secret only
    url, root = own_app
    c = client(url)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    with pytest.raises(AppError, match="no Hugging Face token"):
        c.predict(cfg.to_yaml(), None, "hf-jobs", "l4x1", "me/out", api_name="/start_training")
    assert fake.sent == []
    monkeypatch.setenv("HF_TOKEN", TOKEN)

    run_id = c.predict(cfg.to_yaml(), None, "hf-jobs", "l4x1", "me/out", api_name="/start_training")
    responses.append(run_id)
    [sent] = fake.sent
    assert sent["flavor"] == "l4x1" and sent["secrets"] == {"HF_TOKEN": TOKEN}
    assert sent["command"][-2:] == ["--push-to", "me/out"] and TOKEN not in json.dumps(sent["command"])
    assert TOKEN not in json.dumps(sent["env"])

    listed = c.predict(api_name="/list_runs")
    responses.append(listed)
    assert [(r["run_id"], r["backend"]) for r in listed] == [(run_id, "hf-jobs")]

    fake.stage = "RUNNING"
    state = c.predict(run_id, api_name="/run_status")
    responses.append(state)
    assert state["status"] == "running" and state["step"] == 2 and state["loss"] == 2.25, state
    assert state["losses"] == [[1, 2.5], [2, 2.25]]

    stopped = c.predict(run_id, api_name="/stop_training")
    responses.append(stopped)
    assert fake.cancelled == ["job123"] and stopped["status"] == "stopped", stopped

    with pytest.raises(AppError, match="time limit"):  # an epochs-based run has no time estimate here
        c.predict(job_config("HuggingFaceTB/SmolLM2-135M-Instruct").to_yaml(), None, "hf-jobs", "l4x1", "",
                  api_name="/start_training")
    assert TOKEN not in json.dumps(responses)
    run_dir = root / run_id
    files = [f for f in run_dir.rglob("*") if f.is_file()]
    assert {f.name for f in files} >= {"config.yaml", "events.jsonl", "job.json"}
    for f in files:
        assert TOKEN not in f.read_text(errors="replace"), f
