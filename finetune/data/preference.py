"""The data of the methods other than SFT: preference pairs (DPO, ORPO), unpaired feedback (KTO) and prompts
with optional references (GRPO). Each shape is detected from the columns (or a column mapping), each row checked
with its number reported, and each prompt and answer rendered with the run's template, so that the text a method
trains on is the text SFT would train on for the same conversation.

>>> rows = [{"prompt": "Say hi", "chosen": "Hi!", "rejected": "Go away."}]
>>> result = format_for_method(rows, "dpo", template="llama2")
>>> str(result.shape), result.examples[0].prompt, result.examples[0].chosen
('preference (prompt=prompt, chosen=chosen, rejected=rejected)', '<s>[INST] Say hi [/INST]', ' Hi! </s>')

Shapes (canonical field -> the columns looked for, first match wins; ``data.columns`` overrides):

- ``preference``: ``prompt`` (text, or trl's conversational list of messages with an optional system message),
  ``chosen`` and ``rejected`` (text, or a list with one assistant message); ``question``/``response_j``/
  ``response_k`` columns are found too. Without a prompt column, ``chosen`` and ``rejected`` may be whole
  conversations: the prompt is then the turns they share (trl's implicit prompt).
- ``feedback``: ``prompt``, ``completion`` and ``label`` (true: a good answer, false: a bad one).
- ``prompts``: ``prompt`` and an optional ``answer`` (or ``reference``, ``solution``) the rewards compare with.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..templates import MODEL_TEMPLATE, Message, TemplateError, render
from .detect import Shape, _turns, cell_text  # cell_text(..., []): a number in a text cell is used as text, no note
from .read import Row, open_table
from .format import split_off
from .validate import SURROGATE, DataError, Problem, RowError

FIELDS: dict[str, tuple[str, ...]] = {  # canonical field -> the column names that hold it
    "prompt": ("prompt", "question", "instruction", "query"),
    "chosen": ("chosen", "response_j", "chosen_response"),
    "rejected": ("rejected", "response_k", "rejected_response"),
    "completion": ("completion", "response", "output", "answer"),
    "label": ("label", "thumbs_up", "desirable"),
    "answer": ("answer", "reference", "solution", "ground_truth", "target"),
    "system": ("system", "system_prompt"),
}
SHAPE_OF_METHOD = {"dpo": "preference", "orpo": "preference", "kto": "feedback", "grpo": "prompts"}
SHAPES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {  # shape -> (required, optional) fields
    "preference": (("prompt", "chosen", "rejected"), ("system",)),
    "feedback": (("prompt", "completion", "label"), ("system",)),
    "prompts": (("prompt",), ("answer", "system")),
}
EXPECTED = {
    "preference": "prompt/chosen/rejected (or question/response_j/response_k)",
    "feedback": "prompt/completion/label",
    "prompts": "prompt (and optionally answer)",
}


@dataclass(frozen=True)
class PairExample:
    """One preference pair: the rendered prompt and the rendered chosen and rejected answers (each ends where
    its trained span ends, with the template's end token)."""

    row: int
    prompt: str
    chosen: str
    rejected: str
    messages: list[Message]  # the prompt's conversation (system and user turns)
    chosen_content: str  # the chosen answer as written in the data

    @property
    def dialog(self) -> list[Message]:
        return self.messages + [{"role": "assistant", "content": self.chosen_content}]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class FeedbackExample:
    """One unpaired answer with its thumbs up (True) or down (False)."""

    row: int
    prompt: str
    completion: str
    label: bool
    messages: list[Message]
    completion_content: str

    @property
    def dialog(self) -> list[Message]:
        return self.messages + [{"role": "assistant", "content": self.completion_content}]

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "completion": self.completion, "label": self.label}


@dataclass(frozen=True)
class PromptExample:
    """One prompt to sample answers for, ending where the model starts answering; ``answer``: its reference."""

    row: int
    prompt: str
    answer: str | None
    messages: list[Message]

    @property
    def dialog(self) -> list[Message]:
        return self.messages + ([{"role": "assistant", "content": self.answer}] if self.answer else [])

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer}


