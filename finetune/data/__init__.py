"""Datasets in, formatted examples out: load a file or Hub dataset, detect its shape, map each row to chat
messages, render them with a template, and report every bad row with its number and the fix.

>>> from finetune.config import DataConfig
>>> result = format_dataset([{"instruction": "Say hi", "output": "Hi!"}], DataConfig(template="llama2"))
>>> result.shape.name, result.examples[0].text
('alpaca', '<s>[INST] Say hi [/INST] Hi! </s>')

One module per concept (each imports only those above it):

- ``validate``: the error types (DataError, Problem, RowError) and the content checks of every row
- ``read``: files (CSV, TSV, JSON, JSONL, Parquet) and Hub datasets into a ``Table``; the upload limit
- ``detect``: the shape of a table, the column of each field, one row as chat messages
- ``stats``: token lengths and their statistics
- ``format``: rows rendered into a template (``Example``, ``format_dataset``): the column-wise fast path
  and the per-row reference path
- ``output``: the formatted JSONL file and the summary shown by the CLI and the app

Row numbers are 1-based as the user sees the file: the line number in JSONL, the data row in CSV/TSV
(the header is not counted), the element index in JSON and Parquet.
"""

from .detect import detect_shape, parse_column_mapping
from .format import Example, format_dataset
from .output import summary_lines, summary_markdown, write_jsonl
from .read import FILE_TYPES, MAX_UPLOAD_ENV, is_hub_dataset_id, load_rows, max_upload_bytes
from .validate import DataError, ShapeError

# What the rest of the package, the app, the benches and the tests import from ``finetune.data``.
__all__ = ["FILE_TYPES", "MAX_UPLOAD_ENV", "is_hub_dataset_id", "DataError", "ShapeError", "Example", "detect_shape", "parse_column_mapping", "format_dataset", "load_rows",
           "max_upload_bytes", "summary_lines", "summary_markdown", "write_jsonl"]
