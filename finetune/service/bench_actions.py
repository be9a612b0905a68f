"""One owner's benchmarks (:mod:`finetune.benchmark`): the run is the owner's, a test file is their own upload, and
on a shared server the documents per task are capped (``limits.check_bench_rows``). ``Jobs`` runs a benchmark in the
background for the API and MCP (a call that returns at once, then one to poll)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..errors import UserError, app_message
from .checks import Owner, ServiceError

if TYPE_CHECKING:
    from ..benchmark import BenchProgress

TEST_FILE = "test file"  # the task name of the test file sent with a benchmark (the app's upload)


def task_list(space: Owner, tasks: str | list[str], test_file: str | Path | None) -> tuple[list[str], Callable[[str], Path]]:
    """The tasks asked for (comma-separated or a list; ``test file`` or a test file sent: the upload's task) and the
    check of a file task: the owner's upload only (a shared server never reads a path a visitor names)."""
    names = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t and t.strip()]
    kept = space.keep_upload(test_file) if test_file else None
    if kept is not None and TEST_FILE not in names:
        names.append(TEST_FILE)
    names = [str(kept) if n == TEST_FILE and kept is not None else n for n in names]
    if TEST_FILE in names:
        raise ServiceError("the tasks name the test file, but none was sent; upload a test file (prompt and "
                           "reference columns) or leave it out of the tasks")

    def check_file(spec: str) -> Path:
        if kept is not None and spec == str(kept):
            return kept
        if space.ws.multi_user:
            raise ServiceError(f"{Path(spec).name}: on this shared server a test file is one you upload with the "
                               "benchmark (test_file); name lm-eval tasks or the bundled ones in tasks")
        return Path(spec)

    from ..benchmark import is_file_spec

    for name in names:  # refused now, before anything starts
        if is_file_spec(name):
            check_file(name)
    return names, check_file


def row_limit(space: Owner, limit: int) -> int | None:
    """The documents per task: any on one's own machine (0: all), at most the server's on a shared one."""
    if limit < 0:
        raise ServiceError(f"limit must be 0 (every document) or more, got {limit}")
    if space.ws.multi_user:
        from ..limits import check_bench_rows

        return check_bench_rows(limit)
    return limit or None


def run(space: Owner, run_id: str, tasks: str | list[str], *, limit: int = 0, test_file: str | Path | None = None,
        progress: Callable[["BenchProgress"], None] | None = None) -> dict[str, Any]:
    """Benchmark one of the owner's runs (``ID``, ``ID@step``) beside its base; the report is also written into the
    run folder (``eval/benchmark.json``)."""
    from ..benchmark import benchmark

    folder = space.adapter_path(run_id)
    names, check_file = task_list(space, tasks, test_file)
    rows = row_limit(space, limit)
    from ..backends import zerogpu

    if zerogpu.available()[0]:  # in GPU calls of their own, part by part (the names were checked above)
        from .. import runs

        parts = space.run_dir(run_id.partition("@")[0]) / runs.BENCH_PARTS
        return zerogpu.run_bench_chunked(str(folder), names, rows, parts, label=run_id)
    return benchmark(folder, names, limit=rows, progress=progress, check_file=check_file,
                     label=run_id)  # the run as the owner names it, never a server folder


def plan(space: Owner, run_id: str, tasks: str | list[str], *, limit: int = 0,
         test_file: str | Path | None = None) -> dict[str, Any]:
    """What a benchmark of the owner's run would score and its rough time on this machine (``benchmark.plan``)."""
    from ..benchmark import plan as bench_plan

    folder = space.adapter_path(run_id)
    names, check_file = task_list(space, tasks, test_file)
    return bench_plan(folder, names, limit=row_limit(space, limit), check_file=check_file)


@dataclass
class Job:
    """A benchmark running in the background: its progress, then its report or its error message."""

    run_id: str
    status: str = "running"  # running | finished | failed
    progress: str = "loading the model"
    fraction: float = 0.0
    report: dict[str, Any] | None = None
    error: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def state(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "status": self.status, "progress": self.progress,
                "fraction": round(self.fraction, 3), "report": self.report, "error": self.error}


class Jobs:
    """The app's benchmarks, by owner folder and run: one running per owner at a time, and ``concurrent`` in the
    whole app (the page's and the API's alike: each loads a model); the others wait for a slot."""

    def __init__(self, concurrent: int = 1) -> None:
        self._jobs: dict[tuple[str, str], Job] = {}
        self._lock = threading.Lock()
        self.slots = threading.BoundedSemaphore(concurrent)

    def start(self, space: Owner, run_id: str, tasks: str | list[str], *, limit: int = 0,
              test_file: str | Path | None = None) -> dict[str, Any]:
        """Start a benchmark of the owner's run in the background; its state (poll with ``state``)."""
        space.adapter_path(run_id)  # the owner's run, or the refusal now
        names, _ = task_list(space, tasks, test_file)
        row_limit(space, limit)
        owner = str(space.root)
        with self._lock:
            if any(k[0] == owner and j.status == "running" for k, j in self._jobs.items()):
                raise ServiceError("a benchmark of yours is running; wait for it (benchmark_status) before the next")
            job = self._jobs[(owner, run_id)] = Job(run_id)

        def work() -> None:
            def tell(p: "BenchProgress") -> None:
                job.progress, job.fraction = p.line(), p.fraction

            job.progress = "waiting for another benchmark to finish"
            try:
                with self.slots:
                    job.progress = "loading the model"
                    job.report = run(space, run_id, names, limit=limit, test_file=test_file, progress=tell)
                job.status, job.fraction, job.progress = "finished", 1.0, "finished"
            except UserError as e:
                job.status, job.error = "failed", app_message(e)
            except Exception as e:  # noqa: BLE001 - a bug: logged with its traceback, said as an internal error
                from ..errors import internal_message, report_internal

                job.status, job.error = "failed", internal_message(report_internal(e, "benchmark"))

        job.thread = threading.Thread(target=work, name=f"benchmark-{run_id}", daemon=True)
        job.thread.start()
        return job.state()

    def state(self, space: Owner, run_id: str) -> dict[str, Any]:
        """The owner's benchmark of a run: running (its progress), finished (the report) or failed (why)."""
        job = self._jobs.get((str(space.root), run_id))
        if job is None:
            from .. import runs

            report = runs.read_bench_report(space.run_dir(run_id.partition("@")[0]))
            if report is None:
                raise ServiceError(f"no benchmark of {run_id}; start one with benchmark")
            return {"run_id": run_id, "status": "finished", "progress": "finished", "fraction": 1.0, "report": report,
                    "error": None}
        return job.state()
