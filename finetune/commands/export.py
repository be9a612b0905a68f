"""`python -m finetune export --adapter RUN_OR_ADAPTER_OR_HUB_REPO [--format merged|gguf|lora-gguf|ollama|space]
[--quant f16|bf16|q8_0|q4_0] [--out PATH] [--push REPO_ID] [--with-base] [--dtype bfloat16|float16] [--model BASE]
[--private | --public] [--ignore-template-mismatch]`

Export a fine-tuned adapter to where people run models:
  gguf       one .gguf file of the merged model (llama.cpp, LM Studio, Ollama), with the trained chat template
  lora-gguf  the LoRA adapter as a .gguf file (llama.cpp --lora, Ollama ADAPTER); --with-base also writes the base
  ollama     a folder with the GGUF and a Modelfile (template, default system prompt, stop strings)
  merged     a folder with the merged 16-bit safetensors model (plain transformers)
  space      a Gradio chat Space on the Hub showing the adapter (needs --push OWNER/NAME)
--out is a .gguf file for gguf/lora-gguf and a folder for merged/ollama (default: named after the run, here).
--push uploads the result with a model card; the token comes from HF_TOKEN or `hf auth login`, never printed.
The adapter's chat template is verified first: a mismatch is refused unless --ignore-template-mismatch.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .options import add_visibility


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from finetune.export.exporter import FORMATS
    from finetune.export.gguf_file import DEFAULT_QUANT, QUANTS

    p = sub.add_parser("export", help="export an adapter as GGUF, Ollama, merged model or demo Space",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, metavar="RUN_OR_ADAPTER_OR_HUB_REPO",
                   help="a run id or folder (RUN@STEP: one of its checkpoints, RUN@best: the best evaluated one), "
                        "an adapter folder, or a Hub adapter repo (org/name)")
    p.add_argument("--format", default="gguf", choices=FORMATS, help="what to write (default: gguf)")
    p.add_argument("--quant", default=DEFAULT_QUANT, choices=QUANTS,
                   help=f"GGUF tensor type (default: {DEFAULT_QUANT}; lora-gguf: f16, bf16 or q8_0)")
    p.add_argument("--out", help="the .gguf file (gguf, lora-gguf) or folder (merged, ollama) to write")
    p.add_argument("--push", metavar="REPO_ID", help="upload the export (with a model card) to this Hub repo")
    p.add_argument("--with-base", action="store_true", help="lora-gguf: also write the base model as GGUF")
    p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"), help="merged: weight dtype")
    p.add_argument("--model", help="the base model (default: the one the adapter names)")
    add_visibility(p, True, "create the pushed repo as private (default)", "pushed repo")
    p.add_argument("--runs-root", help="the runs folder, to find a run by id (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--ignore-template-mismatch", action="store_true",
                   help="export even when the adapter's chat template does not render what training rendered")
    p.set_defaults(func=run)


def adapter_ref(text: str, runs_root: str | None) -> str:
    """A path as given when it exists; a run (id or folder) with ``@STEP`` / ``@best[-METRIC]``: that checkpoint's
    adapter; a run id under the runs folder; else the text (a Hub repo id)."""
    from finetune import runs, service

    if Path(text).exists():
        return text
    name, at, step = text.partition("@")
    run_dir = Path(name) if Path(name).is_dir() else None
    if run_dir is None:
        try:
            found = runs.run_path(name, runs_root)
        except runs.RunError:
            return text
        run_dir = found if found.exists() else None
    if run_dir is None:
        return text
    if at:
        return str(service.Workspace(run_dir.parent).owner_space(None).adapter_path(f"{run_dir.name}@{step}"))
    return str(run_dir)


def run(args: argparse.Namespace) -> int:
    from huggingface_hub import get_token

    from finetune.export import export_model

    last = [-1]

    def progress(fraction: float, message: str) -> None:
        pct = int(fraction * 100)
        if pct != last[0]:
            last[0] = pct
            print(f"\r{pct:3d}% {message[:70]:<70}", end="", file=sys.stderr, flush=True)

    result = export_model(adapter_ref(args.adapter, args.runs_root), args.format, args.out, quant=args.quant,
                          push=args.push, model=args.model, dtype=args.dtype, with_base=args.with_base,
                          token=get_token() if args.push else None, private=args.private,
                          ignore_template_mismatch=args.ignore_template_mismatch, progress=progress)
    print(file=sys.stderr)
    print(result.summary())
    return 0
