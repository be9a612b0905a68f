"""Is the fine-tune better? Greedy answers to a held-out test set, scored against its references, for the
adapter, the base model it was trained on (same prompt, adapter disabled) and, on request, every kept
checkpoint of the run.

Metrics (each a mean over the examples that have a reference):

- ``exact_match``: the answer equals the reference after normalising case, whitespace and trailing punctuation
- ``contains``: the normalised answer contains the normalised reference
- ``f1``: token F1 between answer and reference (lower-cased word tokens)
- ``rouge_l``: ROUGE-L F1 (longest common token subsequence)
- ``loss``: held-out loss, nats per token of the reference answer as training renders it after the prompt
  (the template's spacing and end token: ``inference.reference_tokens``), the tokens training's loss counts

>>> normalize("  The answer is PARIS. ")
'the answer is paris'
>>> round(token_f1("Paris, France", "paris"), 3), round(rouge_l("a b c d", "a c d"), 3)
(0.667, 0.857)

The answers come from ``inference.generate_batch`` with temperature 0 and the adapter's trained template and
system prompt (``inference.prompt_for`` decides the prompt), exactly as ``finetune generate --temperature 0``.

A training run with a test set (``data.test_source``, or the rows ``data.test_split`` held out) is scored as it
goes: :class:`SaveEvaluation` answers the test prompts with each checkpoint as it is saved and appends it to the
run's report, and the evaluation when the run ends (``evaluate(..., reuse=...)``) scores only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from . import runs
from .adapter import adapter_file_missing, adapter_step, checkpoint_step, find_adapter_dir
from .data.detect import INPUT_SEPARATOR, cell_text, detect_shape, row_messages
from .data.read import load_rows
from .data.validate import DataError, RowError
from .errors import UserError
from .templates import Message

if TYPE_CHECKING:
    from .config import RunConfig
    from .data import Example
    from .models import Model, Tokenizer

METRICS = ("exact_match", "contains", "f1", "rouge_l", "loss")
# Metrics where higher is better (the loss is lower-is-better).
HIGHER_IS_BETTER = {"exact_match": True, "contains": True, "f1": True, "rouge_l": True, "loss": False}
REFERENCE_COLUMNS = ("reference", "answer", "label", "completion", "output")
PROMPT_COLUMNS = ("prompt", "question", "instruction", "query", "input", "text")
SYSTEM_COLUMNS = ("system", "system_prompt")
CONVERSATION_COLUMNS = ("messages", "conversations", "conversation")
DEFAULT_MAX_NEW_TOKENS = 256  # as `finetune generate`
MAX_AUTO_NEW_TOKENS = 1024  # the most ``answer_budget`` gives (max_new_tokens 0: sized from the references)
CHUNK = 8  # prompts answered per batch; the progress moves after each


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
            system_prompt: str | None, max_new_tokens: int,
            answered: Callable[[int], None] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Greedy answers and the metrics, ``CHUNK`` prompts at a time; ``answered(n)`` after each chunk (the progress,
    which may raise to stop the evaluation there)."""
    from .inference import generate_batch, reference_losses

    answers: list[str] = []
    losses: list[tuple[float, int]] = []
    for i in range(0, len(examples), CHUNK):
        chunk = examples[i: i + CHUNK]
        answers += generate_batch([e.prompt for e in chunk], adapter=adapter, model=model, template=template,
                                  system_prompt=system_prompt, max_new_tokens=max_new_tokens, temperature=0.0,
                                  batch_size=CHUNK)
        scored = [e for e in chunk if e.reference is not None]
        if scored:
            losses += reference_losses([e.prompt for e in scored], [e.reference or "" for e in scored],
                                       adapter=adapter, model=model, template=template, system_prompt=system_prompt)
        if answered is not None:
            answered(len(chunk))
    return answers, scores(answers, [e.reference for e in examples], losses)


@dataclass(frozen=True)
class EvalProgress:
    """Where an evaluation is: ``done`` of ``total`` answers (each prompt for each model that answers: the adapter,
    the base, each checkpoint; figures taken from an earlier report are not counted), the model answering now
    (``what``) and the time left, from the measured time per answer (None before the first chunk is answered)."""

    done: int
    total: int
    what: str
    eta_s: float | None


