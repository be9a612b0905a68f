"""Prompt templates: messages -> the exact text a model is trained on, and which part is trained.

Every template turns a list of chat messages (``{"role": "system"|"user"|"assistant", "content": str}``)
into *segments*: pieces of text flagged as trained-on (assistant answers and their end token) or not.
From the segments come the full text, the prompt/completion split and the character spans of the
loss mask, so the preview in the UI, the formatted JSONL and the training labels always agree.

>>> render([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}], "llama2").text
'<s>[INST] Hi [/INST] Hello! </s>'

Templates are registered by name (``TEMPLATES``); the chosen name is saved next to the adapter so that
inference formats prompts exactly the way training did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from .errors import UserError

Message = dict[str, str]  # {"role": str, "content": str}
Segment = tuple[str, bool]  # (text, trained_on)


class TemplateError(ValueError, UserError):
    """A conversation that a template cannot render (roles out of order, empty, ...)."""


@dataclass(frozen=True)
class SpecialTokens:
    """The bos/eos strings a template writes. Taken from the model's tokenizer when there is one."""

    bos: str = ""
    eos: str = ""


@dataclass(frozen=True)
class Rendered:
    """One rendered example.

    ``text == prompt + completion``; ``spans`` are ``[start, end)`` character ranges of ``text`` that
    carry the loss. ``completion`` is the last assistant answer (empty for a generation prompt).
    """

    text: str
    prompt: str
    completion: str
    spans: list[tuple[int, int]] = field(default_factory=list)

    def trained_text(self) -> str:
        return "".join(self.text[a:b] for a, b in self.spans)


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    # Builds the segments. add_generation_prompt: the conversation ends with a user turn and the
    # text must end where the model starts answering.
    segments: Callable[[list[Message], SpecialTokens, bool], list[Segment]]
    default_tokens: SpecialTokens
    # Strings with a structural meaning in this template; found inside content they are reported.
    control_strings: tuple[str, ...]
    # Where generation should stop (besides the tokenizer's eos).
    stop_strings: tuple[str, ...] = ()
    # The same format as a Jinja chat template (tokenizer.chat_template): (bos, eos) -> the loop over the
    # messages; written next to ``segments`` so the two change together (tests render both and compare).
    jinja: Callable[[SpecialTokens], str] | None = None


# ---------------------------------------------------------------------------------------------
# conversation checks shared by all templates


def split_system(messages: Sequence[Message]) -> tuple[str | None, list[Message]]:
    """Separate an optional leading system message and check that the rest alternates user/assistant."""
    if not messages:
        raise TemplateError("the conversation is empty; add at least one user and one assistant message")
    msgs = [dict(m) for m in messages]
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise TemplateError(f"message {i + 1} needs 'role' and 'content' keys")
        if not isinstance(m["content"], str):
            raise TemplateError(f"message {i + 1} ({m['role']}) content is {type(m['content']).__name__}, expected text")
    system = None
    if msgs[0]["role"] == "system":
        system = msgs[0]["content"]
        msgs = msgs[1:]
    if not msgs:
        raise TemplateError("the conversation has only a system message; add a user and an assistant message")
    for i, m in enumerate(msgs):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            offset = 2 if system is not None else 1
            raise TemplateError(
                f"message {i + offset} has role '{m['role']}' but '{expected}' was expected: roles must alternate "
                "user/assistant after an optional system message; merge consecutive turns of the same role"
            )
    return system, msgs


def _pairs(msgs: list[Message], add_generation_prompt: bool) -> tuple[list[tuple[str, str]], str | None]:
    """(user, assistant) pairs plus a final unanswered user message when generating."""
    if add_generation_prompt:
        if msgs[-1]["role"] != "user":
            raise TemplateError("a generation prompt must end with a user message")
        last = msgs[-1]["content"]
        msgs = msgs[:-1]
    else:
        if msgs[-1]["role"] != "assistant":
            raise TemplateError(
                "the conversation ends with a user message, and training needs an assistant answer at the end"
                "; add the answer or drop the last user turn"
            )
        last = None
    pairs = [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs), 2)]
    return pairs, last


