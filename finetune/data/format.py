"""Formatting rows into a template: each row's conversation rendered into the text the model is trained on,
with the characters that carry the loss, every bad row reported with its number and the fix.

>>> result = format_dataset([{"instruction": "Say hi", "output": "Hi!"}], DataConfig(template="llama2"))
>>> result.shape.name, result.examples[0].text
('alpaca', '<s>[INST] Say hi [/INST] Hi! </s>')

Two paths give one result:

- the column-wise fast path (``_single_turn_rows``) takes single-turn shapes (alpaca, prompt/completion,
  question/answer) with a named template: it reads the template's output for one turn off ``render`` itself
  (``_single_turn_pattern``, checked against ``render`` on awkward samples) and fills it in column by column,
  with no Python loop over clean rows. A row it cannot vouch for (a missing, empty or non-text cell, template
  control strings, a lone surrogate) it leaves to
- the per-row path (``_format_row``): ``row_messages`` then ``render``, one row at a time, for every shape and
  template. It is the reference: ``format_dataset(..., per_row=True)`` sends every row through it, and
  tests/test_format_property.py checks on random data that both give the same bytes and the same reported rows.

Both share what decides the output: the row-to-messages mapping (``detect``), the template (``render``) and
the checks (``validate``); duplicates, rejections and warnings are collected in one place (``_Output``).
"""

from __future__ import annotations

import functools
import gc
import itertools
import operator
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Hashable, ParamSpec, Sequence, TypeVar, cast

from ..config import DataConfig
from ..templates import (MODEL_TEMPLATE, Message, SpecialTokens, TemplateError, find_control_strings, render,
                         special_tokens)
from .detect import (INPUT_SEPARATOR, SINGLE_TURN, Note, Shape, cell_text, column_cells, detect_shape,
                     row_messages)
from .read import Row, open_table
from .stats import token_lengths, token_stats
from .validate import (CONTROL_FIRST, CONTROL_RE, FORMULA_FIRST, SURROGATE, SURROGATE_FIX, SURROGATE_REASON,
                       DataError, Problem, RowError, containing, formula_cell, not_text, starting, with_surrogates)

Span = tuple[int, int]  # [start, end) character range of an example's text
Turns = tuple[str, ...]  # (role, content, role, content, ...)
T = TypeVar("T")


@dataclass(slots=True)  # no per-example __dict__: 100,000 examples build and free faster
class Example:
    """One formatted example. ``text`` (what the model sees) is ``prompt + completion`` and ``messages`` the
    conversation as ``[{"role", "content"}, ...]``, both made when read from what is stored once: a large
    dataset's examples take half the memory, and build and free that much faster."""

    prompt: str
    completion: str
    turns: Turns | None  # (role, content, role, content, ...); None for pre-formatted text
    _spans: list[Span] | None  # the [start, end) character ranges of text trained on; None: the completion
    row: int

    @property
    def spans(self) -> list[Span]:
        if self._spans is None:
            start = len(self.prompt)
            return [(start, start + len(self.completion))]
        return self._spans

    @property
    def text(self) -> str:
        return self.prompt + self.completion

    @property
    def messages(self) -> list[Message] | None:
        t = self.turns
        if t is None:
            return None
        if len(t) == 4:  # the usual single turn, spelled out: a third of the time of the loop below
            return [{"role": t[0], "content": t[1]}, {"role": t[2], "content": t[3]}]
        return [{"role": role, "content": content} for role, content in zip(t[::2], t[1::2])]

    def to_json(self) -> dict[str, Any]:
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
    skipped: Counter[str]
    lengths: list[int] = field(default_factory=list)  # tokens per example (train + val) when a tokenizer is given
    max_length: int | None = None
    system_prompt: str = ""  # the system prompt given for rows that have none
    test_examples: list[Example] = field(default_factory=list)  # held out as the test set (test_split)
    columns: tuple[str, ...] = ()  # the data's columns (those read and the others: what else they may fit)

    @property
    def token_stats(self) -> dict[str, int] | None:
        return token_stats(self.lengths, self.max_length)

    def _systems(self) -> list[str | None]:
        """Each conversation example's system message (None: it has none); pre-formatted text is left out."""
        return [ex.turns[1] if ex.turns[0] == "system" else None
                for ex in self.examples + self.val_examples if ex.turns]

    @property
    def own_system_rows(self) -> int:
        """How many rows keep their own system message instead of the system prompt given (0 when none given)."""
        if not self.system_prompt:
            return 0
        return sum(1 for s in self._systems() if s is not None and s != self.system_prompt)

    @property
    def default_system_prompt(self) -> str:
        """What a run on these rows stores as its default system prompt: the rows' system message when every
        row has the same one, else the system prompt given."""
        systems = set(self._systems())
        if len(systems) == 1 and None not in systems:
            return str(systems.pop())
        return self.system_prompt


