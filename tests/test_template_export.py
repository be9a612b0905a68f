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
