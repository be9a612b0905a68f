"""`python -m finetune generate [--model M] [--adapter RUN_DIR|ADAPTER_DIR|REPO] [--template NAME] [--system TEXT]
(--prompt TEXT | --prompts FILE.jsonl) [--max-new-tokens N] [--temperature T] [--top-p P]
[--repetition-penalty R] [--seed S] [--out FILE.jsonl]`

A prompts file holds `{"prompt": ...}` or `{"messages": [...]}` rows; each answer is written as
`{"prompt": ..., "answer": ...}`. With --prompt only the answer is printed. --temperature 0 is greedy.
The model, template and system prompt default to those saved with the adapter; a row's own system message
is kept.
"""

from __future__ import annotations

import argparse
import json
import sys

from .options import add_prompting


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("generate", help="answer prompts with a base model and an adapter", description=__doc__)
    add_prompting(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--prompt", help="one user message")
    src.add_argument("--prompts", help="JSONL file of {prompt: ...} or {messages: [...]} rows")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="above 1 discourages repeating tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write answers here as JSONL (default: stdout)")
    p.set_defaults(func=run)


def read_prompts(path: str) -> list[str | list[dict[str, str]]]:
    from finetune.cli import UsageError

    rows: list[str | list[dict[str, str]]] = []
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"{path}: cannot read ({e.__class__.__name__}); check the path and save it as UTF-8")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:  # a JSONDecodeError, or a plain ValueError (an integer over the digit limit)
            reason = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise UsageError(f"{path}:{i}: not valid JSON ({reason}); one JSON object per line")
        if isinstance(obj, dict) and isinstance(obj.get("prompt"), str):
            rows.append(obj["prompt"])
        elif isinstance(obj, dict) and isinstance(obj.get("messages"), list):
            rows.append(obj["messages"])
        else:
            raise UsageError(f'{path}:{i}: expected {{"prompt": "..."}} or {{"messages": [...]}}')
    if not rows:
        raise UsageError(f"{path}: no prompts found")
    return rows


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.inference import generate_batch, named_base_mismatch
    from finetune.models import ModelError
    from finetune.templates import TemplateError

    prompts = [args.prompt] if args.prompt is not None else read_prompts(args.prompts)
    try:
        warning = named_base_mismatch(args.model, args.adapter)
        if warning:
            print(f"warning: {warning}", file=sys.stderr)
        answers = generate_batch(prompts, adapter=args.adapter, model=args.model, template=args.template,
                                 system_prompt=args.system, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                 top_p=args.top_p, repetition_penalty=args.repetition_penalty, seed=args.seed)
    except (ModelError, TemplateError) as e:
        raise UsageError(str(e)) from e
    if args.prompt is not None and not args.out:
        print(answers[0])
        return 0
    lines = [json.dumps({"prompt": p, "answer": a}, ensure_ascii=False) for p, a in zip(prompts, answers)]
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} answers to {args.out}")
    else:
        print("\n".join(lines))
    return 0
