"""Command-line options that several commands share, declared once."""

from __future__ import annotations

import argparse


def add_prompting(p: argparse.ArgumentParser) -> None:
    """The base model, adapter, template and system prompt of a command that prompts an adapter (each defaults to
    what the adapter was trained with)."""
    p.add_argument("--model", help="base model (default: the adapter's base, else the embedded default)")
    p.add_argument("--adapter", help="a run folder, an adapter folder or a Hub repo id")
    p.add_argument("--template", help="prompt template (default: the adapter's)")
    p.add_argument("--system", help="system prompt (default: the one the adapter was trained with)")


def add_visibility(p: argparse.ArgumentParser, default: bool | None, private_help: str, what: str = "repo") -> None:
    """``--private`` / ``--public`` for a repo a command creates (``args.private``; ``default`` when neither)."""
    vis = p.add_mutually_exclusive_group()
    vis.add_argument("--private", dest="private", action="store_true", default=default, help=private_help)
    vis.add_argument("--public", dest="private", action="store_false", help=f"create the {what} as public")