# ---------------------------------------------------------------------------------------------
# the fast path: single-turn rows, column by column

Strip = Callable[[str], str] | None  # what a template does to the ends of a field: str.strip, lstrip, rstrip or nothing
_STRIP: dict[tuple[bool, bool], Strip] = {(False, False): None, (True, True): str.strip, (True, False): str.lstrip,
                                          (False, True): str.rstrip}


@dataclass(frozen=True)
class _SingleTurnPattern:
    """A template's output for one (system?, user, answer) turn as a format string: what ``render`` does,
    read off one rendering with marker contents. ``strip`` says which ends of each field the template
    strips (system, user, answer)."""

    prompt: str  # str.format pattern: {0} user, or {0} system and {1} user
    head: str  # completion = head + answer + tail
    tail: str
    strip: tuple[Strip, ...]
    train_all: bool

    def apply(self, systems: list[str] | None, users: list[str],
              answers: list[str]) -> tuple[list[str], list[str], list[list[Span] | None]]:
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
        spans: list[list[Span] | None] = [[(0, n)] for n in map(operator.add, map(len, prompts), map(len, completions))]
        return prompts, completions, spans


def _single_turn_pattern(template: str, tokens: SpecialTokens, with_system: bool,
                         train_on: str) -> _SingleTurnPattern | None:
    """The pattern of a named template, or None when its output is not plain concatenation of the
    (stripped) fields, checked by comparing with ``render`` on contents with awkward whitespace."""
    roles = (["system"] if with_system else []) + ["user", "assistant"]
    marks = {"system": "\ue000", "user": "\ue001", "assistant": "\ue002"}  # private-use code points

    def probe(contents: dict[str, str]) -> list[Message]:
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
        (prompt,), (completion,), (raw_spans,) = (pattern.apply(args[0], args[1], args[2]) if with_system
                                                  else pattern.apply(None, args[0], args[1]))
        spans = Example(prompt, completion, None, raw_spans, 0).spans
        if (prompt, completion, spans) != (want.prompt, want.completion, want.spans) or want.text != prompt + completion:
            return None
    return pattern


@dataclass
class _FastRows:
    """What the fast path made, per row of the table (entries of rows in ``bad`` are unused fillers)."""

    bad: set[int]  # row indices for the per-row path: a missing, empty or non-text field, control strings
    keys: list[Turns]  # (role, content, ...): the example's turns, and what makes two rows duplicates
    prompts: list[str]
    completions: list[str]
    spans: list[list[Span] | None]
    formula: set[int]  # row indices with a field that starts like a spreadsheet formula ('=', '+', '-', '@')



