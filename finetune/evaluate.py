"""Is the fine-tune better? Greedy answers to a held-out test set, scored against its references, for the
adapter, the base model it was trained on (same prompt, adapter disabled) and, on request, every kept
checkpoint of the run.

Metrics (each a mean over the examples that have a reference):

- ``exact_match``: the answer equals the reference after normalising case, whitespace and trailing punctuation
- ``contains``: the normalised answer contains the normalised reference
- ``f1``: token F1 between answer and reference (lower-cased word tokens)
- ``rouge_l``: ROUGE-L F1 (longest common token subsequence)
- ``loss``: held-out loss, nats per token of the reference answer (plus the end token) after the prompt

>>> normalize("  The answer is PARIS. ")
'the answer is paris'
>>> round(token_f1("Paris, France", "paris"), 3), round(rouge_l("a b c d", "a c d"), 3)
(0.667, 0.857)

The answers come from ``inference.generate_batch`` with temperature 0 and the adapter's trained template and
system prompt (``inference.prompt_for`` decides the prompt), exactly as ``finetune generate --temperature 0``.
"""

from __future__ import annotations

import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from . import runs
from .adapter import adapter_step, checkpoint_step, find_adapter_dir
from .data.detect import INPUT_SEPARATOR, cell_text, detect_shape, row_messages
from .data.read import load_rows
from .data.validate import DataError, RowError
from .errors import UserError
from .templates import Message

METRICS = ("exact_match", "contains", "f1", "rouge_l", "loss")
# Metrics where higher is better (the loss is lower-is-better).
HIGHER_IS_BETTER = {"exact_match": True, "contains": True, "f1": True, "rouge_l": True, "loss": False}
REFERENCE_COLUMNS = ("reference", "answer", "label", "completion", "output")
PROMPT_COLUMNS = ("prompt", "question", "instruction", "query", "input", "text")
SYSTEM_COLUMNS = ("system", "system_prompt")
CONVERSATION_COLUMNS = ("messages", "conversations", "conversation")
DEFAULT_MAX_NEW_TOKENS = 256  # as `finetune generate`


class EvalError(UserError):
    """An evaluation that cannot run as asked (no checkpoints, nothing to score); the message says the fix."""


@dataclass(frozen=True)
class TestExample:
    """One test prompt (a user message or a conversation) and its reference answer, if the row has one."""

    prompt: str | list[Message]
    reference: str | None
    row: int  # the row number the user sees in the file


# ---------------------------------------------------------------------------------------------
# the test set


def _column(columns: Sequence[str], names: Sequence[str]) -> str | None:
    lower = {c.lower(): c for c in columns}
    return next((lower[n] for n in names if n in lower), None)


