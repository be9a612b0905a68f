"""The adapter carries the template it trained with as a standard Jinja chat template.

Every consumer (plain transformers, vLLM, llama.cpp, ...) reads ``tokenizer.chat_template``: for every built-in
template it must render, byte for byte, the text the training formatter (``templates.render``) produced.
"""

from __future__ import annotations

import functools

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from finetune.templates import (
    MODEL_TEMPLATE,
    TEMPLATES,
    SpecialTokens,
    chat_template_jinja,
    jinja_literal,
    render,
    with_default_system,
)

# transformers compiles chat templates in this environment (chat_template_utils._compile_jinja_template)
ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

CONTENTS = ["Hi", "  padded \n", "ünïcödé ✓ 日本 🙂", "", "a\\b 'single' \"double\"\n\nnext", "{{ x }} {% y %} <s>"]
SYSTEMS = [None, "Be brief.", "  padded system \n", ""]
TOKENS = [None, SpecialTokens("<|im_start|>", "<|im_end|>"), SpecialTokens("", "x'\\")]
DEFAULTS = ["", "Default ✓\n'quoted' \\ system"]


@functools.lru_cache(maxsize=8)
def compiled(template: str):
    return ENV.from_string(template)


def jinja_render(template: str, messages: list[dict[str, str]], gen: bool) -> str:
    return compiled(template).render(messages=messages, add_generation_prompt=gen)


def dialogs():
    for system in SYSTEMS:
        for turns in (1, 2, 3):
            for content in CONTENTS:
                msgs = [{"role": "system", "content": system}] if system is not None else []
                for i in range(turns):
                    msgs += [{"role": "user", "content": f"{content}{i}"}, {"role": "assistant", "content": content}]
                yield msgs


@pytest.mark.parametrize("name", list(TEMPLATES))
@pytest.mark.parametrize("default", DEFAULTS)
def test_jinja_renders_what_training_renders(name, default):
    for tokens in TOKENS:
        tok = tokens or TEMPLATES[name].default_tokens
        template = chat_template_jinja(name, tok, default)
        for msgs in dialogs():
            for gen in (False, True):
                conv = msgs[:-1] if gen else msgs
                want = render(with_default_system(conv, default), name, tokens=tok, add_generation_prompt=gen).text
                assert jinja_render(template, conv, gen) == want, (name, tok, default, conv, gen)


def test_jinja_literal_round_trips_any_text():
    for text in ["", "plain", "quote ' and \\ backslash", "new\nline\ttab\r", "ünï 日本 🙂", "\x00\x1f"]:
        assert ENV.from_string("{{ " + jinja_literal(text) + " }}").render() == text


def test_model_template_keeps_the_base_template_and_adds_the_default_system(smollm2_tokenizer):
    base = smollm2_tokenizer.chat_template
    assert chat_template_jinja(MODEL_TEMPLATE, SpecialTokens(), "", base) == base
    template = chat_template_jinja(MODEL_TEMPLATE, SpecialTokens(), "Answer in French.", base)
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Salut"}]
    want = render(with_default_system(msgs, "Answer in French."), MODEL_TEMPLATE, smollm2_tokenizer).text
    assert jinja_render(template, msgs, False) == want
    own = [{"role": "system", "content": "Own."}, *msgs]
    assert jinja_render(template, own, False) == render(own, MODEL_TEMPLATE, smollm2_tokenizer).text


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_a_real_tokenizer_applies_the_jinja_as_training_rendered(name, smollm2_tokenizer):
    """Through transformers' own apply_chat_template, with the tokens training takes from this tokenizer."""
    from finetune.templates import special_tokens

    tok = special_tokens(name, smollm2_tokenizer)
    template = chat_template_jinja(name, tok, "Default system.")
    msgs = [{"role": "user", "content": "Hi ✓"}, {"role": "assistant", "content": " Hello! "},
            {"role": "user", "content": "And?"}]
    text = smollm2_tokenizer.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                                 add_generation_prompt=True)
    assert text == render(with_default_system(msgs, "Default system."), name, smollm2_tokenizer,
                          add_generation_prompt=True).text


# ---------------------------------------------------------------------------------------------
# trained adapters: 2 steps with each built-in template, then the verifier and plain transformers

TRAIN_ROWS = [
    {"messages": [{"role": "system", "content": "Answer with one word."},
                  {"role": "user", "content": f"Capital number {i}?"}, {"role": "assistant", "content": f"City{i}"}]}
    for i in range(6)
] + [
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello ✓"},
                  {"role": "user", "content": f"Count to {i}"}, {"role": "assistant", "content": " ".join("1" * i)}]}
    for i in range(1, 5)
]
SHARED_SYSTEM = "You are a terse geography tutor."


def write_rows(path, rows):
    import json

    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def train_tiny(model_dir, tmp_path, template, rows=TRAIN_ROWS, **data):
    from finetune.config import RunConfig
    from finetune.train import train

    cfg = RunConfig()
    cfg.model.id = str(model_dir)
    cfg.data.source = str(write_rows(tmp_path / f"data-{template}.jsonl", rows))
    cfg.data.template = template
    cfg.data.val_fraction = 0.2
    for k, v in data.items():
        setattr(cfg.data, k, v)
    cfg.quantization.load_in = "none"
    cfg.lora.r = 4
    cfg.lora.alpha = 8
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps, t.eval_steps = 2, 4, 96, 100, 0
    t.gradient_checkpointing = False
    return train(cfg, runs_root=tmp_path / "runs")