def _single_turn_rows(rows: list[Row], shape: Shape, template: str, tokenizer: Any, train_on: str,
                      system_prompt: str, valid_text: bool = True) -> _FastRows | None:
    """The fast path for single-turn shapes and named templates, column by column (no Python loop over the
    rows for clean data). Rows that are not plainly clean (a missing, empty or non-text field, control
    strings, a lone surrogate) are left to the per-row path, which reports their problems. None for the whole
    table when the shape or template has no fast path."""
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
    users, answers = column_cells(rows, q_col), column_cells(rows, a_col)
    bad = not_text(users) | not_text(answers)
    if in_col is not None:
        extras = column_cells(rows, in_col)
        if set(map(type, extras)) <= {str, type(None)}:
            users = [u if not x or x.isspace() else f"{u}{INPUT_SEPARATOR}{x}" for u, x in zip(users, extras)]
        else:
            bad |= {i for i, x in enumerate(extras) if x is not None and type(x) is not str}
            users = [u if type(x) is not str or not x or x.isspace() else f"{u}{INPUT_SEPARATOR}{x}"
                     for u, x in zip(users, extras)]
    default = system_prompt or None
    systems: list[str | None] | None = None  # None: every row has the default
    if sys_col is not None:
        values = column_cells(rows, sys_col)
        if not set(map(type, values)) <= {str, type(None)}:
            bad |= {i for i, v in enumerate(values) if v is not None and type(v) is not str}
            values = [v if type(v) is str else None for v in values]
        systems = [v if v and not v.isspace() else default for v in values]

    def keep(column: list[T], index: list[int]) -> list[T]:
        return column if len(index) == n else [column[i] for i in index]

    good = list(range(n)) if not bad else [i for i in range(n) if i not in bad]
    u, a, s = keep(users, good), keep(answers, good), None if systems is None else keep(systems, good)
    control = containing(u, CONTROL_FIRST) | containing(a, CONTROL_FIRST)
    if s is not None:
        with_s = [j for j, t in enumerate(s) if t is not None]
        control |= {with_s[j] for j in containing(cast("list[str]", [s[j] for j in with_s]), CONTROL_FIRST)}
    elif default and CONTROL_RE.search(default):
        control = set(range(len(good)))  # the system prompt given for every row holds one
    control = {j for j in control if any(t is not None and CONTROL_RE.search(t)
                                         for t in (u[j], a[j], s[j] if s is not None else default))}
    if not valid_text:  # strings from JSON escapes may hold lone surrogates: the per-row path reports them
        control |= with_surrogates(u) | with_surrogates(a) | (with_surrogates(s) if s is not None else set())
        if default and SURROGATE.search(default):
            control = set(range(len(good)))
    if control:  # the per-row path reports them (a warning, or a rejection under strict)
        bad |= {good[j] for j in control}
        good = [i for i in good if i not in bad]
        u, a, s = keep(users, good), keep(answers, good), None if systems is None else keep(systems, good)

    keys: list[Turns] = [()] * n  # unused fillers for the rows in bad
    prompts: list[str] = [""] * n
    completions: list[str] = [""] * n
    spans: list[list[Span] | None] = [None] * n
    formula: set[int] = set()
    groups: list[tuple[bool, list[int], list[str], list[str], list[str] | None]]  # (with system?, rows, fields)
    if s is None:
        groups = [(default is not None, good, u, a, None if default is None else [default] * len(good))]
    else:
        groups = []
        for with_system in (False, True):
            idx = [j for j, t in enumerate(s) if (t is not None) == with_system]
            groups.append((with_system, [good[j] for j in idx], [u[j] for j in idx], [a[j] for j in idx],
                           cast("list[str]", [s[j] for j in idx]) if with_system else None))
    for with_system, index, gu, ga, gs in groups:
        if not index:
            continue
        pattern = with_sys if with_system else plain
        g_prompts, g_completions, g_spans = pattern.apply(gs, gu, ga)
        # the conversation as (role, content, ...): an example's turns, and what makes two rows duplicates
        if gs is not None:
            gk = list(zip(itertools.repeat("system"), gs, itertools.repeat("user"), gu, itertools.repeat("assistant"), ga))
        else:
            gk = list(zip(itertools.repeat("user"), gu, itertools.repeat("assistant"), ga))
        hits = starting(gu, FORMULA_FIRST) | starting(ga, FORMULA_FIRST) | (starting(gs, FORMULA_FIRST) if gs else set())
        if len(index) == n:  # every row in this group: the lists as they are
            keys, prompts, completions, spans, formula = gk, g_prompts, g_completions, g_spans, hits
            break
        for j, i in enumerate(index):
            keys[i], prompts[i], completions[i], spans[i] = gk[j], g_prompts[j], g_completions[j], g_spans[j]
        formula.update(index[j] for j in hits)
    return _FastRows(bad, keys, prompts, completions, spans, formula)


