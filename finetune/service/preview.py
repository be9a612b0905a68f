"""The Dataset tab's preview of a formatted dataset: examples with their trained spans, token lengths, row problems
and the formatted file."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypedDict

from ..config import DataConfig, range_problem
from .checks import ServiceError, check_hub_dataset_id


_tokenizers: dict[str, Any] = {}  # model name -> a transformers tokenizer

_tokenizers_lock = threading.Lock()

_tokenizers_lock = threading.Lock()

def _tokenizer(model: str) -> Any:
    """Tokenizers for token statistics, kept per model name (loading one takes about a second)."""
    from ..models import load_tokenizer

    with _tokenizers_lock:
        if model not in _tokenizers:
            if len(_tokenizers) >= 4:
                _tokenizers.pop(next(iter(_tokenizers)))
            _tokenizers[model] = load_tokenizer(model)
        return _tokenizers[model]

def format_preview(source: str, *, template: str, system_prompt: str = "", columns: dict[str, str] | None = None,
                   model: str = "", max_length: int = 1024, train_on: str = "assistant",
                   hub_config: str | None = None, split: str = "train", out_dir: Path, preview_rows: int = 5,
                   hub_only: bool = False, keep_duplicates: bool = False, method: str = "sft",
                   val_fraction: float = 0.0, test_split: float = 0.0) -> FormatPreview:
    """Format a dataset for the Dataset tab: summary markdown, preview examples with spans, token lengths,
    row problems, warnings and the formatted JSONL file.

    ``source`` is an uploaded file (capped at the upload limit) or a Hub id; ``hub_only`` refuses anything
    but a Hub id (text typed on a shared server). ``val_fraction`` / ``test_split``: the rows split as training
    splits them (``data.val_fraction``, ``data.test_split``, seed 42), counted in the summary.
    """
    from .. import data

    for key, value in (("data.val_fraction", val_fraction), ("data.test_split", test_split)):
        problem = range_problem(key, value)
        if problem:
            raise ServiceError(problem)

    if hub_only:
        source = check_hub_dataset_id(source)
    tok = _tokenizer(model)
    is_file = Path(source).exists()
    if method != "sft":
        return _method_preview(source, method, template=template, system_prompt=system_prompt, columns=columns,
                               tokenizer=tok, hub_config=hub_config, split=split, out_dir=out_dir,
                               preview_rows=preview_rows, is_file=is_file)
    try:
        settings = DataConfig(hub_config=hub_config, split=split, template=template, system_prompt=system_prompt,
                              columns=columns or {}, train_on=train_on, keep_duplicates=keep_duplicates,
                              val_fraction=val_fraction, test_split=test_split)
        result = data.format_dataset(source, settings, tokenizer=tok, max_length=max_length,
                                     max_bytes=data.max_upload_bytes())
    except data.DataError as e:
        if is_file and e.file == str(source):  # name the file, not the server's upload path
            raise data.DataError(Path(source).name, e.row, e.reason) from None
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_file:
        result.source = Path(source).name  # not the server's upload path
    name = Path(source).stem if is_file else source.replace("/", "__")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "data"
    out = out_dir / f"{name}.{template}.jsonl"
    data.write_jsonl(result.examples, out)
    return {
        "summary": data.summary_markdown(result),
        "examples": [{"row": ex.row, "text": ex.text, "spans": [list(s) for s in ex.spans]}
                     for ex in result.examples[:preview_rows]],
        "lengths": list(result.lengths),
        "problems": [[p.row, p.field, p.reason, p.fix] for p in result.problems],
        "warnings": [f"row {p.row}: {p.reason}" for p in result.warnings],
        "file": str(out),
    }

def _method_preview(source: str, method: str, *, template: str, system_prompt: str, columns: dict[str, str] | None,
                    tokenizer: Any, hub_config: str | None, split: str, out_dir: Path, preview_rows: int,
                    is_file: bool) -> FormatPreview:
    """:func:`format_preview` for dpo/orpo/kto/grpo data: the detected shape, and each example's prompt with its
    chosen and rejected answers (or its answer and label, or its reference) as training renders them."""
    import json

    from .. import data, methods
    from ..data.preference import FeedbackExample, PairExample, PromptExample, format_for_method
    from ..data.stats import token_lengths

    if method not in methods.PREFERENCE:
        raise ServiceError(f"method '{method}' is not one of: {', '.join(methods.METHODS)}")
    try:
        result = format_for_method(source, method, template=template, system_prompt=system_prompt,
                                   columns=columns or None, tokenizer=tokenizer, hub_config=hub_config, split=split,
                                   max_bytes=data.max_upload_bytes())
    except data.DataError as e:
        if is_file and e.file == str(source):
            raise data.DataError(Path(source).name, e.row, e.reason) from None
        raise
    shown: list[dict[str, Any]] = []
    for ex in result.examples[:preview_rows]:
        if isinstance(ex, PairExample):
            for label, answer in (("chosen", ex.chosen), ("rejected", ex.rejected)):
                shown.append({"row": f"{ex.row} ({label})", "text": ex.prompt + answer,
                              "spans": [[len(ex.prompt), len(ex.prompt) + len(answer)]]})
        elif isinstance(ex, FeedbackExample):
            shown.append({"row": f"{ex.row} ({'thumbs up' if ex.label else 'thumbs down'})",
                          "text": ex.prompt + ex.completion,
                          "spans": [[len(ex.prompt), len(ex.prompt) + len(ex.completion)]]})
        elif isinstance(ex, PromptExample):
            shown.append({"row": f"{ex.row} (reference: {ex.answer if ex.answer is not None else 'none'})",
                          "text": ex.prompt, "spans": []})
    name = Path(source).stem if is_file else source.replace("/", "__")
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{name}.{method}.{template}.jsonl"
    out.write_text("".join(json.dumps({"row": ex.row, **ex.to_json()}, ensure_ascii=False) + "\n"
                           for ex in result.examples), encoding="utf-8")
    texts = [ex.prompt + (ex.chosen if isinstance(ex, PairExample) else
                          ex.completion if isinstance(ex, FeedbackExample) else "") for ex in result.examples]
    shown_source = Path(source).name if is_file else source
    skipped = ", ".join(f"{n} {c}" for c, n in result.skipped.most_common())
    summary = (f"**{method.upper()} data** from `{shown_source}`: {len(result.examples)} examples of "
               f"{result.rows_in} rows, shape `{result.shape}`" + (f"; skipped: {skipped}" if skipped else "") +
               ". Highlighted: the answer each example trains on.")
    return {
        "summary": summary,
        "examples": shown,
        "lengths": token_lengths(texts, tokenizer) if tokenizer is not None else [],
        "problems": [[p.row, p.field, p.reason, p.fix] for p in result.problems],
        "warnings": [],
        "file": str(out),
    }

class FormatPreview(TypedDict):
    """What the Dataset tab shows of a formatted dataset (:func:`format_preview`)."""
    summary: str  # markdown
    examples: list[dict[str, Any]]  # {"row": int, "text": str, "spans": [[start, end], ...]} (trained characters)
    lengths: list[int]  # tokens per example
    problems: list[list[Any]]  # [row, field, reason, fix] of each rejected row
    warnings: list[str]
    file: str  # the formatted JSONL
