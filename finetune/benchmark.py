"""Did it forget? General-ability benchmarks of an adapter beside its base model, with EleutherAI's
lm-evaluation-harness (``lm-eval``, the harness of the Open LLM Leaderboard).

A benchmark runs lm-eval's ``simple_evaluate`` twice on one loaded model: with the adapter disabled (the base)
and with it enabled, task for task, and reports each metric side by side with lm-eval's standard errors and the
difference (``results``: one row per task and metric). A difference is flagged ``beyond_noise`` when it exceeds
1.96 combined standard errors (``NOISE_Z``; the two runs score the same items, so the test is conservative).

Tasks, mixed in one list:

- lm-eval's own task, group and tag names (``arc_easy``, ``hellaswag``, ``mmlu``, ``gsm8k``, ``ifeval``,
  ``truthfulqa_mc2``...). Their data comes from the Hugging Face Hub (the ``datasets`` cache once downloaded).
- the bundled tasks of ``finetune/bench_tasks/`` (``general_knowledge``: 40 four-way questions), which read a
  local file: no download.
- a test file in the formats ``finetune eval`` takes (prompt and reference columns, or conversations ending with
  the expected answer): it becomes a generative lm-eval task (its YAML written next to the report, so plain
  ``lm_eval --include_path`` runs it too), scored by exact match ignoring case, whitespace and final punctuation.

Generative tasks (``generate_until``) are prompted with the adapter's chat template (the tokenizer saved with the
adapter: its trained template and system prompt; lm-eval's ``apply_chat_template``), the base too, as
``finetune eval`` prompts both the same way; log-likelihood tasks (multiple choice) are scored on the plain text,
as the leaderboard does.

>>> noise_flag(0.10, 0.02, 0.02)
True
>>> noise_flag(0.03, 0.02, 0.02), noise_flag(0.5, None, 0.1)
(False, None)
"""

from __future__ import annotations

import difflib
import functools
import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

from .errors import UserError

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager

BUNDLED_DIR = Path(__file__).resolve().parent / "bench_tasks"
NOISE_Z = 1.96  # a difference beyond 1.96 combined standard errors (two-sided 95%) is flagged
# Tasks the app offers to pick (any other lm-eval name can be typed); all but the bundled ones download their data.
POPULAR_TASKS = ("arc_easy", "arc_challenge", "hellaswag", "mmlu", "gsm8k", "ifeval", "truthfulqa_mc2", "winogrande",
                 "piqa", "boolq")
DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
CHUNK = 16  # requests per model call; the progress moves (and a cancel is heard) after each
REPORT_VERSION = 1


class BenchPaused(Exception):
    """A benchmark ended between two parts because its time budget ran out (a ZeroGPU call's end): the parts made
    so far are kept, and the same benchmark called again goes on from the next one."""


@dataclass(frozen=True)
class Parts:
    """The scores of a benchmark's parts (one task on one side, base or adapter), each kept in ``folder`` as it is
    made, so that a benchmark run in several calls (ZeroGPU) scores every part once. ``key`` names the benchmark
    (adapter, tasks, limit): parts of another one are not taken."""

    folder: Path
    key: str

    def _file(self, side: str, task: str) -> Path:
        import hashlib

        digest = hashlib.sha256(f"{self.key}|{side}|{task}".encode()).hexdigest()[:16]
        return self.folder / f"{side}-{digest}.json"

    def get(self, side: str, task: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._file(side, task).read_text(encoding="utf-8")))
        except (OSError, ValueError):  # not made yet, or cut off while written (then made again)
            return None

    def put(self, side: str, task: str, scores: dict[str, Any]) -> None:
        from .io import atomic_write_text

        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self._file(side, task), json.dumps(scores, default=_plain))


def _plain(value: Any) -> Any:
    """A value of lm-eval's results as JSON: numpy's numbers as numbers, anything else as its text."""
    return value.item() if hasattr(value, "item") else str(value)


