"""Datasets in, formatted examples out: load a file or Hub dataset, detect its shape, map each row to chat
messages, render them with a template, and report every bad row with its number and the fix.

>>> result = format_dataset([{"instruction": "Say hi", "output": "Hi!"}], template="llama2")
>>> result.shape.name, result.examples[0].text
('alpaca', '<s>[INST] Say hi [/INST] Hi! </s>')

Row numbers are 1-based as the user sees the file: the line number in JSONL, the data row in CSV/TSV
(the header is not counted), the element index in JSON and Parquet.
"""

from __future__ import annotations

import csv
import functools
import gc
import io
import itertools
import json
import operator
import os
import queue
import random
import re
import tempfile
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import orjson

from .refs import classify
from .templates import (CONTROL_STRINGS, MODEL_TEMPLATE, TemplateError,
                        find_control_strings, render, special_tokens)

FILE_TYPES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")
CANONICAL = ("instruction", "input", "output", "system", "prompt", "completion", "question", "answer",
             "messages", "conversations", "text")


class DataError(ValueError):
    """Unusable input: ``<file>[:<row>]: <reason>`` (the reason says how to fix it)."""

    def __init__(self, file: str, row: int | None, reason: str):
        self.file, self.row, self.reason = file, row, reason
        super().__init__(f"{file}{f':{row}' if row else ''}: {reason}")


@dataclass(frozen=True)
class Problem:
    """One bad row: what is wrong and how to fix it. ``kind`` is 'error' (row skipped) or 'warning'."""

    row: int | None
    field: str
    reason: str
    fix: str
    category: str = "bad row"
    kind: str = "error"
    line: int | None = None  # CSV/TSV: the line where the row starts (quoted cells may span lines)

    def __str__(self) -> str:
        where = (f"row {self.row}" if self.row else "file") + (f" (line {self.line})" if self.line else "")
        return f"{where}: {self.field + ': ' if self.field else ''}{self.reason}; {self.fix}"


@dataclass
class Table:
    """Rows read from a source, with the row numbers the user sees and rows that could not be parsed."""

    name: str
    columns: list[str]
    rows: list[dict]
    row_numbers: list[int]
    broken: list[Problem] = field(default_factory=list)
    lines: dict[int, int] | None = None  # CSV/TSV: row number -> the line where that row starts
    # every string came from valid UTF-8 (no lone surrogate that JSON's "\ud83d" escapes can make)
    valid_text: bool = False


@dataclass(frozen=True)
class Shape:
    """A detected data shape and which column holds each canonical field."""

    name: str  # alpaca | prompt_completion | question_answer | messages | conversations | transcript | text
    fields: dict

    def __str__(self) -> str:
        cols = ", ".join(f"{k}={v}" for k, v in self.fields.items())
        return f"{self.name} ({cols})"


@dataclass(slots=True)  # no per-example __dict__: 100,000 examples build and free faster
class Example:
    """One formatted example. ``text`` (what the model sees) is ``prompt + completion`` and ``messages`` the
    conversation as ``[{"role", "content"}, ...]``, both made when read from what is stored once: a large
    dataset's examples take half the memory, and build and free that much faster."""

    prompt: str
    completion: str
    turns: tuple | None  # (role, content, role, content, ...); None for pre-formatted text
    _spans: list | None  # the [start, end) character ranges of text trained on; None: the completion
    row: int

    @property
    def spans(self) -> list[tuple[int, int]]:
        if self._spans is None:
            start = len(self.prompt)
            return [(start, start + len(self.completion))]
        return self._spans

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @property
    def messages(self) -> list[dict] | None:
        t = self.turns
        if t is None:
            return None
        if len(t) == 4:  # the usual single turn, spelled out: a third of the time of the loop below
            return [{"role": t[0], "content": t[1]}, {"role": t[2], "content": t[3]}]
        return [{"role": role, "content": content} for role, content in zip(t[::2], t[1::2])]

    def to_json(self) -> dict:
        return {"text": self.prompt + self.completion, "prompt": self.prompt, "completion": self.completion,
                "messages": self.messages}


@dataclass
class FormatResult:
    source: str
    shape: Shape
    rows_in: int
    examples: list[Example]
    val_examples: list[Example]
    problems: list[Problem]  # rows skipped
    warnings: list[Problem]  # rows kept, worth a look
    skipped: Counter
    lengths: list[int] = field(default_factory=list)  # tokens per example (train + val) when a tokenizer is given
    max_length: int | None = None

    @property
    def token_stats(self) -> dict | None:
        if not self.lengths:
            return None
        s = sorted(self.lengths)
        pick = lambda q: s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]  # noqa: E731
        stats = {"min": s[0], "median": pick(0.5), "p95": pick(0.95), "max": s[-1], "total": sum(s)}
        if self.max_length:
            stats["over_max_length"] = sum(1 for x in s if x > self.max_length)
        return stats


# ---------------------------------------------------------------------------------------------
# loading