# ---------------------------------------------------------------------------------------------
# the same templates in Jinja, for tokenizer.chat_template
#
# transformers renders chat templates with trim_blocks/lstrip_blocks; every tag here strips the whitespace
# around it ({%- -%}) and all output comes from {{ }} expressions, so the layout of the source never reaches
# the text. `msgs` is the conversation without its system message and `system` the system prompt (the run's
# default when the conversation has none; none when neither), both set by chat_template_jinja's preamble.


def jinja_literal(text: str) -> str:
    """``text`` as a Jinja string literal (Jinja decodes backslash escapes like Python's unicode-escape)."""
    out = []
    for ch in text:
        if ch in "\\'":
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 32 or ord(ch) > 126:
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return "'" + "".join(out) + "'"


def _turns(user: str, assistant: str) -> str:
    """A loop over ``msgs`` emitting ``user`` for user turns (``c``: its content, the system prompt merged in
    where the template merges it) and ``assistant`` for answers (``last``: the conversation's final message)."""
    return (
        "{%- for m in msgs -%}"
        "{%- set last = loop.last -%}"
        "{%- if m['role'] == 'user' -%}{%- set c = m['content'] if not (loop.first and merge is defined and "
        "merge and system is not none) else merge_before ~ system ~ merge_after ~ m['content'] -%}"
        f"{{{{- {user} -}}}}"
        f"{{%- elif m['role'] == 'assistant' -%}}{{{{- {assistant} -}}}}"
        "{%- endif -%}{%- endfor -%}"
    )


def _llama2_jinja(tok: SpecialTokens) -> str:
    bos, eos = jinja_literal(tok.bos), jinja_literal(tok.eos)
    return ("{%- set merge = true -%}{%- set merge_before = '<<SYS>>\\n' -%}{%- set merge_after = '\\n<</SYS>>\\n\\n' -%}"
            + _turns(f"{bos} ~ '[INST] ' ~ c|trim ~ ' [/INST]'", f"' ' ~ m['content']|trim ~ ' ' ~ {eos}"))


def _mistral_jinja(tok: SpecialTokens) -> str:
    bos, eos = jinja_literal(tok.bos), jinja_literal(tok.eos)
    return ("{%- set merge = true -%}{%- set merge_before = '' -%}{%- set merge_after = '\\n\\n' -%}"
            f"{{{{- {bos} -}}}}"
            + _turns("'[INST] ' ~ c|trim ~ ' [/INST]'", f"' ' ~ m['content']|trim ~ {eos}"))


def _llama3_jinja(tok: SpecialTokens) -> str:
    bos = jinja_literal(tok.bos)
    head = "'<|start_header_id|>{}<|end_header_id|>\\n\\n'"
    return (f"{{{{- {bos} -}}}}"
            "{%- if system is not none -%}"
            f"{{{{- {head.format('system')} ~ system|trim ~ '<|eot_id|>' -}}}}"
            "{%- endif -%}"
            + _turns(f"{head.format('user')} ~ c|trim ~ '<|eot_id|>' ~ {head.format('assistant')}",
                     "m['content']|trim ~ '<|eot_id|>'"))


def _chatml_jinja(tok: SpecialTokens) -> str:
    return ("{%- if system is not none -%}{{- '<|im_start|>system\\n' ~ system ~ '<|im_end|>\\n' -}}{%- endif -%}"
            + _turns("'<|im_start|>user\\n' ~ c ~ '<|im_end|>\\n<|im_start|>assistant\\n'",
                     "m['content'] ~ '<|im_end|>' ~ ('' if last else '\\n')"))


def _alpaca_jinja(tok: SpecialTokens) -> str:
    bos, eos = jinja_literal(tok.bos), jinja_literal(tok.eos)
    return (f"{{{{- {bos} ~ (system if system is not none else {jinja_literal(ALPACA_PREAMBLE)})|trim ~ '\\n\\n' -}}}}"
            + _turns("'### Instruction:\\n' ~ c|trim ~ '\\n\\n### Response:\\n'",
                     f"m['content']|trim ~ {eos} ~ ('' if last else '\\n\\n')"))


