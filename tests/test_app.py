"""The app through the real gradio_client against a launched server: the whole flow, isolation between
sessions, bad uploads, the README's Python example, and import safety."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from apps import ROOT, SAMPLE, launched



@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("downloads"), css=False) as (_, url):
        yield url


def client(url):
    from gradio_client import Client

    return Client(url, verbose=False)


def tiny_yaml(model_dir: Path, steps: int = 6) -> str:
    from finetune.config import RunConfig

    cfg = RunConfig()
    cfg.model.id = str(model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template = "model"
    cfg.lora.r = 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = steps, 4, 128, 3
    t.learning_rate, t.gradient_checkpointing = 5e-3, False
    return cfg.to_yaml()


def wait_finished(c, run_id: str, timeout: float = 180) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = c.predict(run_id, api_name="/run_status")
        if state["status"] in ("finished", "failed", "stopped", "interrupted"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} did not finish: {state}")


def test_api_endpoints_are_named_and_documented(server):
    info = client(server).view_api(return_format="dict", print_info=False)
    names = set(info["named_endpoints"])
    for name in ("/format_dataset", "/start_training", "/run_status", "/stop_training", "/list_runs", "/chat",
                 "/compare", "/push_adapter", "/estimate_memory"):
        assert name in names, name
    params = [p["parameter_name"] for p in info["named_endpoints"]["/start_training"]["parameters"]]
    assert params[:2] == ["config_yaml", "data_file"]


def test_full_flow_format_train_chat_compare(server, tiny_model_dir):
    from gradio_client import handle_file

    c = client(server)
    summary, preview, _plot, problems, formatted = c.predict(
        handle_file(str(SAMPLE)), "", "", "train", "chatml", "", "", "", 128, "assistant", api_name="/format_dataset")
    assert "240" in summary and "prompt" in summary.lower()
    assert "ft-trained" in preview and "&quot;city&quot;" in preview
    lines = Path(formatted).read_text().splitlines()
    assert len(lines) == 240

    run_id = c.predict(tiny_yaml(tiny_model_dir), handle_file(str(SAMPLE)), "local", api_name="/start_training")
    assert re.match(r"^\d{8}-\d{6}-[0-9a-f]{10}$", run_id)
    state = wait_finished(c, run_id)
    assert state["status"] == "finished", state
    assert state["step"] == 6 and state["has_adapter"] and len(state["losses"]) == 6
    assert "path" not in state
    assert [r["run_id"] for r in c.predict(api_name="/list_runs")] == [run_id]

    history = c.predict("Extract the city and the year as JSON.\nIvan moved to Oslo in 1972.", [], "", run_id,
                        0.0, 8, 0.9, 1.0, 0, api_name="/chat")
    assert history[-1]["role"] == "assistant" and isinstance(history[-1]["content"], (str, list))
    base, tuned = c.predict("Hello", "", run_id, 0.0, 8, 0, api_name="/compare")
    assert isinstance(base, str) and isinstance(tuned, str)

    # streaming: a generator endpoint yields partial histories
    job = c.submit("Hi", [], "", run_id, 0.0, 8, 0.9, 1.0, 0, api_name="/chat")
    outputs = job.result() and job.outputs()
    assert len(outputs) >= 1


def test_sessions_do_not_see_each_others_runs(server, tiny_model_dir):
    a, b = client(server), client(server)
    run_id = a.predict(tiny_yaml(tiny_model_dir, steps=2), None, "local", api_name="/start_training")
    assert run_id in [r["run_id"] for r in a.predict(api_name="/list_runs")]
    assert b.predict(api_name="/list_runs") == []
    from gradio_client.exceptions import AppError

    for endpoint in ("/run_status", "/stop_training"):
        with pytest.raises(AppError, match="no run"):
            b.predict(run_id, api_name=endpoint)
    with pytest.raises(AppError, match="not a valid run id"):
        b.predict("../../etc/passwd", api_name="/run_status")
    wait_finished(a, run_id)


@pytest.mark.parametrize("name,content,expected", [
    ("empty.csv", b"", "empty"),
    ("notes.txt", b"hello", "file type"),
    ("broken.json", b'[{"instruction": "a", "output": ', "JSON"),
])
def test_bad_uploads_give_a_message_not_a_traceback(server, tmp_path, name, content, expected):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(AppError) as err:
        client(server).predict(handle_file(str(f)), "", "", "train", "llama2", "", "", "", 128, "assistant",
                               api_name="/format_dataset")
    msg = str(err.value)
    assert expected.lower() in msg.lower() and "Traceback" not in msg


def test_readme_python_example_runs(server, tiny_model_dir, tmp_path):
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use from Python", 1)[1].split("\n## ", 1)[0]
    code = re.search(r"```python\n(.+?)\n```", section, re.S).group(1)
    code = code.replace("http://127.0.0.1:7860/", server)
    code = code.replace('config = open("config.yaml").read()', f"config = {tiny_yaml(tiny_model_dir, 4)!r}")
    code = code.replace('"my_data.jsonl"', repr(str(SAMPLE)))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "finished" in done.stdout


def test_app_module_imports_without_side_effects():
    done = subprocess.run([sys.executable, "-c", "import app, sys; assert 'gradio' not in sys.modules; print('ok')"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_a_run_is_named_in_its_config_and_the_run_list_and_a_hostile_name_never_becomes_a_path(server, tiny_model_dir):
    from gradio_client.exceptions import AppError

    from finetune.config import RunConfig

    c = client(server)
    for hostile, said in (("../../etc", "must not contain"), ("a\nb", "one line"), ("x" * 81, "at most 80")):
        cfg = RunConfig.from_yaml(tiny_yaml(tiny_model_dir, steps=1))
        cfg.name = hostile
        with pytest.raises(AppError, match=said):
            c.predict(cfg.to_yaml(), None, "local", api_name="/start_training")
    assert c.predict(api_name="/list_runs") == []  # nothing was started
    cfg = RunConfig.from_yaml(tiny_yaml(tiny_model_dir, steps=1))
    cfg.name = "Oslo <i>extractor & co"
    run_id = c.predict(cfg.to_yaml(), None, "local", api_name="/start_training")
    assert re.match(r"^\d{8}-\d{6}-oslo-i-extractor-co-[0-9a-f]{10}$", run_id), run_id  # letters and digits only
    assert [(r["run_id"], r["name"]) for r in c.predict(api_name="/list_runs")] == [(run_id, cfg.name)]
    state = wait_finished(c, run_id)
    assert state["name"] == cfg.name
    c.predict(run_id, api_name="/delete_run")
    assert c.predict(api_name="/list_runs") == []
