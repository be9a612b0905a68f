"""One formatting path: the column-wise fast path gives exactly what the per-row reference gives.

``format_dataset`` formats clean single-turn rows column by column and leaves every other row to the per-row
path (``row_messages`` + ``render``); ``per_row=True`` sends every row through the per-row path. On random
alpaca, prompt/completion and question/answer data (random unicode, control characters, empty and missing
cells, numbers, template control strings, lone surrogates, spreadsheet formulas, duplicates, system
columns and prompts) read from memory, JSONL and CSV, with every named template, both ``train_on`` and
``strict``, the two must write the same bytes and report the same rows.
"""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetune.config import DataConfig
from finetune.data import DataError, format_dataset, write_jsonl
from finetune.data.detect import detect_shape
from finetune.data.format import _single_turn_rows
from finetune.data.read import table_of_rows
from finetune.templates import MODEL_TEMPLATE, TEMPLATE_NAMES

NAMED = [t for t in TEMPLATE_NAMES if t != MODEL_TEMPLATE]

# Pieces that matter to formatting: whitespace that templates strip, format-string braces, template control
# strings, spreadsheet formula starts, lone surrogates (what a cut JSON escape decodes to), control characters.
PIECES = ["", " ", "\t", "\n", "\r\n", "  padded  ", "x", "é", "東京", "🇫🇷", "\u2028", "\u200b", "\x00", "\x01",
          "\x1f", "\x7f", "\x85", "{0}", "{x}", "}", "{{", "%s", "\\", '"', "[INST]", "[/INST]", "<s>", "</s>",
          "<<SYS>>", "<|im_end|>", "<|eot_id|>", "### Response:", "User:", "System:", "=SUM(A1)", "+cmd|' /C calc'!A0",
          "- item", "@x(", "\ud83d", "\udc00"]
texts = st.one_of(st.sampled_from(PIECES), st.lists(st.sampled_from(PIECES), max_size=4).map("".join),
                  st.text(max_size=10), st.text(alphabet=" \t\n\r\x0b\x0c\x1c\u2028\u3000xé{}", max_size=6))
cells = st.one_of(texts, texts, texts, st.none(), st.integers(-5, 10**20), st.floats(allow_nan=True),
                  st.booleans(), st.just(["a list"]))

# shape -> (user column, answer column, optional extra column, system column names)
SHAPES = {
    "alpaca": ("instruction", "output", "input"),
    "alpaca_response": ("instruction", "response", "input"),
    "prompt_completion": ("prompt", "completion", None),
    "question_answer": ("question", "answer", None),
    "mapped": ("q", "a", None),  # custom names, given as a column mapping
}


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, Any]:
    shape = draw(st.sampled_from(sorted(SHAPES)))
    user_col, answer_col, extra_col = SHAPES[shape]
    system_col = draw(st.sampled_from([None, "system", "system_prompt"]))
    columns = [user_col, answer_col] + ([extra_col] if extra_col else []) + ([system_col] if system_col else [])
    clean = draw(st.booleans())  # half the datasets are all clean text: the fast path takes every row
    value = texts.filter(lambda t: t.strip() != "") if clean else cells
    optional = texts if clean else cells

    def row() -> dict[str, Any]:
        r: dict[str, Any] = {}
        for c in columns:
            if not clean and draw(st.integers(0, 9)) == 0:
                continue  # a missing cell
            r[c] = draw(value if c in (user_col, answer_col) else optional)
        return r

    rows = [row() for _ in range(draw(st.integers(1, 12)))]
    for _ in range(draw(st.integers(0, 3))):  # duplicates of earlier rows
        rows.insert(draw(st.integers(0, len(rows))), dict(draw(st.sampled_from(rows))))
    return {
        "rows": rows,
        "columns": {"prompt": "q", "completion": "a"} if shape == "mapped" else None,
        "source": draw(st.sampled_from(["memory", "jsonl", "csv"])),
        "broken_line": draw(st.sampled_from([None, None, "{not json", "[1, 2]"])),
        "template": draw(st.sampled_from(NAMED)),
        "train_on": draw(st.sampled_from(["assistant", "all"])),
        "system_prompt": draw(st.one_of(st.just(""), st.just(""), texts)),
        "strict": draw(st.integers(0, 4)) == 0,
        "val_fraction": draw(st.sampled_from([0.0, 0.0, 0.25])),
        "seed": draw(st.integers(0, 3)),
    }


def _csv_cell(v: Any) -> str:
    # CSV holds text only, as UTF-8 (no lone surrogate) and without NUL (a NUL refuses the whole file)
    return re.sub("[\ud800-\udfff\x00]", "?", "" if v is None else str(v))


def _write_source(case: dict[str, Any], folder: Path) -> Any:
    rows = case["rows"]
    if case["source"] == "memory":
        return rows
    if case["source"] == "jsonl":
        lines = [json.dumps(r) for r in rows]  # ASCII escapes: a lone surrogate stays a "\ud83d" escape
        if case["broken_line"]:
            lines.insert(len(lines) // 2, case["broken_line"])
        path = folder / "data.jsonl"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path
    header = list(dict.fromkeys(k for r in rows for k in r))
    path = folder / "data.csv"
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[_csv_cell(r.get(k)) for k in header] for r in rows])
    return path


def _outcome(source: Any, case: dict[str, Any], per_row: bool, folder: Path) -> tuple[Any, ...]:
    """Everything a caller sees: the written bytes, rows and loss spans, the reported rows; or the error."""
    try:
        settings = DataConfig(template=case["template"], system_prompt=case["system_prompt"],
                              columns=case["columns"] or {}, train_on=case["train_on"], strict=case["strict"],
                              val_fraction=case["val_fraction"], seed=case["seed"])
        result = format_dataset(source, settings, per_row=per_row)
    except DataError as e:
        return ("error", str(e), e.file, e.row, e.reason)
    out = folder / f"out-{per_row}.jsonl"
    write_jsonl(result.examples + result.val_examples, out)
    return ("ok", out.read_bytes(), [(ex.row, ex.spans) for ex in result.examples],
            [(ex.row, ex.spans) for ex in result.val_examples], result.problems, result.warnings,
            result.skipped, result.rows_in, result.shape, result.source)


@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(datasets())
def test_fast_path_equals_per_row_reference(case: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source = _write_source(case, folder)
        fast, reference = _outcome(source, case, False, folder), _outcome(source, case, True, folder)
    assert fast == reference


@pytest.mark.parametrize("template", NAMED)
@pytest.mark.parametrize("train_on", ["assistant", "all"])
def test_the_fast_path_takes_clean_rows_of_every_named_template(template: str, train_on: str) -> None:
    """Else the property above would compare the per-row path with itself."""
    rows = [{"instruction": " x ", "input": "", "output": "y", "system": ""}, {"instruction": "é", "output": "東京 ",
                                                                              "system": "be brief"}]
    table = table_of_rows(rows)
    fast = _single_turn_rows(table.rows, detect_shape(table.columns), template, None, train_on, "Default.")
    assert fast is not None and not fast.bad


def test_the_model_template_has_no_fast_path() -> None:
    """The model's own chat template goes through the per-row path only: nothing to drift."""
    table = table_of_rows([{"prompt": "q", "completion": "a"}])
    assert _single_turn_rows(table.rows, detect_shape(table.columns), MODEL_TEMPLATE, object(), "assistant", "") is None
