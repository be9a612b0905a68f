"""The evaluation panel's "General ability" part: lm-eval's tasks, the bundled ones and a test file on the base model
and on the run's adapter (``finetune.benchmark``), with the rough time before it starts, the progress, the table and a
bar chart of base vs tuned; the endpoints ``/benchmark`` (starts it in the background: an agent polls
``/benchmark_status``) and ``/benchmark_estimate``."""

from __future__ import annotations

from typing import Any

import gradio as gr
import pandas as pd

from ..benchmark import POPULAR_TASKS, BenchProgress, bundled_tasks
from ..card import BENCH_HEADERS, benchmark_rows
from ..durations import clock, rough
from ..service.bench_actions import TEST_FILE, Jobs
from .common import Api, Caller, page_errors, scoped, user_errors

DEFAULT_LIMIT = 20  # documents per task the page starts with: a few minutes on a CPU for the bundled task


def report_table(report: dict[str, Any] | None) -> pd.DataFrame:
    """Each task and metric: base and adapter (± lm-eval's standard error), the difference, beyond noise."""
    return pd.DataFrame(benchmark_rows(report) if report else [], columns=list(BENCH_HEADERS))


def bars(report: dict[str, Any] | None) -> pd.DataFrame | None:
    """Base vs tuned per task and metric, long form for a bar chart; None with no report."""
    rows = [{"score": f"{r['task']} · {r['metric']} · {side}", "value": float(r[side]), "model": side}
            for r in (report or {}).get("results") or [] for side in ("base", "adapter") if r[side] is not None]
    return pd.DataFrame(rows, columns=["score", "value", "model"]) if rows else None


def summary(report: dict[str, Any] | None) -> str:
    if not report:
        return ("No benchmark yet. Pick tasks (the bundled ones read a local file; lm-eval's own download their data "
                "from the Hugging Face Hub) and press Run benchmark.")
    flagged = [f"{r['task']} {r['metric']} ({r['delta']:+.3f})" for r in report["results"] if r["beyond_noise"]]
    noise = ("Beyond noise: " + ", ".join(flagged) + ".") if flagged else "No difference beyond noise."
    docs = ", ".join(f"{t['task']} {t['n']}" for t in report.get("tasks") or [])
    return f"Base vs adapter on {docs} documents, in {clock(report.get('seconds'))}. {noise}"


def estimate_text(plan: dict[str, Any]) -> str:
    docs = ", ".join(f"{t['task']} {t['documents'] if t['documents'] is not None else '?'}" for t in plan["tasks"])
    if plan["seconds"] is None:
        return (f"Documents per task: {docs}. The time is known once lm-eval has read the data (set a limit to "
                "estimate it).")
    return (f"Documents per task: {docs}. Rough time on {plan['hardware']}: about {rough(plan['seconds'])} "
            "(the base, then the adapter).")


def task_names(tasks: list[str] | str | None) -> list[str]:
    return [t for t in (tasks.split(",") if isinstance(tasks, str) else tasks or []) if t and t.strip()]


