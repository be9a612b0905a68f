"""`python -m finetune synth RECIPE.yaml [--source PATH ...] [--rows N] [--generator embedded|URL|provider:ID]
[--judge embedded|URL|provider:ID|none] [--test-set FILE] --out data.jsonl`

Makes a training set from a recipe (presets/recipes/ has examples; a bundled one may be named without its path):
rows are written to OUT as JSON lines (`messages`, or `prompt`/`chosen`/`rejected`, plus the judge's `score`) that
`format` and `train` read as they are. The flags override the recipe: --source its documents (or, for the
instructions and rewrite tasks, its seeds file), --rows how many rows to keep, --generator/--judge the model (an
OpenAI-compatible base URL such as http://127.0.0.1:8080/v1, `embedded`, or `provider:MODEL_ID` with your Hugging
Face token). Interrupted (Ctrl-C), the same command continues where it stopped: made rows are kept, none made twice.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from finetune.synth import Recipe


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("synth", help="make a training set from documents or a few examples (a data recipe)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("recipe", help="recipe YAML file, or the name of a bundled recipe (qa-from-documents, ...)")
    p.add_argument("--source", action="append", default=[], metavar="PATH",
                   help="a document (.txt .md .html .pdf), or for instructions/rewrite a seeds data file; repeatable")
    p.add_argument("--rows", type=int, help="rows to keep")
    p.add_argument("--generator", help="embedded, a model folder or Hub id, an OpenAI-compatible base URL, or "
                   "provider:MODEL_ID")
    p.add_argument("--judge", help="as --generator, or none (no judge)")
    p.add_argument("--test-set", help="test file whose prompts must not appear in the made rows")
    p.add_argument("--out", required=True, help="output JSONL file")
    p.set_defaults(func=run)


def load_recipe(text: str) -> Recipe:
    from finetune.synth import Recipe, bundled_recipes

    path = Path(text)
    if not path.exists() and text in bundled_recipes():
        path = bundled_recipes()[text]
    return Recipe.load(path)


def apply_flags(recipe: Recipe, args: argparse.Namespace) -> Recipe:
    """The recipe with the command line's overrides (checked again as a whole)."""
    import dataclasses

    from finetune.cli import UsageError
    from finetune.synth.recipe import from_dict

    data = dataclasses.asdict(recipe)
    base_dir = data.pop("base_dir")
    if args.source:
        sources = [str(Path(s).resolve()) for s in args.source]
        if recipe.task.kind in ("qa", "preference"):
            data["sources"]["documents"] = sources
        elif len(sources) == 1:
            data["sources"].update(seeds_file=sources[0], seeds=[], hub_dataset="")
        else:
            raise UsageError("--source: the instructions and rewrite tasks read one seeds file; give it once")
    if args.rows is not None:
        data["task"]["rows"] = args.rows
    if args.generator:
        data["generator"]["model"] = args.generator
    if args.judge:
        if args.judge.strip().lower() == "none":
            data["judge"]["use"] = False
        else:
            data["judge"].update(use=True, model=args.judge)
    if args.test_set:
        data["filters"]["test_set"] = str(Path(args.test_set).resolve())
    out = from_dict(data, "command line")
    out.base_dir = base_dir
    return out


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import get_token

    from finetune.synth import Progress, make_dataset, progress_path

    recipe = apply_flags(load_recipe(args.recipe), args)

    def show(p: Progress) -> None:
        eta = f", about {p.eta_s:.0f} s left" if p.eta_s is not None else ""
        print(f"made {p.made}, kept {p.kept} of {p.target}{eta}", file=sys.stderr, flush=True)

    summary = make_dataset(recipe, args.out, token=get_token(), on_progress=show)
    for line in summary.lines():
        print(line)
    print(f"wrote {summary.kept} rows to {args.out} (progress: {progress_path(Path(args.out)).name})")
    return 0
