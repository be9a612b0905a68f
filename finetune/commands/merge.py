"""`python -m finetune merge RUN_OR_REPO --out DIR [--model BASE] [--dtype bfloat16|float16] [--ignore-template-mismatch]`

Merge a LoRA adapter into its base model and write a plain 16-bit transformers model and tokenizer to DIR
(`AutoModelForCausalLM.from_pretrained(DIR)` loads it; peft is not needed). RUN_OR_REPO is a run folder, an
adapter folder or a Hub repo id (org/name[@revision]). The base defaults to the one the adapter names.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("merge", help="merge an adapter into its base: a plain 16-bit transformers model",
                       description=__doc__)
    p.add_argument("adapter", metavar="RUN_OR_REPO", help="run folder, adapter folder or Hub repo id")
    p.add_argument("--out", required=True, help="folder for the merged model (new or empty)")
    p.add_argument("--model", help="base model (default: the one recorded in the adapter)")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"),
                   help="weights dtype (bfloat16: same range as float32; float16: for older GPUs)")
    p.add_argument("--ignore-template-mismatch", action="store_true",
                   help="merge even when the adapter's chat template does not render what training rendered")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.export import merge_adapter
    from finetune.models import ModelError

    try:
        out = merge_adapter(args.adapter, args.out, model=args.model, dtype=args.dtype,
                            ignore_template_mismatch=args.ignore_template_mismatch)
    except ModelError as e:
        raise UsageError(str(e)) from e
    print(f"merged model written to {out}", file=sys.stderr)
    print(out)
    return 0
