"""Reading a source into rows: CSV, TSV, JSON, JSONL and Parquet files and Hub datasets, each row with the
number the user sees, rows that cannot be parsed reported (not dropped), and the upload limit of a server.

>>> table = load_rows("finetune/samples/city_year.jsonl")  # doctest: +SKIP
>>> table.columns, table.row_numbers[:3]  # doctest: +SKIP
(['prompt', 'completion'], [1, 2, 3])

Row numbers are 1-based as the user sees the file: the line number in JSONL, the data row in CSV/TSV
(the header is not counted), the element index in JSON and Parquet.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson

from ..errors import is_programming_error
from ..refs import classify
from .validate import DataError, Problem

FILE_TYPES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")


def is_hub_dataset_id(text: str) -> bool:
    """A Hub dataset id (``org/name`` or ``name``), not a local path or a data file's name."""
    return classify(text, file_suffixes=FILE_TYPES).kind == "hub"

Row = dict[str, Any]  # one row as read: column -> cell (text, number, list of messages, ...)


@dataclass
class Table:
    """Rows read from a source, with the row numbers the user sees and rows that could not be parsed."""

    name: str
    columns: list[str]
    rows: list[Row]
    row_numbers: list[int]
    broken: list[Problem] = field(default_factory=list)
    lines: dict[int, int] | None = None  # CSV/TSV: row number -> the line where that row starts
    # every string came from valid UTF-8 (no lone surrogate that JSON's "\ud83d" escapes can make)
    valid_text: bool = False


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


_scan_json = json.JSONDecoder().scan_once  # type: ignore[attr-defined]  # the C scanner: not in the stubs


def _parse_line(line: str) -> Any:
    """``json.loads(line)``, about twice as fast for the usual line (one value, nothing around it): the C
    scanner is called directly; anything unusual goes through ``json.loads`` for its exact error."""
    try:
        obj, end = _scan_json(line, 0)
    except StopIteration:
        return json.loads(line)
    return obj if end == len(line) or not line[end:].strip(" \t\r\n") else json.loads(line)  # JSON whitespace


def _columns_of(objs: list[Row]) -> list[str]:
    """Every key of the rows, in order of first appearance (one pass per distinct key list)."""
    columns: dict[str, None] = {}  # an ordered set
    for layout in dict.fromkeys(map(tuple, objs)):
        columns.update(dict.fromkeys(layout))
    return list(columns)


def _any_float(values: Iterable[Any]) -> bool:
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
    if broken and not rows:  # no line is an object: the file as a whole is something else (plain text, a CSV...)
        first = broken[0]
        raise DataError(name, None, f"not JSON lines (line {first.row}): {first.reason}; a .jsonl file holds one JSON "
                        'object per line, e.g. {"text": "..."} or {"prompt": "...", "completion": "..."}')
    return Table(name, list(columns), rows, numbers, broken)


def _read_parquet(path: Path, name: str, max_bytes: int | None = None) -> Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    # Read in batches and count the decoded bytes: a small file of repeated values can expand a thousandfold
    # (a compression bomb), so it is stopped as soon as it passes the limit, not after filling the memory.
    try:
        pf = pq.ParquetFile(path)
        batches, decoded = [], 0
        for batch in pf.iter_batches(batch_size=4096):
            decoded += batch.nbytes
            if max_bytes is not None and decoded > (limit := PARQUET_EXPANSION * max_bytes):
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
        if is_programming_error(e):  # a mistake in our call or in the library, not the Hub's answer: a bug
            raise
        reason = str(e).splitlines()[0] if str(e) else e.__class__.__name__
        raise DataError(dataset_id, None, f"cannot load the Hub dataset ({reason}); check the id, config and split, "
                        "and that you are online and signed in for private data") from None
    rows = ds.to_list()
    return Table(dataset_id, list(ds.column_names), rows, list(range(1, len(rows) + 1)), valid_text=True)


def table_of_rows(rows: Sequence[Row]) -> Table:
    """Rows given in memory (a list of dicts), numbered from 1; the columns are those of the first 64 rows."""
    items = list(rows)
    cols = list(dict.fromkeys(k for r in items[:64] if isinstance(r, dict) for k in r))
    return Table("data", cols, items, list(range(1, len(items) + 1)))


def open_table(source: str | Path | Sequence[Row], *, hub_config: str | None = None, split: str = "train",
               max_bytes: int | None = None) -> Table:
    """The rows of a data file, a Hub dataset id or rows given in memory; a source with no data rows is refused."""
    table = (load_rows(source, hub_config=hub_config, split=split, max_bytes=max_bytes)
             if isinstance(source, (str, Path)) else table_of_rows(source))
    if not table.rows and not table.broken:
        raise DataError(table.name, None, "has no data rows")
    return table


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
        if is_hub_dataset_id(name):
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
