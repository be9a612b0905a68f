"""The model card (README.md) written next to every adapter: what it is, how it was made, how to load it."""

from __future__ import annotations

from .config import RunConfig


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


def model_card(config: RunConfig, base_model: str, metrics: dict, losses: list[tuple[int, float]],
               data_summary: dict, device: str, license: str | None = None) -> str:
    """A Hub model card with YAML metadata (``library_name: peft``, ``base_model``) and a plain-peft snippet."""
    from .templates import MODEL_TEMPLATE, render

    lo, q, t, d = config.lora, config.quantization, config.training, config.data
    tags = ["lora", "peft", "finetune", "text-generation"] + (["qlora"] if q.load_in == "4bit" else [])
    meta = [
        "---",
        "library_name: peft",
        f"base_model: {base_model}",
        "base_model_relation: adapter",
        "pipeline_tag: text-generation",
        "tags:",
        *[f"- {x}" for x in tags],
    ]
    source = d.source or "bundled sample (city/year extraction)"
    if d.source and "/" in d.source and not d.source.startswith((".", "/")) and not any(
        d.source.endswith(ext) for ext in (".csv", ".tsv", ".json", ".jsonl", ".parquet")
    ):
        meta += ["datasets:", f"- {d.source}"]
    if license:
        meta.append(f"license: {license}")
    meta.append("---")
    example = ""
    if d.template != MODEL_TEMPLATE:
        msgs = ([{"role": "system", "content": d.system_prompt}] if d.system_prompt else []) + [
            {"role": "user", "content": "Your question here"}
        ]
        example = render(msgs, d.template, add_generation_prompt=True).text
    quant = {"4bit": f"4-bit {q.quant_type.upper()}{' + double quantization' if q.double_quant else ''} (QLoRA)",
             "8bit": "8-bit (LLM.int8)", "none": "16/32-bit (plain LoRA)"}[q.load_in]
    loss_values = [v for _, v in losses]
    lines = meta + [
        "",
        f"# LoRA adapter for {base_model}",
        "",
        f"Fine-tuned with **finetune** on {source} "
        f"({data_summary.get('train_examples', '?')} training examples, {data_summary.get('train_tokens', '?')} tokens).",
        "",
        "## Prompt template",
        "",
        f"Template `{d.template}`; the model was trained on "
        f"{'assistant answers only' if d.train_on == 'assistant' else 'all tokens'}.",
    ]
    if example:
        lines += ["", "```text", example, "```"]
    if d.system_prompt:
        lines += ["", f"System prompt: `{d.system_prompt}`"]
    lines += [
        "",
        "## Training",
        "",
        "| setting | value |",
        "|---|---|",
        f"| base weights | {quant} |",
        f"| LoRA | r={lo.r}, alpha={lo.alpha}, dropout={lo.dropout}, targets={lo.target_modules} |",
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
    if loss_values:
        lines += [f"- loss curve: `{_sparkline(loss_values)}`"]
    lines += [
        "",
        "## How to use",
        "",
        "```python",
        "from peft import PeftModel",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'base = AutoModelForCausalLM.from_pretrained("{base_model}")',
        'model = PeftModel.from_pretrained(base, "<this repo or folder>")',
        'tokenizer = AutoTokenizer.from_pretrained("<this repo or folder>")',
        "```",
        "",
        "The file `finetune_template.json` names the prompt template; format prompts with it for best results.",
        "",
    ]
    return "\n".join(lines)