MethodExample = PairExample | FeedbackExample | PromptExample


@dataclass
class MethodData:
    """The formatted rows of one method's data: training and held-out examples, and the rows skipped."""

    source: str
    method: str
    shape: Shape
    rows_in: int
    examples: list[MethodExample]
    val_examples: list[MethodExample]
    problems: list[Problem]
    skipped: Counter[str] = field(default_factory=Counter)
    system_prompt: str = ""  # the system prompt given for rows that have none

    @property
    def default_system_prompt(self) -> str:
        """What a run on these rows stores as its default system prompt: the rows' shared system message, else
        the system prompt given (as ``FormatResult.default_system_prompt``)."""
        systems = {ex.messages[0]["content"] if ex.messages[0]["role"] == "system" else None
                   for ex in self.examples + self.val_examples}
        if len(systems) == 1 and None not in systems:
            return str(systems.pop())
        return self.system_prompt

    def preview(self, n: int = 3) -> list[dict[str, Any]]:
        """The first examples as rendered text, with the characters each answer trains on marked by the
        answer's (start, end) in ``prompt + answer``."""
        out = []
        for ex in self.examples[:n]:
            item: dict[str, Any] = {"row": ex.row, **ex.to_json()}
            start = len(ex.prompt)
            if isinstance(ex, PairExample):
                item["chosen_span"] = (start, start + len(ex.chosen))
                item["rejected_span"] = (start, start + len(ex.rejected))
            elif isinstance(ex, FeedbackExample):
                item["completion_span"] = (start, start + len(ex.completion))
            out.append(item)
        return out


def shape_for(method: str) -> str:
    if method not in SHAPE_OF_METHOD:
        raise ValueError(f"method {method!r} has no data shape of its own")  # sft is formatted by data.format
    return SHAPE_OF_METHOD[method]


def detect_method_shape(columns: Sequence[str], method: str, mapping: dict[str, str] | None = None,
                        name: str = "data", shape: str | None = None) -> Shape:
    """The columns of the shape ``method`` trains on (``shape``: its entry's in finetune/methods.py, else
    SHAPE_OF_METHOD's); ``mapping`` (canonical field -> column) overrides."""
    shape = shape or shape_for(method)
    required, optional = SHAPES[shape]
    mapping = dict(mapping or {})
    known = required + optional
    for k, col in mapping.items():
        if k not in known:
            raise DataError(name, None, f"unknown field '{k}' in the column mapping for {method}; its fields are "
                            f"{', '.join(known)}")
        if col not in columns:
            raise DataError(name, None, f"column '{col}' (mapped to {k}) is not in the data; columns: {', '.join(columns)}")
    lower = {c.lower(): c for c in columns}
    taken = set(mapping.values())

    def find(f: str) -> str | None:
        if f in mapping:
            return mapping[f]
        for alias in FIELDS[f]:
            col = lower.get(alias)
            if col is not None and col not in taken:
                return col
        return None

    fields: dict[str, str] = {}
    for f in known:
        found = find(f)
        if found is not None:
            fields[f] = found
            taken.add(found)
    if shape == "preference" and "prompt" not in fields and "chosen" in fields and "rejected" in fields:
        return Shape(shape, {f: c for f, c in fields.items() if f != "prompt"})  # implicit prompt
    missing = [f for f in required if f not in fields]
    if missing:
        example = ", ".join(f"{f}: <column>" for f in missing)
        said = (f"{method} needs {EXPECTED[shape]} columns; missing {', '.join(missing)} among the columns "
                f"({', '.join(columns) or 'none'}); rename them or map yours")
        raise DataError(name, None, said + f", e.g. --set data.columns='{{{example}}}'",
                        said + " in Column mapping, e.g. " + ", ".join(f"{f}=<column>" for f in missing))
    return Shape(shape, fields)


# ---------------------------------------------------------------------------------------------
# one row


def _is_messages(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(m, dict) for m in value)