@pytest.mark.parametrize("template", [*TEMPLATES, MODEL_TEMPLATE])
def test_each_template_trains_and_the_verifier_passes(tiny_model_dir, tmp_path, template):
    from finetune.events import read_events
    from finetune.verify import check_template

    result = train_tiny(tiny_model_dir, tmp_path, template)
    checks = [e for e in read_events(result.run_dir) if e["type"] == "template_check"]
    assert len(checks) == 1 and checks[0]["ok"], checks
    assert "Template check: template check passed" in (result.adapter_dir / "README.md").read_text()
    check = check_template(result.run_dir)
    assert check.ok and check.checked > 2 * 6, check.message()  # the run's dialogs and the probes
    assert (result.adapter_dir / "chat_template.jinja").exists() or "chat_template" in (
        result.adapter_dir / "tokenizer_config.json").read_text()


def test_a_run_where_every_row_shares_a_system_prompt_keeps_it_as_default(tiny_model_dir, tmp_path):
    from finetune.adapter import read_template_info

    rows = [{"messages": [{"role": "system", "content": SHARED_SYSTEM}, *r["messages"][-2:]]} for r in TRAIN_ROWS]
    result = train_tiny(tiny_model_dir, tmp_path, "llama2", rows=rows)
    assert read_template_info(result.adapter_dir)["system_prompt"] == SHARED_SYSTEM


@pytest.fixture(scope="module")
def llama2_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("llama2-run")
    return train_tiny(tiny_model_dir, tmp, "llama2", system_prompt="Default tutor prompt.")


def test_the_verifier_names_the_first_difference_of_a_one_character_edit(llama2_run, tmp_path):
    import shutil

    from finetune.cli import main

    adapter = shutil.copytree(llama2_run.adapter_dir, tmp_path / "adapter")
    jinja = adapter / "chat_template.jinja"
    text = jinja.read_text(encoding="utf-8")
    assert "' [/INST]'" in text
    jinja.write_text(text.replace("' [/INST]'", "' [/INST}'", 1), encoding="utf-8")
    from finetune.verify import check_template

    check = check_template(adapter)
    assert not check.ok and check.difference is not None
    d = check.difference
    assert d.index >= 0 and "[/INST]" in d.training and "[/INST}" in d.saved and d.token_index is not None
    assert main(["verify-template", str(llama2_run.run_dir)]) == 0
    assert main(["verify-template", str(adapter)]) == 1


def test_plain_transformers_and_peft_render_the_training_text(llama2_run, tmp_path):
    """No finetune import: what any other tool sees in the adapter folder."""
    import json
    import subprocess
    import sys

    from finetune.adapter import read_template_info
    from finetune.templates import SpecialTokens

    info = read_template_info(llama2_run.adapter_dir)
    assert info["system_prompt"] == "Default tutor prompt."
    held_out = [
        [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Where is Rome?"}],
        [{"role": "user", "content": "Where is Oslo?"}],
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
         {"role": "user", "content": "Bye ✓"}],
    ]
    code = (
        "import json, sys\n"
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n"
        "d = sys.argv[1]\n"
        "tok = AutoTokenizer.from_pretrained(d)\n"
        "model = AutoPeftModelForCausalLM.from_pretrained(d)\n"
        "out = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in json.loads(sys.argv[2])]\n"
        "ids = tok(out[0], add_special_tokens=False, return_tensors='pt')['input_ids']\n"
        "model.generate(ids, max_new_tokens=2, do_sample=False)\n"
        "print(json.dumps(out))\n"
        "assert 'finetune' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(llama2_run.adapter_dir), json.dumps(held_out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    tokens = SpecialTokens(info["bos"], info["eos"])
    want = [render(with_default_system(m, "Default tutor prompt."), "llama2", tokens=tokens,
                   add_generation_prompt=True).text for m in held_out]
    assert got == want
    assert "<<SYS>>\nBe kind.\n<</SYS>>" in got[0] and "<<SYS>>\nDefault tutor prompt.\n<</SYS>>" in got[1]
    assert got[2].count("[INST]") == 2


def test_push_and_merge_refuse_a_mismatched_template_unless_overridden(llama2_run, tmp_path, capsys):
    import json
    import shutil

    from finetune.cli import main
    from finetune.export import merge_adapter
    from finetune.verify import TemplateMismatch

    adapter = shutil.copytree(llama2_run.adapter_dir, tmp_path / "adapter")
    jinja = adapter / "chat_template.jinja"
    jinja.write_text(jinja.read_text(encoding="utf-8").replace("' [/INST]'", "' [/INST}'", 1), encoding="utf-8")
    with pytest.raises(TemplateMismatch, match="first differing character at index"):
        merge_adapter(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()
    assert main(["push", str(adapter), "--repo", "someone/some-adapter"]) == 2
    assert "ignore-template-mismatch" in capsys.readouterr().err
    assert main(["merge", str(adapter), "--out", str(tmp_path / "m")]) == 2
    merged = merge_adapter(adapter, tmp_path / "merged", ignore_template_mismatch=True)
    assert (merged / "config.json").exists()
    # a consistent adapter merges, and the merged model keeps the trained chat template and default system prompt
    merged = merge_adapter(llama2_run.adapter_dir, tmp_path / "merged-ok")
    from transformers import AutoTokenizer

    text = AutoTokenizer.from_pretrained(merged).apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert "<<SYS>>\nDefault tutor prompt.\n<</SYS>>\n\nHi [/INST]" in text
    assert json.loads((merged / "finetune_template.json").read_text())["template"] == "llama2"