def read_test_set(source: str | Path) -> list[TestExample]:
    """The prompts and references of a test file (CSV, TSV, JSON, JSONL, Parquet) or Hub dataset.

    The reference is a ``reference``, ``answer``, ``label``, ``completion`` or ``output`` column, or else the last
    assistant message of a conversation (``messages`` / ``conversations``), which is then left out of the
    prompt. The prompt is a ``prompt``, ``question``, ``instruction`` (+ ``input``), ``query``, ``input`` or
    ``text`` column, or the conversation. Rows without a reference are answered but not scored.
    """
    table = load_rows(source)
    name, cols = table.name, table.columns
    ref_col = _column(cols, REFERENCE_COLUMNS)
    conv_col = _column(cols, CONVERSATION_COLUMNS)
    system_col = _column(cols, SYSTEM_COLUMNS)
    prompt_col = None if conv_col else _column([c for c in cols if c != ref_col], PROMPT_COLUMNS)
    if conv_col is None and prompt_col is None:
        raise DataError(name, None, f"no prompt column among {', '.join(cols) or 'none'}; name it prompt (or "
                        "question, instruction), or give conversations as messages, and put the expected answers "
                        "in a reference (or answer, label, completion, output) column")
    input_col = _column(cols, ("input",)) if prompt_col and prompt_col.lower() == "instruction" else None
    shape = detect_shape(cols, {"messages": conv_col} if conv_col and conv_col.lower() == "messages" else
                         {"conversations": conv_col} if conv_col else None, table.rows, name) if conv_col else None
    out: list[TestExample] = []
    for row, number in zip(table.rows, table.row_numbers):
        notes: list[tuple[str, str, str]] = []
        try:
            if shape is not None:
                msgs = row_messages(row, shape, notes)
                reference = cell_text(row, ref_col, "reference", notes) if ref_col else None
                if reference is None and msgs[-1]["role"] == "assistant":
                    reference, msgs = msgs[-1]["content"], msgs[:-1]
                if not any(m["role"] == "user" for m in msgs):
                    raise RowError(conv_col or "messages", "has no user message to answer",
                                   "give each conversation a user turn", "no prompt")
                prompt: str | list[Message] = msgs
            else:
                text = cell_text(row, prompt_col, "prompt", notes)
                extra = cell_text(row, input_col, "input", notes, required=False) if input_col else ""
                text = f"{text}{INPUT_SEPARATOR}{extra}" if extra.strip() else text
                system = cell_text(row, system_col, "system", notes, required=False) if system_col else ""
                prompt = ([{"role": "system", "content": system}, {"role": "user", "content": text}]
                          if system.strip() else text)
                reference = cell_text(row, ref_col, "reference", notes, required=False) if ref_col else None
                reference = reference if reference and reference.strip() else None
        except RowError as e:
            raise DataError(name, number, f"{e.field}: {e.reason}; {e.fix}") from None
        out.append(TestExample(prompt, reference, number))
    if not out:
        raise DataError(name, None, "no test rows; add prompts (and reference answers) to the file")
    return out


# ---------------------------------------------------------------------------------------------
# metrics

_TRAILING = string.punctuation + " \t\n\r"


def normalize(text: str) -> str:
    """Lower case, runs of whitespace as one space, no trailing punctuation or surrounding space."""
    return re.sub(r"\s+", " ", text.lower()).strip().rstrip(_TRAILING)


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def exact_match(answer: str, reference: str) -> bool:
    return normalize(answer) == normalize(reference)


def contains(answer: str, reference: str) -> bool:
    return normalize(reference) in normalize(answer)