# ---------------------------------------------------------------------------------------------
# the per-row path: every shape and template, and the reference for the fast path


@dataclass
class _Output:
    """What formatting the rows gives, in row order, whichever path made each row: the examples, the rejected
    rows (``strict``: the first one raises) and the warnings."""

    name: str
    strict: bool
    line_of: Callable[[int], int | None]  # CSV/TSV: the line where a row starts
    problems: list[Problem]  # the rows the reader could not parse come first
    warnings: list[Problem] = field(default_factory=list)
    examples: list[Example] = field(default_factory=list)
    check_formula: list[Example] = field(default_factory=list)  # the examples that may hold a spreadsheet formula
    seen: dict[Hashable, int] = field(default_factory=dict)  # an example's turns (or text) -> its row
    keep_duplicates: bool = False  # repeats are kept (they weigh their example more), not rejected

    def stop_at(self, p: Problem) -> DataError:
        where = f"line {p.line}: " if p.line else ""
        return DataError(self.name, p.row, f"{where}{p.field + ': ' if p.field else ''}{p.reason}; {p.fix}")

    def reject(self, number: int, fld: str, reason: str, fix: str, category: str) -> None:
        problem = Problem(number, fld, reason, fix, category, line=self.line_of(number))
        if self.strict:
            raise self.stop_at(problem)
        self.problems.append(problem)

    def warn(self, number: int, fld: str, reason: str, fix: str, category: str) -> None:
        self.warnings.append(Problem(number, fld, reason, fix, category, "warning", self.line_of(number)))

    def first(self, key: Hashable, number: int) -> bool:
        """Whether no earlier row had this conversation; a repeat is rejected, naming the row it repeats (unless
        duplicates are kept)."""
        if self.keep_duplicates:
            return True
        if key in self.seen:
            self.reject(number, "", f"duplicates row {self.seen[key]}", "remove the duplicate", "duplicate")
            return False
        self.seen[key] = number
        return True


@dataclass(frozen=True)
class _RowFormat:
    """How the per-row path formats: the table's shape, the template and its settings."""

    shape: Shape
    template: str
    tokenizer: Any
    train_on: str
    system: Message | None  # the system prompt given for every row (a row's own system message wins)
    valid_text: bool  # the reader vouches that no string holds a lone surrogate


