"""What formatting gives back: the formatted JSONL file (one object per example, written atomically) and the
one-screen summary that the CLI and the app show.

>>> example_json(Example("Q: Hi ", "A: Hello", None, None, 1))
b'{"text":"Q: Hi A: Hello","prompt":"Q: Hi ","completion":"A: Hello","messages":null}\\n'
"""

from __future__ import annotations

import json

import os
import queue
import tempfile
import threading
from pathlib import Path
from typing import IO, Callable, Iterable

import orjson

from .format import Example, FormatResult, without_gc
from .validate import SURROGATE_FIX, SURROGATE_REASON


def example_json(ex: Example) -> bytes:
    """One line of the formatted file, UTF-8: the JSON object ``{"text":…,"prompt":…,"completion":…,"messages":…}``
    (compact, non-ASCII characters as themselves) and a newline; the same bytes as
    ``json.dumps(ex.to_json(), ensure_ascii=False, separators=(",", ":")).encode() + b"\\n"``, several times faster."""
    return _json_lines([ex])


def _json_lines(examples: list[Example], dumps: Callable[..., bytes] = orjson.dumps,
                newline: int = orjson.OPT_APPEND_NEWLINE) -> bytes:
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


@without_gc
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
    pending: queue.Queue[bytes | None] = queue.Queue(maxsize=4)  # at most a few chunks in memory
    failed: list[BaseException] = []

    def writer(f: IO[bytes]) -> None:
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
    n_train, n_val, n_test = len(result.examples), len(result.val_examples), len(result.test_examples)
    split = [f"{n_train} train"] + ([f"{n_val} validation"] if n_val else []) + ([f"{n_test} test"] if n_test else [])
    lines = [f"source: {result.source}", f"shape: {result.shape}", f"rows in: {result.rows_in}",
             f"rows written: {n_train + n_val + n_test}" + (f" ({', '.join(split)})" if len(split) > 1 else ""),
             f"rows skipped: {sum(result.skipped.values())}"]
    if n_test:
        lines.append(f"test set: {n_test} rows held out (seeded), never trained on; scored at each checkpoint and "
                     "when the run ends")
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


def system_prompt_lines(result: FormatResult) -> list[str]:
    """Whether the system prompt given is used, and the default system prompt a run on these rows stores."""
    lines = []
    own = result.own_system_rows
    if own:
        lines.append(f"system prompt: ignored for {own} of {len(result.examples) + len(result.val_examples)} rows, "
                     "which have their own system message")
    default = result.default_system_prompt
    if result.system_prompt or default:
        lines.append(f"default system prompt the run stores: {json.dumps(default, ensure_ascii=False)[:200]}"
                     if default else "default system prompt the run stores: none")
    return lines


def summary_markdown(result: FormatResult) -> str:
    """``summary_lines`` as a Markdown list (the app's Dataset tab), with ``system_prompt_lines``."""
    lines = summary_lines(result) + system_prompt_lines(result)
    return "\n".join(f"- {line.strip()}" if not line.startswith("  ") else f"  - {line.strip()}" for line in lines)

