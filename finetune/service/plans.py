"""What a run will use before it starts: its steps, its ZeroGPU quota, a Hugging Face job's time limit and cost,
and the data, template, model and backend it trains with."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from ..config import RunConfig
from .checks import ServiceError, backend_name, parse_config

if TYPE_CHECKING:
    from ..backends.zerogpu import QuotaPreview


def _training_examples(config: RunConfig, rows: int) -> int:
    """About how many of ``rows`` train: what the test split (``data.test_split``) and then the validation split
    (``data.val_fraction``) leave, at least one."""
    return max(1, round(rows * (1 - config.data.val_fraction) * (1 - config.data.test_split)))


def planned_steps(config: RunConfig, rows: int | None = None) -> int | None:
    """The optimizer steps a run will take: ``training.max_steps``, else planned from the rows of its data and the
    epochs (``rows``: counted by the caller; else those of a local data file); None when unknown before it starts
    (a Hub dataset)."""
    t = config.training
    if t.max_steps > 0:
        return t.max_steps
    if rows is None:
        from .. import data
        from ..config import SAMPLE_DATA

        source = config.data.source or str(SAMPLE_DATA)
        if not Path(source).is_file():
            return None
        rows = len(data.load_rows(source, max_bytes=data.max_upload_bytes()).rows)
    return t.steps_for(_training_examples(config, rows))


def zerogpu_quota(config: RunConfig, data_file: str | Path | None = None) -> QuotaPreview:
    """The ZeroGPU quota a run will use (zerogpu.quota_preview); an epochs-based run counts the rows of its data
    (the uploaded file, else a local data.source)."""
    from ..backends import zerogpu

    n_examples = None
    source = data_file or config.data.source or str(Path(__file__).parent.parent / "samples" / "city_year.jsonl")
    if config.training.max_steps <= 0 and source and Path(source).is_file():
        from .. import data

        table = data.load_rows(source, max_bytes=data.max_upload_bytes())
        n_examples = _training_examples(config, len(table.rows))
    return zerogpu.quota_preview(config, n_examples)


def zerogpu_quota_for(config_yaml: str, data_file: str | Path | None = None) -> QuotaPreview:
    """:func:`zerogpu_quota` of a config YAML."""
    return zerogpu_quota(parse_config(config_yaml), data_file)


@dataclass(frozen=True)
class JobCost:
    """A Hugging Face job's time limit and what it costs at most (None: the flavor's price is not listed)."""

    limit_s: int
    max_usd: float | None


def job_cost(config_yaml: str, flavor: str) -> JobCost:
    """The time limit a job of this config gets on ``flavor`` (the time estimate with a margin) and its price."""
    from .. import memory
    from ..backends import hfjobs

    cfg = parse_config(config_yaml)
    if cfg.training.max_steps <= 0:
        raise ServiceError("set training.max_steps (Hyperparameters tab): a job's time limit is set before it "
                           "starts, from the number of steps")
    limit = hfjobs.estimate_timeout_s(hfjobs.portable_config(cfg), flavor)
    gpu = memory.get_gpu(hfjobs.FLAVOR_GPUS[flavor])
    cost = (limit / 3600 * gpu.usd_per_hour * hfjobs.gpu_count(flavor) if gpu.usd_per_hour is not None else None)
    return JobCost(limit, cost)


class RunPlan(TypedDict):
    """What a run of a config would use, before it starts (:func:`run_plan`)."""

    source: str  # the uploaded file's name, else data.source (a Hub id or a path); "": the bundled sample
    rows: int | None  # rows in the data file (None: a Hub dataset, counted when the run starts)
    template: str  # data.template
    method: str  # training.method: sft, dpo, orpo, kto or grpo
    model: str  # model.id; "": the embedded default
    steps: int | None  # training.max_steps, else planned from the rows and epochs (None: unknown yet)
    backend: str  # local, zerogpu or hf-jobs


def run_plan(config_yaml: str, data_file: str | Path | None = None, backend: str = "local") -> RunPlan:
    """The data (file, rows), template, method, model, steps and backend a run of this config would use."""
    from .. import data
    from ..config import sample_data

    cfg = parse_config(config_yaml)
    name = backend_name(backend)
    source = str(data_file) if data_file else cfg.data.source
    rows: int | None = None
    if not source or Path(source).is_file():
        table = data.load_rows(source or str(sample_data(cfg.training.method)), max_bytes=data.max_upload_bytes())
        rows = len(table.rows)
    steps = planned_steps(cfg, rows) if cfg.training.max_steps > 0 or rows is not None else None
    return {"source": Path(source).name if data_file else source, "rows": rows, "template": cfg.data.template,
            "method": cfg.training.method, "model": cfg.model.id, "steps": steps, "backend": name}
