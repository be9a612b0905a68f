"""A data recipe: declarative YAML (no user code) that says where the material comes from, what rows to make from
it, with which model, through which filters, and in which shape. Read into typed dataclasses; every unknown key,
wrong type and out-of-range value is reported at once, naming the field and the fix (as a run config is).

>>> r = Recipe.from_yaml("task:\\n  kind: qa\\n  rows: 4\\nsources:\\n  documents: [a.md]\\n")
>>> r.task.kind, r.task.rows, r.output.shape
('qa', 4, 'messages')
>>> Recipe.from_yaml("task:\\n  rowz: 4\\n")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
finetune.synth.recipe.RecipeError: 1 problem(s) in the recipe:
  - task.rowz: unknown key; did you mean 'task.rows'?
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..config.fields import doc
from ..config.reading import ConfigError, _build, _load_yaml

RECIPES_DIR = Path(__file__).resolve().parent.parent.parent / "presets" / "recipes"
MAX_ROWS = 100_000  # a sanity bound: a shared server's visitor gets a smaller cap (synth.make.row_cap)

# What each task makes, and the output shapes it can be written in.
TASKS = {
    "qa": "a question grounded in one document chunk, and its answer from that chunk",
    "instructions": "a new instruction in the style of the seed examples, and its answer",
    "rewrite": "each existing row (seeds or a Hub dataset) with its answer rewritten or extended",
    "preference": "a question from a chunk with a chosen answer (grounded in the chunk) and a rejected one (without it)",
}
SHAPES = {
    "messages": "a messages column: user and assistant turns (SFT)",
    "prompt_completion": "prompt and completion columns (SFT, loss on the completion)",
    "preference": "prompt, chosen and rejected columns (DPO, ORPO)",
}
DEDUP = {"near": "exact and near-duplicate prompts removed (MinHash)", "exact": "exact repeats only", "none": "kept"}


class RecipeError(ConfigError):
    """One or more problems in a recipe, each naming the field and the fix."""

    what = "recipe"


@dataclass
class Seed:
    prompt: str = field(default="", metadata=doc("An example instruction or question"))
    answer: str = field(default="", metadata=doc("Its answer"))


@dataclass
class Sources:
    documents: list[str] = field(default_factory=list, metadata=doc(
        "Document files (.txt, .md, .html, .pdf) split into chunks; relative paths are read from the recipe's folder"))
    chunk_chars: int = field(default=1200, metadata=doc("Characters per chunk (split at paragraph ends)",
                                                        min=200, max=20_000))
    hub_dataset: str = field(default="", metadata=doc("A Hub dataset id (or a data file) whose rows the rewrite "
                                                      "task rewrites or whose prompts seed instructions"))
    hub_split: str = field(default="train", metadata=doc("The Hub dataset's split"))
    seeds_file: str = field(default="", metadata=doc("A data file of seed examples (any shape the Dataset tab reads)"))
    seeds: list[Seed] = field(default_factory=list, metadata=doc("Seed examples typed in: - prompt: ... answer: ..."))


@dataclass
class Task:
    kind: str = field(default="qa", metadata=doc("What to make", choices=TASKS))
    rows: int = field(default=20, metadata=doc("Rows to keep (made until this many pass the filters, or the "
                                               "attempts run out)", min=1, max=MAX_ROWS))
    max_attempts: int = field(default=0, metadata=doc("Most rows to make before stopping short; 0 = 3 x rows",
                                                      min=0, max=3 * MAX_ROWS))
    guidance: str = field(default="", metadata=doc("Extra guidance for the generator (topic, tone, audience)"))
    rewrite_style: str = field(default="Rewrite the answer to be clearer and more complete.",
                               metadata=doc("How the rewrite task changes each answer"))


@dataclass
class Model:
    model: str = field(default="embedded", metadata=doc(
        "embedded (SmolLM2-135M in this process), a local model folder or Hub id in this process, an "
        "OpenAI-compatible server's base URL (http://127.0.0.1:8080/v1), or provider:MODEL_ID (Hugging Face "
        "Inference Providers, with your own token)"))
    server_model: str = field(default="", metadata=doc("The model name sent to an OpenAI-compatible server"))
    api_key_env: str = field(default="", metadata=doc("Environment variable holding the server's API key (the key "
                                                      "itself never goes in a recipe)"))
    max_new_tokens: int = field(default=192, metadata=doc("Most tokens per answer", min=1, max=8192))
    temperature: float = field(default=0.7, metadata=doc("Sampling temperature; 0 is greedy", min=0, max=2))
    seed: int = field(default=0, metadata=doc("Sampling seed (each row adds its index)", min=0, max=2**31 - 1))


@dataclass
class Judge:
    use: bool = field(default=True, metadata=doc("Score each row with the judge (false: no judge)"))
    model: str = field(default="", metadata=doc("The judge's model, named as the generator's; empty = the generator"))
    server_model: str = field(default="", metadata=doc("The model name sent to an OpenAI-compatible server"))
    api_key_env: str = field(default="", metadata=doc("Environment variable holding the server's API key"))
    rubric: str = field(default="The answer is correct, answers the question asked, is grounded in the given text "
                        "when there is one, and is clear.", metadata=doc("What a good row is"))
    threshold: float = field(default=3.0, metadata=doc(
        "Lowest score kept, 1 to 5 (the score is the mean of the judge's first-token probabilities over the digits "
        "1-5)", min=1, max=5))


@dataclass
class Filters:
    min_chars: int = field(default=2, metadata=doc("Shortest prompt or answer kept, in characters", min=0,
                                                   max=100_000))
    max_chars: int = field(default=6000, metadata=doc("Longest prompt or answer kept, in characters", min=1,
                                                      max=1_000_000))
    dedup: str = field(default="near", metadata=doc("Duplicate removal", choices=DEDUP))
    near_threshold: float = field(default=0.7, metadata=doc("Similarity (Jaccard of character 4-grams) from which "
                                                            "two prompts are near-duplicates", min=0.3, max=1))
    test_set: str = field(default="", metadata=doc("A test file: rows whose prompt overlaps one of its prompts are "
                                                   "dropped and counted (no leakage into evaluation)"))


@dataclass
class Output:
    shape: str = field(default="messages", metadata=doc("Columns of the written rows", choices=SHAPES))
    system_prompt: str = field(default="", metadata=doc("A system message put first in each row (messages shape)"))


@dataclass
class Recipe:
    name: str = field(default="recipe", metadata=doc("The recipe's name (recorded in the dataset card)"))
    description: str = field(default="", metadata=doc("What the dataset is for"))
    sources: Sources = field(default_factory=Sources)
    task: Task = field(default_factory=Task)
    generator: Model = field(default_factory=Model)
    judge: Judge = field(default_factory=Judge)
    filters: Filters = field(default_factory=Filters)
    output: Output = field(default_factory=Output)
    base_dir: str = field(default="", metadata=doc("The folder relative document paths are read from (set when "
                                                   "a recipe file is read)"))

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None, documents: list[str] | None = None) -> Recipe:
        """``documents``: files that replace the recipe's own (the app's uploads), before it is checked."""
        try:
            data = _load_yaml(text, source)
        except ConfigError as e:
            raise RecipeError(e.problems, source) from None
        if documents:
            sources = data.get("sources")
            data["sources"] = dict(sources if isinstance(sources, dict) else {}, documents=list(documents))
        return from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise RecipeError([f"cannot read the recipe ({e.__class__.__name__}); check the path"], str(p)) from None
        recipe = cls.from_yaml(text, str(p))
        recipe.base_dir = recipe.base_dir or str(p.resolve().parent)
        return recipe

    def to_yaml(self) -> str:
        data = dataclasses.asdict(self)
        data.pop("base_dir")
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)

    def attempts(self) -> int:
        """Most rows made before the run stops short of ``task.rows``."""
        return self.task.max_attempts or 3 * self.task.rows


def _seeds(value: Any, problems: list[str]) -> list[Seed]:
    if not isinstance(value, list):
        problems.append("sources.seeds: expected a list of examples, each '- prompt: ...' and 'answer: ...'")
        return []
    out = []
    for i, item in enumerate(value, 1):
        seed = _build(Seed, item, f"sources.seeds[{i}].", problems)
        if isinstance(item, dict) and not seed.prompt.strip():
            problems.append(f"sources.seeds[{i}].prompt: empty; write the example's instruction or question")
        out.append(seed)
    return out


def _check_rules(obj: Any, prefix: str, problems: list[str]) -> None:
    """Each field's declared choices and range (``doc``), recursively."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _check_rules(value, name + ".", problems)
            continue
        meta = f.metadata
        if "choices" in meta and value not in meta["choices"]:
            problems.append(f"{name}: '{value}' is not one of {', '.join(meta['choices'])}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = meta.get("min"), meta.get("max")
            if (low is not None and value < low) or (high is not None and value > high):
                problems.append(f"{name}: {value} is out of range; use {low} to {high}")


def from_dict(data: dict[str, Any], source: str | None = None) -> Recipe:
    """A recipe from nested dicts (parsed YAML), checked: every problem in one :class:`RecipeError`."""
    problems: list[str] = []
    data = dict(data)
    sources = data.get("sources")
    seeds: list[Seed] = []
    if isinstance(sources, dict) and "seeds" in sources:
        sources = dict(sources)
        seeds = _seeds(sources.pop("seeds") or [], problems)
        data["sources"] = sources
    recipe = _build(Recipe, data, "", problems)
    recipe.sources.seeds = seeds
    _check_rules(recipe, "", problems)
    if not problems:
        problems += _cross_problems(recipe)
    if problems:
        raise RecipeError(problems, source)
    return recipe


def _cross_problems(r: Recipe) -> list[str]:
    out = []
    kind, shape, s = r.task.kind, r.output.shape, r.sources
    if kind in ("qa", "preference") and not s.documents:
        out.append(f"sources.documents: the {kind} task makes rows from documents; list at least one file "
                   "(or pass --source FILE)")
    if kind == "instructions" and not (s.seeds or s.seeds_file or s.hub_dataset):
        out.append("sources.seeds: the instructions task imitates examples; type a few seeds, or name a seeds_file "
                   "or hub_dataset")
    if kind == "rewrite" and not (s.seeds or s.seeds_file or s.hub_dataset):
        out.append("sources.hub_dataset: the rewrite task needs rows to rewrite; name a hub_dataset or seeds_file, "
                   "or type seeds")
    if (kind == "preference") != (shape == "preference"):
        out.append("output.shape: the preference task writes shape 'preference', and only it does; "
                   f"set output.shape: {'preference' if kind == 'preference' else 'messages'}")
    if r.filters.min_chars >= r.filters.max_chars:
        out.append("filters.min_chars: must be below filters.max_chars")
    return out


def bundled_recipes() -> dict[str, Path]:
    """The example recipes shipped in presets/recipes, by name."""
    return {p.stem: p for p in sorted(RECIPES_DIR.glob("*.yaml"))}
