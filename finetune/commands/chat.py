"""`python -m finetune chat [--model M] [--adapter RUN_DIR|ADAPTER_DIR|REPO] [--template NAME] [--system TEXT]
[--temperature T] [--top-p P] [--max-new-tokens N] [--repetition-penalty R] [--seed S]`

Chat in the terminal: each line you type is a user turn, the answer streams back, and the conversation is
rendered through the adapter's template. `/reset` starts over, `/exit` (or end of input) quits.
"""

from __future__ import annotations

import argparse
import sys
from typing import Iterable

from .options import add_prompting

HELP = "commands: /reset (forget the conversation), /exit (quit)"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("chat", help="chat with a base model and an adapter in the terminal", description=__doc__)
    add_prompting(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--top-p", type=float, default=0.9)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def _print_stream(pieces: Iterable[str]) -> str:
    """Print the growing answer as it arrives; return it whole."""
    shown = ""
    for text in pieces:
        if text.startswith(shown):  # the cleaned text only grows, except when a stop string is cut off
            sys.stdout.write(text[len(shown):])
            sys.stdout.flush()
            shown = text
    sys.stdout.write("\n")
    sys.stdout.flush()
    return shown


def run(args: argparse.Namespace) -> int:
    from finetune import inference
    from finetune.cli import UsageError
    from finetune.models import ModelError
    from finetune.templates import TemplateError

    interactive = sys.stdin.isatty()
    # the template and system prompt default to the adapter's trained ones (inference.prompt_for)
    kw = dict(adapter=args.adapter, model=args.model, template=args.template, system_prompt=args.system,
              max_new_tokens=args.max_new_tokens,
              temperature=args.temperature, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
              seed=args.seed)
    try:
        warning = inference.named_base_mismatch(args.model, args.adapter)
    except ModelError as e:
        raise UsageError(str(e)) from e
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    history: list[dict[str, str]] = []
    if interactive:
        print(HELP, file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", file=sys.stderr, flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input
            break
        text = line.strip()
        if text in ("/exit", "/quit"):
            break
        if text == "/reset":
            history = []
            print("(conversation reset)", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        try:
            answer = _print_stream(inference.stream_chat(history, **kw))
        except (ModelError, TemplateError) as e:
            raise UsageError(str(e)) from e
        history.append({"role": "assistant", "content": answer})
    return 0
