"""`python -m finetune eval --adapter RUN --data test.jsonl [--checkpoints all] [--out report.json]
[--model M] [--max-new-tokens N] [--no-base]`

Greedy answers (temperature 0, the adapter's trained template and system prompt) to every prompt of the test
file, scored against its references: exact match (case, whitespace and trailing punctuation normalised),
contains-reference, token F1, ROUGE-L and the held-out loss on the reference tokens, for the adapter and the
base model beside it; with --checkpoints all, for every kept checkpoint of the run too. The report is written to
--out and, for a run folder, to runs/<id>/eval/report.json.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="score an adapter (and its checkpoints) on a held-out test file",
                       description=__doc__)
    p.add_argument("--adapter", required=True, help="a run folder, an adapter folder, a checkpoint or a Hub repo id")
    p.add_argument("--data", required=True, help="test file: prompts and references (reference, answer, label, "
                   "completion or output column, or conversations ending with the expected assistant message)")
    p.add_argument("--checkpoints", choices=("all", "none"), default="none",
                   help="all: also evaluate every kept checkpoint of the run")
    p.add_argument("--out", help="write the report (JSON) here")
    p.add_argument("--model", help="base model (default: the adapter's base)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--no-base", action="store_true", help="skip the base model's figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.evaluate import SUMMARY_HEADERS, evaluate, summary_table
    from finetune.models import ModelError
    from finetune.templates import TemplateError

    if args.max_new_tokens < 1:
        raise UsageError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    try:
        report = evaluate(args.adapter, args.data, model=args.model, checkpoints=args.checkpoints,
                          base=not args.no_base, max_new_tokens=args.max_new_tokens)
    except (ModelError, TemplateError) as e:
        raise UsageError(str(e)) from e
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    width = max(len(str(r[0])) for r in summary_table(report))
    print("  ".join(h.ljust(width) if i == 0 else h.rjust(11) for i, h in enumerate(SUMMARY_HEADERS)))
    for row in summary_table(report):
        print("  ".join(str(row[0]).ljust(width) if i == 0 else ("-" if v is None else str(v)).rjust(11)
                        for i, v in enumerate(row)))
    if args.out:
        print(f"wrote the report to {args.out}")
    return 0