def _prompt_messages(row: Row, column: str, system: str) -> list[Message]:
    """The prompt as a conversation that ends with a user turn."""
    value = row.get(column)
    if _is_messages(value):
        msgs = _turns(value, column, "role", "content")
        if msgs[-1]["role"] != "user":
            raise RowError("prompt", f"'{column}' ends with a {msgs[-1]['role']} message", "end the prompt with the "
                           "user's message; the answers go in their own columns", "prompt not ending with user")
    else:
        msgs = [{"role": "user", "content": cell_text(row, column, "prompt", [])}]
    if system.strip() and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs


def _answer(row: Row, column: str, fld: str) -> str:
    """One answer: text, or a list with exactly one assistant message."""
    value = row.get(column)
    if isinstance(value, list):
        msgs = _turns(value, column, "role", "content")
        if len(msgs) != 1 or msgs[0]["role"] != "assistant":
            raise RowError(fld, f"'{column}' must hold one assistant message, found {len(msgs)} message(s) "
                           f"({', '.join(m['role'] for m in msgs)})",
                           f"write {fld} as [{{\"role\": \"assistant\", \"content\": ...}}]", "not one answer")
        return msgs[0]["content"]
    return cell_text(row, column, fld, [])


def _implicit(row: Row, shape: Shape) -> tuple[list[Message], str, str]:
    """chosen/rejected as whole conversations: the shared leading turns are the prompt."""
    f = shape.fields
    chosen = _turns(row.get(f["chosen"]), f["chosen"], "role", "content")
    rejected = _turns(row.get(f["rejected"]), f["rejected"], "role", "content")
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    if n == 0 or chosen[n:][0]["role"] != "assistant" or len(chosen) - n != 1 or len(rejected) - n != 1:
        raise RowError("chosen", "chosen and rejected do not share a prompt followed by one assistant answer each",
                       "add a prompt column, or make both conversations end with one different assistant message",
                       "no shared prompt")
    return chosen[:n], chosen[n]["content"], rejected[n]["content"]


TRUE = ("true", "yes")
FALSE = ("false", "no")


def _label(row: Row, column: str) -> bool:
    value = row.get(column)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in TRUE + FALSE:  # CSV cells are text
        return value.strip().lower() in TRUE
    shown = "missing" if value is None else f"{value!r} ({type(value).__name__})"
    raise RowError("label", f"'{column}' is {shown}, expected true or false", "use true for a good answer and false "
                   "for a bad one", "label not true/false")


@dataclass(frozen=True)
class _How:
    method: str
    shape: Shape
    template: str
    tokenizer: Any
    system: str


def _render_answer(prompt: list[Message], answer: str, how: _How, fld: str) -> tuple[str, str]:
    """(rendered prompt, rendered answer up to the end of its trained span)."""
    try:
        r = render(prompt + [{"role": "assistant", "content": answer}], how.template, how.tokenizer)
    except TemplateError as e:
        reason, _, fix = str(e).partition("; ")
        raise RowError(fld, reason, fix or "fix the roles in this row", "roles out of order") from None
    end = r.spans[-1][1] if r.spans else len(r.text)
    return r.prompt, r.text[len(r.prompt):end]


