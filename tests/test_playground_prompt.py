"""The Playground prompts the way training did: /chat, /compare and /exact_prompt through the real gradio_client
with keyword arguments; omitted ones fall back to the adapter's trained template and system prompt."""

from __future__ import annotations

import time

import pytest
from apps import launched

SYSTEM = "Answer as JSON."
CHATML_HI = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with launched(tmp_path_factory.mktemp("runs"), tmp_path_factory.mktemp("dl"), css=False) as (_, url):
        yield url


@pytest.fixture(scope="module")
def trained(server, tiny_model_dir):
    """A client and the id of a 2-step run trained with the chatml template and a system prompt."""
    from gradio_client import Client

    from finetune.config import RunConfig

    cfg = RunConfig()
    cfg.model.id = str(tiny_model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template, cfg.data.system_prompt = "chatml", SYSTEM
    cfg.lora.r = 4
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 2, 4, 128, 100, False
    c = Client(server, verbose=False)
    run_id = c.predict(cfg.to_yaml(), None, "local", api_name="/start_training")
    deadline = time.time() + 180
    while (state := c.predict(run_id, api_name="/run_status"))["status"] not in ("finished", "failed", "stopped"):
        assert time.time() < deadline, state
        time.sleep(0.5)
    assert state["status"] == "finished", state
    return c, run_id


@pytest.fixture
def sent(monkeypatch):
    """The prompts inference renders for generation (recorded from build_prompt)."""
    from finetune import inference

    texts: list[str] = []
    real = inference.build_prompt

    def record(*args, **kwargs):
        text = real(*args, **kwargs)
        texts.append(text)
        return text

    monkeypatch.setattr(inference, "build_prompt", record)
    return texts


def test_endpoints_take_the_documented_keyword_arguments(server):
    from gradio_client import Client

    info = Client(server, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"]
    names = {e: [p["parameter_name"] for p in info[e]["parameters"]] for e in ("/chat", "/compare", "/exact_prompt")}
    common = {"adapter", "system_prompt", "template", "temperature", "max_new_tokens", "top_p", "repetition_penalty",
              "seed", "base_model"}
    assert common | {"message", "history"} <= set(names["/chat"])
    assert common | {"prompt"} <= set(names["/compare"])
    assert names["/exact_prompt"][:2] == ["message", "history"]


def test_omitted_arguments_use_the_adapters_trained_template_and_system_prompt(trained, sent, smollm2_tokenizer):
    c, run_id = trained
    text, tokens, used = c.predict(message="Hi", adapter=run_id, api_name="/exact_prompt")
    assert text == CHATML_HI
    assert tokens == len(smollm2_tokenizer(CHATML_HI, add_special_tokens=False)['input_ids'])
    assert used == {"template": "chatml", "system_prompt": SYSTEM, "warning": ""}

    sent.clear()
    history = c.predict(message="Hi", adapter=run_id, temperature=0, max_new_tokens=8, api_name="/chat")
    assert history[0]["role"] == "user"
    assert history[-1]["role"] == "assistant"
    assert sent == [CHATML_HI]  # the chat prompted exactly what the exact-prompt view shows

    sent.clear()
    base, tuned = c.predict(prompt="Hi", adapter=run_id, max_new_tokens=8, api_name="/compare")
    assert isinstance(base, str) and isinstance(tuned, str)
    assert sent == [CHATML_HI, CHATML_HI]  # base and adapter get the same trained prompt


def test_system_prompt_and_template_passed_by_keyword(trained, sent, smollm2_tokenizer):
    c, run_id = trained
    text, _, used = c.predict(message="Hi", adapter=run_id, system_prompt="Be brief.", api_name="/exact_prompt")
    assert text == CHATML_HI.replace(SYSTEM, "Be brief.")
    sent.clear()
    c.predict(message="Hi", adapter=run_id, system_prompt="Be brief.", temperature=0, max_new_tokens=8, seed=1,
              top_p=0.5, repetition_penalty=1.1, api_name="/chat")
    assert sent == [text]

    sent.clear()
    text, _, used = c.predict(message="Hi", adapter=run_id, template="llama2", api_name="/exact_prompt")
    from finetune.templates import render

    dialog = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    assert text == render(dialog, "llama2", smollm2_tokenizer, add_generation_prompt=True).text
    assert text == f"<|im_start|>[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nHi [/INST]"  # SmolLM2's bos, not <s>
    assert used["template"] == "llama2" and "chatml" in used["warning"]  # another template than the trained one
    sent.clear()
    c.predict(prompt="Hi", adapter=run_id, template="llama2", temperature=0, max_new_tokens=8, api_name="/compare")
    assert sent == [text, text]

    # an earlier turn is part of the prompt
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}]},  # the Chatbot's messages format
               {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]}]
    text, _, _ = c.predict(message="Again", history=history, adapter=run_id, api_name="/exact_prompt")
    assert text == CHATML_HI + "Hello<|im_end|>\n<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n"


def test_positional_calls_still_work(trained):
    c, run_id = trained
    history = c.predict("Hi", [], "", run_id, 0.0, 8, 0.9, 1.0, 0, api_name="/chat")
    assert history[-1]["role"] == "assistant"
    base, tuned = c.predict("Hi", "", run_id, 0.0, 8, 0, api_name="/compare")
    assert isinstance(base, str) and isinstance(tuned, str)


def test_dataset_tab_says_when_the_system_prompt_is_ignored(server, tmp_path):
    import json

    from gradio_client import Client, handle_file

    rows = [{"messages": ([{"role": "system", "content": "Own."}] if i < 2 else []) + [
        {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]} for i in range(3)]
    data = tmp_path / "rows.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary, *_ = Client(server, verbose=False).predict(
        handle_file(str(data)), "", "", "train", "chatml", "Set.", "", "", 128, "assistant", api_name="/format_dataset")
    assert "system prompt: ignored for 2 of 3 rows" in summary
    assert 'default system prompt the run stores: "Set."' in summary
