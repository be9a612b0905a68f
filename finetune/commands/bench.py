"""`python -m finetune bench --adapter RUN[@STEP] --tasks T1,T2 [--limit N] [--out report.json] [--list-tasks]`

Did it forget? lm-eval's tasks (arc_easy, hellaswag, mmlu, gsm8k, ifeval, truthfulqa_mc2...), the bundled ones
(general_knowledge: no download) and test files in the formats `finetune eval` takes, mixed in --tasks, on the base
model and on the adapter: each metric side by side with lm-eval's standard errors and the difference, flagged when
it is beyond noise (1.96 combined standard errors). Generative tasks are prompted with the adapter's chat template.
lm-eval's own tasks download their data from the Hugging Face Hub. For a run, the report is also written to
runs/<id>/eval/benchmark.json (and goes on the model card when the adapter is pushed).
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("bench", help="general-ability benchmarks (lm-eval) of an adapter beside its base model",
                       description=__doc__)
    p.add_argument("--adapter", help="a run (id or folder), RUN@STEP or RUN@best for a checkpoint, an adapter "
                   "folder or a Hub repo id")
    p.add_argument("--tasks", help="comma-separated: lm-eval task names, bundled tasks (general_knowledge) and "
                   "test files (prompt and reference columns)")
    p.add_argument("--limit", type=int, default=0, help="the first N documents of each task only (default: all)")
    p.add_argument("--out", help="write the report (JSON) here")
    p.add_argument("--model", help="base model (default: the adapter's base)")
    p.add_argument("--batch-size", type=int, default=1, help="requests per forward pass (default 1)")
    p.add_argument("--runs-root", help="the runs folder, to find a run by id (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--list-tasks", action="store_true", help="print every task name lm-eval knows and the bundled "
                   "ones, then exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError

    if args.list_tasks:
        from finetune.benchmark import bundled_tasks, lm_eval_names

        print("bundled (no download): " + ", ".join(bundled_tasks()))
        print("\n".join(lm_eval_names()))
        return 0
    if not args.adapter or not args.tasks:
        raise UsageError("--adapter and --tasks are needed (e.g. --tasks general_knowledge,arc_easy)")
    if args.limit < 0:
        raise UsageError(f"--limit must be 0 (every document) or more, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be 1 or more, got {args.batch_size}")
    from finetune.benchmark import BenchProgress, benchmark
    from finetune.card import BENCH_HEADERS, benchmark_rows
    from finetune.commands.export import adapter_ref

    def show(p: BenchProgress) -> None:
        print(f"\r{p.line()}", end="", flush=True)

    report = benchmark(adapter_ref(args.adapter, args.runs_root), args.tasks.split(","), model=args.model,
                       limit=args.limit or None, batch_size=args.batch_size, progress=show)
    print()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    rows = [list(BENCH_HEADERS)] + benchmark_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(BENCH_HEADERS))]
    for row in rows:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print(f"{report['seconds']:.0f} s; n per task: " + ", ".join(f"{t['task']} {t['n']}" for t in report["tasks"]))
    if args.out:
        print(f"wrote the report to {args.out}")
    return 0
