"""The Train tab's evaluation panel: score a run (and its checkpoints) on a test file, show the base model beside
it as a table, each metric over the steps as a curve, and the best checkpoint per metric (``RUN@step``)."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import gradio as gr
import pandas as pd

from .. import service
from ..durations import clock
from ..errors import UserError
from ..evaluate import METRICS, SUMMARY_HEADERS, EvalProgress, summary_table
from .benchmark_panel import create_benchmark_panel
from .common import Api, Caller, page_errors, scoped, user_errors
from .widgets import StepPlot


class EvaluationCancelled(UserError):
    """The caller cancelled their evaluation: it stopped after the answers it was giving, nothing written."""


class Cancels:
    """The cancel flags of the evaluations each owner runs now (the app's, shared by its sessions: an owner's own
    key, never anything another owner can set). ``running`` holds a flag for as long as one evaluation runs, which
    it checks at each chunk of answers; ``cancel`` sets the flags of every evaluation the owner runs (the page's
    and the API's alike), and finds none once they ended."""

    def __init__(self) -> None:
        self._flags: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()

    @contextmanager
    def running(self, space: service.OwnerSpace) -> Iterator[threading.Event]:
        key, flag = str(space.root), threading.Event()
        with self._lock:
            self._flags.setdefault(key, set()).add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                flags = self._flags.get(key, set())
                flags.discard(flag)
                if not flags:
                    self._flags.pop(key, None)

    def cancel(self, space: service.OwnerSpace) -> bool:
        """Set the flags of the owner's running evaluations; False when they run none."""
        with self._lock:
            flags = [f for f in self._flags.get(str(space.root), ()) if not f.is_set()]
        for flag in flags:
            flag.set()
        return bool(flags)


def progress_desc(p: EvalProgress) -> str:
    """What the progress bar says beside ``done/total answers``: who answers now and the time left."""
    left = "measuring the time per answer" if p.eta_s is None else f"about {clock(p.eta_s)} left"
    return f"Evaluating: the {p.what} answers · {left}"


def report_table(report: dict[str, Any] | None) -> pd.DataFrame:
    """The base model, each checkpoint and the adapter, one row each, every metric a column."""
    return pd.DataFrame(summary_table(report) if report else [], columns=SUMMARY_HEADERS)


def metric_frame(report: dict[str, Any] | None) -> pd.DataFrame | None:
    """Each score (0 to 1) of every evaluated step, long form for a line plot; None with no report."""
    if not report:
        return None
    points = {c["step"]: c for c in report.get("checkpoints") or []}
    if report.get("step") is not None:
        points.setdefault(report["step"], report)
    rows = [{"step": step, "value": float(m[k]), "metric": k} for step, m in sorted(points.items())
            for k in METRICS if k != "loss" and m.get(k) is not None]
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["step", "value", "metric"]).astype({"step": "int64", "value": "float64"})


def best_markdown(report: dict[str, Any] | None, run_id: str) -> str:
    if not report:
        return "No evaluation yet: upload a test file (prompts and reference answers) and press Evaluate."
    test_file = (report.get('test_set') or {}).get('file', report.get('data'))
    base = (report.get('base') or {}).get('exact_match', '–')
    if report.get("in_progress"):  # written at each checkpoint save while the run trains
        steps = [c["step"] for c in report.get("checkpoints") or []]
        lines = [f"Training: **{len(steps)}** checkpoints scored so far on the {report.get('n_prompts')} prompts of "
                 f"`{test_file}` (steps {', '.join(map(str, steps)) or 'none'}); exact match: base **{base}**, "
                 f"latest **{(report.get('checkpoints') or [{}])[-1].get('exact_match', '–')}**."]
    else:
        lines = [f"**{report.get('n')}** scored prompts of `{test_file}`; exact match: base **{base}**, adapter "
                 f"**{report.get('exact_match')}**."]
    best = report.get("best") or {}
    picks = [f"{k}: `{run_id}@{v['step']}`" for k, v in best.items() if v]
    if picks:
        lines.append("Best checkpoint by " + " · ".join(picks) + " (use it in the Playground, or push it).")
    return "\n\n".join(lines)


# -- the endpoint and page events: those that act for a caller take ``me`` (common.Caller) first, as
# common.scoped hands it; create_evaluation_panel wires them
class EvaluationEndpoints:
    """The evaluation's endpoint and its cancel (``cancels``: the app's flags, one per owner)."""

    def __init__(self, cancels: Cancels) -> None:
        self.cancels = cancels

    def evaluate(self, me: Caller, run_id: str, test_file: str | None = None, checkpoints: str = "all",
                 max_new_tokens: int = 0, progress: gr.Progress = gr.Progress()) -> dict[str, Any]:
        """Evaluate one of your runs (`ID`, or `ID@step` for a checkpoint) on a test file (default: the run's
        data.test_source): greedy answers scored by exact_match, contains, f1, rouge_l and the held-out loss, beside
        the base model (`base`); with checkpoints="all" a `checkpoints` list per saved step. max_new_tokens 0: sized
        from the references (the longest one's tokens plus a quarter). The progress says the answers done of all
        and the time left; /cancel_evaluation stops it. Returns the report, also written into the run folder."""
        with self.cancels.running(me.space) as flag:
            def tell(p: EvalProgress) -> None:
                if flag.is_set():
                    raise EvaluationCancelled(f"evaluation of {run_id} cancelled after {p.done} of {p.total} "
                                              "answers; nothing was written")
                progress((p.done, p.total), desc=progress_desc(p), unit="answers")

            return me.space.evaluate(run_id, test_file, checkpoints=checkpoints, max_new_tokens=int(max_new_tokens),
                                     progress=tell)

    def cancel(self, me: Caller) -> str:
        """Cancel your evaluation that is running: it stops after the answers it is giving, and writes nothing."""
        if not self.cancels.cancel(me.space):
            return "No evaluation of yours is running."
        return "Evaluation cancelled: it stops after the answers it is giving; the last report stays."

    def run_evaluation(self, me: Caller, rid: str, path: str | None, every: bool, tokens: float,
                       progress: gr.Progress = gr.Progress()) -> dict[str, Any]:
        return self.evaluate(me, rid, path, "all" if every else "none", int(tokens), progress)