def _format_row(row: Row, number: int, how: _RowFormat, out: _Output) -> None:
    """One row through ``row_messages`` and ``render``: its example, or its problem, goes to ``out``."""
    notes: list[Note] = []
    msgs: list[Message] | None = None
    text = ""
    key: Hashable
    try:
        if how.shape.name == "text":  # pre-formatted: trained on as it is
            text = cell_text(row, how.shape.fields["text"], "text", notes)
            key = text
        else:
            msgs = row_messages(row, how.shape, notes)
            if how.system is not None and msgs[0]["role"] != "system":
                msgs = [how.system] + msgs
            key = tuple(x for m in msgs for x in (m["role"], m["content"]))
    except RowError as e:
        out.reject(number, e.field, e.reason, e.fix, e.category)
        return
    texts = cast(Turns, key) if msgs is not None else (text,)
    if not how.valid_text and any(type(t) is str and SURROGATE.search(t) for t in texts):
        out.reject(number, "content", SURROGATE_REASON, SURROGATE_FIX, "not text")
        return
    if not out.first(key, number):
        return
    if msgs is None:
        example = Example("", text, None, None, number)  # trained on all of it
    else:
        found = find_control_strings(msgs)
        if found:
            reason = f"content contains template control strings {', '.join(found)} (already formatted, or an injection)"
            fix = "remove them, or load pre-formatted data as a 'text' column"
            if out.strict:
                out.reject(number, "content", reason, fix, "control strings")
                return
            out.warn(number, "content", reason, fix, "control strings")
        try:
            r = render(msgs, how.template, how.tokenizer, train_on=how.train_on)
        except TemplateError as e:
            reason, _, fix = str(e).partition("; ")  # template errors read "what is wrong; the fix"
            category = "ends with user" if "ends with a user" in reason else "roles out of order"
            out.reject(number, "messages", reason, fix or "fix the roles in this row", category)
            return
        example = Example(r.prompt, r.completion, cast(Turns, key), r.spans, number)
    out.examples.append(example)
    out.check_formula.append(example)
    for fld, reason, fix in notes:
        out.warn(number, fld, reason, fix, "number as text")


def _add_fast_row(fast: _FastRows, index: int, number: int, out: _Output) -> None:
    """The fast path's example of one row, unless an earlier row had the same conversation."""
    key = fast.keys[index]
    if not out.first(key, number):
        return
    example = Example(fast.prompts[index], fast.completions[index], key, fast.spans[index], number)
    out.examples.append(example)
    if index in fast.formula:
        out.check_formula.append(example)


P = ParamSpec("P")
R = TypeVar("R")


