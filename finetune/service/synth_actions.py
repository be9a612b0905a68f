"""One owner's made datasets (:mod:`finetune.synth`): the recipe checked for a shared server, the documents the
owner's uploads, the file in the owner's folder. On a shared server a visitor's recipe never makes the server call a
URL they typed (a generator or judge at a URL), names a server folder (a document, seeds file or test file path:
documents are uploaded with the request) or runs without the visitor's own token for Inference Providers."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..synth import Progress, Recipe, Summary, kind_of, make_dataset
from .checks import Owner, ServiceError, Shared, check_hub_dataset_id, check_model_ref

MADE_DIR = "made"  # <owner root>/made/<recipe name>.jsonl
SHARED_MAX_ROWS = 200  # rows one request may make on a shared server


def check_recipe(ws: Shared, recipe: Recipe) -> None:
    """Refuse on a shared server what a visitor may not ask of it (see the module docstring)."""
    if not ws.multi_user:
        return
    for what, model in (("generator.model", recipe.generator.model), ("judge.model", recipe.judge.model)):
        kind = kind_of(model)
        if kind == "url":
            raise ServiceError(f"{what}: this shared server does not call a server at a URL you give; use embedded "
                               "(the model in this app) or provider:MODEL_ID (Inference Providers, with your own "
                               "sign-in), or run the recipe on your own machine: python -m finetune synth")
        if kind == "local":
            check_model_ref(ws, model, what)
    s = recipe.sources
    for what, path in (("sources.seeds_file", s.seeds_file), ("filters.test_set", recipe.filters.test_set)):
        if path:
            raise ServiceError(f"{what}: on this shared server files are uploaded, not named; type the seeds in "
                               "the recipe, or leave it out")
    if s.hub_dataset:
        check_hub_dataset_id(s.hub_dataset)
    if recipe.task.rows > SHARED_MAX_ROWS:
        raise ServiceError(f"task.rows: at most {SHARED_MAX_ROWS} rows per request on this shared server")


def make(space: Owner, recipe_yaml: str, documents: list[str] | None, *, token: str | None = None,
         on_progress: Callable[[Progress], None] | None = None) -> tuple[Path, Summary]:
    """Make the recipe's dataset for ``space``'s owner from their uploaded ``documents`` (which replace the recipe's
    own documents when given); returns the file and the summary."""
    from ..data import max_upload_bytes
    from ..synth import bundled_recipes

    kept = [space.keep_upload(d) for d in documents or []]
    names = {str(k): k.name for k in kept}
    recipe = Recipe.from_yaml(recipe_yaml or "", "recipe", documents=[str(k) for k in kept])
    bundled = bundled_recipes()["qa-from-documents"].parent  # the example documents are documents/... there
    if not kept and recipe.sources.documents and space.ws.multi_user and not all(
            (bundled / d).resolve().is_relative_to(bundled / "documents") for d in recipe.sources.documents):
        raise ServiceError("sources.documents: on this shared server documents are uploaded with the request; "
                           "upload them (or use the bundled example documents, documents/...)")
    recipe.base_dir = str(bundled)
    check_recipe(space.ws, recipe)
    out = space.root / MADE_DIR / f"{_file_name(recipe.name)}.jsonl"
    summary = make_dataset(recipe, out, token=token, on_progress=on_progress, names=names,
                           max_bytes=max_upload_bytes() if space.ws.multi_user else None)
    return out, summary


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name).lstrip(".")[:80] or "recipe"