def _falcon_jinja(tok: SpecialTokens) -> str:
    eos = jinja_literal(tok.eos)
    return ("{%- if system is not none -%}{{- 'System: ' ~ system|trim ~ '\\n' -}}{%- endif -%}"
            + _turns("'User: ' ~ c|trim ~ '\\nFalcon:'", f"' ' ~ m['content']|trim ~ {eos} ~ ('' if last else '\\n')"))


# ---------------------------------------------------------------------------------------------
# the templates


def _llama2(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # Meta's reference `chat_completion` (llama/generation.py): the system prompt is merged into the
    # first user turn; each completed turn is `bos [INST] u [/INST] a eos` with the strings stripped.
    system, msgs = split_system(messages)
    if system is not None:
        msgs[0] = {"role": "user", "content": f"<<SYS>>\n{system}\n<</SYS>>\n\n{msgs[0]['content']}"}
    pairs, last = _pairs(msgs, gen)
    out: list[Segment] = []
    for user, answer in pairs:
        out.append((f"{tok.bos}[INST] {user.strip()} [/INST]", False))
        out.append((f" {answer.strip()} {tok.eos}", True))
    if last is not None:
        out.append((f"{tok.bos}[INST] {last.strip()} [/INST]", False))
    return out


def _mistral(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # Mistral-7B-Instruct v0.1/v0.2: one bos, `[INST] u [/INST] a</s>` per turn, no system role:
    # the system prompt is prepended to the first user message.
    system, msgs = split_system(messages)
    if system is not None:
        msgs[0] = {"role": "user", "content": f"{system}\n\n{msgs[0]['content']}"}
    pairs, last = _pairs(msgs, gen)
    out: list[Segment] = [(tok.bos, False)] if tok.bos else []
    for user, answer in pairs:
        out.append((f"[INST] {user.strip()} [/INST]", False))
        out.append((f" {answer.strip()}{tok.eos}", True))
    if last is not None:
        out.append((f"[INST] {last.strip()} [/INST]", False))
    return out


def _llama3(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # Meta Llama 3 / 3.1 instruct format; the answer's end token is <|eot_id|>.
    system, msgs = split_system(messages)
    pairs, last = _pairs(msgs, gen)

    def head(role: str) -> str:
        return f"<|start_header_id|>{role}<|end_header_id|>\n\n"

    out: list[Segment] = [(tok.bos, False)] if tok.bos else []
    if system is not None:
        out.append((f"{head('system')}{system.strip()}<|eot_id|>", False))
    for user, answer in pairs:
        out.append((f"{head('user')}{user.strip()}<|eot_id|>{head('assistant')}", False))
        out.append((f"{answer.strip()}<|eot_id|>", True))
    if last is not None:
        out.append((f"{head('user')}{last.strip()}<|eot_id|>{head('assistant')}", False))
    return out


def _chatml(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # ChatML (Qwen, SmolLM, many others). The answer is trained up to and including <|im_end|>.
    system, msgs = split_system(messages)
    pairs, last = _pairs(msgs, gen)
    out: list[Segment] = []
    if system is not None:
        out.append((f"<|im_start|>system\n{system}<|im_end|>\n", False))
    for user, answer in pairs:
        out.append((f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n", False))
        out.append((f"{answer}<|im_end|>", True))
        out.append(("\n", False))
    if last is not None:
        out.append((f"<|im_start|>user\n{last}<|im_end|>\n<|im_start|>assistant\n", False))
    elif out and out[-1] == ("\n", False):
        out.pop()  # the text ends with the last answer's end token
    return out


ALPACA_PREAMBLE = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request."
)


def _alpaca(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # Stanford Alpaca. The system prompt replaces the preamble; further turns repeat the blocks.
    system, msgs = split_system(messages)
    pairs, last = _pairs(msgs, gen)
    out: list[Segment] = [(f"{tok.bos}{(system if system is not None else ALPACA_PREAMBLE).strip()}\n\n", False)]
    for user, answer in pairs:
        out.append((f"### Instruction:\n{user.strip()}\n\n### Response:\n", False))
        out.append((f"{answer.strip()}{tok.eos}", True))
        out.append(("\n\n", False))
    if last is not None:
        out.append((f"### Instruction:\n{last.strip()}\n\n### Response:\n", False))
    elif out[-1] == ("\n\n", False):
        out.pop()
    return out


def _falcon(messages: list[Message], tok: SpecialTokens, gen: bool) -> list[Segment]:
    # Falcon-instruct style transcript: `System:`/`User:`/`Falcon:` lines.
    system, msgs = split_system(messages)
    pairs, last = _pairs(msgs, gen)
    out: list[Segment] = []
    if system is not None:
        out.append((f"System: {system.strip()}\n", False))
    for user, answer in pairs:
        out.append((f"User: {user.strip()}\nFalcon:", False))
        out.append((f" {answer.strip()}{tok.eos}", True))
        out.append(("\n", False))
    if last is not None:
        out.append((f"User: {last.strip()}\nFalcon:", False))
    elif out[-1] == ("\n", False):
        out.pop()
    return out


TEMPLATES: dict[str, Template] = {
    "llama2": Template(
        "llama2",
        "Llama-2-chat: <s>[INST] <<SYS>>…<</SYS>> user [/INST] answer </s> (Meta's reference format)",
        _llama2,
        SpecialTokens("<s>", "</s>"),
        ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>", "<s>", "</s>"),
        jinja=_llama2_jinja,
    ),
    "llama3": Template(
        "llama3",
        "Llama-3 / 3.1 instruct: <|start_header_id|>role<|end_header_id|> … <|eot_id|>",
        _llama3,
        SpecialTokens("<|begin_of_text|>", "<|eot_id|>"),
        ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|end_of_text|>"),
        ("<|eot_id|>",),
        jinja=_llama3_jinja,
    ),
    "chatml": Template(
        "chatml",
        "ChatML (Qwen, SmolLM, …): <|im_start|>role\\n…<|im_end|>",
        _chatml,
        SpecialTokens("", "<|im_end|>"),
        ("<|im_start|>", "<|im_end|>"),
        ("<|im_end|>",),
        jinja=_chatml_jinja,
    ),
    "mistral": Template(
        "mistral",
        "Mistral-Instruct: <s>[INST] user [/INST] answer</s>",
        _mistral,
        SpecialTokens("<s>", "</s>"),
        ("[INST]", "[/INST]", "<s>", "</s>"),
        jinja=_mistral_jinja,
    ),
    "alpaca": Template(
        "alpaca",
        "Alpaca: ### Instruction: … ### Response: …",
        _alpaca,
        SpecialTokens("", "</s>"),
        ("### Instruction:", "### Response:"),
        ("### Instruction:",),
        jinja=_alpaca_jinja,
    ),
    "falcon": Template(
        "falcon",
        "Falcon-instruct transcript: User: … / Falcon: …",
        _falcon,
        SpecialTokens("", "<|endoftext|>"),
        ("<|endoftext|>", "\nUser:", "\nFalcon:"),
        ("\nUser:",),
        jinja=_falcon_jinja,
    ),
}

MODEL_TEMPLATE = "model"
"""The tokenizer's own chat template (``tokenizer.apply_chat_template``)."""

TEMPLATE_NAMES = (*TEMPLATES, MODEL_TEMPLATE)


def template_label(name: str) -> str:
    """A template as the app names it to a user: its name, or what ``model`` means.

    >>> template_label("llama2"), template_label("model")
    ('llama2', "the model's own chat template")
    """
    return "the model's own chat template" if name == MODEL_TEMPLATE else name


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        known = ", ".join(TEMPLATE_NAMES)
        raise TemplateError(f"unknown template '{name}'; choose one of: {known}")
    return TEMPLATES[name]


def special_tokens(name: str, tokenizer: Any = None) -> SpecialTokens:
    """The bos/eos strings to write: the tokenizer's own when given, else the template's defaults."""
    default = get_template(name).default_tokens
    if tokenizer is None:
        return default
    bos = tokenizer.bos_token or "" if default.bos else ""
    eos = tokenizer.eos_token or default.eos
    if name == "llama3":  # the answer ends with <|eot_id|>, whatever the tokenizer calls eos
        return SpecialTokens(bos, "<|eot_id|>")
    if name == "chatml":
        return SpecialTokens("", "<|im_end|>")
    return SpecialTokens(bos, eos)


def chat_template_jinja(name: str, tokens: SpecialTokens, default_system: str = "", base_template: str | None = None) -> str:
    """The Jinja chat template that renders what :func:`render` renders for template ``name``.

    ``tokens``: the bos/eos strings training wrote (:func:`special_tokens`); ``default_system``: the system
    prompt of a conversation that has none (the run's default; empty: none). ``name="model"`` keeps
    ``base_template`` (the base tokenizer's own) and only adds the default system prompt. For every
    conversation ``messages`` (with ``add_generation_prompt``), ``tokenizer.apply_chat_template`` with this
    template gives ``render(with_default_system(messages, default_system), name, tokens=tokens).text``.

    >>> from jinja2 import Environment
    >>> Environment().from_string(chat_template_jinja("llama2", SpecialTokens("<s>", "</s>"))).render(
    ...     messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}])
    '<s>[INST] Hi [/INST] Hello! </s>'
    """
    default = jinja_literal(default_system) if default_system else "none"
    if name == MODEL_TEMPLATE:
        if not base_template:
            raise TemplateError("template 'model' needs the base tokenizer's chat template")
        if not default_system:
            return base_template
        return ("{%- if not (messages and messages[0]['role'] == 'system') -%}"
                f"{{%- set messages = [{{'role': 'system', 'content': {default}}}] + messages -%}}"
                "{%- endif -%}" + base_template)
    tpl = get_template(name)
    assert tpl.jinja is not None, f"template {name} has no Jinja form"
    preamble = ("{%- set has_system = messages|length > 0 and messages[0]['role'] == 'system' -%}"
                f"{{%- set system = messages[0]['content'] if has_system else {default} -%}}"
                "{%- set msgs = messages[1:] if has_system else messages -%}")
    return preamble + tpl.jinja(tokens)


def with_default_system(messages: Sequence[Message], default_system: str) -> list[Message]:
    """The conversation as training saw it: the run's default system prompt first when it has none."""
    msgs = list(messages)
    if default_system and not (msgs and msgs[0].get("role") == "system"):
        msgs.insert(0, {"role": "system", "content": default_system})
    return msgs


# ---------------------------------------------------------------------------------------------
# rendering


def _from_segments(segments: list[Segment], train_on: str) -> Rendered:
    text = "".join(s for s, _ in segments)
    spans: list[tuple[int, int]] = []
    pos = 0
    last_trained_start = None
    for s, trained in segments:
        if trained:
            last_trained_start = pos
            if s:
                if spans and spans[-1][1] == pos:
                    spans[-1] = (spans[-1][0], pos + len(s))
                else:
                    spans.append((pos, pos + len(s)))
        pos += len(s)
    if train_on == "all":
        spans = [(0, len(text))] if text else []
    elif train_on != "assistant":
        raise TemplateError(f"train_on must be 'assistant' or 'all', not '{train_on}'")
    split = len(text) if last_trained_start is None else last_trained_start
    return Rendered(text=text, prompt=text[:split], completion=text[split:], spans=spans)


def render(
    messages: Sequence[Message],
    template: str = "llama2",
    tokenizer: Any = None,  # a transformers tokenizer (duck-typed: bos_token, eos_token, apply_chat_template)
    *,
    add_generation_prompt: bool = False,
    train_on: str = "assistant",
    tokens: SpecialTokens | None = None,
) -> Rendered:
    """Render one conversation with a named template.

    ``tokenizer`` supplies the bos/eos strings (and is required for ``template="model"``);
    ``train_on="all"`` marks the whole text as trained-on instead of assistant turns only.
    """
    if template == MODEL_TEMPLATE:
        return _render_model(messages, tokenizer, add_generation_prompt, train_on)
    tpl = get_template(template)
    tok = tokens or special_tokens(template, tokenizer)
    return _from_segments(tpl.segments(list(messages), tok, add_generation_prompt), train_on)


def token_labels(ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]) -> list[int]:
    """The training labels of a tokenized text: each token's id where its characters overlap a trained span
    (``spans``: sorted ``[start, end)`` character ranges, as :func:`render` gives them), else -100 (no loss).

    ``offsets`` are the tokens' ``[start, end)`` characters (a fast tokenizer's ``offset_mapping``); a token
    without characters (an added special token may have none) counts when it sits inside a span.

    >>> token_labels([7, 8, 9], [(0, 3), (3, 5), (5, 9)], [(4, 9)])
    [-100, 8, 9]
    """
    labels: list[int] = []
    j = 0
    for tid, (a, b) in zip(ids, offsets):
        while j < len(spans) and spans[j][1] <= a:
            j += 1
        trained = j < len(spans) and spans[j][0] < max(b, a + 1) and a < spans[j][1]
        labels.append(tid if trained else -100)
    return labels


def _render_model(messages: Sequence[Message], tokenizer: Any, add_generation_prompt: bool, train_on: str) -> Rendered:
    """The tokenizer's own chat template; trained spans found by rendering growing prefixes."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise TemplateError(
            "template 'model' needs a tokenizer with a chat template; pick a named template "
            f"({', '.join(TEMPLATES)}) or a model that ships one"
        )
    system, msgs = split_system(messages)  # same role rules as every other template
    full = list(messages)
    if add_generation_prompt and msgs[-1]["role"] != "user":
        raise TemplateError("a generation prompt must end with a user message")
    if not add_generation_prompt and msgs[-1]["role"] != "assistant":
        raise TemplateError(
            "the conversation ends with a user message, and training needs an assistant answer at the end"
            "; add the answer or drop the last user turn"
        )

    def apply(ms: list[Message], gen: bool) -> str:
        out: str = tokenizer.apply_chat_template(ms, tokenize=False, add_generation_prompt=gen)  # tokenize=False: text
        return out

    text = apply(full, add_generation_prompt)
    segments: list[Segment] = []
    pos = 0
    offset = 1 if system is not None else 0
    for i, m in enumerate(full):
        if m["role"] != "assistant":
            continue
        before = apply(full[:i], True)
        upto = apply(full[: i + 1], False)
        if not (text.startswith(upto) and upto.startswith(before)) or len(before) < pos:
            # The template rewrites earlier turns (e.g. drops reasoning); fall back to locating the answer.
            start = text.find(m["content"], pos)
            if start < 0:
                raise TemplateError(f"the model's chat template does not reproduce message {i + 1 + offset}")
            before, upto = text[:start], text[: start + len(m["content"])]
        end = len(upto.rstrip())
        segments.append((text[pos : len(before)], False))
        segments.append((text[len(before) : end], True))
        pos = end
    segments.append((text[pos:], False))
    if not add_generation_prompt and segments[-1][0] == "":
        segments.pop()
    return _from_segments(segments, train_on)


# Markers of every known template: found inside content, the data is usually already formatted (it
# would be formatted twice) or tries to inject turns. "User:"/"Falcon:" are too common in prose to flag.
CONTROL_STRINGS: tuple[str, ...] = tuple(
    sorted({s.strip() for t in TEMPLATES.values() for s in t.control_strings} - {"User:", "Falcon:"})
)


def find_control_strings(messages: Sequence[Message]) -> list[str]:
    """Control strings of any known template found inside message contents (sorted, unique)."""
    found: set[str] = set()
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str) and ("<" in content or "[" in content or "#" in content):
            found.update(s for s in CONTROL_STRINGS if s in content)
    return sorted(found)