def without_gc(fn: Callable[P, R]) -> Callable[P, R]:
    """Run ``fn`` with the cyclic garbage collector paused. Formatting builds a few container objects per
    row (messages, spans, examples) and none of them form cycles, yet each 700 allocations trigger a
    collection that walks the growing heap: about a quarter of the formatting time on 100,000 rows."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()

    return wrapper


def split_off(examples: list[T], fraction: float, seed: int | str) -> tuple[list[T], list[T]]:
    """``(held out, kept)``: a seeded sample of ``fraction`` of the examples (at least one, and at least one left),
    each list in the original order.

    >>> held, kept = split_off([Example("", str(i), None, None, i) for i in range(10)], 0.2, "42:test")
    >>> len(held), len(kept), sorted(e.row for e in held + kept) == list(range(10))
    (2, 8, True)
    """
    k = min(len(examples) - 1, max(1, int(round(len(examples) * fraction)))) if len(examples) > 1 else 0
    chosen = set(random.Random(seed).sample(range(len(examples)), k))
    return ([ex for i, ex in enumerate(examples) if i in chosen],
            [ex for i, ex in enumerate(examples) if i not in chosen])


@without_gc
def format_dataset(
    source: str | Path | Sequence[Row],
    data: DataConfig | None = None,
    *,
    tokenizer: Any = None,
    max_length: int | None = None,
    max_bytes: int | None = None,
    per_row: bool = False,
    measure_tokens: bool = True,
) -> FormatResult:
    """Load, detect, render ``source`` as ``data`` says (a run config's ``data`` section; its ``source`` is not
    read: ``source`` is the file, Hub id or rows). Bad rows are skipped and counted (``data.strict``: the first
    raises DataError).

    ``per_row``: every row through the per-row path, the reference that the fast path must equal (slower, the
    same result; see the module docstring). ``measure_tokens``: with a tokenizer, count each example's tokens
    (``FormatResult.lengths``); training turns it off, it tokenizes the examples itself. ``data.keep_duplicates``:
    a row that repeats an earlier one is kept instead of skipped. ``data.test_split``: that fraction of the examples
    is held out as the test set (``FormatResult.test_examples``) before the validation split is drawn from the
    rest, so the two never share a row; seeded by ``data.seed`` like the validation split."""
    d = data or DataConfig()
    template, system_prompt, train_on, strict = d.template, d.system_prompt, d.train_on, d.strict
    table = open_table(source, hub_config=d.hub_config, split=d.split, max_bytes=max_bytes)
    name = table.name
    rows_in = len(table.rows) + len(table.broken)
    shape = detect_shape(table.columns, d.columns or None, table.rows, name)
    if template == MODEL_TEMPLATE and tokenizer is None:
        raise DataError(name, None, "template 'model' needs the model's tokenizer; give --model or pick a template")
    if SURROGATE.search(system_prompt):  # every example would carry it, and none could be written
        raise DataError(name, None, f"the system prompt {SURROGATE_REASON}; {SURROGATE_FIX}")

    out = _Output(name, strict, (table.lines or {}).get, list(table.broken), keep_duplicates=d.keep_duplicates)
    fast = None if per_row else _single_turn_rows(table.rows, shape, template, tokenizer, train_on, system_prompt,
                                                     table.valid_text)
    # strict: an unparsable row stops the run when the rows before it are done, not before them
    first_broken = min(table.broken, key=lambda p: p.row or 0) if strict and table.broken else None
    if (fast is not None and not fast.bad and not (strict and table.broken)
            and len(set(fast.keys)) == len(fast.keys)):
        # every row clean and distinct: the examples in one go
        out.examples = list(map(Example, fast.prompts, fast.completions, fast.keys, fast.spans, table.row_numbers))
        out.check_formula = [out.examples[i] for i in sorted(fast.formula)]
    else:
        system: Message | None = {"role": "system", "content": system_prompt} if system_prompt else None
        how = _RowFormat(shape, template, tokenizer, train_on, system, table.valid_text)
        for index, (row, number) in enumerate(zip(table.rows, table.row_numbers)):
            if first_broken is not None and number > (first_broken.row or 0):
                raise out.stop_at(first_broken)
            if fast is not None and index not in fast.bad:
                _add_fast_row(fast, index, number, out)
            else:
                _format_row(row, number, how, out)
    if first_broken is not None:
        raise out.stop_at(first_broken)

    for ex in out.check_formula:
        cell = formula_cell(ex.turns[1::2] if ex.turns else [ex.text])
        if cell is not None:
            out.warn(ex.row, "content", f"starts like a spreadsheet formula ({cell[:24]!r}); it stays plain text in "
                     "the JSONL, but a spreadsheet opening a CSV export of it would run it",
                     "remove the leading character, or do not open exports of this data in a spreadsheet",
                     "spreadsheet formula")

    examples, problems = out.examples, out.problems
    if not examples:
        first = problems[0] if problems else None
        detail = f" (first: {first})" if first else ""
        raise DataError(name, None, f"no usable rows: {len(problems)} of {rows_in} rejected{detail}")

    held_out: list[Example] = []
    if d.test_split > 0:
        if examples[0].turns is None:
            raise DataError(name, None, "test_split holds out prompts with their reference answers, and pre-formatted "
                            "text has none; give prompt/answer rows or conversations, or a separate test file")
        held_out, examples = split_off(examples, d.test_split, f"{d.seed}:test")
    val: list[Example] = []
    if d.val_fraction > 0:  # at least one validation example, and at least one left to train on
        val, examples = split_off(examples, d.val_fraction, d.seed)

    result = FormatResult(str(name), shape, rows_in, examples, val, problems, out.warnings,
                          Counter(p.category for p in problems), max_length=max_length, system_prompt=system_prompt,
                          test_examples=held_out, columns=tuple(table.columns))
    if tokenizer is not None and measure_tokens:
        result.lengths = token_lengths([ex.text for ex in examples + val], tokenizer)
    return result
