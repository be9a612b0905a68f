"""`inference.prompt_for` is the one place that decides how an adapter is prompted; `finetune generate` and
`finetune chat` use it: the adapter's trained template and system prompt unless --template / --system."""

from __future__ import annotations

import io

import pytest

from finetune.cli import main
from finetune.config import DataConfig, RunConfig
from finetune.train import train

SYSTEM = "Answer as JSON."
CHATML_HI = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    cfg = RunConfig()
    cfg.model.id = str(tiny_model_dir)
    cfg.quantization.load_in = "none"
    cfg.data.template, cfg.data.system_prompt = "chatml", SYSTEM
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.gradient_checkpointing = 2, 4, 128, 100, False
    return train(cfg, runs_root=tmp_path_factory.mktemp("runs"))


@pytest.fixture
def sent(monkeypatch):
    from finetune import inference

    texts: list[str] = []
    real = inference.build_prompt

    def record(*args, **kwargs):
        texts.append(real(*args, **kwargs))
        return texts[-1]

    monkeypatch.setattr(inference, "build_prompt", record)
    return texts


def test_prompt_for_defaults_overrides_and_own_system_message(run, smollm2_tokenizer):
    from finetune import inference
    from finetune.templates import render

    p = inference.prompt_for("Hi", adapter=str(run.run_dir))
    assert (p.text, p.template, p.system_prompt, p.eos) == (CHATML_HI, "chatml", SYSTEM, "<|im_end|>")
    assert p.token_count == len(smollm2_tokenizer(CHATML_HI, add_special_tokens=False)["input_ids"])
    assert not p.template_changed and p.warning == ""
    assert "<|im_end|>" in p.stop_strings

    own = [{"role": "system", "content": "Mine."}, {"role": "user", "content": "Hi"}]
    assert inference.prompt_for(own, adapter=str(run.run_dir)).text == CHATML_HI.replace(SYSTEM, "Mine.")
    assert inference.prompt_for("Hi", adapter=str(run.run_dir), system_prompt="Other.").system_prompt == "Other."

    q = inference.prompt_for("Hi", adapter=str(run.run_dir), template="llama2")
    dialog = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi"}]
    assert q.text == render(dialog, "llama2", smollm2_tokenizer, add_generation_prompt=True).text
    assert q.template_changed and "chatml" in q.warning and q.trained_template == "chatml"

    with pytest.raises(Exception, match="unknown template"):
        inference.prompt_for("Hi", adapter=str(run.run_dir), template="nope")


def test_generate_uses_the_adapters_template_and_system_prompt(run, sent, capsys):
    base = ["generate", "--adapter", str(run.run_dir), "--prompt", "Hi", "--max-new-tokens", "2", "--temperature", "0"]
    assert main(base) == 0
    assert sent == [CHATML_HI]
    sent.clear()
    assert main(base + ["--system", "Be brief."]) == 0
    assert sent == [CHATML_HI.replace(SYSTEM, "Be brief.")]
    sent.clear()
    assert main(base + ["--template", "llama2"]) == 0
    assert sent[0].endswith(f"[INST] <<SYS>>\n{SYSTEM}\n<</SYS>>\n\nHi [/INST]")
    capsys.readouterr()


def test_chat_uses_the_adapters_template_and_system_prompt(run, sent, monkeypatch, capsys):
    args = ["chat", "--adapter", str(run.run_dir), "--max-new-tokens", "2", "--temperature", "0"]
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    assert main(args) == 0
    assert sent == [CHATML_HI]
    sent.clear()
    monkeypatch.setattr("sys.stdin", io.StringIO("Hi\n"))
    assert main(args + ["--system", "Be brief."]) == 0
    assert sent == [CHATML_HI.replace(SYSTEM, "Be brief.")]
    capsys.readouterr()


def _rows(systems):
    rows = []
    for i, s in enumerate(systems):
        msgs = ([{"role": "system", "content": s}] if s else []) + [
            {"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]
        rows.append({"messages": msgs})
    return rows


@pytest.mark.parametrize("systems,given,ignored,default", [
    (["Own.", "Own.", None], "Set.", 2, "Set."),  # mixed: the run keeps the system prompt given
    (["Own.", "Own.", "Own."], "Set.", 3, "Own."),  # every row shares one: that is the run's default
    ([None, None], "Set.", 0, "Set."),
    (["Own.", "Other."], "", 0, ""),  # nothing given: nothing ignored, no shared one
    (["Set.", None], "Set.", 0, "Set."),  # a row's own equal to the given one is not ignored
])
def test_format_result_says_when_the_system_prompt_is_ignored(systems, given, ignored, default):
    from finetune.data import format_dataset, summary_markdown

    result = format_dataset(_rows(systems), DataConfig(template="chatml", system_prompt=given))
    assert (result.own_system_rows, result.default_system_prompt) == (ignored, default)
    summary = summary_markdown(result)
    assert (f"system prompt: ignored for {ignored} of {len(systems)} rows" in summary) == bool(ignored)
    if given or default:
        shown = f'"{default}"' if default else "none"
        assert f"default system prompt the run stores: {shown}" in summary


def test_readme_llama2_example_is_what_render_gives(smollm2_tokenizer):
    from pathlib import Path

    from finetune.templates import render

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    shown = readme.split("`llama2` on SmolLM2", 1)[1].split("```text\n", 1)[1].split("\n```", 1)[0]
    dialog = [{"role": "system", "content": "Answer as JSON."}, {"role": "user", "content": "Ivan moved to Oslo in 1972."},
              {"role": "assistant", "content": '{"city": "Oslo", "year": 1972}'}]
    assert shown == render(dialog, "llama2", smollm2_tokenizer).text
