"""`python -m finetune eval --adapter RUN [--data test.jsonl] [--checkpoints all] [--out report.json]
[--model M] [--max-new-tokens N] [--limit N] [--no-base]`

Greedy answers (temperature 0, the adapter's trained template and system prompt) to every prompt of the test
file, scored against its references: exact match (case, whitespace and trailing punctuation normalised),
contains-reference, token F1, ROUGE-L and the held-out loss on the reference tokens, for the adapter and the
base model beside it; with --checkpoints all, for every kept checkpoint of the run too. The report is written to
--out and, for a run folder, to runs/<id>/eval/report.json. Without --data, a run's own test set is scored
(data.test_source, or the rows data.test_split held out, up to data.test_limit rows).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("eval", help="score an adapter (and its checkpoints) on a held-out test file",
                       description=__doc__)
    p.add_argument("--adapter", required=True, help="a run (id or folder), RUN@STEP or RUN@best for a checkpoint, "
                   "an adapter folder or a Hub repo id")
    p.add_argument("--runs-root", help="the runs folder, to find a run by id (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--data", help="test file: prompts and references (reference, answer, label, completion or "
                   "output column, or conversations ending with the expected assistant message); default: the run's "
                   "own test set (data.test_source or the rows data.test_split held out)")
    p.add_argument("--checkpoints", choices=("all", "none"), default="none",
                   help="all: also evaluate every kept checkpoint of the run")
    p.add_argument("--out", help="write the report (JSON) here")
    p.add_argument("--model", help="base model (default: the adapter's base)")
    p.add_argument("--max-new-tokens", type=int, help="longest answer in tokens (default, or 0: sized from the "
                   "references, the longest one's tokens plus a quarter; without --data: the run's "
                   "data.test_max_new_tokens)")
    p.add_argument("--limit", type=int, default=0, help="score the first N test rows only (default: all; "
                   "without --data: the run's data.test_limit)")
    p.add_argument("--no-base", action="store_true", help="skip the base model's figures")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.evaluate import SUMMARY_HEADERS, evaluate, run_test_set, summary_table
    from finetune.models import ModelError
    from finetune.templates import TemplateError

    if args.max_new_tokens is not None and args.max_new_tokens < 0:
        raise UsageError(f"--max-new-tokens must be 0 (sized from the references) or more, got {args.max_new_tokens}")
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (all rows) or more, got {args.limit}")
    from finetune.commands.export import adapter_ref

    adapter = adapter_ref(args.adapter, args.runs_root)  # RUN@STEP: that checkpoint's adapter, as export does
    data, limit, max_new_tokens = args.data, args.limit, args.max_new_tokens or 0
    if not data:
        own = run_test_set(adapter)
        if own is None:
            raise UsageError(f"--data is needed: {args.adapter} is not a run with a test set (data.test_source or "
                             "data.test_split); give a test file of prompts and reference answers")
        data, limit, max_new_tokens = own.source, limit or own.limit, args.max_new_tokens or own.max_new_tokens
    try:
        report = evaluate(adapter, data, model=args.model, checkpoints=args.checkpoints,
                          base=not args.no_base, max_new_tokens=max_new_tokens, limit=limit)
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