def show(report: dict[str, Any] | None, rid: str) -> tuple[str, pd.DataFrame, pd.DataFrame | None]:
    return best_markdown(report, rid.partition("@")[0]), report_table(report), metric_frame(report)


def read(space: service.OwnerSpace, rid: str) -> dict[str, Any] | None:
    if not rid:
        return None
    try:
        return space.eval_report(rid)
    except service.ServiceError:
        return None


def load(me: Caller, rid: str) -> tuple[str, pd.DataFrame, pd.DataFrame | None]:
    return show(read(me.space, rid), rid)


def signature(report: dict[str, Any] | None) -> str:
    return "" if not report else repr([report.get("in_progress"), report.get("step"), report.get("seconds"),
                                       [c.get("step") for c in report.get("checkpoints") or []]])


def poll(me: Caller, rid: str, seen: str) -> tuple[Any, ...]:
    """On a timer tick: the panel again only when the report changed (a checkpoint scored, the run ended)."""
    report = read(me.space, rid)
    now = signature(report)
    if now == seen:
        return gr.skip(), gr.skip(), gr.skip(), seen
    return (*show(report, rid), now)


def create_evaluation_panel(api: Api, run_id: gr.Textbox, timer: gr.Timer | None = None) -> None:
    """The panel under the run's progress; ``run_id`` is the Train tab's run box (a run id or ``RUN@step``).
    ``timer``: the Train tab's timer, ticking while a run is live: the report, which a run with a test set
    rewrites at each checkpoint save, is read again when it has changed."""
    with gr.Accordion("Evaluation on a test set", open=False):
        with gr.Row():
            test_file = gr.File(label="Test file (JSONL/CSV/...: prompt + reference, answer, label, completion or "
                                "output; or conversations)", file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet"],
                                type="filepath", elem_id="eval-test-file", scale=3)
            with gr.Column(scale=1):
                all_checkpoints = gr.Checkbox(value=True, label="Every kept checkpoint too", elem_id="eval-all",
                                              info="Each checkpoint answers every prompt too: the time grows with "
                                              "their number")
                max_new = gr.Slider(0, 1024, value=0, step=1, label="Max new tokens per answer",
                                    info="0: sized from the references (the longest one's tokens plus a quarter)",
                                    elem_id="eval-max-new")
                with gr.Row():
                    evaluate_btn = gr.Button("Evaluate", variant="secondary", elem_id="evaluate")
                    cancel_btn = gr.Button("⏹ Cancel", visible=False, elem_id="evaluate-cancel")
        status = gr.Markdown(elem_id="eval-status")
        best = gr.Markdown(best_markdown(None, ""), elem_id="eval-best")
        table = gr.Dataframe(report_table(None), interactive=False, elem_id="eval-table")
        curve = StepPlot(None, x="step", y="value", color="metric", title="Test-set metrics by step", height=260,
                         elem_id="eval-plot")
        report_json = gr.JSON(visible=False)

    ep = EvaluationEndpoints(Cancels())
    mine = scoped(api)
    evaluate_as, shown = user_errors(mine(ep.evaluate)), page_errors(show)

    def running(on: bool) -> Callable[[], tuple[gr.Button, gr.Button]]:
        """Evaluate and Cancel while an evaluation runs (``on``) and after."""
        def buttons() -> tuple[gr.Button, gr.Button]:
            return gr.Button(interactive=not on), gr.Button(visible=on)

        return page_errors(buttons)

    started = evaluate_btn.click(running(True), None, [evaluate_btn, cancel_btn], api_visibility="private",
                                 show_progress="hidden").then(lambda: "", None, status, api_visibility="private",
                                                              show_progress="hidden")
    evaluation = started.then(user_errors(mine(ep.run_evaluation)), [run_id, test_file, all_checkpoints, max_new],
                              report_json, api_visibility="private", concurrency_limit=1, show_progress_on=[table])
    evaluation.then(running(False), None, [evaluate_btn, cancel_btn], api_visibility="private",
                    show_progress="hidden")
    evaluation.success(shown, [report_json, run_id], [best, table, curve], api_visibility="private")
    cancel_btn.click(user_errors(mine(ep.cancel)), None, status, api_name="cancel_evaluation",
                     cancels=[evaluation]).then(running(False), None, [evaluate_btn, cancel_btn],
                                                api_visibility="private", show_progress="hidden")
    run_id.change(page_errors(mine(load)), run_id, [best, table, curve], api_visibility="private")
    if timer is not None:
        seen = gr.State("")
        timer.tick(page_errors(mine(poll)), [run_id, seen], [best, table, curve, seen], api_visibility="private",
                   show_progress="hidden")
    checkpoints_box = gr.Textbox(visible=False, value="all")
    max_box = gr.Number(visible=False, value=0, precision=0)
    gr.Button(visible=False).click(evaluate_as, [run_id, test_file, checkpoints_box, max_box], report_json,
                                   api_name="evaluate", concurrency_limit=1)
    create_benchmark_panel(api, run_id)
