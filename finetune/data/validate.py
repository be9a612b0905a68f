"""What makes input unusable and how it is reported: the error types (``DataError`` for a whole source,
``Problem`` for one row, ``RowError`` while mapping a row) and the content checks that every formatting path
runs (template control strings, lone surrogates, spreadsheet formulas, blank or non-text cells).

The column checks take a whole column (a list of cells) and return the indices of the rows they flag: the
fast formatting path runs them at C speed over clean data, where a per-row loop would dominate.

>>> sorted(not_text(["a", "", None, " ", 3]))
[1, 2, 3, 4]
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, cast

from ..errors import UserError
from ..templates import CONTROL_STRINGS


class DataError(ValueError, UserError):
    """Unusable input: ``<file>[:<row>]: <reason>`` (the reason says how to fix it)."""

    def __init__(self, file: str, row: int | None, reason: str, app_reason: str | None = None):
        """``app_reason``: the reason in the app's words, when they differ (its fields, not the CLI's flags)."""
        self.file, self.row, self.reason, self.app_reason = file, row, reason, app_reason
        where = f"{file}{f':{row}' if row else ''}: "
        super().__init__(where + reason)
        if app_reason is not None:
            self.in_app(where + app_reason)


class ShapeError(DataError):
    """Columns that fit none of the shapes looked for; ``columns`` are the data's (what else they may fit)."""

    def __init__(self, file: str, reason: str, columns: tuple[str, ...], app_reason: str | None = None):
        super().__init__(file, None, reason, app_reason)
        self.columns = columns


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


class RowError(Exception):
    """A row that cannot become an example: the field, what is wrong, the fix and the summary's category."""

    def __init__(self, field: str, reason: str, fix: str, category: str):
        self.field, self.reason, self.fix, self.category = field, reason, fix, category


# Every control string starts with one of these characters: content without them cannot hold one, which
# spares the regex for nearly every row.
CONTROL_FIRST = tuple(sorted({c[0] for c in CONTROL_STRINGS}))
CONTROL_RE = re.compile("|".join(re.escape(x) for x in CONTROL_STRINGS))
# A lone UTF-16 surrogate: what a JSON escape like "\ud83d" without its other half (a cut emoji) decodes to.
# It is not a character and cannot be written as UTF-8, so its row is reported instead of breaking the output.
SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_REASON = "has a broken character escape (a lone UTF-16 surrogate, such as half of an emoji's \\ud83d\\ude00)"
SURROGATE_FIX = "write the character itself or both halves of its escape, or remove it"


def with_surrogates(column: Sequence[str | None]) -> set[int]:
    """Indices of texts holding a lone surrogate (ASCII texts are skipped at C speed)."""
    return {i for i, t in enumerate(column) if t is not None and not t.isascii() and SURROGATE.search(t)}


# What a spreadsheet runs as a formula (CSV injection): '=' anything, or +/-/@ then a function or a DDE call
# (=cmd|' /C calc'!A0, =HYPERLINK(...), @SUM(...)). A plain '- item' or '+1' is not flagged.
_FORMULA = re.compile(r"=|[+\-@]\s*[A-Za-z_][\w.]*\s*[(|]")
FORMULA_FIRST = ("=", "+", "-", "@")


def formula_cell(cells: Iterable[object]) -> str | None:
    """The first cell that a spreadsheet would run as a formula, if any."""
    for c in cells:
        if isinstance(c, str) and c.startswith(FORMULA_FIRST) and _FORMULA.match(c):
            return c
    return None


def not_text(column: Sequence[object]) -> set[int]:
    """Indices of cells that are not non-blank text (missing, empty, whitespace only, a number, ...)."""
    texts = cast("Sequence[str]", column)  # read as text only once every cell is a str
    if set(map(type, column)) == {str} and "" not in column and not any(map(str.isspace, texts)):
        return set()
    return {i for i, v in enumerate(column) if type(v) is not str or not v or v.isspace()}


def containing(column: Sequence[str], firsts: tuple[str, ...]) -> set[int]:
    """Indices of texts that contain (``str.__contains__``) any of ``firsts``; one C-level pass per string when
    none does."""
    found: set[int] = set()
    for c in firsts:
        if any(map(str.__contains__, column, itertools.repeat(c))):
            found.update(i for i, text in enumerate(column) if c in text)
    return found


def starting(column: Sequence[str], firsts: tuple[str, ...]) -> set[int]:
    """Indices of texts that start with any of ``firsts`` (one C-level pass when none does)."""
    if not any(map(str.startswith, column, itertools.repeat(firsts))):
        return set()
    return {i for i, text in enumerate(column) if text.startswith(firsts)}
