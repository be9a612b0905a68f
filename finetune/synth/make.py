"""Making a dataset from a recipe, top to bottom: read the sources, plan the work items, make rows in small batches
(generate, check, judge), keep the ones that pass, until the asked number is kept or the attempts run out.

Stop and continue: every made row is appended to ``<out>.progress.jsonl`` with its work item's key and its verdict,
after each batch, and the kept rows are rewritten to ``<out>`` (atomically). A continued run reads the progress file,
refills the duplicate index with the kept rows and skips every key already made: no row is made twice, none lost.
The summary (counts by reason, the generator, the judge, the recipe) is ``<out>.summary.json`` and the dataset card's.

>>> progress_path(Path("data.jsonl")).name, summary_path(Path("data.jsonl")).name
('data.progress.jsonl', 'data.summary.json')
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import orjson

from ..errors import UserError
from ..io import append_jsonl, atomic_write_bytes, atomic_write_json, read_jsonl
from .filters import Gate, judge_problem, test_prompts
from .generators import Generator, make_generator
from .recipe import Recipe
from .sources import Chunk, Pair, document_chunks, example_pairs
from .tasks import Item, judge_rows, make_rows, plan

BATCH = 4  # rows made per batch: one generate call per step for the in-process model, the progress saved after each


class SynthError(UserError):
    """A dataset that cannot be made as asked; the message says the fix."""


@dataclass
class Progress:
    """Where a making run stands (what the app's progress bar and the CLI's line show)."""

    made: int  # rows made so far (this run and the ones it continues)
    kept: int
    target: int
    attempts: int  # most rows it will make
    seconds: float  # this run's time so far
    eta_s: float | None  # time left at this run's pace (None before the first batch)


@dataclass
class Summary:
    recipe: str
    task: str
    shape: str
    generator: str
    judge: str | None
    rows_asked: int
    made: int
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    stopped: bool = False  # stopped before it was done (continue with the same command)
    complete: bool = False  # kept the asked rows, or made every attempt
    seconds: float = 0.0
    out: str = ""

    def lines(self) -> list[str]:
        from .filters import REASONS

        out = [f"recipe: {self.recipe} ({self.task}, shape {self.shape})", f"generator: {self.generator}",
               f"judge: {self.judge or 'none'}", f"made {self.made} rows, kept {self.kept} of {self.rows_asked} asked"]
        out += [f"  dropped {n}: {REASONS.get(k, k)}" for k, n in sorted(self.dropped.items())]
        if self.stopped:
            out.append("stopped: run the same command again to continue (made rows are kept)")
        elif not self.complete:
            out.append("ran out of attempts: raise task.max_attempts, loosen the filters, or use a stronger generator")
        return out


def progress_path(out: Path) -> Path:
    return out.with_name(out.stem + ".progress.jsonl")


def summary_path(out: Path) -> Path:
    return out.with_name(out.stem + ".summary.json")


def fingerprint(recipe: Recipe) -> str:
    """What must not change between a run and its continuation: the task, the shape, the material's settings."""
    key = orjson.dumps([recipe.task.kind, recipe.output.shape, recipe.output.system_prompt, recipe.sources.chunk_chars,
                        recipe.task.guidance, recipe.task.rewrite_style])
    return hashlib.sha256(key).hexdigest()[:16]


@dataclass
class Material:
    chunks: list[Chunk]
    pairs: list[Pair]


def read_material(recipe: Recipe, *, max_bytes: int | None = None, names: dict[str, str] | None = None) -> Material:
    """The recipe's chunks and example rows (seeds typed in, the seeds file, the Hub dataset)."""
    s = recipe.sources
    chunks = document_chunks(s.documents, s.chunk_chars, recipe.base_dir, max_bytes, names) if s.documents else []
    pairs = [Pair(x.prompt.strip(), x.answer.strip()) for x in s.seeds]
    base = Path(recipe.base_dir) if recipe.base_dir else None
    if s.seeds_file:
        path = Path(s.seeds_file)
        pairs += example_pairs(base / path if base and not path.is_absolute() else path, max_bytes=max_bytes)
    if s.hub_dataset:
        pairs += example_pairs(s.hub_dataset, split=s.hub_split, max_bytes=max_bytes)
    if recipe.task.kind in ("qa", "preference") and not chunks:
        raise SynthError("sources.documents: no text in the documents; give documents with text")
    return Material(chunks, pairs)


@dataclass
class _State:
    """A run's rows so far, read back from its progress file."""

    done: set[str] = field(default_factory=set)
    kept: list[dict[str, Any]] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)


def _resume(path: Path, recipe: Recipe, gate: Gate) -> _State:
    state = _State()
    if not path.exists():
        append_jsonl(path, {"recipe": recipe.name, "fingerprint": fingerprint(recipe)})
        return state
    records = read_jsonl(path)
    head = records[0] if records else {}
    if head.get("fingerprint") != fingerprint(recipe):
        raise SynthError(f"{path.name} holds rows of another recipe (or other task settings); choose another output "
                         "file, or delete it to start over")
    for rec in records[1:]:
        state.done.add(str(rec["key"]))
        if rec.get("dropped"):
            state.dropped[str(rec["dropped"])] += 1
            if str(rec["dropped"]).startswith("judge"):  # it passed the other checks: its prompt was seen
                gate.keep(dict(rec["row"]))
        else:
            row = dict(rec["row"]) | {"score": rec.get("score")}
            gate.keep(row)
            state.kept.append(row)
    return state