def _decode(raw: bytes, name: str, delimiter: str | None = None) -> str:
    """The text of a UTF-8 file; a wrong encoding names the row (CSV/TSV: the data row, else the line),
    the line and the byte."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        row = line if delimiter is None else _csv_row_at(raw[: e.start], delimiter)
        raise DataError(name, row, f"not valid UTF-8 at line {line} (byte 0x{raw[e.start]:02x} at offset {e.start}); "
                        "re-save the file as UTF-8 (in Excel: Save As > CSV UTF-8)") from None


def _csv_row_at(prefix: bytes, delimiter: str) -> int | None:
    """The data row (1-based, header not counted) that is being read at the end of ``prefix``; None while
    still in the header. The 'x' makes the partly read row count even when it has just begun."""
    text = prefix.decode("utf-8-sig", errors="replace") + "x"
    records = sum(1 for r in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter) if any(v.strip() for v in r))
    return records - 1 or None


def _read_delimited(text: str, name: str, delimiter: str) -> Table:
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        raise DataError(name, line, "contains NUL bytes (a binary file?); export it again as text")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        raise DataError(name, None, "the file is empty; it needs a header row and at least one data row") from None
    except csv.Error as e:
        raise DataError(name, 1, f"cannot read the header ({e})") from None
    header = [h.strip() for h in header]
    if not any(header):
        raise DataError(name, None, "the header row is empty; the first line must name the columns")
    rows, numbers, broken, lines = [], [], [], {}
    n = 0
    end = reader.line_num  # the last line read so far: the next row starts on the line after it
    while True:
        start = end + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as e:
            n += 1
            end = reader.line_num
            broken.append(Problem(n, "", f"cannot parse the row ({e})", "fix the quoting on this row", "unparsable row",
                                  line=start))
            continue
        end = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue  # blank lines are not rows
        n += 1
        lines[n] = start
        if len(values) != len(header):
            broken.append(Problem(n, "", f"has {len(values)} fields but the header has {len(header)}",
                                  "quote cells that contain the delimiter, or fix the row", "wrong field count",
                                  line=start))
            continue
        rows.append(dict(zip(header, values)))
        numbers.append(n)
    return Table(name, header, rows, numbers, broken, lines, valid_text=True)  # decoded from UTF-8


TOO_DEEP = "nested too deeply (hundreds of levels of arrays/objects)"


def _read_json(text: str, name: str) -> Table:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(name, e.lineno, f"not valid JSON ({e.msg} at column {e.colno}); fix the file, "
                        "or save one object per line as .jsonl so one bad row does not stop the rest") from None
    except RecursionError:
        raise DataError(name, None, f"{TOO_DEEP}; rows must be flat objects of text columns") from None
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        wrapped = next(iter(lists.values())) if len(lists) == 1 else None
        if wrapped and all(isinstance(x, dict) for x in wrapped):
            # {"data": [{...}, ...]} and the like; no shape reads a column of objects, so this is the rows
            data = wrapped
        elif lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            keys = list(lists)  # an object of columns
            data = [dict(zip(keys, vals)) for vals in zip(*lists.values())]
        else:
            raise DataError(name, None, "a JSON object must map column names to equal-length lists; "
                            "or use an array of objects")
    if not isinstance(data, list):
        raise DataError(name, None, f"expected an array of objects, found {type(data).__name__}")
    rows, numbers, broken, columns = [], [], [], {}
    for i, obj in enumerate(data, 1):
        if isinstance(obj, dict):
            rows.append(obj)
            numbers.append(i)
            columns.update(dict.fromkeys(obj))
        else:
            broken.append(Problem(i, "", f"is a {type(obj).__name__}, not an object", "make each element an object",
                                  "not an object"))
    return Table(name, list(columns), rows, numbers, broken)


_scan_json = json.JSONDecoder().scan_once


def _parse_line(line: str):
    """``json.loads(line)``, about twice as fast for the usual line (one value, nothing around it): the C
    scanner is called directly; anything unusual goes through ``json.loads`` for its exact error."""
    try:
        obj, end = _scan_json(line, 0)
    except StopIteration:
        return json.loads(line)
    return obj if end == len(line) or not line[end:].strip(" \t\r\n") else json.loads(line)  # JSON whitespace


def _columns_of(objs: list[dict]) -> list[str]:
    """Every key of the rows, in order of first appearance (one pass per distinct key list)."""
    columns: dict = {}
    for layout in dict.fromkeys(map(tuple, objs)):
        columns.update(dict.fromkeys(layout))
    return list(columns)


def _any_float(values: Iterable) -> bool:
    """Whether any value, at any depth, is a float: orjson reads integers beyond 64 bits as floats where
    ``json`` keeps them exact, so such data takes the ``json`` path (level by level, C-level for flat rows)."""
    level = list(values)
    while level:
        kinds = set(map(type, level))
        if float in kinds:
            return True
        if not kinds & {list, dict}:
            return False
        level = [x for v in level if type(v) is list or type(v) is dict for x in (v.values() if type(v) is dict else v)]
    return False


def _read_jsonl_bytes(raw: bytes, name: str) -> Table | None:
    """The usual JSONL file straight from its bytes with orjson (a few times faster than decoding the text and
    parsing it with ``json``): valid UTF-8, every non-blank line one object. Anything else (a broken line, a
    value orjson reads differently from ``json``: NaN, huge integers, deep nesting, a lone surrogate escape) is
    None, and the text path gives the exact messages."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    lines = raw.split(b"\n")
    body = lines[:-1] if lines[-1] == b"" else lines  # the newline that ends the last line starts no row
    loads = orjson.loads
    try:
        if body and b"" not in body and not any(map(bytes.isspace, body)):  # no blank line: C-level passes
            numbers = list(range(1, len(body) + 1))
            objs = list(map(loads, body))
        else:
            numbers = [i for i, line in enumerate(lines, 1) if line and not line.isspace()]
            objs = [loads(lines[i - 1]) for i in numbers]
    except orjson.JSONDecodeError:
        return None
    if not numbers:
        return None
    if set(map(type, objs)) != {dict} or _any_float(itertools.chain.from_iterable(map(dict.values, objs))):
        return None
    return Table(name, _columns_of(objs), objs, numbers, valid_text=True)


