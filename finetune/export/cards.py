"""Model cards of exported models: merged weights, GGUF files, a LoRA GGUF, an Ollama folder.

Each card has the Hub's metadata (``library_name``, ``base_model``, ``base_model_relation``), the prompt format
the model was trained with (its name and one rendered example) and how to run it. The repo id is
``card.UNPUSHED_REPO`` until the card is staged for a push (``hub.stage_card`` writes the real id).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ..adapter import read_template_info
from ..refs import is_hub_id

EXAMPLE = [{"role": "user", "content": "Hello! Who are you?"}]


def _front(meta: dict[str, Any]) -> list[str]:
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip(), "---", ""]


def _meta(base_model: str, library: str, relation: str, tags: list[str]) -> dict[str, Any]:
    from ..card import base_license

    meta: dict[str, Any] = {"library_name": library}
    if is_hub_id(base_model):
        meta.update(base_model=base_model, base_model_relation=relation)
    meta["pipeline_tag"] = "text-generation"
    license = base_license(base_model)
    if license:
        meta["license"] = license
    meta["tags"] = tags
    return meta


def _name(base_model: str) -> str:
    return base_model if is_hub_id(base_model) else Path(base_model).name


def prompt_section(adapter_folder: Path, tokenizer: Any) -> list[str]:
    """The prompt format: the template's name, the default system prompt and one conversation rendered."""
    from ..templates import MODEL_TEMPLATE, with_default_system

    info = read_template_info(adapter_folder) or {"template": MODEL_TEMPLATE, "system_prompt": ""}
    name = str(info.get("template") or MODEL_TEMPLATE)
    system = str(info.get("system_prompt") or "")
    lines = ["## Prompt format", "",
             f"Trained with the `{name}` template" + (" (the base model's own chat template)" if name == MODEL_TEMPLATE
                                                      else "") + "; the file's chat template renders it exactly."]
    if system:
        lines += ["", f"Default system prompt (used when a conversation has none): `{system}`"]
    text = None
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(with_default_system(EXAMPLE, ""), tokenize=False,
                                             add_generation_prompt=True)
    if text:
        lines += ["", "One conversation as the model sees it (the answer follows):", "", "```text", str(text), "```"]
    return lines + [""]


def merged_card(base_model: str, adapter_folder: Path, dtype: str, tokenizer: Any = None) -> str:
    """A card for the merged model: plain transformers weights, ``base_model_relation: merge``."""
    from ..card import UNPUSHED_REPO

    meta = _meta(base_model, "transformers", "merge", ["finetune", "lora", "merged"])
    name = _name(base_model)
    return "\n".join(_front(meta) + [
        f"# {name} with a merged LoRA adapter", "",
        f"The LoRA adapter was merged into the {dtype} weights of {name}: load it with plain transformers.", "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{UNPUSHED_REPO}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{UNPUSHED_REPO}")',
        "```", "",
    ] + prompt_section(adapter_folder, tokenizer))


def gguf_card(base_model: str, adapter_folder: Path, gguf_file: str, quant: str, tokenizer: Any,
              ollama_name: str, stops: list[str]) -> str:
    """A card for a GGUF of the merged model: ``library_name: gguf``, ``base_model_relation: quantized``."""
    from ..card import UNPUSHED_REPO

    meta = _meta(base_model, "gguf", "quantized", ["gguf", "llama.cpp", "ollama", "finetune", "lora"])
    stop_flags = " ".join(f"-r {s!r}" for s in stops if s)
    return "\n".join(_front(meta) + [
        f"# {_name(base_model)} fine-tuned, GGUF ({quant})", "",
        f"`{gguf_file}`: the base model with the LoRA adapter merged in, in {quant}. The file carries the trained "
        "chat template (`tokenizer.chat_template`), so llama.cpp, LM Studio and Ollama prompt it as it was trained.", "",
        "## llama.cpp", "",
        "```bash",
        f"llama-server --jinja -hf {UNPUSHED_REPO} --hf-file {gguf_file}",
        f"llama-cli --jinja -m {gguf_file}" + (f" {stop_flags}" if stop_flags else ""),
        "```", "",
        "## Ollama", "",
        "```bash",
        f"ollama run hf.co/{UNPUSHED_REPO}",
        "```", "",
        f"or locally with the Modelfile (`ollama create {ollama_name} -f Modelfile`), which sets the template, the "
        "default system prompt and the stop strings.", "",
    ] + prompt_section(adapter_folder, tokenizer))


def lora_gguf_card(base_model: str, adapter_folder: Path, lora_file: str, base_file: str | None, tokenizer: Any) -> str:
    """A card for the LoRA adapter as GGUF: ``base_model_relation: adapter``."""
    meta = _meta(base_model, "gguf", "adapter", ["gguf", "llama.cpp", "lora", "finetune"])
    base = base_file or "BASE.gguf"
    return "\n".join(_front(meta) + [
        f"# LoRA adapter for {_name(base_model)}, GGUF", "",
        f"`{lora_file}`: the LoRA adapter alone, for llama.cpp `--lora` and Ollama `ADAPTER`"
        + (f"; `{base_file}` is the base model it applies to." if base_file else
           "; apply it to a GGUF of the same base model (same architecture and vocabulary)."), "",
        "```bash",
        f"llama-server --jinja -m {base} --lora {lora_file}",
        "```", "",
        "Ollama Modelfile:", "",
        "```text",
        f"FROM ./{base}",
        f"ADAPTER ./{lora_file}",
        "```", "",
        "The base's own chat template is the one in the base GGUF; the adapter was trained with the prompt format "
        "below, so pass it as the template (llama.cpp `--chat-template-file`, Ollama `TEMPLATE`) when it differs.", "",
    ] + prompt_section(adapter_folder, tokenizer))