def _write(out: Path, rows: Sequence[dict[str, Any]]) -> None:
    atomic_write_bytes(out, b"".join(orjson.dumps(r) + b"\n" for r in rows))


def make_dataset(recipe: Recipe, out: str | Path, *, generator: Generator | None = None,
                 judge: Generator | None = None, token: str | None = None,
                 on_progress: Callable[[Progress], None] | None = None, stop: threading.Event | None = None,
                 max_bytes: int | None = None, names: dict[str, str] | None = None,
                 material: Material | None = None) -> Summary:
    """Make (or continue making) the recipe's dataset into ``out`` (JSON lines); see the module's docstring.
    ``generator``/``judge``: given ones win over the recipe's (the CLI's flags, a test's server); ``token``: the
    signed-in user's Hugging Face token, for Inference Providers only."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    gen = generator or make_generator(recipe.generator.model, server_model=recipe.generator.server_model,
                                      api_key_env=recipe.generator.api_key_env, token=token)
    jud: Generator | None = None
    if recipe.judge.use:
        j = recipe.judge
        jud = judge or (gen if not j.model.strip() else make_generator(j.model, server_model=j.server_model,
                                                                        api_key_env=j.api_key_env, token=token))
    mat = material or read_material(recipe, max_bytes=max_bytes, names=names)
    tests = test_prompts(_near(recipe, recipe.filters.test_set)) if recipe.filters.test_set else []
    gate = Gate.of(recipe.filters, tests, questions=recipe.task.kind in ("qa", "preference"))
    state = _resume(progress_path(out), recipe, gate)
    items = [it for it in plan(recipe, mat.chunks, mat.pairs, recipe.attempts()) if it.key not in state.done]
    if not items and not state.done:
        raise SynthError(f"nothing to make from: the {recipe.task.kind} task found no "
                         f"{'chunks' if recipe.task.kind in ('qa', 'preference') else 'example rows'}")
    summary = Summary(recipe.name, recipe.task.kind, recipe.output.shape, gen.name, jud.name if jud else None,
                      recipe.task.rows, len(state.done), len(state.kept), dict(state.dropped), out=str(out))
    start, made_here = time.monotonic(), 0
    while len(state.kept) < recipe.task.rows and items:
        if stop is not None and stop.is_set():
            summary.stopped = True
            break
        size = min(BATCH, recipe.task.rows - len(state.kept))  # never more rows than asked
        batch, items = items[:size], items[size:]
        _make_batch(recipe, batch, gen, jud, gate, state, progress_path(out))
        _write(out, state.kept)
        made_here += len(batch)
        if on_progress is not None:
            on_progress(_progress(recipe, state, made_here, time.monotonic() - start))
    _write(out, state.kept)
    summary.made, summary.kept, summary.dropped = len(state.done), len(state.kept), dict(state.dropped)
    summary.complete = not summary.stopped
    summary.seconds = round(time.monotonic() - start, 1)
    atomic_write_json(summary_path(out), asdict(summary) | {"recipe_yaml": recipe.to_yaml()})
    return summary


def _near(recipe: Recipe, path: str) -> str:
    p = Path(path)
    return str(Path(recipe.base_dir) / p) if recipe.base_dir and not p.is_absolute() and not p.exists() else path


def _make_batch(recipe: Recipe, batch: list[Item], gen: Generator, judge: Generator | None, gate: Gate,
                state: _State, progress: Path) -> None:
    rows = make_rows(recipe, batch, gen)
    verdicts: list[str | None] = []
    for row in rows:  # a batch's own repeats count as duplicates too: each kept prompt is added as it passes
        reason = gate.problem(row)
        verdicts.append(reason)
        if reason is None:
            gate.keep(row)
    scores: list[float | None] = [None] * len(rows)
    judged = [i for i, v in enumerate(verdicts) if v is None]
    if judge is not None and judged:
        got = judge_rows(recipe, [batch[i] for i in judged], [rows[i] for i in judged], judge)
        for i, score in zip(judged, got):
            scores[i] = score
            verdicts[i] = judge_problem(score, recipe.judge.threshold)
    for item, row, score, reason in zip(batch, rows, scores, verdicts):
        append_jsonl(progress, {"key": item.key, "source": item.source, "row": row, "score": score,
                                "dropped": reason})
        state.done.add(item.key)
        if reason:
            state.dropped[reason] += 1
        else:
            state.kept.append(row | {"score": score})


def _progress(recipe: Recipe, state: _State, made_here: int, seconds: float) -> Progress:
    kept, made = len(state.kept), len(state.done)
    ratio = kept / made if made else 1.0
    left_rows = max(recipe.task.rows - kept, 0)
    left_items = min(recipe.attempts() - made, left_rows / ratio if ratio > 0 else recipe.attempts() - made)
    eta = seconds / made_here * left_items if made_here else None
    return Progress(made, kept, recipe.task.rows, recipe.attempts(), round(seconds, 1),
                    round(eta, 1) if eta is not None else None)
