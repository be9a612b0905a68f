"""Which shape a table has and how its rows map to chat messages: the canonical fields (instruction/output,
prompt/completion, question/answer, messages, conversations, ``### Human:`` transcripts, text), the column
that holds each (detected, or given as a mapping), and one row turned into ``[{"role", "content"}, ...]``.

>>> shape = detect_shape(["Instruction", "response"])
>>> str(shape)
'alpaca (instruction=Instruction, output=response)'
>>> row_messages({"Instruction": "Say hi", "response": "Hi!"}, shape, [])
[{'role': 'user', 'content': 'Say hi'}, {'role': 'assistant', 'content': 'Hi!'}]
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..errors import BadInputError
from ..templates import Message
from .read import Row
from .validate import DataError, RowError, ShapeError

CANONICAL = ("instruction", "input", "output", "system", "prompt", "completion", "question", "answer",
             "messages", "conversations", "text")
# A note on a kept row, (field, reason, fix): a number used as text
Note = tuple[str, str, str]


@dataclass(frozen=True)
class Shape:
    """A detected data shape and which column holds each canonical field."""

    name: str  # alpaca | prompt_completion | question_answer | messages | conversations | transcript | text
    fields: dict[str, str]  # canonical field -> column

    def __str__(self) -> str:
        cols = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.name} ({cols})"


SHAPES: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    # name, required fields, optional fields
    ("messages", ("messages",), ("system",)),
    ("conversations", ("conversations",), ("system",)),
    ("alpaca", ("instruction", "output"), ("input", "system")),
    ("prompt_completion", ("prompt", "completion"), ("system",)),
    ("question_answer", ("question", "answer"), ("system",)),
    ("text", ("text",), ()),
)
ALIASES = {"output": ("output", "response"), "conversations": ("conversations", "conversation"),
           "input": ("input",), "system": ("system", "system_prompt")}


def parse_column_mapping(text: str, what: str = "column mapping") -> dict[str, str]:
    """``instruction=question, output=answer`` -> {"instruction": "question", "output": "answer"}; ``what``
    names the field in the message (the CLI flag or the form's box).

    >>> parse_column_mapping("instruction=question, output=answer,")
    {'instruction': 'question', 'output': 'answer'}
    """
    out: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        if "=" not in part:
            raise BadInputError(f"{what} '{part.strip()}' must look like field=column, e.g. output=answer")
        k, v = part.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def detect_shape(columns: Sequence[str], mapping: dict[str, str] | None = None, rows: Sequence[Row] = (),
                 name: str = "data") -> Shape:
    """Which shape the columns have; ``mapping`` (canonical field -> column) overrides detection."""
    lower = {c.lower(): c for c in columns}
    mapping = dict(mapping or {})
    for k, col in mapping.items():
        if k not in CANONICAL:
            raise DataError(name, None, f"unknown field '{k}' in the column mapping; fields are {', '.join(CANONICAL)}")
        if col not in columns:
            raise DataError(name, None, f"column '{col}' (mapped to {k}) is not in the data; columns: {', '.join(columns)}")

    def find(f: str) -> str | None:
        if f in mapping:
            return mapping[f]
        for alias in ALIASES.get(f, (f,)):
            if alias in lower:
                return lower[alias]
        return None

    candidates = SHAPES
    if mapping:  # a mapping picks the shape whose required fields it names
        named = [s for s in SHAPES if any(f in mapping for f in s[1])]
        candidates = tuple(named) or SHAPES
    for shape, required, optional in candidates:
        found = {f: find(f) for f in required}
        if all(found.values()):
            fields = {f: c for f, c in found.items() if c} | {f: c for f in optional if (c := find(f))}
            if shape == "text" and _is_transcript(rows, fields["text"]):
                shape = "transcript"
            return Shape(shape, fields)
    if len(columns) == 1 and (sep := next((c for c in ";|\t," if c in columns[0]), None)):
        raise DataError(name, None, f"found one column named '{columns[0]}': the file looks {sep!r}-separated; "
                        "save it with commas as .csv, or with tabs as .tsv")
    said = (f"cannot tell the data's shape from its columns ({', '.join(columns) or 'none'}); expected "
            "instruction/output, prompt/completion, question/answer, messages, conversations or text, or map yours")
    raise ShapeError(name, said + ", e.g. --columns prompt=<column>,completion=<column>", tuple(columns),
                     said + " in Column mapping, e.g. prompt=<column>, completion=<column>")


TRANSCRIPT_RE = re.compile(r"###\s*(Human|Assistant)\s*:", re.I)


def _is_transcript(rows: Sequence[Row], column: str) -> bool:
    sample = [v for r in rows[:20] if isinstance(v := r.get(column), str)]
    return bool(sample) and sum(bool(TRANSCRIPT_RE.search(s)) for s in sample) >= max(1, len(sample) // 2)


# ---------------------------------------------------------------------------------------------
# rows -> messages

# The single-turn shapes: (the user's field, the answer's field). An alpaca 'input' joins the instruction
# after INPUT_SEPARATOR; every formatting path builds the user's text the same way.
SINGLE_TURN = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
               "question_answer": ("question", "answer")}
INPUT_SEPARATOR = "\n\n"
NOT_A_ROW = object()  # the cell of an element that is not a row object: never text


def column_cells(rows: Sequence[Row], column: str) -> list[Any]:
    """Every row's cell of ``column`` (None where missing): the column-wise formatting path reads whole columns."""
    if set(map(type, rows)) == {dict}:
        return list(map(dict.get, rows, itertools.repeat(column)))  # C-level, about twice a comprehension's speed
    return [r.get(column) if isinstance(r, dict) else NOT_A_ROW for r in rows]


def cell_text(row: Row, column: str | None, field: str, warnings: list[Note], *, required: bool = True) -> str:
    """The text of a cell; a number is used as text with a note in ``warnings``, anything else is a RowError."""
    value = row.get(column) if column else None
    if isinstance(value, str):
        if required and not value.strip():
            raise RowError(field, f"'{column}' is empty", "fill it in or remove the row", "empty field")
        return value
    if value is None:
        if required:
            raise RowError(field, f"'{column}' is missing", "add the value or remove the row", "missing field")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        warnings.append((field, f"'{column}' is a number ({value}); used as text", "quote it to silence this"))
        return str(value)
    raise RowError(field, f"'{column}' is a {type(value).__name__}, expected text",
                   "make it a plain string", "not text")


ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "bot": "assistant",
              "model": "assistant", "system": "system"}


