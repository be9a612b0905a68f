"""The command line. One module per subcommand in `finetune/commands/`, each with
``register(subparsers)`` adding its parser and setting ``func(args) -> int``.

Commands import heavy libraries (torch, transformers) inside ``func`` only, so `--help` is instant.
Usage errors and bad input (any ``finetune.errors.UserError``) exit with status 2 and one line ``error: ...`` on
stderr, no traceback. Any other exception is a bug: it propagates with its traceback (exit status 1).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError

COMMANDS = ("format", "train", "generate", "estimate", "runs", "status", "stop", "push", "merge", "chat",
            "verify_template", "export", "eval", "launch", "bench", "synth")


class UsageError(UserError):
    """Bad input the user can fix: printed as one `error:` line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m finetune",
        description="Fine-tune open LLMs on your data with QLoRA.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"finetune.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"finetune.commands.{name}":
                continue  # command not available in this build
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except UserError as e:  # UsageError and every library error the user can fix: one line, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
