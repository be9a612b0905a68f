"""The card of a made dataset on the Hub: what made it (the recipe, the generator, the judge) and what the filters
dropped, from the run's ``<out>.summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .filters import REASONS
from .make import summary_path


def dataset_card(summary: dict[str, Any]) -> str:
    """The README.md of a made dataset (the Hub's dataset card).

    >>> card = dataset_card({"recipe": "qa", "task": "qa", "shape": "messages", "generator": "g", "judge": None,
    ...                      "made": 5, "kept": 3, "rows_asked": 3, "dropped": {"duplicate": 2}, "recipe_yaml": "x: 1\\n"})
    >>> "recipe: qa" in card and "| the same prompt as an earlier row | 2 |" in card
    True
    """
    dropped = summary.get("dropped") or {}
    rows = "".join(f"| {REASONS.get(k, k)} | {n} |\n" for k, n in sorted(dropped.items())) or "| none | 0 |\n"
    return (
        "---\nconfigs:\n- config_name: default\n  data_files: data/train.jsonl\ntags:\n- finetune\n- synthetic\n---\n\n"
        f"# {summary.get('recipe', 'made dataset')}\n\n"
        f"Made with finetune's data recipes (`python -m finetune synth`): recipe: {summary.get('recipe')}, task "
        f"{summary.get('task')}, shape {summary.get('shape')}.\n\n"
        f"- generator: {summary.get('generator')}\n- judge: {summary.get('judge') or 'none'}\n"
        f"- rows made: {summary.get('made')}, kept: {summary.get('kept')} (asked: {summary.get('rows_asked')})\n\n"
        "## Rows dropped by the filters\n\n| reason | rows |\n|---|---|\n" + rows +
        "\n## The recipe\n\n```yaml\n" + str(summary.get("recipe_yaml", "")).rstrip() + "\n```\n")


def card_for(jsonl: Path) -> str | None:
    """The card of a made dataset file (None: the file was not made by a recipe)."""
    path = summary_path(jsonl)
    if not path.is_file():
        return None
    return dataset_card(json.loads(path.read_text(encoding="utf-8")))