class _Progress:
    """Counts the answers of an evaluation and tells ``progress`` (an ``EvalProgress``) before each model and after
    each chunk; ``progress`` may raise (a cancel) to stop the evaluation there."""

    def __init__(self, total: int, progress: Callable[[EvalProgress], None] | None) -> None:
        self.total, self.progress, self.done, self.what = total, progress, 0, ""
        self.started: float | None = None

    def model(self, what: str) -> Callable[[int], None]:
        self.what = what
        if self.started is None:
            self.started = time.monotonic()
        self._tell()
        return self.answered

    def answered(self, n: int) -> None:
        self.done += n
        self._tell()

    def _tell(self) -> None:
        if self.progress is None:
            return
        eta = None
        if self.done and self.started is not None:
            eta = round((time.monotonic() - self.started) / self.done * max(0, self.total - self.done), 1)
        self.progress(EvalProgress(self.done, self.total, self.what, eta))


def answer_budget(examples: Sequence[TestExample], tokenizer: Any) -> int:
    """The max new tokens that fit the references: the longest reference in tokens plus a quarter and 8 (room for a
    different wording and the end token), from 16 to ``MAX_AUTO_NEW_TOKENS``; ``DEFAULT_MAX_NEW_TOKENS`` with no
    reference. A longer answer cannot match, and a model that does not stop costs every token of the budget."""
    lengths = [len(tokenizer(e.reference, add_special_tokens=False)["input_ids"]) for e in examples
               if e.reference is not None]
    if not lengths:
        return DEFAULT_MAX_NEW_TOKENS
    return max(16, min(MAX_AUTO_NEW_TOKENS, math.ceil(max(lengths) * 1.25) + 8))


