"""Data recipes: documents or a few examples in, a checked training set out (``python -m finetune synth``, the
Dataset tab's "Make a dataset"). ``recipe`` (the YAML), ``sources`` (documents into chunks, example rows),
``generators`` (in process, an OpenAI-compatible server, Inference Providers), ``tasks`` (what each task asks),
``filters`` (lengths, duplicates, test-set overlap, the judge), ``make`` (the run, stop and continue), ``card``."""

from .generators import Generator, GeneratorError, kind_of, make_generator
from .make import Progress, Summary, SynthError, make_dataset, progress_path, read_material, summary_path
from .recipe import Recipe, RecipeError, bundled_recipes

__all__ = ["Generator", "GeneratorError", "Progress", "Recipe", "RecipeError", "Summary", "SynthError",
           "bundled_recipes", "kind_of", "make_dataset", "make_generator", "progress_path", "read_material",
           "summary_path"]
