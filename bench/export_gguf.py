"""Export benchmark on the real embedded SmolLM2-135M: per GGUF type, the export time, the file size, and how
many of the held-out prompts llama.cpp (xllamacpp) answers exactly like `finetune generate --temperature 0`
(greedy, base + adapter in transformers); the LoRA GGUF on the base GGUF; and the streaming merge's working
memory against the merged model's size, measured in the same run.

    python bench/export_gguf.py                     # trains a short llama2-template run first
    python bench/export_gguf.py --run runs/<id>     # an existing run
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
HELDOUT = ROOT / "finetune" / "samples" / "city_year_heldout.jsonl"


def train(run_dir: Path, steps: int) -> None:
    subprocess.run([sys.executable, "-m", "finetune", "train", "--template", "llama2", "--max-steps", str(steps),
                    "--run-dir", str(run_dir), "--quiet"], cwd=ROOT, check=True)


def generate(run_dir: Path, prompts: list[str], out: Path, max_new: int) -> list[str]:
    rows = out.with_suffix(".prompts.jsonl")
    rows.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    subprocess.run([sys.executable, "-m", "finetune", "generate", "--adapter", str(run_dir), "--prompts", str(rows),
                    "--temperature", "0", "--max-new-tokens", str(max_new), "--out", str(out)], cwd=ROOT, check=True,
                   capture_output=True)
    return [json.loads(line)["answer"].strip() for line in out.read_text().splitlines()]


def llama_answers(gguf: Path, prompts: list[str], max_new: int, lora: Path | None = None) -> list[str]:
    from llamacpp import LlamaCpp

    with LlamaCpp(gguf, lora=lora) as cpp:
        return [cpp.chat([{"role": "user", "content": p}], max_tokens=max_new).strip() for p in prompts]


def merge_memory(adapter: Path, out: Path) -> dict[str, float]:
    """Peak growth of the anonymous memory of a streaming merge (in a fresh process) against the merged model's
    size and its largest shard."""
    # anonymous memory (RssAnon) sampled every 5 ms: the working memory; the memory-mapped base file's pages are
    # page cache, which ru_maxrss would count too
    code = (
        "import re, sys, threading, time, torch, transformers, peft, safetensors\n"
        "from finetune.export import merge_adapter\n"
        "def anon():\n"
        "    return int(re.search(r'RssAnon:\\s+(\\d+)', open('/proc/self/status').read()).group(1)) * 1024\n"
        "peak, done = [0], []\n"
        "def sample():\n"
        "    while not done:\n"
        "        peak[0] = max(peak[0], anon()); time.sleep(0.005)\n"
        "before = anon(); t = threading.Thread(target=sample); t.start()\n"
        f"out = merge_adapter({str(adapter)!r}, {str(out)!r}, dtype='bfloat16')\n"
        "done.append(1); t.join()\n"
        "sizes = [f.stat().st_size for f in out.glob('*.safetensors')]\n"
        "print(before, peak[0], sum(sizes), max(sizes), len(sizes))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True, text=True)
    before, after, size, shard, shards = (int(x) for x in done.stdout.split()[-5:])
    return {"merged_mb": size / 1e6, "shard_mb": shard / 1e6, "shards": shards,
            "peak_growth_mb": (after - before) / 1e6, "ratio": (after - before) / size}


def resharded_adapter(run_dir: Path, work: Path, shard_size: str = "40MB") -> Path:
    """The run's adapter pointing at a copy of its base saved in shards of ``shard_size`` (a multi-shard model)."""
    import json as _json
    import shutil

    from finetune.adapter import find_adapter_dir, read_base_model
    from finetune.export.merge import base_folder

    adapter = find_adapter_dir(run_dir)
    assert adapter is not None
    code = (
        "import sys, torch\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.bfloat16)\n"
        "m.save_pretrained(sys.argv[2], max_shard_size=sys.argv[3])\n"
        "AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])\n"
    )
    base = work / "base-sharded"
    subprocess.run([sys.executable, "-c", code, str(base_folder(read_base_model(adapter))), str(base), shard_size],
                   cwd=ROOT, check=True, capture_output=True)
    copy = Path(shutil.copytree(adapter, work / "adapter-sharded-base"))
    cfg = _json.loads((copy / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = str(base)
    (copy / "adapter_config.json").write_text(_json.dumps(cfg))
    return copy


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", help="an existing run folder (default: train one)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--merge-only", action="store_true", help="only the streaming merge's memory")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from finetune.export import export_model

    work = Path(tempfile.mkdtemp(prefix="bench-export-"))
    run_dir = Path(args.run) if args.run else work / "run"
    if not args.run:
        train(run_dir, args.steps)
    if args.merge_only:
        return report_merge(run_dir, work)
    prompts = [json.loads(line)["prompt"] for line in HELDOUT.read_text().splitlines()[: args.prompts]]
    t = time.perf_counter()
    want = generate(run_dir, prompts, work / "generate.jsonl", args.max_new_tokens)
    print(f"finetune generate (transformers, greedy): {len(want)} answers in {time.perf_counter() - t:.1f} s")
    rows = []
    for quant in ("f16", "bf16", "q8_0", "q4_0"):
        t = time.perf_counter()
        result = export_model(run_dir, "gguf", work / f"model-{quant}.gguf", quant=quant)
        seconds = time.perf_counter() - t
        got = llama_answers(result.out, prompts, args.max_new_tokens) if quant != "bf16" else []
        same = sum(a == b for a, b in zip(got, want))
        rows.append((quant, seconds, result.out.stat().st_size / 1e6, f"{same}/{len(want)}" if got else "-"))
    lora = export_model(run_dir, "lora-gguf", work / "lora.gguf", quant="f16", with_base=True)
    lora_file, base_file = lora.files
    got = llama_answers(base_file, prompts, args.max_new_tokens, lora=lora_file)
    same = sum(a == b for a, b in zip(got, want))
    print()
    print("| export | time (s) | size (MB) | llama.cpp answers = finetune generate |")
    print("|---|---|---|---|")
    for quant, seconds, mb, agree in rows:
        print(f"| gguf {quant} | {seconds:.1f} | {mb:.1f} | {agree} |")
    print(f"| lora-gguf f16 (+ base f16) | - | {lora_file.stat().st_size / 1e6:.1f} "
          f"(+ {base_file.stat().st_size / 1e6:.1f}) | {same}/{len(want)} |")
    return report_merge(run_dir, work)


def report_merge(run_dir: Path, work: Path) -> int:
    print()
    mem = merge_memory(run_dir, work / "merged")
    print(f"streaming merge: merged model {mem['merged_mb']:.0f} MB in {mem['shards']} shard, peak memory growth "
          f"{mem['peak_growth_mb']:.0f} MB = {mem['ratio']:.2f}x the merged model (a load-then-merge needs >= 1.0x)")
    mem = merge_memory(resharded_adapter(run_dir, work), work / "merged-sharded")
    print(f"streaming merge of a {mem['shards']}-shard bf16 base: merged model {mem['merged_mb']:.0f} MB, largest shard "
          f"{mem['shard_mb']:.0f} MB, peak memory growth {mem['peak_growth_mb']:.0f} MB = "
          f"{mem['ratio']:.2f}x the merged model, {mem['peak_growth_mb'] / mem['shard_mb']:.2f}x one shard")
    print(f"files in {work}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