class BenchmarkEndpoints:
    """The benchmark's endpoints (``jobs``: the app's background benchmarks, one running per owner)."""

    def __init__(self, jobs: Jobs) -> None:
        self.jobs = jobs

    def benchmark(self, me: Caller, run_id: str, tasks: str = "general_knowledge", limit: int = DEFAULT_LIMIT,
                  test_file: str | None = None) -> dict[str, Any]:
        """Start a general-ability benchmark of one of your runs (`ID` or `ID@step`) beside its base model and return
        at once: {"run_id", "status": "running", "progress"}; poll /benchmark_status with the run id for the report.
        tasks: comma-separated lm-eval task names (arc_easy, hellaswag, mmlu, gsm8k, ifeval, truthfulqa_mc2...: their
        data comes from the Hugging Face Hub), bundled ones (general_knowledge: no download) and "test file" for the
        test_file sent (prompt and reference columns). limit: documents per task (0: all; a shared server caps it).
        The report's results list each task and metric: base, adapter, stderr_base, stderr_adapter, delta and
        beyond_noise (past 1.96 combined standard errors)."""
        return self.jobs.start(me.space, run_id, tasks, limit=int(limit), test_file=test_file)

    def benchmark_status(self, me: Caller, run_id: str) -> dict[str, Any]:
        """The state of your benchmark of a run: {"status": running | finished | failed, "progress", "fraction",
        "report" (when finished), "error" (when failed)}; a finished one is read from the run folder."""
        return self.jobs.state(me.space, run_id)

    def benchmark_estimate(self, me: Caller, run_id: str, tasks: str = "general_knowledge", limit: int = DEFAULT_LIMIT,
                 test_file: str | None = None) -> dict[str, Any]:
        """What a benchmark of one of your runs would score, without running it: per task its documents and
        requests, and "seconds", the rough time on this machine (null when unknown before the data is read)."""
        return me.space.benchmark_plan(run_id, tasks, limit=int(limit), test_file=test_file)

    def run_page(self, me: Caller, run_id: str, tasks: list[str], limit: float, test_file: str | None,
                 progress: gr.Progress = gr.Progress()) -> tuple[str, pd.DataFrame, pd.DataFrame | None]:
        def tell(p: BenchProgress) -> None:
            progress((p.done, p.total), desc=f"General ability: {p.line()}", unit="requests")

        progress(0, desc="General ability: waiting for another benchmark to finish")
        with self.jobs.slots:  # one benchmark at a time in the app, the page's and the API's
            report = me.space.benchmark(run_id, task_names(tasks), limit=int(limit), test_file=test_file,
                                        progress=tell)
        return summary(report), report_table(report), bars(report)

    def estimate_page(self, me: Caller, run_id: str, tasks: list[str], limit: float, test_file: str | None) -> str:
        from ..errors import UserError, app_message

        if not run_id or not task_names(tasks):
            return ""
        try:
            return estimate_text(me.space.benchmark_plan(run_id, task_names(tasks), limit=int(limit or 0),
                                                         test_file=test_file))
        except UserError as e:  # the panel says why there is no estimate (no adapter yet, an unknown task...)
            return f"No estimate: {app_message(e)}"

    def load(self, me: Caller, run_id: str) -> tuple[str, pd.DataFrame, pd.DataFrame | None]:
        from .. import runs, service

        try:
            report = runs.read_bench_report(me.space.run_dir(run_id.partition("@")[0])) if run_id else None
        except service.ServiceError:
            report = None
        return summary(report), report_table(report), bars(report)


def create_benchmark_panel(api: Api, run_id: gr.Textbox) -> None:
    """The "General ability" accordion of the evaluation panel; ``run_id`` is the Train tab's run box."""
    with gr.Accordion("General ability: did it forget?", open=False):
        with gr.Row():
            tasks = gr.Dropdown(choices=[*bundled_tasks(), TEST_FILE, *POPULAR_TASKS], value=["general_knowledge"],
                                multiselect=True, allow_custom_value=True, label="Tasks", scale=3,
                                info="bundled ones read a local file; lm-eval's own download their data from the "
                                "Hugging Face Hub; any lm-eval task name can be typed", elem_id="bench-tasks")
            limit = gr.Number(value=DEFAULT_LIMIT, precision=0, minimum=0, label="Documents per task (0: all)",
                              elem_id="bench-limit", scale=1)
        test_file = gr.File(label="Test file as a task (pick \"test file\" in Tasks): prompt + reference columns",
                            file_types=[".jsonl", ".json", ".csv", ".tsv", ".parquet"], type="filepath",
                            elem_id="bench-test-file")
        estimate = gr.Markdown(elem_id="bench-estimate")
        run_btn = gr.Button("Run benchmark", variant="secondary", elem_id="bench-run")
        said = gr.Markdown(summary(None), elem_id="bench-summary")
        table = gr.Dataframe(report_table(None), interactive=False, elem_id="bench-table")
        chart = gr.BarPlot(None, x="score", y="value", color="model", title="Base vs tuned", height=260,
                           elem_id="bench-chart")

    ep = BenchmarkEndpoints(Jobs())
    mine = scoped(api)
    inputs = [run_id, tasks, limit, test_file]
    for changed in (tasks.change, limit.change, test_file.change, run_id.change):
        changed(page_errors(mine(ep.estimate_page)), inputs, estimate, api_visibility="private",
                show_progress="hidden")
    run_btn.click(page_errors(mine(ep.run_page)), inputs, [said, table, chart], api_visibility="private",
                  concurrency_limit=1, show_progress_on=[table])
    run_id.change(page_errors(mine(ep.load)), run_id, [said, table, chart], api_visibility="private")
    tasks_box = gr.Textbox(visible=False, value="general_knowledge")
    limit_box = gr.Number(visible=False, value=DEFAULT_LIMIT, precision=0)
    status_json = gr.JSON(visible=False)
    gr.Button(visible=False).click(user_errors(mine(ep.benchmark)), [run_id, tasks_box, limit_box, test_file],
                                   status_json, api_name="benchmark")
    gr.Button(visible=False).click(user_errors(mine(ep.benchmark_status)), run_id, status_json, api_name="benchmark_status")
    gr.Button(visible=False).click(user_errors(mine(ep.benchmark_estimate)), [run_id, tasks_box, limit_box, test_file],
                                   status_json, api_name="benchmark_estimate")
