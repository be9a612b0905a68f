"""`python -m finetune runs [--runs-root DIR] [--json]`

Every run under the runs folder (default: $FINETUNE_RUNS or ./runs), newest first: id, status, step/max
steps and the last loss. The run folders alone decide what is shown, so runs of a crashed or restarted app
appear as they are (``interrupted`` runs resume with `python -m finetune train --run-dir runs/ID`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from finetune.runs import RunState


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("runs", help="list the runs: id, status, step, loss", description=__doc__)
    p.add_argument("--runs-root", help="the runs folder (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per run, one per line")
    p.set_defaults(func=run)


def rows(states: Iterable[RunState]) -> list[list[str]]:
    out: list[list[str]] = []
    for s in states:
        loss = f"{s.loss:.4f}" if s.loss is not None else "-"
        out.append([s.run_id, s.status_text, f"{s.step}/{s.max_steps or '?'}", loss, s.name or ""])
    return out


def table(header: list[str], body: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *body])


def run(args: argparse.Namespace) -> int:
    from finetune import runs, service

    states = service.Workspace(runs.runs_root(args.runs_root)).owner_space(None).states()
    if args.json:
        for s in states:
            d = s.to_dict()
            d.pop("losses", None)
            d.pop("eval_losses", None)
            print(json.dumps(d, ensure_ascii=False))
        return 0
    if not states:
        print(f"no runs in {runs.runs_root(args.runs_root)}; start one with `python -m finetune train`")
        return 0
    print(table(["RUN", "STATUS", "STEP", "LOSS", "NAME"], rows(states)))
    return 0
