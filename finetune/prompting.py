"""Prompting an adapter as it was trained: the template, system prompt, bos/eos and stop strings to prompt with
(the adapter's own unless changed, ``prompt_settings``), a conversation rendered with them (``build_prompt``), a
reference answer's trained tokens (``reference_tokens``), and ``Prompt``, what ``inference.prompt_for`` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .adapter import DEFAULT_TEMPLATE_INFO
from .adapter_lookup import TemplateInfo, adapter_template
from .models import Tokenizer
from .templates import Message, Rendered, token_labels


@dataclass(frozen=True)
class Prompt:
    """The exact text a conversation is sent as, and the settings that produced it."""

    text: str
    token_count: int
    template: str  # the template used
    system_prompt: str  # the system prompt used ("" = none); a conversation's own system message wins
    trained_template: str  # what the adapter was trained with ("model" with no adapter)
    trained_system_prompt: str
    eos: str  # generation stops at this token and at the stop strings
    stop_strings: tuple[str, ...]

    @property
    def template_changed(self) -> bool:
        return self.template != self.trained_template

    @property
    def warning(self) -> str:
        """A notice when the template differs from the one the adapter was trained with."""
        if not self.template_changed:
            return ""
        return (f"the adapter was trained with the '{self.trained_template}' template; prompting it with "
                f"'{self.template}' may give poor answers")


def trained_defaults(adapter: str | Path | None) -> tuple[str, str]:
    """``(template, system_prompt)`` an adapter was trained with; ``("model", "")`` for no adapter."""
    from .templates import MODEL_TEMPLATE

    saved = adapter_template(adapter) if adapter else dict(DEFAULT_TEMPLATE_INFO)
    return str(saved.get("template") or MODEL_TEMPLATE), str(saved.get("system_prompt") or "")


def prompt_settings(adapter: str | Path | None, tokenizer: Tokenizer, *, template: str | None = None,
                    system_prompt: str | None = None) -> TemplateInfo:
    """The template, system prompt, bos/eos and stop strings to prompt with: the adapter's trained ones, except
    where ``template`` / ``system_prompt`` are given (None or empty: the adapter's)."""
    from .templates import MODEL_TEMPLATE, TEMPLATES, get_template, special_tokens

    saved = adapter_template(adapter) if adapter else dict(DEFAULT_TEMPLATE_INFO)
    trained = str(saved.get("template") or MODEL_TEMPLATE)
    name = (template or "").strip() or trained
    if name != MODEL_TEMPLATE:
        get_template(name)  # an unknown name is the user's error
    info: TemplateInfo = {"template": name, "trained_template": trained,
                          "trained_system_prompt": str(saved.get("system_prompt") or ""),
                          "system_prompt": system_prompt if (system_prompt or "").strip() else
                          str(saved.get("system_prompt") or "")}
    if name == MODEL_TEMPLATE:
        info.update(bos="", eos=tokenizer.eos_token or "", stop_strings=[])
    elif name == trained and saved.get("eos"):  # exactly the special tokens training wrote
        info.update(bos=saved.get("bos") or "", eos=saved["eos"], stop_strings=list(saved.get("stop_strings") or []))
    else:
        tok = special_tokens(name, tokenizer)
        info.update(bos=tok.bos, eos=tok.eos, stop_strings=list(TEMPLATES[name].stop_strings))
    return info



def _render(messages: Sequence[Message], template: TemplateInfo, tokenizer: Tokenizer, *,
            add_generation_prompt: bool) -> Rendered:
    """``templates.render`` with the settings of ``prompt_settings``: its system prompt goes first unless the
    conversation has its own system message, and its bos/eos are the ones training wrote."""
    from .templates import MODEL_TEMPLATE, SpecialTokens, render

    msgs = list(messages)
    if template.get("system_prompt") and not (msgs and msgs[0].get("role") == "system"):
        msgs = [{"role": "system", "content": template["system_prompt"]}] + msgs
    name = template.get("template", MODEL_TEMPLATE)
    tokens = SpecialTokens(template.get("bos") or "", template["eos"]) if name != MODEL_TEMPLATE and template.get("eos") else None
    return render(msgs, name, tokenizer, add_generation_prompt=add_generation_prompt, tokens=tokens)


def build_prompt(messages: Sequence[Message], template: TemplateInfo, tokenizer: Tokenizer) -> str:
    """Render ``messages`` with the settings of ``prompt_settings``, ending where the model starts answering."""
    return _render(messages, template, tokenizer, add_generation_prompt=True).text


def reference_tokens(prompt: str | Sequence[Message], reference: str, template: TemplateInfo,
                     tokenizer: Tokenizer) -> tuple[list[int], list[int]]:
    """``(token ids, labels)`` of the conversation ``prompt`` answered with ``reference``, rendered and tokenized
    exactly as training renders and tokenizes a row (``templates.render``, one tokenization of the whole text,
    ``templates.token_labels``): the labels are the reference answer's trained tokens, with the template's own
    spacing and end token (llama2 trains ``" answer </s>"``), and -100 elsewhere (the prompt, earlier answers).

    Tokenizing the prompt and the answer apart would not do: the template writes text around the answer, and a
    tokenizer merges characters across the seam differently than in the whole text training saw.
    """
    msgs = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    rendered = _render(msgs + [{"role": "assistant", "content": reference}], template, tokenizer,
                       add_generation_prompt=False)
    start = len(rendered.prompt)  # where the last answer begins: the spans before it belong to earlier turns
    spans = [(max(a, start), b) for a, b in rendered.spans if b > start]
    enc = tokenizer(rendered.text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    return ids, token_labels(ids, enc["offset_mapping"], spans)
