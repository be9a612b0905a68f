"""`python -m finetune generate` and the inference engine: the adapter's own template and base are used,
greedy is deterministic, prompts files in and answers out."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from finetune.cli import main
from finetune.config import RunConfig
from finetune.train import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    cfg = RunConfig()
    cfg.model.id = str(tiny_model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template = "chatml"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 4, 4, 128, 100, False
    t.learning_rate = 5e-3
    return train(cfg, runs_root=tmp_path_factory.mktemp("runs"))


def test_generate_prompt_prints_only_the_answer(tiny_run, capsys):
    argv = ["generate", "--adapter", str(tiny_run.run_dir), "--prompt", "Hello", "--max-new-tokens", "6",
            "--temperature", "0"]
    assert main(argv) == 0
    first = capsys.readouterr().out
    assert main(argv) == 0
    assert capsys.readouterr().out == first  # greedy: the same answer twice
    assert first.strip()


def test_generate_prompts_file_writes_answers(tiny_run, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Hi"}) + "\n" + json.dumps(
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                      {"role": "user", "content": "c"}]}) + "\n")
    out = tmp_path / "answers.jsonl"
    assert main(["generate", "--adapter", str(tiny_run.adapter_dir), "--prompts", str(prompts), "--max-new-tokens",
                 "4", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["prompt"] for r in rows][0] == "Hi" and len(rows) == 2
    assert all(isinstance(r["answer"], str) for r in rows)


def test_adapter_template_and_base_are_used(tiny_run, tiny_model_dir):
    from finetune import inference

    assert inference.adapter_template(tiny_run.run_dir)["template"] == "chatml"
    assert inference.adapter_base(tiny_run.run_dir) == str(tiny_model_dir)
    loaded, tpl = inference._prepare(None, str(tiny_run.run_dir), None, None)
    prompt = inference.build_prompt([{"role": "user", "content": "Q"}], tpl, loaded.tokenizer)
    assert prompt == "<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n"


def test_base_and_adapter_answers_share_one_loaded_model(tiny_run, tiny_model_dir):
    from finetune import inference

    loaded = inference.load(str(tiny_model_dir))
    before = set(loaded.adapters)
    with_adapter = inference.generate_batch(["Q"], adapter=str(tiny_run.run_dir), max_new_tokens=5)
    base = inference.generate_batch(["Q"], model=str(tiny_model_dir), template="chatml", max_new_tokens=5)
    assert inference.load(str(tiny_model_dir)) is loaded  # the base stays loaded
    # the adapter was attached to the cached base by name, not loaded as a second model
    assert tiny_run.adapter_dir.resolve() in {p.resolve() for p in loaded.adapters.values()}
    assert len(set(loaded.adapters) - before) <= 1
    again = inference.generate_batch(["Q"], adapter=str(tiny_run.run_dir), max_new_tokens=5)
    assert again == with_adapter and isinstance(base[0], str)


def test_bad_prompts_file(tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"nope": 1}\n')
    assert main(["generate", "--prompts", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == f'error: {bad}:1: expected {{"prompt": "..."}} or {{"messages": [...]}}'


def test_prompts_file_with_a_number_json_cannot_read_is_a_usage_error(tmp_path, capsys):
    # json.loads raises a plain ValueError (no .msg) for an integer over Python's digit limit
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": ' + "1" * 5000 + "}\n")
    assert main(["generate", "--prompts", str(bad)]) == 2
    assert "1: not valid JSON (Exceeds the limit" in capsys.readouterr().err


def test_base_cache_is_bounded_by_count_and_memory(tiny_model_dir, tmp_path, monkeypatch):
    import shutil

    from finetune import inference

    monkeypatch.setattr(inference, "_cache", type(inference._cache)())  # this test's own cache
    copies = []
    for i in range(3):
        copies.append(tmp_path / f"copy{i}")
        shutil.copytree(tiny_model_dir, copies[-1])
    first = inference.load(str(copies[0]))
    second = inference.load(str(copies[1]))
    assert inference.load(str(copies[0])) is first  # both fit: the first is still cached (and now the newest)
    inference.load(str(copies[2]))  # a third base: the least recently used one (copies[1]) goes
    assert [k[0] for k in inference._cache] == [str(copies[0]), str(copies[2])]
    assert inference.load(str(copies[1])) is not second

    # a memory budget of one and a half bases keeps one base only
    size = inference._footprint(first.model)
    assert size > 10e6  # the tiny model's 49152 x 64 fp32 embeddings
    device_memory = inference.device_memory("cpu")
    monkeypatch.setattr(inference, "CACHE_MEMORY_SHARE", 1.5 * size / device_memory)
    inference.load(str(copies[0]))
    assert [k[0] for k in inference._cache] == [str(copies[0])]


def test_generation_uses_the_cores_that_training_leaves(tiny_run, tiny_model_dir, tmp_path, monkeypatch):
    """Beside a run that trains on this machine, the app's generations use the cores the run leaves free."""
    import threading

    import torch

    from finetune import inference
    from finetune import slots
    from finetune.backends import local

    monkeypatch.delenv(local.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv(slots.MAX_ENV, raising=False)
    monkeypatch.setattr(local, "cpu_cores", lambda: 4)
    q = tmp_path / ".queue"
    assert local.cpu_threads_left(q) == 4  # nothing trains: every core
    slot = slots.acquire_slot(q)  # a run trains (it holds the slot) with 3 threads
    try:
        assert local.cpu_threads_left(q) == 1
    finally:
        slots.release(slot)
    assert local.cpu_threads_left(q) == 4

    seen = []
    inference.set_cpu_threads(lambda: seen.append(1) or 1)
    try:
        def chat():  # in a thread of its own, as the app's workers do; torch keeps the count per thread
            list(inference.stream_chat([{"role": "user", "content": "Q"}], adapter=str(tiny_run.run_dir),
                                       max_new_tokens=2))
            inference.generate_batch(["Q"], adapter=str(tiny_run.run_dir), max_new_tokens=2)
            seen.append(torch.get_num_threads())

        worker = threading.Thread(target=chat)
        worker.start()
        worker.join()
    finally:
        inference.set_cpu_threads(None)
    assert seen == [1, 1, 1]  # the policy was asked before each generation, and applied


def _long_answers(monkeypatch):
    """Answers of 400 tokens (the tiny model could end one early), so that a generation is still running."""
    from finetune import inference

    kwargs = inference._gen_kwargs
    monkeypatch.setattr(inference, "_gen_kwargs", lambda *a: {**kwargs(*a), "min_new_tokens": 400})


def test_a_chat_closed_early_leaves_no_generation_running(tiny_model_dir, monkeypatch):
    from finetune import inference

    _long_answers(monkeypatch)
    before = set(threading.enumerate())
    stream = inference.stream_chat([{"role": "user", "content": "Q"}], model=str(tiny_model_dir), template="chatml",
                                   max_new_tokens=400, temperature=0)
    next(stream)  # the answer has started
    stream.close()  # the reader left (gradio closes a cancelled chat's iterator)
    assert set(threading.enumerate()) - before == set()  # no generation thread runs on, unread


EXIT_MID_GENERATION = """
import sys, threading, time
from finetune import inference
kwargs = inference._gen_kwargs
inference._gen_kwargs = lambda *a: {**kwargs(*a), "min_new_tokens": 400}
started = threading.Event()
inference.set_cpu_threads(lambda: started.set() or 1)  # asked just before generate
threading.Thread(target=inference.generate_batch, args=(["Q"],), daemon=True,
                 kwargs=dict(model=sys.argv[1], template="chatml", max_new_tokens=400)).start()
assert started.wait(300)
time.sleep(0.3)
print("exiting mid-generation", flush=True)
"""


def test_the_interpreter_exits_cleanly_while_a_generation_runs(tiny_model_dir):
    # a daemon thread still inside torch when the interpreter finalizes aborted the process:
    # "terminate called without an active exception", exit code 134, after every test had passed
    done = subprocess.run([sys.executable, "-c", EXIT_MID_GENERATION, str(tiny_model_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert "exiting mid-generation" in done.stdout, done.stderr[-2000:]
    assert done.returncode == 0, done.stderr[-2000:]