def _example(row: Row, number: int, how: _How) -> MethodExample:
    f = how.shape.fields
    system = cell_text(row, f.get("system"), "system", [], required=False) or how.system
    if how.shape.name == "preference":
        if "prompt" in f:
            prompt = _prompt_messages(row, f["prompt"], system)
            chosen = _answer(row, f["chosen"], "chosen")
            rejected = _answer(row, f["rejected"], "rejected")
        else:
            prompt, chosen, rejected = _implicit(row, how.shape)
            if system.strip() and prompt[0]["role"] != "system":
                prompt = [{"role": "system", "content": system}] + prompt
        if chosen.strip() == rejected.strip():
            raise RowError("rejected", "is the same as chosen", "give a worse answer as rejected, or remove the row",
                           "chosen equals rejected")
        p1, c = _render_answer(prompt, chosen, how, "chosen")
        p2, r = _render_answer(prompt, rejected, how, "rejected")
        if p1 != p2:  # a template that renders the prompt differently per answer: train from what they share
            n = next((i for i, (a, b) in enumerate(zip(p1, p2)) if a != b), min(len(p1), len(p2)))
            p1, c, r = p1[:n], p1[n:] + c, p2[n:] + r
        return PairExample(number, p1, c, r, prompt, chosen)
    if how.shape.name == "feedback":
        prompt = _prompt_messages(row, f["prompt"], system)
        completion = _answer(row, f["completion"], "completion")
        label = _label(row, f["label"])
        p, c = _render_answer(prompt, completion, how, "completion")
        return FeedbackExample(number, p, c, label, prompt, completion)
    prompt = _prompt_messages(row, f["prompt"], system)
    answer = cell_text(row, f.get("answer"), "answer", [], required=False) if "answer" in f else None
    try:
        text = render(prompt, how.template, how.tokenizer, add_generation_prompt=True).prompt
    except TemplateError as e:
        reason, _, fix = str(e).partition("; ")
        raise RowError("prompt", reason, fix or "fix the roles in this row", "roles out of order") from None
    return PromptExample(number, text, answer if answer is None or answer.strip() else None, prompt)


# ---------------------------------------------------------------------------------------------
# a whole source


def format_for_method(
    source: str | Path | Sequence[Row],
    method: str,
    *,
    template: str = "llama2",
    system_prompt: str = "",
    columns: dict[str, str] | None = None,
    tokenizer: Any = None,
    strict: bool = False,
    val_fraction: float = 0.0,
    seed: int = 42,
    hub_config: str | None = None,
    split: str = "train",
    max_bytes: int | None = None,
    shape: str | None = None,
) -> MethodData:
    """Load, detect and render the data of ``method`` (dpo, orpo, kto, grpo). Bad rows are skipped and counted
    (``strict``: the first raises DataError naming its row)."""
    table = open_table(source, hub_config=hub_config, split=split, max_bytes=max_bytes)
    name = table.name
    rows_in = len(table.rows) + len(table.broken)
    if template == MODEL_TEMPLATE and tokenizer is None:
        raise DataError(name, None, "template 'model' needs the model's tokenizer; give --model or pick a template")
    detected = detect_method_shape(table.columns, method, columns, name, shape)
    how = _How(method, detected, template, tokenizer, system_prompt)
    problems: list[Problem] = list(table.broken)
    if strict and table.broken:
        p = table.broken[0]
        raise DataError(name, p.row, f"{p.reason}; {p.fix}")
    examples: list[MethodExample] = []
    for row, number in zip(table.rows, table.row_numbers):
        try:
            if not isinstance(row, dict):
                raise RowError("", "is not an object", "write each row as {\"column\": value, ...}", "not a row")
            ex = _example(row, number, how)
            texts = [v for m in ex.messages for v in m.values()] + [ex.prompt]
            if any(SURROGATE.search(t) for t in texts):
                raise RowError("content", "has a broken character escape (a lone UTF-16 surrogate)",
                               "write the character itself or remove it", "not text")
        except RowError as e:
            problem = Problem(number, e.field, e.reason, e.fix, e.category)
            if strict:
                raise DataError(name, number, f"{e.field + ': ' if e.field else ''}{e.reason}; {e.fix}") from None
            problems.append(problem)
            continue
        examples.append(ex)
    if not examples:
        first = problems[0] if problems else None
        raise DataError(name, None, f"no usable rows: {len(problems)} of {rows_in} rejected"
                        + (f" (first: {first})" if first else ""))
    if method == "kto" and len({ex.label for ex in examples if isinstance(ex, FeedbackExample)}) < 2:
        only = "true" if isinstance(examples[0], FeedbackExample) and examples[0].label else "false"
        raise DataError(name, None, f"every usable row has label {only}; kto needs both thumbs-up (true) and "
                        "thumbs-down (false) rows")
    val: list[MethodExample] = []
    if val_fraction > 0:
        val, examples = split_off(examples, val_fraction, seed)
    return MethodData(str(name), method, detected, rows_in, examples, val, problems,
                      Counter(p.category for p in problems), system_prompt)