def _merge(scores: Sequence[dict[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {"results": {}, "group_subtasks": {}, "n-samples": {}, "versions": {}}
    for one in scores:
        for key in merged:
            merged[key].update(one.get(key) or {})
    return merged


class BenchError(UserError):
    """A benchmark that cannot run as asked (unknown task, unreadable test file, data out of reach)."""


@dataclass(frozen=True)
class BenchTask:
    """One task of a benchmark: what the user asked for and how lm-eval knows it."""

    asked: str  # as the user wrote it (a name, or a test file's path)
    name: str  # lm-eval's name of the task (or group, or tag)
    kind: str  # "bundled" | "file" | "lm-eval"
    generative: bool  # generate_until (prompted with the chat template) rather than log-likelihood
    config: dict[str, Any] | None = None  # the task's lm-eval config (bundled and file tasks), else None


@dataclass
class BenchProgress:
    """Where a benchmark is: ``side`` (base or adapter) and the requests of the current model call done of all;
    ``fraction`` of the whole benchmark, ``seconds_left`` from the time per request so far."""

    side: str
    done: int
    total: int
    fraction: float
    seconds_left: float | None

    def line(self) -> str:
        from .durations import rough

        left = f", about {rough(self.seconds_left)} left" if self.seconds_left is not None else ""
        return f"{self.side}: {self.done}/{self.total} requests ({self.fraction:.0%} of the benchmark{left})"


# ---------------------------------------------------------------------------------------------
# tasks


def bundled_tasks() -> list[str]:
    """The tasks shipped with finetune (they read local files)."""
    return sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml"))


def bundled_config(name: str) -> dict[str, Any]:
    """A bundled task's lm-eval config with its data file's full path (lm-eval reads a relative one from the
    current folder)."""
    cfg: dict[str, Any] = yaml.safe_load((BUNDLED_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
    files = cfg["dataset_kwargs"]["data_files"]
    cfg["dataset_kwargs"]["data_files"] = {split: str(BUNDLED_DIR / f) for split, f in files.items()}
    return cfg


@functools.lru_cache(maxsize=2)
def task_manager(defaults: bool = True) -> "TaskManager":
    """lm-eval's task index (its ~15,000 task names: ~10-20 s to build, once per process); without ``defaults``
    an empty one (bundled and file tasks are passed as configs)."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=defaults)


def lm_eval_names() -> list[str]:
    """Every task, group and tag name lm-eval knows."""
    return list(task_manager().all_tasks)


def _leaf_configs(tm: "TaskManager", name: str, seen: frozenset[str] = frozenset()) -> list[dict[str, Any]]:
    """The configs of a task name's leaf tasks, from lm-eval's index (no data loaded)."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None or name in seen:
        return []
    cfg = entry.cfg or {}
    if entry.kind == Kind.TASK:
        return [cfg]
    if entry.kind == Kind.GROUP:
        children = cfg.get("task") or []
        out: list[dict[str, Any]] = []
        for child in children if isinstance(children, list) else [children]:
            out += [child] if isinstance(child, dict) else _leaf_configs(tm, str(child), seen | {name})
        return out
    if entry.kind == Kind.TAG:
        return [c for n, e in tm.task_index.items() if name in e.tags for c in _leaf_configs(tm, n, seen | {name})]
    return [{}]  # a Python task class: its config is its code's


def _output_types(tm: "TaskManager", name: str) -> set[str]:
    return {str(c.get("output_type") or "generate_until") for c in _leaf_configs(tm, name)}


def file_task_name(path: Path, taken: set[str]) -> str:
    """lm-eval's name for a test file's task: its stem in lowercase words (``_file`` added on a clash)."""
    name = re.sub(r"[^a-z0-9_]+", "_", path.stem.lower()).strip("_") or "test_file"
    while name in taken:
        name += "_file"
    return name


def file_task_config(path: Path, name: str, folder: Path, tokenizer: Any) -> dict[str, Any]:
    """A ``finetune eval`` test file as a generative lm-eval task: its rows with a reference, one prompt each,
    written to ``folder/<name>.jsonl`` beside the task's YAML ``folder/<name>.yaml``. Exact match ignores case,
    whitespace and final punctuation (as ``finetune eval``'s, except that inner spaces are ignored too)."""
    from .evaluate import answer_budget, read_test_set

    examples = read_test_set(path)
    rows = []
    for e in examples:
        if e.reference is None:
            continue
        if isinstance(e.prompt, str):
            prompt = e.prompt
        else:
            turns = [m for m in e.prompt if m["role"] != "system"]
            if len(turns) != 1 or len(turns) != len(e.prompt):
                raise BenchError(f"{path.name}:{e.row}: an lm-eval task takes one user prompt per row, this row is a "
                                 f"conversation of {len(e.prompt)} messages; score conversations with "
                                 "`finetune eval`, or give this file prompt and reference columns")
            prompt = turns[0]["content"]
        rows.append({"prompt": prompt, "reference": e.reference})
    if not rows:
        raise BenchError(f"{path.name}: no row has a reference answer to score; add a reference (or answer, label, "
                         "completion, output) column")
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg: dict[str, Any] = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "prompt",
        "doc_to_target": "reference",
        "generation_kwargs": {"until": [], "max_gen_toks": answer_budget(examples, tokenizer), "do_sample": False,
                              "temperature": 0.0},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True,
                         "ignore_case": True, "ignore_punctuation": False, "regexes_to_ignore": [r"\s+", r"[.!?,;:]+$"]}],
        "metadata": {"version": 1.0, "source": path.name},
    }
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return cfg


def is_file_spec(text: str) -> bool:
    return text.lower().endswith(DATA_SUFFIXES) or "/" in text or "\\" in text


def unknown_task(spec: str, names: Sequence[str]) -> BenchError:
    """The refusal of a task name nobody knows: the close names, the bundled tasks and where the full list is."""
    close = difflib.get_close_matches(spec, list(names), n=5, cutoff=0.6)
    said = f"unknown task {spec!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
    return BenchError(
        f"{said}: not a test file and not a task lm-eval knows. Bundled tasks (no download): "
        f"{', '.join(bundled_tasks())}; lm-eval's {len(names)} tasks, groups and tags include "
        f"{', '.join(POPULAR_TASKS)} (`python -m finetune bench --list-tasks` lists them all); or give the path of a "
        "test file (prompt and reference columns)")


def resolve_tasks(specs: Sequence[str], folder: Path, tokenizer: Any,
                  check_file: Callable[[str], Path] | None = None) -> list[BenchTask]:
    """The tasks asked for, in order: bundled names, test files (their tasks written under ``folder``) and lm-eval
    names. ``check_file`` turns a file spec into the path to read (a shared server: the owner's own upload only)."""
    specs = [s.strip() for s in specs if s and s.strip()]
    if not specs:
        raise BenchError("no task given; name lm-eval tasks (e.g. arc_easy), a bundled one "
                         f"({', '.join(bundled_tasks())}) or a test file")
    bundled = set(bundled_tasks())
    needs_index = [s for s in specs if s not in bundled and not is_file_spec(s)]
    tm = task_manager(bool(needs_index))
    taken = set(bundled) | (set(tm.all_tasks) if needs_index else set())
    out: list[BenchTask] = []
    for spec in specs:
        if spec in bundled:
            cfg = bundled_config(spec)
            out.append(BenchTask(spec, spec, "bundled", cfg.get("output_type") == "generate_until", cfg))
        elif is_file_spec(spec):
            path = check_file(spec) if check_file else Path(spec)
            if not path.is_file():
                raise BenchError(f"test file {spec} not found; give the path of a test file (prompt and reference "
                                 "columns) or a task name")
            name = file_task_name(path, taken)
            taken.add(name)
            out.append(BenchTask(spec, name, "file", True, file_task_config(path, name, folder, tokenizer)))
        elif spec in tm.task_index:
            if any(c.get("unsafe_code") for c in _leaf_configs(tm, spec)):
                raise BenchError(f"{spec} scores answers by running the code the model writes; finetune does not run "
                                 "such tasks (run lm-eval itself, in a sandbox)")
            out.append(BenchTask(spec, spec, "lm-eval", "generate_until" in _output_types(tm, spec)))
        else:
            raise unknown_task(spec, tm.all_tasks)
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise BenchError(f"a task is asked twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    return out


# ---------------------------------------------------------------------------------------------
# the comparison


def noise_flag(delta: float | None, stderr_base: float | None, stderr_adapter: float | None) -> bool | None:
    """Whether a difference exceeds ``NOISE_Z`` combined standard errors; None when a standard error is unknown."""
    if delta is None or stderr_base is None or stderr_adapter is None:
        return None
    return abs(delta) > NOISE_Z * math.hypot(stderr_base, stderr_adapter)


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def metric_rows(results: dict[str, Any]) -> dict[tuple[str, str], tuple[float | None, float | None]]:
    """``{(task, metric): (value, stderr)}`` of one lm-eval results dict (``simple_evaluate(...)["results"]``);
    a metric of a filter other than lm-eval's "none" is named ``metric (filter)``."""
    out: dict[tuple[str, str], tuple[float | None, float | None]] = {}
    for task, values in results.items():
        for key, value in values.items():
            metric, _, filt = key.partition(",")
            if not filt or metric.endswith("_stderr") or metric == "alias":
                continue
            name = metric if filt == "none" else f"{metric} ({filt})"
            out[(task, name)] = (_number(value), _number(values.get(f"{metric}_stderr,{filt}")))
    return out


def compare(base: dict[str, Any], adapter: dict[str, Any], order: Sequence[str]) -> list[dict[str, Any]]:
    """The report's rows: each task and metric, base vs adapter, their standard errors, the difference and
    whether it is beyond noise; tasks in the order asked (a group's own row before its subtasks)."""
    b, a = metric_rows(base), metric_rows(adapter)
    rank = {name: i for i, name in enumerate(order)}
    rows = []
    for (task, metric) in sorted(a, key=lambda k: (rank.get(k[0], len(rank)), k[0], k[1])):
        (vb, sb), (va, sa) = b.get((task, metric), (None, None)), a[(task, metric)]
        delta = va - vb if va is not None and vb is not None else None
        rows.append({"task": task, "metric": metric, "base": vb, "adapter": va, "stderr_base": sb,
                     "stderr_adapter": sa, "delta": delta, "beyond_noise": noise_flag(delta, sb, sa)})
    return rows


def _shown_tasks(results: dict[str, Any], asked: Sequence[str]) -> list[str]:
    """The result keys a report shows: every task asked for, and the leaves of an asked tag; a group's subtasks
    are kept out (mmlu's 57 subjects: its row is the group's)."""
    groups = results.get("group_subtasks") or {}
    inside = {child for g, children in groups.items() if g in asked for child in children}
    return [k for k in results.get("results", {}) if k in asked or k not in inside]


# ---------------------------------------------------------------------------------------------
# running lm-eval


def _counting_lm(model: Any, tokenizer: Any, batch_size: int, tick: Callable[[int, int], None]) -> Any:
    """lm-eval's HFLM over an already loaded model, answering its requests in chunks of ``CHUNK`` and calling
    ``tick(done, total)`` after each (which may raise to cancel). With a batch of 1 the chunks change nothing: each
    request is scored alone, as in one call."""
    from lm_eval.models.huggingface import HFLM

    class CountingLM(HFLM):  # type: ignore[misc]
        def _chunked(self, method: Callable[..., list[Any]], requests: list[Any]) -> list[Any]:
            out: list[Any] = []
            tick(0, len(requests))
            for i in range(0, len(requests), CHUNK):
                out += method(requests[i:i + CHUNK], disable_tqdm=True)
                tick(min(i + CHUNK, len(requests)), len(requests))
            return out

        def loglikelihood(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._chunked(super().loglikelihood, requests)

        def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._chunked(super().loglikelihood_rolling, requests)

        def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[Any]:
            return self._chunked(super().generate_until, requests)

    return CountingLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))


def run_lm_eval(lm: Any, tasks: Sequence[BenchTask], limit: int | None) -> dict[str, Any]:
    """lm-eval's ``simple_evaluate`` of the tasks (the generative ones with the chat template, the others on plain
    text): ``{"results": ..., "group_subtasks": ..., "n-samples": ...}`` merged over the two kinds."""
    from lm_eval import simple_evaluate

    merged: dict[str, Any] = {"results": {}, "group_subtasks": {}, "n-samples": {}, "versions": {}}
    for generative in (False, True):
        chosen = [t.config if t.config is not None else t.name for t in tasks if t.generative == generative]
        if not chosen:
            continue
        tm = task_manager(any(t.kind == "lm-eval" for t in tasks if t.generative == generative))
        try:
            out = simple_evaluate(lm, tasks=chosen, task_manager=tm, limit=limit or None, log_samples=False,
                                  apply_chat_template=generative, fewshot_as_multiturn=generative)
        except ConnectionError as e:
            raise BenchError(f"the data of {', '.join(t.asked for t in tasks if t.kind == 'lm-eval')} could not be "
                             f"read ({str(e).splitlines()[0][:200]}): lm-eval's tasks download their data from the "
                             "Hugging Face Hub; on a machine without it, use the bundled tasks "
                             f"({', '.join(bundled_tasks())}) or a test file") from None
        if out is None:  # not rank 0 of a distributed run
            continue
        for key in merged:
            merged[key].update(out.get(key) or {})
    return merged


def load_bench_model(adapter: str | Path, model: str | None = None) -> tuple[Any, Any, str, Path]:
    """The adapter's base (full precision, this machine's device) with the adapter attached, the tokenizer saved
    with the adapter (its trained chat template), the base's name and the adapter folder."""
    from peft import PeftModel

    from . import models
    from .adapter import has_tokenizer, pick_device
    from .adapter_lookup import adapter_base, adapter_dir, base_config
    from .config import QuantizationConfig

    folder = adapter_dir(adapter)
    base = model or adapter_base(folder)
    cfg = base_config(base)
    m, resolved = models.load_model(cfg, QuantizationConfig(load_in="none"), pick_device())
    if has_tokenizer(folder):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        tokenizer = models.load_tokenizer(cfg)
    peft_model = PeftModel.from_pretrained(m, str(folder))
    peft_model.eval()
    return peft_model, tokenizer, base or resolved.name, folder


@dataclass
class _Clock:
    """The benchmark's progress over its model calls (base then adapter, each one call per request type)."""

    calls: int
    report: Callable[[BenchProgress], None] | None
    side: str = "base"
    finished: int = 0
    start: float = field(default_factory=time.monotonic)
    _last_total: int = -1
    _last_done: int = -1

    def tick(self, done: int, total: int) -> None:
        if done == 0 and self._last_done == self._last_total and self._last_total >= 0:
            self.finished += 1  # a new model call started after the last one ended
        self._last_done, self._last_total = done, total
        if self.report is None:
            return
        fraction = min(1.0, (self.finished + (done / total if total else 1.0)) / max(1, self.calls))
        elapsed = time.monotonic() - self.start
        left = elapsed / fraction - elapsed if fraction > 0 and elapsed > 0 else None
        self.report(BenchProgress(self.side, done, total, fraction, left))


def benchmark(adapter: str | Path, tasks: Sequence[str], *, model: str | None = None, limit: int | None = None,
              batch_size: int = 1, progress: Callable[[BenchProgress], None] | None = None,
              write_to_run: bool = True, check_file: Callable[[str], Path] | None = None,
              label: str | None = None, parts: Parts | None = None, budget_s: float | None = None) -> dict[str, Any]:
    """Benchmark an adapter (run folder, checkpoint, adapter folder or Hub id) beside its base model on lm-eval
    tasks, bundled tasks and test files (see the module's doc); ``limit``: the first N documents of each task.

    Returns the report: ``{"results": [{"task", "metric", "base", "adapter", "stderr_base", "stderr_adapter",
    "delta", "beyond_noise"}, ...], "tasks": [...], "limit", "model", "adapter", "seconds", ...}`` (``label`` names
    the adapter, default as given; a test file is named by its file name). For a run folder (or one of its
    checkpoints) it is also written to the run's ``eval/benchmark.json``. With ``parts`` each task is scored on
    each side on its own and kept as it is made; with ``budget_s`` too, a part that would start after that many
    seconds raises :class:`BenchPaused` instead (called again, it goes on from there: ZeroGPU's chunked calls).

    >>> benchmark("runs/my-run", ["general_knowledge", "data/test.jsonl"], limit=20)  # doctest: +SKIP
    """
    from . import runs
    from .adapter import adapter_step

    if limit is not None and limit < 0:
        raise BenchError(f"limit must be 0 (every document) or more, got {limit}")
    started = time.monotonic()
    peft_model, tokenizer, base_name, folder = load_bench_model(adapter, model)
    run_dir = runs.run_of(folder)
    task_folder = (run_dir / runs.BENCH_TASKS) if (run_dir is not None and write_to_run) else _scratch()
    chosen = resolve_tasks(tasks, task_folder, tokenizer, check_file)
    calls = 2 * (int(any(t.generative for t in chosen)) + int(any(not t.generative for t in chosen)))
    clock = _Clock(calls, progress)
    lm = _counting_lm(peft_model, tokenizer, batch_size, clock.tick)
    if parts is None:
        with peft_model.disable_adapter():
            base = run_lm_eval(lm, chosen, limit)
        clock.side = "adapter"
        tuned = run_lm_eval(lm, chosen, limit)
    else:
        base, tuned = _by_parts(peft_model, lm, chosen, limit, parts, clock, budget_s, started)
    asked = [t.name for t in chosen]
    shown = _shown_tasks(tuned, asked)
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "results": [r for r in compare(base["results"], tuned["results"], asked) if r["task"] in shown],
        "tasks": [{"asked": Path(t.asked).name if t.kind == "file" else t.asked, "task": t.name, "kind": t.kind, "generative": t.generative,
                   "n": (tuned["n-samples"].get(t.name) or {}).get("effective")} for t in chosen],
        "limit": limit or None,
        "model": base_name,
        "adapter": label or str(adapter),
        "step": adapter_step(folder),
        "chat_template": "the adapter's (generative tasks)",
        "noise_z": NOISE_Z,
        "harness": _harness_version(),
        "seconds": round(time.monotonic() - started, 1),
    }
    if run_dir is not None and write_to_run:
        runs.write_bench_report(run_dir, report)
    return report


def _by_parts(peft_model: Any, lm: Any, chosen: Sequence[BenchTask], limit: int | None, parts: Parts, clock: _Clock,
             budget_s: float | None, started: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """Both sides' scores, one (side, task) part at a time: a kept part is taken as made, a missing one is scored
    and kept; past ``budget_s`` seconds since ``started`` the next missing part raises :class:`BenchPaused`
    (after one part at least: every call moves on)."""
    import contextlib

    sides: dict[str, list[dict[str, Any]]] = {"base": [], "adapter": []}
    made = 0  # parts scored in this call: at least one is, whatever the budget, so every call moves on
    for side in sides:
        clock.side = side
        for task in chosen:
            done = parts.get(side, task.name)
            if done is None:
                if made and budget_s is not None and time.monotonic() - started > budget_s:
                    raise BenchPaused(f"paused before {task.name} on the {side}")
                made += 1
                with peft_model.disable_adapter() if side == "base" else contextlib.nullcontext():
                    done = run_lm_eval(lm, [task], limit)
                parts.put(side, task.name, done)
            sides[side].append(done)
    return _merge(sides["base"]), _merge(sides["adapter"])


def _scratch() -> Path:
    import tempfile

    return Path(tempfile.mkdtemp(prefix="finetune-bench-"))


def _harness_version() -> str:
    from importlib.metadata import version

    return f"lm-eval {version('lm_eval')}"


# ---------------------------------------------------------------------------------------------
# the time it will take, before it starts

CONTEXT_TOKENS = 96  # tokens of a typical request's context (a question with its choices, or a prompt)
ASSUMED_CHOICES = 4  # answers per multiple-choice document when the data is not read yet (lm-eval's own tasks)
ASSUMED_GEN_TOKENS = 256  # lm-eval's default max_gen_toks


def _local_rows(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    files = (cfg.get("dataset_kwargs") or {}).get("data_files") or {}
    path = Path(str(files.get(cfg.get("test_split") or "test", "")))
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def task_requests(task: BenchTask, limit: int | None) -> tuple[int | None, int, int]:
    """``(documents, requests per document, generated tokens per document)`` of one task for the estimate;
    documents None when unknown before lm-eval reads the data (its own tasks without a limit)."""
    cfg = task.config or {}
    rows = _local_rows(cfg) if task.config is not None else []
    docs: int | None = len(rows) if task.config is not None else None
    if limit:
        docs = min(docs, limit) if docs is not None else limit
    if task.generative:
        gen = int((cfg.get("generation_kwargs") or {}).get("max_gen_toks") or ASSUMED_GEN_TOKENS)
        return docs, 1, gen
    choices = cfg.get("doc_to_choice")
    first = rows[0] if rows else {}
    n = len(first[choices]) if isinstance(choices, str) and isinstance(first.get(choices), list) else ASSUMED_CHOICES
    return docs, n, 0


def estimate_seconds(tasks: Sequence[BenchTask], limit: int | None, params: int, gpu: str) -> float | None:
    """A rough duration of a benchmark (base and adapter) on ``gpu`` (``memory.hardware.GPUS``: "cpu", "t4", …):
    every request's forward pass at the catalog's arithmetic rate, each generated token at a decoding step's (a
    tenth of it, ``time_cost.DECODE_SLOWDOWN``); generation is counted to its token budget (a model that stops
    early is faster). None when a task's size is unknown before its data is read (give a limit)."""
    from .memory.hardware import get_gpu
    from .memory.time_cost import DECODE_SLOWDOWN

    spec = get_gpu(gpu)
    rate = spec.tflops * 1e12 * spec.mfu  # FLOP/s
    per_token = 2.0 * params / rate
    total = 0.0
    for task in tasks:
        docs, requests, gen = task_requests(task, limit)
        if docs is None:
            return None
        total += docs * (requests * CONTEXT_TOKENS * per_token + gen * per_token * DECODE_SLOWDOWN)
    return 2 * total  # the base, then the adapter


def plan(adapter: str | Path, tasks: Sequence[str], *, limit: int | None = None, gpu: str | None = None,
         check_file: Callable[[str], Path] | None = None) -> dict[str, Any]:
    """What a benchmark will run, without loading the model: each task (its kind, documents, requests) and the
    rough seconds on ``gpu`` (default: this machine's device), or None when unknown before the data is read."""
    from .adapter import has_tokenizer, pick_device
    from .adapter_lookup import adapter_base, adapter_dir
    from .memory.architecture import count_params, load_model_spec

    folder = adapter_dir(adapter)
    if has_tokenizer(folder):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    else:
        from .adapter_lookup import base_config
        from .models import load_tokenizer

        tokenizer = load_tokenizer(base_config(adapter_base(folder)))
    chosen = resolve_tasks(tasks, _scratch(), tokenizer, check_file)
    params = count_params(load_model_spec(adapter_base(folder), allow_hub=False))
    device = gpu or _this_hardware(pick_device())
    rows = []
    for t in chosen:
        docs, requests, gen = task_requests(t, limit)
        rows.append({"task": t.name, "kind": t.kind, "generative": t.generative, "documents": docs,
                     "requests_per_document": requests, "max_new_tokens": gen or None})
    return {"tasks": rows, "limit": limit or None, "params": params, "hardware": device,
            "seconds": estimate_seconds(chosen, limit, params, device) if device else None}


def _this_hardware(device: str) -> str | None:
    """The catalog's name of this machine's device (``memory.hardware.GPUS``), None for a GPU it does not list."""
    if device == "cpu":
        return "cpu"
    import torch

    from .memory.hardware import GPUS

    name = torch.cuda.get_device_name(0).lower()
    return next((g.name for g in GPUS.values() if g.name.split("-")[0] in name and not g.is_cpu), None)