def _read_jsonl(text: str, name: str) -> Table:
    lines = text.split("\n")
    numbers = [i for i, line in enumerate(lines, 1) if line and not line.isspace()]  # blank lines are not rows
    try:  # the usual file, in one pass: every line one object
        objs = [_parse_line(lines[i - 1]) for i in numbers]
    except (ValueError, RecursionError):
        objs = None
    if objs is not None and all(type(o) is dict for o in objs):
        return Table(name, _columns_of(objs), objs, numbers)
    return _read_jsonl_checked(lines, name)


def _read_jsonl_checked(lines: list[str], name: str) -> Table:
    """Line by line, reporting each broken line and each line that is not an object."""
    rows, numbers, broken, columns = [], [], [], {}
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = _parse_line(line)
        except ValueError as e:
            broken.append(Problem(i, "", f"not valid JSON ({getattr(e, 'msg', e)})", "fix or remove the line",
                                  "broken JSON line"))
            continue
        except RecursionError:
            broken.append(Problem(i, "", TOO_DEEP, "flatten the line into an object of text columns",
                                  "broken JSON line"))
            continue
        if not isinstance(obj, dict):
            broken.append(Problem(i, "", f"is a JSON {type(obj).__name__}, not an object",
                                  'write one object per line, e.g. {"prompt": ..., "completion": ...}', "not an object"))
            continue
        rows.append(obj)
        numbers.append(i)
        columns.update(dict.fromkeys(obj))
    return Table(name, list(columns), rows, numbers, broken)


def _read_parquet(path: Path, name: str, max_bytes: int | None = None) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Read in batches and count the decoded bytes: a small file of repeated values can expand a thousandfold
    # (a compression bomb), so it is stopped as soon as it passes the limit, not after filling the memory.
    limit = PARQUET_EXPANSION * max_bytes if max_bytes is not None else None
    try:
        pf = pq.ParquetFile(path)
        batches, decoded = [], 0
        for batch in pf.iter_batches(batch_size=4096):
            decoded += batch.nbytes
            if limit is not None and decoded > limit:
                raise DataError(name, None, f"expands to over {limit / 1e6:g} MB when decompressed "
                                f"({PARQUET_EXPANSION}x the {max_bytes / 1e6:g} MB upload limit); split it or use "
                                f"a Hub dataset, or raise the limit on the server ({MAX_UPLOAD_ENV})")
            batches.append(batch)
        table = pa.Table.from_batches(batches, schema=pf.schema_arrow)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds for a damaged file
        raise DataError(name, None, f"not a readable Parquet file ({e.__class__.__name__}); export it again") from None
    rows = table.to_pylist()
    return Table(name, table.column_names, rows, list(range(1, len(rows) + 1)), valid_text=True)


def _read_hub(dataset_id: str, hub_config: str | None, split: str) -> Table:
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, hub_config, split=split)
    except Exception as e:  # noqa: BLE001 - network, auth, missing split... all become one message
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(dataset_id, None, f"cannot load the Hub dataset ({reason}); check the id, config and split, "
                        "and that you are online and signed in for private data") from None
    rows = ds.to_list()
    return Table(dataset_id, list(ds.column_names), rows, list(range(1, len(rows) + 1)), valid_text=True)


# Uploads on a server are capped (a shared machine's memory and disk); the CLI reads local files uncapped.
MAX_UPLOAD_ENV = "FINETUNE_MAX_UPLOAD_MB"
DEFAULT_MAX_UPLOAD_MB = 200
PARQUET_EXPANSION = 10  # text compresses 3-5x: a Parquet file expanding 10x past the cap is refused


