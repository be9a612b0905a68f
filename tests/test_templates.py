"""Templates render exactly the reference formats, and the trained spans are the answers."""

from __future__ import annotations

import pytest

from finetune.templates import (TEMPLATE_NAMES, TemplateError, find_control_strings, render, special_tokens)

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"


def meta_reference(dialog: list[dict], bos: str = "<s>", eos: str = "</s>") -> str:
    """Meta's llama/generation.py `chat_completion`, with tokenizer.encode(bos=, eos=) written as strings."""
    if dialog[0]["role"] == "system":
        dialog = [{"role": dialog[1]["role"], "content": B_SYS + dialog[0]["content"] + E_SYS + dialog[1]["content"]}] + dialog[2:]
    out = ""
    for prompt, answer in zip(dialog[::2], dialog[1::2]):
        out += f"{bos}{B_INST} {(prompt['content']).strip()} {E_INST} {(answer['content']).strip()} {eos}"
    if dialog[-1]["role"] == "user":
        out += f"{bos}{B_INST} {(dialog[-1]['content']).strip()} {E_INST}"
    return out


def u(x):
    return {"role": "user", "content": x}


def a(x):
    return {"role": "assistant", "content": x}


def s(x):
    return {"role": "system", "content": x}


DIALOGS = {
    "single": [u("What is 2+2?"), a("4")],
    "single+system": [s("You are terse."), u("What is 2+2?"), a("4")],
    "multi": [u("Hi"), a("Hello!"), u("How are you?"), a("Fine, thanks.")],
    "multi+system": [s("Be kind."), u("Hi"), a("Hello!"), u("And you?"), a("Great.")],
    "whitespace": [s("  padded system \n"), u("\n  lots of space   "), a("  answer with space \n\n"), u(" q2 "), a(" a2 ")],
    "unicode": [s("Réponds en français 🇫🇷"), u("Qu'est-ce que 東京?"), a("C'est Tokyo — 東京 ✓")],
}


@pytest.mark.parametrize("name", DIALOGS)
def test_llama2_equals_meta_reference(name):
    dialog = DIALOGS[name]
    assert render(dialog, "llama2").text == meta_reference(dialog)


@pytest.mark.parametrize("name", DIALOGS)
def test_llama2_generation_prompt_equals_meta_reference(name):
    dialog = DIALOGS[name] + [u("  next question  ")]
    assert render(dialog, "llama2", add_generation_prompt=True).text == meta_reference(dialog)


def test_llama2_exact_strings():
    assert render([u("Hi"), a("Hello")], "llama2").text == "<s>[INST] Hi [/INST] Hello </s>"
    assert render([s("Sys"), u("Hi"), a("Hello")], "llama2").text == (
        "<s>[INST] <<SYS>>\nSys\n<</SYS>>\n\nHi [/INST] Hello </s>")
    # the merged first turn is stripped as a whole: leading space in the system prompt stays inside <<SYS>>
    assert render([s(" Sys "), u(" Hi "), a("Yo")], "llama2").text == (
        "<s>[INST] <<SYS>>\n Sys \n<</SYS>>\n\n Hi [/INST] Yo </s>")


def test_llama2_spans_and_split():
    r = render(DIALOGS["multi+system"], "llama2")
    assert r.text == r.prompt + r.completion
    assert r.completion == " Great. </s>"
    assert r.prompt.endswith("[INST] And you? [/INST]")
    assert [r.text[x:y] for x, y in r.spans] == [" Hello! </s>", " Great. </s>"]
    everything = render(DIALOGS["multi+system"], "llama2", train_on="all")
    assert everything.spans == [(0, len(everything.text))]


def test_llama2_uses_the_tokenizers_own_bos_eos(smollm2_tokenizer):
    r = render([u("Hi"), a("Yo")], "llama2", smollm2_tokenizer)
    tok = special_tokens("llama2", smollm2_tokenizer)
    assert (tok.bos, tok.eos) == (smollm2_tokenizer.bos_token, smollm2_tokenizer.eos_token)
    assert r.text == f"{tok.bos}[INST] Hi [/INST] Yo {tok.eos}"


@pytest.mark.parametrize("template,expected_answer", [
    ("llama3", "4<|eot_id|>"),
    ("chatml", "4<|im_end|>"),
    ("mistral", " 4</s>"),
    ("alpaca", "4</s>"),
    ("falcon", " 4<|endoftext|>"),
])
def test_other_templates_train_on_the_answer(template, expected_answer):
    r = render(DIALOGS["single+system"], template)
    assert r.text == r.prompt + r.completion
    assert r.completion == expected_answer
    assert r.trained_text() == expected_answer
    gen = render(DIALOGS["single+system"][:-1], template, add_generation_prompt=True)
    assert r.text.startswith(gen.text) and gen.completion == ""


def test_reference_layouts():
    assert render([s("S"), u("Q"), a("A")], "llama3").text == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nS<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nA<|eot_id|>")
    assert render([s("S"), u("Q"), a("A")], "chatml").text == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\nA<|im_end|>")
    assert render([u("Q"), a("A"), u("Q2"), a("A2")], "mistral").text == "<s>[INST] Q [/INST] A</s>[INST] Q2 [/INST] A2</s>"
    assert render([u("Q"), a("A")], "alpaca").text.endswith("### Instruction:\nQ\n\n### Response:\nA</s>")


def test_model_template_spans(smollm2_tokenizer):
    dialog = DIALOGS["multi+system"]
    r = render(dialog, "model", smollm2_tokenizer)
    assert r.text == smollm2_tokenizer.apply_chat_template(dialog, tokenize=False)
    assert [r.text[x:y] for x, y in r.spans] == ["Hello!<|im_end|>", "Great.<|im_end|>"]
    gen = render(dialog[:-1], "model", smollm2_tokenizer, add_generation_prompt=True)
    assert gen.text.endswith("<|im_start|>assistant\n")


def test_model_template_needs_a_tokenizer():
    with pytest.raises(TemplateError, match="needs a tokenizer"):
        render(DIALOGS["single"], "model")


@pytest.mark.parametrize("dialog,match", [
    ([u("a"), u("b"), a("c")], "message 2 has role 'user' but 'assistant' was expected"),
    ([a("a"), u("b")], "message 1 has role 'assistant'"),
    ([u("a"), a("b"), u("c")], "ends with a user message"),
    ([s("only system")], "only a system message"),
    ([], "empty"),
])
def test_role_errors(dialog, match):
    with pytest.raises(TemplateError, match=match):
        render(dialog, "llama2")


def test_every_template_renders():
    for name in TEMPLATE_NAMES:
        if name != "model":
            assert render(DIALOGS["multi"], name).spans


def test_control_strings_found():
    assert find_control_strings([u("please [INST] ignore"), a("ok </s>")]) == ["</s>", "[INST]"]
    assert find_control_strings([u("<|im_start|>system")]) == ["<|im_start|>"]
    assert find_control_strings([u("plain text with [brackets] and <html>")]) == []
