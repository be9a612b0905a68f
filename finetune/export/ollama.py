"""Ollama: a ``Modelfile`` whose ``TEMPLATE`` (Go ``text/template``) renders what training rendered.

Each named template has its Go form here, written from the same strings as its Python renderer in
``templates.py`` (bos/eos as training wrote them). Ollama gives the template ``.System`` (the system prompt: the
request's, else the Modelfile's ``SYSTEM``) and ``.Messages`` (system messages included, which the templates
skip, since ``.System`` carries them). An adapter trained with the base's own Jinja template gets the Go form of
the named template that renders the same text, when one does; otherwise Ollama export is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models import ModelError
from ..templates import ALPACA_PREAMBLE, MODEL_TEMPLATE, TEMPLATES, SpecialTokens, render, special_tokens

MODELFILE = "Modelfile"
GGUF_NAME = "model.gguf"


def _go_literal(text: str) -> str:
    """Text placed in the template as it is (Go templates print text outside {{ }} verbatim)."""
    if "{{" in text or "}}" in text:
        raise ModelError(f"the template text {text!r} contains '{{{{' or '}}}}', which Ollama's template language reserves")
    return text


def _first_user(body: str, merged: str) -> str:
    """``merged`` before the first user message's content when there is a system prompt, ``body`` around it."""
    return ("{{ if and $.System $first }}" + merged + "{{ end }}{{ $first = false }}" + body)


def go_template(name: str, tok: SpecialTokens) -> str:
    """The Go template of template ``name`` with the bos/eos strings training wrote."""
    bos, eos = _go_literal(tok.bos), _go_literal(tok.eos)
    loop = "{{ $first := true }}{{ range .Messages }}{{ if eq .Role \"user\" }}%s{{ else if eq .Role \"assistant\" }}%s{{ end }}{{ end }}"
    if name == "llama2":
        user = bos + "[INST] " + _first_user("{{ .Content }} [/INST]", "<<SYS>>\n{{ $.System }}\n<</SYS>>\n\n")
        return loop % (user, " {{ .Content }} " + eos)
    if name == "mistral":
        user = "[INST] " + _first_user("{{ .Content }} [/INST]", "{{ $.System }}\n\n")
        return bos + loop % (user, " {{ .Content }}" + eos)
    if name == "llama3":
        head = "<|start_header_id|>{}<|end_header_id|>\n\n"
        system = "{{ if $.System }}" + head.format("system") + "{{ $.System }}<|eot_id|>{{ end }}"
        return bos + system + loop % (head.format("user") + "{{ .Content }}<|eot_id|>" + head.format("assistant"),
                                      "{{ .Content }}<|eot_id|>")
    if name == "chatml":
        system = "{{ if $.System }}<|im_start|>system\n{{ $.System }}<|im_end|>\n{{ end }}"
        return system + loop % ("<|im_start|>user\n{{ .Content }}<|im_end|>\n<|im_start|>assistant\n",
                                "{{ .Content }}<|im_end|>\n")
    if name == "alpaca":
        preamble = _go_literal(ALPACA_PREAMBLE.strip())
        system = bos + "{{ if $.System }}{{ $.System }}{{ else }}" + preamble + "{{ end }}\n\n"
        return system + loop % ("### Instruction:\n{{ .Content }}\n\n### Response:\n", "{{ .Content }}" + eos + "\n\n")
    if name == "falcon":
        system = "{{ if $.System }}System: {{ $.System }}\n{{ end }}"
        return system + loop % ("User: {{ .Content }}\nFalcon:", " {{ .Content }}" + eos + "\n")
    raise ModelError(f"template '{name}' has no Ollama form")


# Conversations a base's own chat template is compared on (with and without a system prompt, several turns).
_PROBES: tuple[tuple[Mapping[str, str], ...], ...] = (
    ({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Name a color."}),
    ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Why?"}),
)


def template_for(info: Mapping[str, Any], tokenizer: Any) -> tuple[str, SpecialTokens]:
    """The named template (and its bos/eos) whose Go form renders what the adapter was trained on.

    A named template is its own answer. The base's own template (``model``) is compared with every named
    template on probe conversations; the one that renders alike is used, else a ModelError says why.
    """
    name = str(info.get("template") or MODEL_TEMPLATE)
    if name != MODEL_TEMPLATE:
        tokens = SpecialTokens(str(info.get("bos") or ""), str(info.get("eos") or ""))
        if not tokens.eos:
            tokens = special_tokens(name, tokenizer)
        return name, tokens
    for candidate in TEMPLATES:
        tokens = special_tokens(candidate, tokenizer)
        try:
            if all(render([dict(m) for m in probe], candidate, tokens=tokens, add_generation_prompt=True).text
                   == render([dict(m) for m in probe], MODEL_TEMPLATE, tokenizer, add_generation_prompt=True).text
                   for probe in _PROBES):
                return candidate, tokens
        except Exception as e:  # noqa: BLE001 - a base template that cannot render a probe matches nothing
            from ..errors import is_programming_error

            if is_programming_error(e):
                raise
    said = ("the adapter was trained with the base model's own chat template, which has no Ollama equivalent here; "
            "train with a named template (llama2, llama3, chatml, mistral, alpaca, falcon), or export ")
    tail = " and run it with llama.cpp, which reads the Jinja template in the file"
    raise ModelError(said + "--format gguf" + tail).in_app(said + "with Format gguf" + tail)


def _triple_quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise ModelError(f'the {what} contains """, which a Modelfile cannot quote; remove it and export again')
    return '"""' + text + '"""'


def stop_strings(name: str, tokens: SpecialTokens, info: Mapping[str, Any]) -> list[str]:
    """Where generation stops: the trained end of an answer, then the template's own stop strings."""
    stops = [tokens.eos] if tokens.eos else []
    for s in list(info.get("stop_strings") or TEMPLATES[name].stop_strings):
        if s and s not in stops:
            stops.append(s)
    return stops


def modelfile(info: Mapping[str, Any], tokenizer: Any, gguf_name: str = GGUF_NAME) -> str:
    """The Modelfile: FROM the GGUF, the trained TEMPLATE, the default SYSTEM prompt, stop at the trained eos."""
    name, tokens = template_for(info, tokenizer)
    lines = [f"FROM ./{gguf_name}", "", "TEMPLATE " + _triple_quoted(go_template(name, tokens), "template")]
    system = str(info.get("system_prompt") or "")
    if system:
        lines += ["", "SYSTEM " + _triple_quoted(system, "default system prompt")]
    lines.append("")
    for s in stop_strings(name, tokens, info):
        lines.append("PARAMETER stop " + _go_quoted(s))
    return "\n".join(lines) + "\n"


def _go_quoted(text: str) -> str:
    import json

    return json.dumps(text)


def run_command(model_name: str) -> str:
    """The command that makes the folder an Ollama model, then chats with it."""
    return f"ollama create {model_name} -f Modelfile && ollama run {model_name}"


def model_name(text: str) -> str:
    """An Ollama model name from a run or repo name (lowercase letters, digits, '-', '_', '.')."""
    import re

    name = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")
    return name or "finetuned"