def token_f1(answer: str, reference: str) -> float:
    """Token F1 on lower-cased word tokens (bag of tokens, counted with multiplicity)."""
    a, r = _tokens(answer), _tokens(reference)
    if not a or not r:
        return float(a == r)
    counts: dict[str, int] = {}
    for t in r:
        counts[t] = counts.get(t, 0) + 1
    common = 0
    for t in a:
        if counts.get(t, 0) > 0:
            counts[t] -= 1
            common += 1
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of word tokens, as precision and recall."""
    a, r = _tokens(answer), _tokens(reference)
    if not a or not r:
        return float(a == r)
    prev = [0] * (len(r) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(r):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def scores(answers: Sequence[str], references: Sequence[str | None],
           losses: Sequence[tuple[float, int]] | None = None) -> dict[str, Any]:
    """The metrics over the examples that have a reference (None each when none has), and ``n``, their count.

    >>> scores(["Paris.", "Rome"], ["paris", "Oslo"])["exact_match"]
    0.5
    """
    pairs = [(a, r) for a, r in zip(answers, references) if r is not None]
    n = len(pairs)
    out: dict[str, Any] = {"n": n}
    if not n:
        return out | {m: None for m in METRICS}
    out["exact_match"] = sum(exact_match(a, r) for a, r in pairs) / n
    out["contains"] = sum(contains(a, r) for a, r in pairs) / n
    out["f1"] = sum(token_f1(a, r) for a, r in pairs) / n
    out["rouge_l"] = sum(rouge_l(a, r) for a, r in pairs) / n
    tokens = sum(c for _, c in losses or [])
    out["loss"] = sum(v for v, _ in losses or []) / tokens if tokens else None
    return out


# ---------------------------------------------------------------------------------------------
# evaluation


def _answer(examples: Sequence[TestExample], *, adapter: str | None, model: str, template: str | None,
            system_prompt: str | None, max_new_tokens: int) -> tuple[list[str], dict[str, Any]]:
    from .inference import generate_batch, reference_losses

    prompts = [e.prompt for e in examples]
    answers = generate_batch(prompts, adapter=adapter, model=model, template=template, system_prompt=system_prompt,
                             max_new_tokens=max_new_tokens, temperature=0.0)
    scored = [e for e in examples if e.reference is not None]
    losses = reference_losses([e.prompt for e in scored], [e.reference or "" for e in scored], adapter=adapter,
                              model=model, template=template, system_prompt=system_prompt) if scored else []
    return answers, scores(answers, [e.reference for e in examples], losses)


def evaluate(adapter: str | Path, data: str | Path, *, model: str | None = None, checkpoints: str = "none",
             base: bool = True, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, write_to_run: bool = True,
             progress: Any = None, label: str | None = None) -> dict[str, Any]:
    """Evaluate an adapter (run folder, adapter folder, checkpoint or Hub id) on a test file.

    ``checkpoints="all"``: also every kept checkpoint of the run, one ``checkpoints`` entry per step. ``base``:
    the base model's figures beside the adapter's, prompted identically. When the adapter is a run's own
    (not one of its checkpoints) the report is also written into the run folder (``runs/<id>/eval/report.json``). ``progress(done, total, what)``
    is called before each model is evaluated. ``label`` names the adapter in the report (default: ``adapter``
    as given); the test file is named by its file name only.

    >>> report = evaluate("runs/ID", "finetune/samples/city_year_heldout.jsonl", checkpoints="all")  # doctest: +SKIP
    >>> report["exact_match"], report["base"]["exact_match"], [c["step"] for c in report["checkpoints"]]  # doctest: +SKIP
    (0.85, 0.0, [40, 60])
    """
    from .inference import adapter_base, adapter_dir, prompt_for, trained_defaults

    if checkpoints not in ("none", "all"):
        raise EvalError(f"--checkpoints must be 'all' or 'none', got '{checkpoints}'")
    started = time.time()
    examples = read_test_set(data)
    folder = adapter_dir(adapter)
    base_model = model or adapter_base(folder)
    template, system_prompt = trained_defaults(folder)
    run_dir = runs.run_of(folder)
    kept: list[Path] = []
    if checkpoints == "all":
        if run_dir is None:
            raise EvalError(f"{adapter} is not a run folder, so it has no checkpoints; give the run folder "
                            "(runs/<id>) or leave --checkpoints out")
        kept = runs.checkpoints(run_dir)
        if not kept:
            raise EvalError(f"{run_dir} has no saved checkpoints; train with training.save_steps below the run's "
                            "steps, or leave --checkpoints out")
    total = 1 + int(base) + len(kept)

    def tell(done: int, what: str) -> None:
        if progress is not None:
            progress(done, total, what)

    tell(0, "adapter")
    answers, metrics = _answer(examples, adapter=str(folder), model=base_model, template=None, system_prompt=None,
                               max_new_tokens=max_new_tokens)
    report: dict[str, Any] = {
        **metrics,
        "adapter": label or str(adapter),
        "base_model": base_model,
        "data": Path(str(data)).name,
        "n_prompts": len(examples),
        "step": adapter_step(folder),
        "settings": {"temperature": 0.0, "max_new_tokens": max_new_tokens, "template": template,
                     "system_prompt": system_prompt},
    }
    first = examples[0]
    report["test_set"] = {"file": Path(str(data)).name, "prompts": len(examples),
                          "with_reference": sum(e.reference is not None for e in examples)}
    report["prompt_format"] = {"template": template, "system_prompt": system_prompt,
                               "example_prompt": prompt_for(first.prompt, adapter=folder, model=base_model).text,
                               "example_answer": answers[0], "example_reference": first.reference}
    base_answers: list[str] | None = None
    if base:
        tell(1, "base model")
        base_answers, base_metrics = _answer(examples, adapter=None, model=base_model, template=template,
                                             system_prompt=system_prompt, max_new_tokens=max_new_tokens)
        report["base"] = base_metrics
    report["answers"] = answers
    report["examples"] = [
        {"row": e.row, "prompt": e.prompt, "reference": e.reference, "answer": a,
         **({"base_answer": base_answers[i]} if base_answers is not None else {}),
         **({"exact_match": exact_match(a, e.reference), "contains": contains(a, e.reference),
             "f1": round(token_f1(a, e.reference), 4), "rouge_l": round(rouge_l(a, e.reference), 4)}
            if e.reference is not None else {})}
        for i, (e, a) in enumerate(zip(examples, answers))]
    if checkpoints == "all":
        entries = []
        for i, ck in enumerate(kept):
            step = checkpoint_step(ck)
            tell(1 + int(base) + i, f"checkpoint {step}")
            ck_adapter = find_adapter_dir(ck)
            if ck_adapter is None or ck_adapter == ck:
                raise EvalError(f"{ck} has no adapter/ folder (saved by an older version of finetune); "
                                "evaluate the finished run without --checkpoints all, or retrain")
            ck_answers, ck_metrics = _answer(examples, adapter=str(ck_adapter), model=base_model, template=None,
                                             system_prompt=None, max_new_tokens=max_new_tokens)
            entries.append({"step": step, "checkpoint": str(ck.relative_to(run_dir)) if run_dir else str(ck),
                            **ck_metrics, "answers": ck_answers})
        report["checkpoints"] = entries
        report["best"] = {m: best_checkpoint(report, m) for m in METRICS}
    report["seconds"] = round(time.time() - started, 1)
    if write_to_run and run_dir is not None and checkpoint_step(folder) is None:  # the run's own adapter
        runs.write_eval_report(run_dir, report)
    return report


def best_checkpoint(report: dict[str, Any], metric: str = "exact_match") -> dict[str, Any] | None:
    """The checkpoint with the best ``metric`` in a report with ``checkpoints`` (the latest step on a tie):
    ``{"step", "checkpoint", metric: value}``; None when no checkpoint has the metric."""
    if metric not in HIGHER_IS_BETTER:
        raise EvalError(f"unknown metric '{metric}'; one of {', '.join(METRICS)}")
    rows = [c for c in report.get("checkpoints") or [] if c.get(metric) is not None]
    if not rows:
        return None
    sign = 1 if HIGHER_IS_BETTER[metric] else -1
    best = max(rows, key=lambda c: (sign * c[metric], c["step"]))
    return {"step": best["step"], "checkpoint": best["checkpoint"], metric: best[metric]}


def summary_table(report: dict[str, Any]) -> list[list[Any]]:
    """Rows ``[what, step, n, exact_match, contains, f1, rouge_l, loss]``: the base, each checkpoint, the adapter."""
    def row(what: str, step: Any, m: dict[str, Any]) -> list[Any]:
        return [what, step, m.get("n")] + [None if m.get(k) is None else round(float(m[k]), 4) for k in METRICS]

    rows = []
    if report.get("base"):
        rows.append(row("base model", 0, report["base"]))
    for c in report.get("checkpoints") or []:
        rows.append(row(f"checkpoint-{c['step']}", c["step"], c))
    rows.append(row("adapter", report.get("step"), report))
    return rows


SUMMARY_HEADERS = ["model", "step", "n", *METRICS]
