"""`python -m finetune stop RUN [--runs-root DIR]`

Ask a run to stop: a local run writes a checkpoint at the end of its current step and records ``stopped``
(resume it later with `python -m finetune train --run-dir ...`); a Hugging Face Jobs run is cancelled
(token from HF_TOKEN). RUN is a run id or a run folder's path.
"""

from __future__ import annotations

import argparse

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("stop", help="stop a run at its next step (checkpointed) or cancel its job", description=__doc__)
    p.add_argument("run", metavar="RUN", help="run id or run folder")
    p.add_argument("--runs-root", help="the runs folder (default: $FINETUNE_RUNS or ./runs)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune import service
    from finetune.commands.status import resolve_run
    from finetune.runs import LIVE

    run_dir = resolve_run(args.run, args.runs_root)
    space, run_id = service.Workspace(run_dir.parent).owner_space(None), run_dir.name
    before = space.state(run_id, sync=False)[0].status
    backend = service.backend_of(run_dir)
    if backend != "hf-jobs" and before not in LIVE:
        if backend == "local":
            space.stop(run_id)  # changes nothing but the stop files processes that are gone left behind
        print(f"run {run_id} is {before}, not running: nothing to stop")
        return 0
    space.stop(run_id)
    if backend == "hf-jobs":
        print(f"cancelled the job of run {run_id}")
    elif before == "queued":
        print(f"run {run_id} left the training queue before it started")
    elif before in ("new", "resuming"):
        print(f"asked run {run_id} to stop: the processes launched for it end before they train")
    else:
        print(f"asked run {run_id} to stop: it checkpoints at the end of its current step")
    return 0