def _content(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}]
        parts = [t for p in value if isinstance(p, dict) and isinstance(t := p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _turns(value: object, column: str, role_key: str, content_key: str) -> list[Message]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise RowError(column, f"'{column}' is not a JSON list of messages", "write it as a JSON array",
                           "not a message list") from None
    if not isinstance(value, list) or not value:
        raise RowError(column, f"'{column}' is empty or not a list", f"give a list of {{{role_key}, {content_key}}}",
                       "not a message list")
    out = []
    for i, m in enumerate(value, 1):
        if not isinstance(m, dict):
            raise RowError(column, f"message {i} is not an object", f"use {{{role_key}: ..., {content_key}: ...}}",
                           "not a message list")
        role = ROLE_NAMES.get(str(m.get(role_key, "")).lower())
        content = _content(m.get(content_key))
        if role is None:
            raise RowError(column, f"message {i} has role '{m.get(role_key)}'",
                           "use system, user/human or assistant/gpt", "unknown role")
        if content is None:
            raise RowError(column, f"message {i} has no text '{content_key}'", "give each message text", "not text")
        if not content.strip() and role != "system":
            raise RowError(column, f"message {i} ({role}) is empty", "fill it in or drop the message", "empty field")
        out.append({"role": role, "content": content})
    return out


def _transcript(text: str) -> list[Message]:
    parts = TRANSCRIPT_RE.split(text)
    if parts[0].strip():
        raise RowError("text", "has text before the first '### Human:'", "remove it or start with '### Human:'",
                       "bad transcript")
    msgs = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        msgs.append({"role": "user" if speaker.lower() == "human" else "assistant", "content": content.strip()})
    if not msgs:
        raise RowError("text", "has no '### Human:' / '### Assistant:' turns", "use the transcript format",
                       "bad transcript")
    return msgs


def row_messages(row: Row, shape: Shape, warnings: list[Note]) -> list[Message]:
    """The conversation of one row (a leading system message when the row has one); a bad row is a RowError."""
    f = shape.fields
    if shape.name == "messages":
        msgs = _turns(row.get(f["messages"]), f["messages"], "role", "content")
    elif shape.name == "conversations":
        msgs = _turns(row.get(f["conversations"]), f["conversations"], "from", "value")
    elif shape.name == "transcript":
        msgs = _transcript(cell_text(row, f["text"], "text", warnings))
    elif shape.name == "alpaca":
        user = cell_text(row, f["instruction"], "instruction", warnings)
        extra = cell_text(row, f.get("input"), "input", warnings, required=False)
        if extra.strip():
            user = f"{user}{INPUT_SEPARATOR}{extra}"
        answer = cell_text(row, f["output"], "output", warnings)
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    else:
        q, a = SINGLE_TURN[shape.name]
        msgs = [{"role": "user", "content": cell_text(row, f[q], q, warnings)},
                {"role": "assistant", "content": cell_text(row, f[a], a, warnings)}]
    if "system" in f and msgs[0]["role"] != "system":
        system = cell_text(row, f["system"], "system", warnings, required=False)
        if system.strip():
            msgs = [{"role": "system", "content": system}] + msgs
    return msgs
