"""`python -m finetune status RUN [--runs-root DIR] [--no-sync]`

The state of one run as JSON (status, step, max_steps, loss, the loss curve, last checkpoint, adapter).
RUN is a run id under the runs folder or a run folder's path. A Hugging Face Jobs run is first synced
from its job's log (token from HF_TOKEN) unless --no-sync.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("status", help="the state of one run as JSON", description=__doc__)
    p.add_argument("run", metavar="RUN", help="run id or run folder")
    p.add_argument("--runs-root", help="the runs folder (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--no-sync", action="store_true", help="a Jobs run: show the folder without reading the job's log")
    p.set_defaults(func=run)


def resolve_run(run: str, runs_root: str | None) -> Path:
    """A run folder from an id or a path; the error names where it looked."""
    from finetune import runs
    from finetune.cli import UsageError

    path = Path(run)
    if (path / runs.CONFIG_FILE).exists():
        return path
    try:
        path = runs.run_path(run, runs_root)
    except runs.RunError as e:
        raise UsageError(str(e)) from e
    if not (path / runs.CONFIG_FILE).exists():
        raise UsageError(f"no run '{run}' in {runs.runs_root(runs_root)}; list them with `python -m finetune runs` "
                         "or pass --runs-root")
    return path


def run(args: argparse.Namespace) -> int:
    import sys

    from finetune import service

    run_dir = resolve_run(args.run, args.runs_root)
    state, stale = service.Workspace(run_dir.parent).owner_space(None).state(run_dir.name, sync=not args.no_sync,
                                                                           sync_every_s=0.0)
    if stale:  # show the last known state anyway, and why it may be stale
        print(f"warning: {stale}; showing the state last synced", file=sys.stderr)
    print(json.dumps(state.to_dict(), indent=2, ensure_ascii=False))
    return 0