def evaluate(adapter: str | Path, data: str | Path, *, model: str | None = None, checkpoints: str = "none",
             base: bool = True, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, write_to_run: bool = True,
             progress: Callable[[EvalProgress], None] | None = None, label: str | None = None, limit: int = 0,
             reuse: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate an adapter (run folder, adapter folder, checkpoint or Hub id) on a test file.

    ``checkpoints="all"``: also every kept checkpoint of the run, one ``checkpoints`` entry per step. ``base``:
    the base model's figures beside the adapter's, prompted identically. When the adapter is a run's own
    (not one of its checkpoints) the report is also written into the run folder (``runs/<id>/eval/report.json``).
    ``progress(EvalProgress)`` is called before each model answers and after each chunk of ``CHUNK`` answers (the
    answers done of all, the time left); an exception it raises (a cancel) ends the evaluation there, nothing
    written. ``max_new_tokens`` 0: sized from the references (``answer_budget``). ``label`` names the adapter in the report (default: ``adapter``
    as given); the test file is named by its file name only. ``limit``: score the first ``limit`` rows only (0:
    all). ``reuse``: an earlier report of the same run on the same test set and settings (the one training wrote
    at each save): its base model's and checkpoints' figures are taken, not computed again, and the adapter's
    when a checkpoint of its step was scored (the same weights).

    >>> report = evaluate("runs/ID", "finetune/samples/city_year_heldout.jsonl", checkpoints="all")  # doctest: +SKIP
    >>> report["exact_match"], report["base"]["exact_match"], [c["step"] for c in report["checkpoints"]]  # doctest: +SKIP
    (0.85, 0.0, [40, 60])
    """
    from .inference import adapter_base, adapter_dir, base_config, prompt_for, trained_defaults
    from .models import load_tokenizer

    if checkpoints not in ("none", "all"):
        raise EvalError(f"--checkpoints must be 'all' or 'none', got '{checkpoints}'").in_app(
            f"checkpoints must be 'all' or 'none', got '{checkpoints}'")
    started = time.time()
    examples = limited(read_test_set(data), limit)
    folder = adapter_dir(adapter)
    base_model = model or adapter_base(folder)
    template, system_prompt = trained_defaults(folder)
    run_dir = runs.run_of(folder)
    tokenizer = load_tokenizer(base_config(base_model))
    if max_new_tokens <= 0:
        max_new_tokens = answer_budget(examples, tokenizer)
    fingerprint = test_fingerprint(examples, base_model, max_new_tokens)
    if not reuse or (reuse.get("test_set") or {}).get("fingerprint") != fingerprint:
        reuse = {}
    scored_before: dict[int, dict[str, Any]] = {c["step"]: c for c in reuse.get("checkpoints") or []
                                                if c.get("answers") is not None}
    kept = _kept_checkpoints(adapter, run_dir, label) if checkpoints == "all" else []
    step = adapter_step(folder)
    # a checkpoint of the same step was scored: the same weights
    own_scored = scored_before.get(step) if step is not None else None
    base_taken = (reuse.get("base") or {}).get("answers") is not None
    answering = (own_scored is None) + (base and not base_taken) + sum(checkpoint_step(ck) not in scored_before
                                                                  for ck in kept)
    tracker = _Progress(answering * len(examples), progress)
    if own_scored is not None:
        answers, metrics = _taken(own_scored)
    else:
        answers, metrics = _answer(examples, adapter=str(folder), model=base_model, template=None,
                                   system_prompt=None, max_new_tokens=max_new_tokens,
                                   answered=tracker.model("adapter"))
    report: dict[str, Any] = {
        **metrics,
        "adapter": label or str(adapter),
        "base_model": base_model,
        "data": Path(str(data)).name,
        "n_prompts": len(examples),
        "step": step,
        "settings": _settings(max_new_tokens, template, system_prompt),
    }
    first = examples[0]
    report["test_set"] = _test_set_info(data, examples, fingerprint, limit)
    report["prompt_format"] = {"template": template, "system_prompt": system_prompt,
                               # the tokenizer alone: when every figure was taken from ``reuse`` no model is loaded
                               "example_prompt": prompt_for(first.prompt, adapter=folder, model=base_model,
                                                            tokenizer=tokenizer).text,
                               "example_answer": answers[0], "example_reference": first.reference}
    base_answers: list[str] | None = None
    if base:
        if base_taken:
            base_answers, base_metrics = _taken(reuse["base"])
        else:
            base_answers, base_metrics = _answer(examples, adapter=None, model=base_model, template=template,
                                                 system_prompt=system_prompt, max_new_tokens=max_new_tokens,
                                                 answered=tracker.model("base model"))
        report["base"] = base_metrics | {"answers": base_answers}
    report["answers"] = answers
    report["examples"] = _example_rows(examples, answers, base_answers)
    if checkpoints == "all":
        entries = []
        for ck in kept:
            ck_step = checkpoint_step(ck)
            if ck_step in scored_before:
                entries.append(scored_before[ck_step])
            else:
                entries.append(_score_checkpoint(ck, run_dir, examples, base_model, max_new_tokens,
                                                 tracker.model(f"checkpoint {ck_step}")))
        report["checkpoints"] = entries
        report["best"] = {m: best_checkpoint(report, m) for m in METRICS}
    report["seconds"] = round(time.time() - started, 1)
    if write_to_run and run_dir is not None and checkpoint_step(folder) is None:  # the run's own adapter
        runs.write_eval_report(run_dir, report)
    return report


def _kept_checkpoints(adapter: str | Path, run_dir: Path | None, label: str | None) -> list[Path]:
    """The checkpoints a run kept, oldest first; an error when ``adapter`` is no run folder or kept none."""
    if run_dir is None:
        raise EvalError(f"{adapter} is not a run folder, so it has no checkpoints; give the run folder "
                        "(runs/<id>) or leave --checkpoints out")
    kept = runs.adapter_checkpoints(run_dir)
    if not kept:
        # the label is the run as the caller named it (the app's run id), never the server's folder
        said = (f"{(label or str(run_dir)).partition('@')[0]} has no saved checkpoints; train with "
                "training.save_steps below the run's steps, or ")
        raise EvalError(said + "leave --checkpoints out").in_app(
            said + "untick Every kept checkpoint too (checkpoints 'none')")
    return kept


def _example_rows(examples: Sequence[TestExample], answers: list[str],
                  base_answers: list[str] | None) -> list[dict[str, Any]]:
    """The report's rows: each prompt, its reference and answers, and the answer's metrics when it has a reference."""
    return [
        {"row": e.row, "prompt": e.prompt, "reference": e.reference, "answer": a,
         **({"base_answer": base_answers[i]} if base_answers is not None else {}),
         **({"exact_match": exact_match(a, e.reference), "contains": contains(a, e.reference),
             "f1": round(token_f1(a, e.reference), 4), "rouge_l": round(rouge_l(a, e.reference), 4)}
            if e.reference is not None else {})}
        for i, (e, a) in enumerate(zip(examples, answers))]


def _score_checkpoint(ck: Path, run_dir: Path | None, examples: Sequence[TestExample], base_model: str,
                      max_new_tokens: int, answered: Callable[[int], None] | None = None) -> dict[str, Any]:
    """One kept checkpoint's report entry: its adapter answers the test set (with its trained prompt)."""
    ck_adapter = find_adapter_dir(ck)
    missing = adapter_file_missing(ck, f"{ck.parent.parent.name}/{ck.parent.name}/{ck.name}")
    if missing:
        raise EvalError(missing)
    if ck_adapter is None or ck_adapter == ck:
        said = "has no adapter/ folder (saved by an older version of finetune); evaluate the finished run without "
        raise EvalError(f"{ck} {said}--checkpoints all, or retrain").in_app(  # the app: no server folder
            f"{ck.name} {said}Every kept checkpoint too (checkpoints 'none'), or retrain")
    ck_answers, ck_metrics = _answer(examples, adapter=str(ck_adapter), model=base_model, template=None,
                                     system_prompt=None, max_new_tokens=max_new_tokens, answered=answered)
    return _entry(ck, run_dir, ck_metrics, ck_answers)


def _taken(scored: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The answers and metrics of an entry scored before (a checkpoint's, or the base model's)."""
    return list(scored["answers"]), {k: scored.get(k) for k in ("n", *METRICS)}


def _entry(checkpoint: Path, run_dir: Path | None, metrics: dict[str, Any], answers: list[str]) -> dict[str, Any]:
    """One ``checkpoints`` entry of a report."""
    return {"step": checkpoint_step(checkpoint),
            "checkpoint": str(checkpoint.relative_to(run_dir)) if run_dir else str(checkpoint),
            **metrics, "answers": answers}


def _settings(max_new_tokens: int, template: str, system_prompt: str) -> dict[str, Any]:
    """How a report's answers were generated (greedy, with the adapter's trained prompt format)."""
    return {"temperature": 0.0, "max_new_tokens": max_new_tokens, "template": template,
            "system_prompt": system_prompt}


def limited(examples: list[TestExample], limit: int) -> list[TestExample]:
    """The first ``limit`` examples (all of them for 0)."""
    return examples[:limit] if limit > 0 else examples


def test_fingerprint(examples: Sequence[TestExample], base_model: str, max_new_tokens: int) -> str:
    """What makes two scorings comparable: the prompts, the references, the base model, the answer length."""
    text = json.dumps([[e.prompt, e.reference] for e in examples] + [base_model, max_new_tokens], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _test_set_info(data: str | Path, examples: Sequence[TestExample], fingerprint: str, limit: int) -> dict[str, Any]:
    return {"file": Path(str(data)).name, "prompts": len(examples),
            "with_reference": sum(e.reference is not None for e in examples), "fingerprint": fingerprint,
            **({"limit": limit} if limit > 0 else {})}


# ---------------------------------------------------------------------------------------------
# the run's test set, and its scoring at each checkpoint save


def run_test_source(run_dir: str | Path, config: RunConfig) -> str | None:
    """The test set a run is scored on: ``data.test_source``, else the rows ``data.test_split`` held out (the
    run folder's ``test_set.jsonl``); None when it has neither."""
    if config.data.test_source.strip():
        return config.data.test_source
    if config.data.test_split > 0:
        path = Path(run_dir) / runs.TEST_SET
        if not path.is_file():
            raise EvalError(f"{path} is missing: the run writes the rows data.test_split holds out there when it "
                            "starts; start the run (or give a test file)")
        return str(path)
    return None


@dataclass(frozen=True)
class RunTestSet:
    """A run's own test set and how it is scored (``data.test_source`` or the held-out rows, ``data.test_limit``,
    ``data.test_max_new_tokens``)."""

    source: str
    limit: int
    max_new_tokens: int


def run_test_set(adapter: str | Path) -> RunTestSet | None:
    """The test set of the run that ``adapter`` (a run folder, its adapter or one of its checkpoints) belongs to:
    what ``finetune eval`` scores when no test file is given. None for an adapter outside a run, or a run
    without a test set."""
    from .config import RunConfig

    run_dir = runs.run_of(adapter)
    if run_dir is None or not (run_dir / runs.CONFIG_FILE).is_file():
        return None
    config = RunConfig.load(run_dir / runs.CONFIG_FILE)
    source = run_test_source(run_dir, config)
    return RunTestSet(source, config.data.test_limit, config.data.test_max_new_tokens) if source else None


def write_held_out(examples: Sequence[Example], path: Path) -> Path:
    """The held-out examples as a test file: one conversation per line (``messages``, its last assistant message
    the reference) and the row it came from (``source_row``)."""
    from .io import atomic_write_text

    if not examples:
        raise EvalError("data.test_split held out no rows (the data has too few); raise it, or give a test file")
    atomic_write_text(path, "".join(json.dumps({"messages": ex.messages, "source_row": ex.row}, ensure_ascii=False)
                                    + "\n" for ex in examples))
    return path


@contextlib.contextmanager
def _scoring(model: Model) -> Iterator[None]:
    """The training model in eval mode (no dropout, no activation checkpointing), then back in its mode."""
    import torch

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            model.train()


@contextlib.contextmanager
def own_random_state() -> Iterator[None]:
    """Torch's random state set aside while scoring (generation reseeds it), so training goes on as without it: a
    resumed run restores the state saved with the checkpoint, which must be the one it continues with."""
    import torch

    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
        yield


class SaveEvaluation:
    """A training run's test set scored with each checkpoint as it is saved (``at_save``), each one appended to the
    run's report (``eval/report.json``: ``checkpoints``, one entry per kept checkpoint, the keys of ``evaluate``'s),
    and the base model once, at the first save (or never again when a resumed run's report has it).

    ``in_memory``: answer with the training model itself (eval mode, no gradients, the LoRA active; the base with
    the adapter disabled), which holds exactly the weights ``finetune eval`` loads for an unquantized base. A
    quantized base is scored as ``finetune eval`` scores it: the base loaded once beside training, the checkpoint's
    adapter attached (a 4-bit model used for inference on some CPUs must not train afterwards; see STACK.md).
    """

    def __init__(self, run_dir: Path, data: str, *, base_model: str, in_memory: bool, limit: int = 0,
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, tokenizer: Tokenizer | None = None) -> None:
        self.run_dir, self.data, self.base_model, self.in_memory = run_dir, data, base_model, in_memory
        self.examples = limited(read_test_set(data), limit)
        if max_new_tokens <= 0:  # sized from the references, with the base's tokenizer (as ``evaluate`` sizes it)
            if tokenizer is None:
                raise EvalError("max_new_tokens 0 (sized from the references) needs the base model's tokenizer")
            max_new_tokens = answer_budget(self.examples, tokenizer)
        self.max_new_tokens = max_new_tokens
        self.fingerprint = test_fingerprint(self.examples, base_model, max_new_tokens)
        self.limit = limit
        earlier = runs.read_eval_report(run_dir)
        same = earlier is not None and (earlier.get("test_set") or {}).get("fingerprint") == self.fingerprint
        self.report: dict[str, Any] = earlier if same and earlier is not None else {}
        self.last_seconds: float | None = None  # how long the last save's scoring took

    def at_save(self, model: Model, tokenizer: Tokenizer, checkpoint: Path) -> list[dict[str, Any]]:
        """Score the checkpoint just saved (and the base model, the first time); returns the report's new entries
        (the base model's with ``step`` 0), each with ``step``, ``checkpoint``, ``n`` and the metrics."""
        from .inference import trained_defaults

        started = time.time()
        folder = find_adapter_dir(checkpoint)
        if folder is None or folder == checkpoint:
            raise EvalError(f"{checkpoint} has no adapter/ folder to score")  # written by the callback before
        template, system_prompt = trained_defaults(folder)
        with own_random_state():
            new = self._score(model, tokenizer, checkpoint, folder, template, system_prompt)
        self.last_seconds = time.time() - started
        return new

    def _score(self, model: Model, tokenizer: Tokenizer, checkpoint: Path, folder: Path, template: str,
               system_prompt: str) -> list[dict[str, Any]]:
        from .inference import prompt_settings

        new: list[dict[str, Any]] = []
        if not (self.report.get("base") or {}).get("answers"):
            base_tpl = prompt_settings(None, tokenizer, template=template, system_prompt=system_prompt)
            answers, metrics = (self._in_memory(model, tokenizer, base_tpl, adapter=False) if self.in_memory else
                                _answer(self.examples, adapter=None, model=self.base_model, template=template,
                                        system_prompt=system_prompt, max_new_tokens=self.max_new_tokens))
            self.report["base"] = metrics | {"answers": answers}
            new.append({"step": 0, "checkpoint": "base", **metrics})
        if self.in_memory:
            answers, metrics = self._in_memory(model, tokenizer, prompt_settings(folder, tokenizer), adapter=True)
        else:
            answers, metrics = _answer(self.examples, adapter=str(folder), model=self.base_model, template=None,
                                       system_prompt=None, max_new_tokens=self.max_new_tokens)
        entry = _entry(checkpoint, self.run_dir, metrics, answers)
        kept = {checkpoint_step(c) for c in runs.adapter_checkpoints(self.run_dir)}
        entries = {c["step"]: c for c in self.report.get("checkpoints") or [] if c["step"] in kept}
        entries[entry["step"]] = entry  # a step saved again (a resumed run) replaces its entry
        self.report.update({
            "adapter": str(self.run_dir), "base_model": self.base_model, "data": Path(self.data).name,
            "n_prompts": len(self.examples), "in_progress": True,
            "settings": _settings(self.max_new_tokens, template, system_prompt),
            "test_set": _test_set_info(self.data, self.examples, self.fingerprint, self.limit),
            "checkpoints": [entries[s] for s in sorted(entries)],
        })
        self.report["best"] = {m: best_checkpoint(self.report, m) for m in METRICS}
        runs.write_eval_report(self.run_dir, self.report)
        new.append({k: v for k, v in entry.items() if k != "answers"})
        return new

    def _in_memory(self, model: Model, tokenizer: Tokenizer, tpl: dict[str, Any],
                   adapter: bool) -> tuple[list[str], dict[str, Any]]:
        from .inference import LoadedModel, generate_with, reference_losses_with

        loaded = LoadedModel(model, tokenizer, self.base_model, {})
        scored = [e for e in self.examples if e.reference is not None]
        with _scoring(model), (contextlib.nullcontext() if adapter else model.disable_adapter()):
            answers = generate_with(loaded, [e.prompt for e in self.examples], tpl,
                                    max_new_tokens=self.max_new_tokens, temperature=0.0)
            losses = reference_losses_with(loaded, [e.prompt for e in scored], [e.reference or "" for e in scored],
                                           tpl) if scored else []
        return answers, scores(answers, [e.reference for e in self.examples], losses)


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
    if not report.get("in_progress"):  # a run still training has no adapter yet, only its checkpoints
        rows.append(row("adapter", report.get("step"), report))
    return rows


SUMMARY_HEADERS = ["model", "step", "n", *METRICS]
