"""`python -m finetune format DATA [--template NAME] [--system TEXT] [--columns k=v,...] [--model ID_OR_DIR]
[--val-fraction F] [--strict] [--keep-duplicates] --out OUT.jsonl`

Writes one JSON object per example (`text`, `prompt`, `completion`, `messages`) in input order and
prints a summary. With --val-fraction the validation rows go to OUT's stem + `.val.jsonl`. Bad rows are
skipped and counted by reason (--strict stops at the first). Unusable input exits with status 2 and
one line `error: <file>[:<row>]: <reason>`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from finetune.config import choices

    p = sub.add_parser("format", help="format a dataset into a prompt template", description=__doc__)
    p.add_argument("data", help="CSV, TSV, JSON, JSONL or Parquet file, or a Hub dataset id")
    p.add_argument("--template", help=f"{', '.join(choices('data.template'))} (default: llama2; with --model, the "
                   "model's own chat template when it has one)")
    p.add_argument("--system", default="", help="system prompt for examples that have none")
    p.add_argument("--columns", default="", help="column mapping field=column,..., e.g. instruction=question,output=answer")
    p.add_argument("--model", help="model id or folder: its tokenizer gives bos/eos and token statistics")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of rows for validation (0 to 0.5)")
    p.add_argument("--keep-duplicates", action="store_true",
                   help="keep rows that repeat an earlier row (default: each repeat is skipped and listed)")
    p.add_argument("--max-length", type=int, default=None, help="count examples longer than this many tokens")
    p.add_argument("--train-on", choices=choices("data.train_on"), default="assistant")
    p.add_argument("--strict", action="store_true", help="stop at the first bad row")
    p.add_argument("--hub-config", help="Hub dataset configuration")
    p.add_argument("--split", default="train", help="Hub dataset split")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=run)


def val_path(out: Path) -> Path:
    return out.with_name(out.stem + ".val.jsonl")


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.config import DataConfig, choices, range_problem
    from finetune.data import DataError, format_dataset, parse_column_mapping, summary_lines, write_jsonl

    problem = range_problem("data.val_fraction", args.val_fraction)
    if problem:
        raise UsageError(problem.replace("data.val_fraction", "--val-fraction", 1))
    if args.template and args.template not in choices("data.template"):
        raise UsageError(f"unknown template '{args.template}'; choose one of: {', '.join(choices('data.template'))}")
    tokenizer = None
    if args.model is not None:
        from finetune.models import ModelError, load_tokenizer

        try:
            tokenizer = load_tokenizer(args.model)
        except ModelError as e:
            raise UsageError(str(e)) from e
    template = args.template or ("model" if tokenizer is not None and getattr(tokenizer, "chat_template", None)
                                 else "llama2")
    try:
        settings = DataConfig(template=template, system_prompt=args.system, train_on=args.train_on,
                              columns=parse_column_mapping(args.columns, "--columns:"), strict=args.strict,
                              val_fraction=args.val_fraction, hub_config=args.hub_config, split=args.split,
                              keep_duplicates=args.keep_duplicates)
        result = format_dataset(args.data, settings, tokenizer=tokenizer, max_length=args.max_length)
    except DataError as e:
        raise UsageError(str(e)) from e
    out = Path(args.out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_jsonl(result.examples, out)
        if args.val_fraction > 0:
            write_jsonl(result.val_examples, val_path(out))
    except OSError as e:
        raise UsageError(f"{out}: cannot write ({e.strerror or e})") from e
    print(f"template: {template}")
    for line in summary_lines(result):
        print(line)
    print(f"wrote {len(result.examples)} examples to {out}")
    if args.val_fraction > 0:
        print(f"wrote {len(result.val_examples)} validation examples to {val_path(out)}")
    return 0