def max_upload_bytes() -> int:
    """The upload limit in bytes: $FINETUNE_MAX_UPLOAD_MB (default 200 MB)."""
    raw = os.environ.get(MAX_UPLOAD_ENV, "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        mb = DEFAULT_MAX_UPLOAD_MB
    return int(max(mb, 0.001) * 1e6)


def load_rows(source: str | Path, *, hub_config: str | None = None, split: str = "train",
              max_bytes: int | None = None) -> Table:
    """Read a data file (CSV, TSV, JSON, JSONL, Parquet) or a Hub dataset id into rows."""
    path = Path(source)
    name = str(source)
    if not path.exists():
        if classify(name, file_suffixes=FILE_TYPES).kind == "hub":
            return _read_hub(name, hub_config, split)
        raise DataError(name, None, "file not found; check the path (or give a Hub dataset id like user/name)")
    if path.is_dir():
        raise DataError(name, None, "is a folder; give a data file")
    suffix = path.suffix.lower()
    if suffix not in FILE_TYPES:
        raise DataError(name, None, f"unsupported file type '{suffix or 'none'}'; use one of {', '.join(FILE_TYPES)}")
    size = path.stat().st_size
    if max_bytes is not None and size > max_bytes:
        raise DataError(name, None, f"is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB upload limit; "
                        f"split it, use a Hub dataset, or raise the limit on the server ({MAX_UPLOAD_ENV})")
    if size == 0:
        raise DataError(name, None, "the file is empty")
    if suffix == ".parquet":
        return _read_parquet(path, name, max_bytes)
    raw = path.read_bytes()
    if suffix == ".jsonl":
        table = _read_jsonl_bytes(raw, name)
        if table is not None:
            return table
    text = _decode(raw, name, {".csv": ",", ".tsv": "\t"}.get(suffix))
    if not text.strip():
        raise DataError(name, None, "the file is empty (only whitespace)")
    if suffix == ".csv":
        return _read_delimited(text, name, ",")
    if suffix == ".tsv":
        return _read_delimited(text, name, "\t")
    if suffix == ".jsonl":
        return _read_jsonl(text, name)
    if text.lstrip().startswith("{") and "\n{" in text.strip():
        return _read_jsonl(text, name)  # JSON lines saved as .json
    return _read_json(text, name)


# ---------------------------------------------------------------------------------------------
# shapes

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


def detect_shape(columns: Sequence[str], mapping: dict[str, str] | None = None, rows: Sequence[dict] = (),
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
            fields = {**found, **{f: c for f in optional if (c := find(f))}}
            if shape == "text" and _is_transcript(rows, fields["text"]):
                shape = "transcript"
            return Shape(shape, fields)
    if len(columns) == 1 and (sep := next((c for c in ";|\t," if c in columns[0]), None)):
        raise DataError(name, None, f"found one column named '{columns[0]}': the file looks {sep!r}-separated; "
                        "save it with commas as .csv, or with tabs as .tsv")
    raise DataError(name, None, f"cannot tell the data's shape from its columns ({', '.join(columns) or 'none'}); "
                    "expected instruction/output, prompt/completion, question/answer, messages, conversations or "
                    "text, or map yours, e.g. --columns prompt=<column>,completion=<column>")


TRANSCRIPT_RE = re.compile(r"###\s*(Human|Assistant)\s*:", re.I)


def _is_transcript(rows: Sequence[dict], column: str) -> bool:
    sample = [r.get(column) for r in rows[:20] if isinstance(r.get(column), str)]
    return bool(sample) and sum(bool(TRANSCRIPT_RE.search(s)) for s in sample) >= max(1, len(sample) // 2)


# ---------------------------------------------------------------------------------------------
# rows -> messages


class RowError(Exception):
    def __init__(self, field: str, reason: str, fix: str, category: str):
        self.field, self.reason, self.fix, self.category = field, reason, fix, category


def _text(row: dict, column: str | None, field: str, warnings: list, *, required: bool = True) -> str:
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


def _content(value) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # [{"type": "text", "text": ...}]
        parts = [p.get("text") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _turns(value, column: str, role_key: str, content_key: str) -> list[dict]:
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


def _transcript(text: str) -> list[dict]:
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


def row_messages(row: dict, shape: Shape, warnings: list) -> list[dict]:
    f = shape.fields
    if shape.name == "messages":
        msgs = _turns(row.get(f["messages"]), f["messages"], "role", "content")
    elif shape.name == "conversations":
        msgs = _turns(row.get(f["conversations"]), f["conversations"], "from", "value")
    elif shape.name == "transcript":
        msgs = _transcript(_text(row, f["text"], "text", warnings))
    elif shape.name == "alpaca":
        user = _text(row, f["instruction"], "instruction", warnings)
        extra = _text(row, f.get("input"), "input", warnings, required=False)
        if extra.strip():
            user = f"{user}\n\n{extra}"
        msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": _text(row, f["output"], "output", warnings)}]
    else:
        q, a = {"prompt_completion": ("prompt", "completion"), "question_answer": ("question", "answer")}[shape.name]
        msgs = [{"role": "user", "content": _text(row, f[q], q, warnings)},
                {"role": "assistant", "content": _text(row, f[a], a, warnings)}]
    if "system" in f and msgs[0]["role"] != "system":
        system = _text(row, f["system"], "system", warnings, required=False)
        if system.strip():
            msgs = [{"role": "system", "content": system}] + msgs
    return msgs


# ---------------------------------------------------------------------------------------------
# formatting

SINGLE_TURN = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"),
               "question_answer": ("question", "answer")}
# Every control string starts with one of these characters: content without them cannot hold one, which
# spares the regex for nearly every row.
_CONTROL_FIRST = tuple(sorted({c[0] for c in CONTROL_STRINGS}))
_CONTROL_RE = re.compile("|".join(re.escape(x) for x in CONTROL_STRINGS))
# A lone UTF-16 surrogate: what a JSON escape like "\ud83d" without its other half (a cut emoji) decodes to.
# It is not a character and cannot be written as UTF-8, so its row is reported instead of breaking the output.
_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_REASON = "has a broken character escape (a lone UTF-16 surrogate, such as half of an emoji's \\ud83d\\ude00)"
SURROGATE_FIX = "write the character itself or both halves of its escape, or remove it"


def _with_surrogates(column: list) -> set:
    """Indices of texts holding a lone surrogate (ASCII texts are skipped at C speed)."""
    return {i for i, t in enumerate(column) if t is not None and not t.isascii() and _SURROGATE.search(t)}


_STRIP = {(False, False): None, (True, True): str.strip, (True, False): str.lstrip, (False, True): str.rstrip}


@dataclass(frozen=True)
class _SingleTurnPattern:
    """A template's output for one (system?, user, answer) turn as a format string: what ``render`` does,
    read off one rendering with marker contents. ``strip`` says which ends of each field the template
    strips (system, user, answer)."""

    prompt: str  # str.format pattern: {0} user, or {0} system and {1} user
    head: str  # completion = head + answer + tail
    tail: str
    strip: tuple
    train_all: bool

    def apply(self, systems: list[str] | None, users: list[str], answers: list[str]):
        """Column-wise: (prompts, completions, spans) for equally long lists of fields; a None span is the
        completion (as ``Example`` reads it)."""
        fields = [users, answers] if systems is None else [systems, users, answers]
        fields = [col if fn is None else list(map(fn, col)) for col, fn in zip(fields, self.strip)]
        if len(fields) == 2 and self.prompt.count("{0}") == 1 and "{{" not in self.prompt and "}}" not in self.prompt:
            before, after = self.prompt.split("{0}")  # one field: an f-string, without parsing the pattern per row
            prompts = [f"{before}{u}{after}" for u in fields[0]]
        else:
            prompts = list(map(self.prompt.format, *fields[:-1]))
        head, tail = self.head, self.tail
        completions = [f"{head}{a}{tail}" for a in fields[-1]]
        if not self.train_all:
            return prompts, completions, [None] * len(prompts)
        spans = [[(0, n)] for n in map(operator.add, map(len, prompts), map(len, completions))]
        return prompts, completions, spans


def _single_turn_pattern(template: str, tokens, with_system: bool, train_on: str) -> _SingleTurnPattern | None:
    """The pattern of a named template, or None when its output is not plain concatenation of the
    (stripped) fields, checked by comparing with ``render`` on contents with awkward whitespace."""
    roles = (["system"] if with_system else []) + ["user", "assistant"]
    marks = {"system": "\ue000", "user": "\ue001", "assistant": "\ue002"}  # private-use code points

    def probe(contents: dict) -> list[dict]:
        return [{"role": r, "content": contents[r]} for r in roles]

    try:
        plain = render(probe(marks), template, tokens=tokens, train_on=train_on)
        padded = render(probe({r: f"\t{m}\t" for r, m in marks.items()}), template, tokens=tokens).text
    except TemplateError:
        return None
    answer = marks["assistant"]
    if plain.completion.count(answer) != 1 or any(plain.prompt.count(marks[r]) != 1 for r in roles[:-1]):
        return None
    fmt = plain.prompt.replace("{", "{{").replace("}", "}}")
    for k, role in enumerate(roles[:-1]):
        fmt = fmt.replace(marks[role], "{%d}" % k)
    head, tail = plain.completion.split(answer)
    strip = tuple(_STRIP[(f"\t{marks[r]}" not in padded, f"{marks[r]}\t" not in padded)] for r in roles)
    pattern = _SingleTurnPattern(fmt, head, tail, strip, train_on == "all")
    for sample in ({"system": " S {0} ", "user": "\n u {x}\t", "assistant": "\t\n a } \n"},
                   {"system": "sys", "user": "é", "assistant": "東京  x"}):
        want = render(probe(sample), template, tokens=tokens, train_on=train_on)
        args = [[sample[r]] for r in roles]
        (prompt,), (completion,), (spans,) = pattern.apply(*(args if with_system else [None, *args]))
        spans = Example(prompt, completion, None, spans, 0).spans
        if (prompt, completion, spans) != (want.prompt, want.completion, want.spans) or want.text != prompt + completion:
            return None
    return pattern


@dataclass
class _FastRows:
    """What the fast path made, per row of the table (entries of rows in ``bad`` are unused)."""

    bad: set  # row indices for the general path: a missing, empty or non-text field, control strings
    keys: list  # (role, content, ...): the example's turns, and what makes two rows duplicates
    prompts: list
    completions: list
    spans: list
    formula: set  # row indices with a field that starts like a spreadsheet formula ('=', '+', '-', '@')


_NOT_TEXT = object()


def _cells(rows: list, column: str) -> list:
    if set(map(type, rows)) == {dict}:
        return list(map(dict.get, rows, itertools.repeat(column)))  # C-level, about twice a comprehension's speed
    return [r.get(column) if isinstance(r, dict) else _NOT_TEXT for r in rows]


def _not_text(column: list) -> set:
    """Indices of cells that are not non-blank text (missing, empty, whitespace only, a number, ...)."""
    if set(map(type, column)) == {str} and "" not in column and not any(map(str.isspace, column)):
        return set()
    return {i for i, v in enumerate(column) if type(v) is not str or not v or v.isspace()}


def _containing(column: list, firsts: tuple) -> set:
    """Indices of texts that contain (``str.__contains__``) any of ``firsts``; one C-level pass per string when
    none does."""
    found: set = set()
    for c in firsts:
        if any(map(str.__contains__, column, itertools.repeat(c))):
            found.update(i for i, text in enumerate(column) if c in text)
    return found


def _starting(column: list, firsts: tuple) -> set:
    if not any(map(str.startswith, column, itertools.repeat(firsts))):
        return set()
    return {i for i, text in enumerate(column) if text.startswith(firsts)}


def _single_turn_rows(rows: list[dict], shape: Shape, template: str, tokenizer, train_on: str,
                      system_prompt: str, valid_text: bool = True) -> _FastRows | None:
    """The fast path for single-turn shapes and named templates, column by column (no Python loop over the
    rows for clean data). Rows that are not plainly clean (a missing, empty or non-text field, control
    strings) are left to the general path, which reports their problems. None for the whole table when the
    shape or template has no fast path."""
    if shape.name not in SINGLE_TURN or template == MODEL_TEMPLATE:
        return None
    tokens = special_tokens(template, tokenizer)
    plain = _single_turn_pattern(template, tokens, False, train_on)
    with_sys = _single_turn_pattern(template, tokens, True, train_on)
    if plain is None or with_sys is None:
        return None
    n = len(rows)
    q_col, a_col = (shape.fields[f] for f in SINGLE_TURN[shape.name])
    in_col, sys_col = shape.fields.get("input"), shape.fields.get("system")
    users, answers = _cells(rows, q_col), _cells(rows, a_col)
    bad = _not_text(users) | _not_text(answers)
    if in_col is not None:
        extras = _cells(rows, in_col)
        if set(map(type, extras)) <= {str, type(None)}:
            users = [u if not x or x.isspace() else f"{u}\n\n{x}" for u, x in zip(users, extras)]
        else:
            bad |= {i for i, x in enumerate(extras) if x is not None and type(x) is not str}
            users = [u if type(x) is not str or not x or x.isspace() else f"{u}\n\n{x}" for u, x in zip(users, extras)]
    default = system_prompt or None
    systems: list | None = None  # None: every row has the default
    if sys_col is not None:
        values = _cells(rows, sys_col)
        if not set(map(type, values)) <= {str, type(None)}:
            bad |= {i for i, v in enumerate(values) if v is not None and type(v) is not str}
            values = [v if type(v) is str else None for v in values]
        systems = [v if v and not v.isspace() else default for v in values]

    def keep(column: list | None, index: list) -> list | None:
        return column if column is None or len(index) == n else [column[i] for i in index]

    good = list(range(n)) if not bad else [i for i in range(n) if i not in bad]
    u, a, s = keep(users, good), keep(answers, good), keep(systems, good)
    control = _containing(u, _CONTROL_FIRST) | _containing(a, _CONTROL_FIRST)
    if s is not None:
        with_s = [j for j, t in enumerate(s) if t is not None]
        control |= {with_s[j] for j in _containing([s[j] for j in with_s], _CONTROL_FIRST)}
    elif default and _CONTROL_RE.search(default):
        control = set(range(len(good)))  # the system prompt given for every row holds one
    control = {j for j in control if any(t is not None and _CONTROL_RE.search(t)
                                         for t in (u[j], a[j], s[j] if s is not None else default))}
    if not valid_text:  # strings from JSON escapes may hold lone surrogates: the general path reports them
        control |= _with_surrogates(u) | _with_surrogates(a) | (_with_surrogates(s) if s is not None else set())
        if default and _SURROGATE.search(default):
            control = set(range(len(good)))
    if control:  # the general path reports them (a warning, or a rejection under strict)
        bad |= {good[j] for j in control}
        good = [i for i in good if i not in bad]
        u, a, s = keep(users, good), keep(answers, good), keep(systems, good)

    keys: list = [None] * n
    prompts: list = [None] * n
    completions: list = [None] * n
    spans: list = [None] * n
    formula: set = set()
    if s is None:
        groups = [(default is not None, good, u, a, None if default is None else [default] * len(good))]
    else:
        groups = []
        for with_system in (False, True):
            idx = [j for j, t in enumerate(s) if (t is not None) == with_system]
            groups.append((with_system, [good[j] for j in idx], [u[j] for j in idx], [a[j] for j in idx],
                           [s[j] for j in idx] if with_system else None))
    for with_system, index, gu, ga, gs in groups:
        if not index:
            continue
        pattern = with_sys if with_system else plain
        g_prompts, g_completions, g_spans = pattern.apply(gs, gu, ga)
        # the conversation as (role, content, ...): an example's turns, and what makes two rows duplicates
        if with_system:
            gk = list(zip(itertools.repeat("system"), gs, itertools.repeat("user"), gu, itertools.repeat("assistant"), ga))
        else:
            gk = list(zip(itertools.repeat("user"), gu, itertools.repeat("assistant"), ga))
        hits = _starting(gu, FORMULA_FIRST) | _starting(ga, FORMULA_FIRST) | (_starting(gs, FORMULA_FIRST) if gs else set())
        if len(index) == n:  # every row in this group: the lists as they are
            keys, prompts, completions, spans, formula = gk, g_prompts, g_completions, g_spans, hits
            break
        for j, i in enumerate(index):
            keys[i], prompts[i], completions[i], spans[i] = gk[j], g_prompts[j], g_completions[j], g_spans[j]
        formula.update(index[j] for j in hits)
    return _FastRows(bad, keys, prompts, completions, spans, formula)


def _without_gc(fn):
    """Run ``fn`` with the cyclic garbage collector paused. Formatting builds a few container objects per
    row (messages, spans, examples) and none of them form cycles, yet each 700 allocations trigger a
    collection that walks the growing heap: about a quarter of the formatting time on 100,000 rows."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


@_without_gc
def format_dataset(
    source: str | Path | Sequence[dict],
    *,
    template: str = "llama2",
    system_prompt: str = "",
    columns: dict[str, str] | None = None,
    tokenizer=None,
    train_on: str = "assistant",
    strict: bool = False,
    val_fraction: float = 0.0,
    seed: int = 42,
    max_length: int | None = None,
    hub_config: str | None = None,
    split: str = "train",
    max_bytes: int | None = None,
) -> FormatResult:
    """Load, detect, render. Bad rows are skipped and counted (``strict``: the first raises DataError)."""
    if isinstance(source, (str, Path)):
        table = load_rows(source, hub_config=hub_config, split=split, max_bytes=max_bytes)
    else:
        rows = list(source)
        cols = list(dict.fromkeys(k for r in rows[:64] if isinstance(r, dict) for k in r))
        table = Table("data", cols, rows, list(range(1, len(rows) + 1)))
    name = table.name
    rows_in = len(table.rows) + len(table.broken)
    if rows_in == 0:
        raise DataError(name, None, "has no data rows")
    shape = detect_shape(table.columns, columns, table.rows, name)
    if template == MODEL_TEMPLATE and tokenizer is None:
        raise DataError(name, None, "template 'model' needs the model's tokenizer; give --model or pick a template")

    problems: list[Problem] = list(table.broken)
    warnings: list[Problem] = []
    examples: list[Example] = []
    seen: dict = {}
    system = {"role": "system", "content": system_prompt} if system_prompt else None
    preformatted = shape.name == "text"
    fast = None if preformatted else _single_turn_rows(table.rows, shape, template, tokenizer, train_on, system_prompt,
                                                          table.valid_text)

    line_of = (table.lines or {}).get

    def stop_at(p: Problem) -> DataError:
        where = f"line {p.line}: " if p.line else ""
        return DataError(name, p.row, f"{where}{p.field + ': ' if p.field else ''}{p.reason}; {p.fix}")

    def reject(number: int, fld: str, reason: str, fix: str, category: str) -> None:
        problem = Problem(number, fld, reason, fix, category, line=line_of(number))
        if strict:
            raise stop_at(problem)
        problems.append(problem)

    # strict: an unparsable row stops the run when the rows before it are done, not before them
    first_broken = min(table.broken, key=lambda p: p.row or 0) if strict and table.broken else None
    check_formula: list[Example] = []  # the examples that may hold a spreadsheet formula, in order
    if (fast is not None and not fast.bad and not (strict and table.broken)
            and len(set(fast.keys)) == len(fast.keys)):
        # every row clean and distinct: the examples in one go
        examples = list(map(Example, fast.prompts, fast.completions, fast.keys, fast.spans, table.row_numbers))
        check_formula = [examples[i] for i in sorted(fast.formula)]
    else:
        for index, (row, number) in enumerate(zip(table.rows, table.row_numbers)):
            if first_broken is not None and number > (first_broken.row or 0):
                raise stop_at(first_broken)
            if fast is not None and index not in fast.bad:
                key = fast.keys[index]
                if key in seen:
                    reject(number, "", f"duplicates row {seen[key]}", "remove the duplicate", "duplicate")
                    continue
                seen[key] = number
                prompt, completion = fast.prompts[index], fast.completions[index]
                examples.append(Example(prompt, completion, key, fast.spans[index], number))
                if index in fast.formula:
                    check_formula.append(examples[-1])
                continue
            notes: list = []
            try:
                if preformatted:
                    text = _text(row, shape.fields["text"], "text", notes)
                    msgs = None
                    key = text
                else:
                    msgs = row_messages(row, shape, notes)
                    if system is not None and msgs[0]["role"] != "system":
                        msgs = [system] + msgs
                    key = tuple(x for m in msgs for x in (m["role"], m["content"]))
            except RowError as e:
                reject(number, e.field, e.reason, e.fix, e.category)
                continue
            if not table.valid_text and any(type(t) is str and _SURROGATE.search(t) for t in
                                            (key if msgs is not None else (text,))):
                reject(number, "content", SURROGATE_REASON, SURROGATE_FIX, "not text")
                continue
            if key in seen:
                reject(number, "", f"duplicates row {seen[key]}", "remove the duplicate", "duplicate")
                continue
            seen[key] = number
            if msgs is not None:
                found = find_control_strings(msgs)
                if found:
                    reason = f"content contains template control strings {', '.join(found)} (already formatted, or an injection)"
                    fix = "remove them, or load pre-formatted data as a 'text' column"
                    if strict:
                        reject(number, "content", reason, fix, "control strings")
                        continue
                    warnings.append(Problem(number, "content", reason, fix, "control strings", "warning", line_of(number)))
                try:
                    r = render(msgs, template, tokenizer, train_on=train_on)
                except TemplateError as e:
                    reason, _, fix = str(e).partition("; ")  # template errors read "what is wrong; the fix"
                    category = "ends with user" if "ends with a user" in reason else "roles out of order"
                    reject(number, "messages", reason, fix or "fix the roles in this row", category)
                    continue
                examples.append(Example(r.prompt, r.completion, key, r.spans, number))
                check_formula.append(examples[-1])
            else:
                examples.append(Example("", text, None, None, number))  # trained on all of it
                check_formula.append(examples[-1])
            for fld, reason, fix in notes:
                warnings.append(Problem(number, fld, reason, fix, "number as text", "warning", line_of(number)))
    if first_broken is not None:
        raise stop_at(first_broken)

    for ex in check_formula:
        cell = _formula_cell(ex)
        if cell is not None:
            warnings.append(Problem(
                ex.row, "content", f"starts like a spreadsheet formula ({cell[:24]!r}); it stays plain text in the "
                "JSONL, but a spreadsheet opening a CSV export of it would run it",
                "remove the leading character, or do not open exports of this data in a spreadsheet",
                "spreadsheet formula", "warning", line_of(ex.row)))

    if not examples:
        first = problems[0] if problems else None
        detail = f" (first: {first})" if first else ""
        raise DataError(name, None, f"no usable rows: {len(problems)} of {rows_in} rejected{detail}")

    val: list[Example] = []
    if val_fraction > 0:
        # at least one validation example, and at least one left to train on
        k = min(len(examples) - 1, max(1, int(round(len(examples) * val_fraction)))) if len(examples) > 1 else 0
        chosen = set(random.Random(seed).sample(range(len(examples)), k))
        val = [ex for i, ex in enumerate(examples) if i in chosen]
        examples = [ex for i, ex in enumerate(examples) if i not in chosen]

    result = FormatResult(str(name), shape, rows_in, examples, val, problems, warnings,
                          Counter(p.category for p in problems), max_length=max_length)
    if tokenizer is not None:
        result.lengths = token_lengths([ex.text for ex in examples + val], tokenizer)
    return result


# What a spreadsheet runs as a formula (CSV injection): '=' anything, or +/-/@ then a function or a DDE call
# (=cmd|' /C calc'!A0, =HYPERLINK(...), @SUM(...)). A plain '- item' or '+1' is not flagged.
_FORMULA = re.compile(r"=|[+\-@]\s*[A-Za-z_][\w.]*\s*[(|]")
FORMULA_FIRST = ("=", "+", "-", "@")


def _formula_cell(ex: Example) -> str | None:
    cells = ex.turns[1::2] if ex.turns else [ex.text]
    for c in cells:
        if isinstance(c, str) and c.startswith(FORMULA_FIRST) and _FORMULA.match(c):
            return c
    return None


def token_lengths(texts: list[str], tokenizer, batch: int = 2048) -> list[int]:
    """Tokens per text with the model's tokenizer (batched: the fast tokenizer works in parallel)."""
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i: i + batch], add_special_tokens=False)["input_ids"]
        out.extend(len(x) for x in enc)
    return out


def example_json(ex: Example) -> bytes:
    """One line of the formatted file, UTF-8: the JSON object ``{"text":…,"prompt":…,"completion":…,"messages":…}``
    (compact, non-ASCII characters as themselves) and a newline; the same bytes as
    ``json.dumps(ex.to_json(), ensure_ascii=False, separators=(",", ":")).encode() + b"\\n"``, several times faster."""
    return _json_lines([ex])


def _json_lines(examples: list[Example], dumps=orjson.dumps, newline=orjson.OPT_APPEND_NEWLINE) -> bytes:
    """``example_json`` of each example, joined (``Example.to_json`` with the usual single turn inlined: no
    function call per row)."""
    return b"".join([dumps({"text": ex.prompt + ex.completion, "prompt": ex.prompt, "completion": ex.completion,
                            "messages": [{"role": t[0], "content": t[1]}, {"role": t[2], "content": t[3]}]
                            if (t := ex.turns) is not None and len(t) == 4 else ex.messages}, option=newline)
                     for ex in examples])


def _unwritable(ex: Example) -> bool:
    try:
        example_json(ex)
    except orjson.JSONEncodeError:
        return True
    return False


@_without_gc
def write_jsonl(examples: Iterable[Example], path: str | Path, chunk: int = 2000) -> int:
    """One JSON object per example (text, prompt, completion, messages), in input order (see ``example_json``).

    Built in chunks of ``chunk`` lines (one bytes object each: the whole file at once costs twice its size in
    memory and runs slower), handed to a writer thread that writes while the next chunk is built (the write
    itself releases the GIL), into a temporary file renamed at the end, so a crash or a full disk never
    leaves a half-written OUT that looks complete.
    """
    path = Path(path)
    items = examples if isinstance(examples, list) else list(examples)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    pending: queue.Queue = queue.Queue(maxsize=4)  # at most a few chunks in memory
    failed: list[BaseException] = []

    def writer(f) -> None:
        while (data := pending.get()) is not None:
            if not failed:
                try:
                    f.write(data)
                except BaseException as e:  # noqa: BLE001 - raised in the caller's thread
                    failed.append(e)

    try:
        with os.fdopen(fd, "wb") as f:
            thread = threading.Thread(target=writer, args=(f,), name="write-jsonl", daemon=True)
            thread.start()
            try:
                for start in range(0, len(items), chunk):
                    if failed:
                        break
                    part = items[start: start + chunk]
                    try:
                        pending.put(_json_lines(part))
                    except orjson.JSONEncodeError:  # format_dataset reports such rows; examples made elsewhere
                        bad = next(ex for ex in part if _unwritable(ex))
                        raise ValueError(f"the example of row {bad.row} {SURROGATE_REASON}; {SURROGATE_FIX}") from None
            finally:
                pending.put(None)
                thread.join()
            if failed:
                raise failed[0]
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the output is an ordinary data file
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return len(items)


def summary_lines(result: FormatResult) -> list[str]:
    """The one-screen summary shared by the CLI and the app."""
    n_train, n_val = len(result.examples), len(result.val_examples)
    lines = [f"source: {result.source}", f"shape: {result.shape}", f"rows in: {result.rows_in}",
             f"rows written: {n_train + n_val}" + (f" ({n_train} train, {n_val} validation)" if n_val else ""),
             f"rows skipped: {sum(result.skipped.values())}"]
    lines += [f"  {count} × {reason}" for reason, count in result.skipped.most_common()]
    if result.warnings:
        lines.append(f"warnings: {len(result.warnings)} rows (kept)")
    for p in (result.problems + result.warnings)[:5]:
        lines.append(f"  {p}")
    more = len(result.problems) + len(result.warnings) - 5
    if more > 0:
        lines.append(f"  … and {more} more")
    stats = result.token_stats
    if stats:
        line = f"tokens: min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}"
        if "over_max_length" in stats:
            line += f"; {stats['over_max_length']} over max_length {result.max_length} (truncated in training)"
        lines.append(line)
    return lines


def summary_markdown(result: FormatResult) -> str:
    lines = summary_lines(result)
    return "\n".join(f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}" for line in lines)

