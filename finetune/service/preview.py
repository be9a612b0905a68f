"""The Dataset tab's dataset, formatted as training will: the library's result, its token lengths and the formatted
file (what the tab shows of it is the UI's)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..config import DataConfig, range_problem
from ..methods import method_hint
from .checks import ServiceError, check_hub_dataset_id

if TYPE_CHECKING:
    from ..data.format import FormatResult
    from ..data.preference import MethodData


_tokenizers: dict[str, Any] = {}  # model name -> a transformers tokenizer
# Concurrent requests (the app serves several at once) load a tokenizer once, one at a time: the first use of
# transformers' lazy imports from several threads at once fails ("cannot import name 'AutoTokenizer'").
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


@dataclass(frozen=True)
class Formatted:
    """A dataset formatted for a preview: the library's result (``FormatResult`` for SFT, ``MethodData`` for
    dpo/orpo/kto/grpo), the tokens of each example, the name it is shown by (a file's name, never the server's
    upload path; or the Hub id) and the formatted JSONL file."""

    method: str
    source: str
    result: FormatResult | MethodData
    lengths: list[int]
    file: Path
    suggests: tuple[str, ...] = ()  # SFT asked of answers labelled good or bad: the methods that train on them


class WrongMethod(ServiceError):
    """SFT asked of data it cannot read whose columns judge answers; ``methods``: the methods that train on them."""

    def __init__(self, message: str, methods: Sequence[str]) -> None:
        super().__init__(message)
        self.methods = tuple(methods)


def _file_name(source: str, is_file: bool) -> str:
    name = Path(source).stem if is_file else source.replace("/", "__")
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "data"


def format_preview(source: str, *, template: str, system_prompt: str = "", columns: dict[str, str] | None = None,
                   model: str = "", max_length: int = 1024, train_on: str = "assistant",
                   hub_config: str | None = None, split: str = "train", out_dir: Path, hub_only: bool = False,
                   keep_duplicates: bool = False, method: str = "sft", val_fraction: float = 0.0,
                   test_split: float = 0.0) -> Formatted:
    """Format a dataset for the Dataset tab: the examples with their trained spans, token lengths, row problems,
    warnings, and the formatted JSONL file written into ``out_dir``.

    ``source`` is an uploaded file (capped at the upload limit) or a Hub id; ``hub_only`` refuses anything
    but a Hub id (text typed on a shared server). ``val_fraction`` / ``test_split``: the rows split as training
    splits them (``data.val_fraction``, ``data.test_split``, seed 42).
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
    from .. import methods

    if method not in methods.REGISTRY:
        raise ServiceError(f"method '{method}' is not one of: {', '.join(methods.REGISTRY)}")
    if methods.REGISTRY[method].text_rows:
        return _method_preview(source, method, template=template, system_prompt=system_prompt, columns=columns,
                               tokenizer=tok, hub_config=hub_config, split=split, out_dir=out_dir, is_file=is_file)
    try:
        settings = DataConfig(hub_config=hub_config, split=split, template=template, system_prompt=system_prompt,
                              columns=columns or {}, train_on=train_on, keep_duplicates=keep_duplicates,
                              val_fraction=val_fraction, test_split=test_split)
        result = data.format_dataset(source, settings, tokenizer=tok, max_length=max_length,
                                     max_bytes=data.max_upload_bytes())
    except data.DataError as e:
        shown = Path(source).name if is_file and e.file == str(source) else e.file  # never the server's upload path
        fitting = methods.methods_for_columns(e.columns) if isinstance(e, data.ShapeError) else []
        if fitting:  # pairs or labelled answers under SFT: say which method reads them
            raise WrongMethod(f"{shown}: {method_hint(fitting, sft_reads=False)}", fitting) from None
        if shown != e.file:
            raise data.DataError(shown, e.row, e.reason, e.app_reason) from None
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    if is_file:
        result.source = Path(source).name  # not the server's upload path
    out = out_dir / f"{_file_name(source, is_file)}.{template}.jsonl"
    data.write_jsonl(result.examples, out)
    return Formatted(method, result.source, result, list(result.lengths), out,
                     tuple(methods.methods_for_columns(result.columns)))


def _method_preview(source: str, method: str, *, template: str, system_prompt: str, columns: dict[str, str] | None,
                    tokenizer: Any, hub_config: str | None, split: str, out_dir: Path, is_file: bool) -> Formatted:
    """:func:`format_preview` for dpo/orpo/kto/grpo data: the detected shape, and each example's prompt with its
    chosen and rejected answers (or its answer and label, or its reference) as training renders them."""
    import json

    from .. import data, methods
    from ..data.preference import FeedbackExample, PairExample, format_for_method
    from ..data.stats import token_lengths

    try:
        result = format_for_method(source, method, template=template, system_prompt=system_prompt,
                                   columns=columns or None, tokenizer=tokenizer, hub_config=hub_config, split=split,
                                   max_bytes=data.max_upload_bytes(), shape=methods.get(method).shape)
    except data.DataError as e:
        if is_file and e.file == str(source):
            raise data.DataError(Path(source).name, e.row, e.reason, e.app_reason) from None
        raise
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / f"{_file_name(source, is_file)}.{method}.{template}.jsonl"
    out.write_text("".join(json.dumps({"row": ex.row, **ex.to_json()}, ensure_ascii=False) + "\n"
                           for ex in result.examples), encoding="utf-8")
    texts = [ex.prompt + (ex.chosen if isinstance(ex, PairExample) else
                          ex.completion if isinstance(ex, FeedbackExample) else "") for ex in result.examples]
    lengths = token_lengths(texts, tokenizer) if tokenizer is not None else []
    return Formatted(method, Path(source).name if is_file else source, result, lengths, out)
