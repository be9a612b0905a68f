"""`python -m finetune stop RUN [--runs-root DIR]`

Ask a run to stop: a local run writes a checkpoint at the end of its current step and records ``stopped``
(resume it later with `python -m finetune train --run-dir ...`); a Hugging Face Jobs run is cancelled
(token from HF_TOKEN). RUN is a run id or a run folder's path.
"""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("stop", help="stop a run at its next step (checkpointed) or cancel its job", description=__doc__)
    p.add_argument("run", metavar="RUN", help="run id or run folder")
    p.add_argument("--runs-root", help="the runs folder (default: $FINETUNE_RUNS or ./runs)")
    p.set_defaults(func=run)


def run(args) -> int:
    from finetune import runs
    from finetune.backends import hfjobs
    from finetune.cli import UsageError
    from finetune.commands.status import resolve_run

    run_dir = resolve_run(args.run, args.runs_root)
    if (run_dir / runs.JOB_FILE).exists():
        try:
            hfjobs.stop(run_dir.name, run_dir.parent)
        except hfjobs.JobError as e:
            raise UsageError(str(e)) from e
        print(f"cancelled the job of run {run_dir.name}")
        return 0
    state = runs.read_run(run_dir)
    if state.status == "queued":
        from finetune.backends import local

        local.stop(run_dir.name, run_dir.parent)
        print(f"run {run_dir.name} left the training queue before it started")
        return 0
    if state.status != "running":
        print(f"run {run_dir.name} is {state.status}, not running: nothing to stop")
        return 0
    runs.request_stop(run_dir)
    print(f"asked run {run_dir.name} to stop: it checkpoints at the end of its current step")
    return 0
