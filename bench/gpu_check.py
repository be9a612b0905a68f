"""The GPU check: every GPU number of the project in one offline command (at most 8 minutes on an H100/H200).

    python bench/gpu_check.py                      # CUDA: writes gpu_check.json and gpu_check.md here
    python bench/gpu_check.py --out results/       # ... into results/
    python bench/gpu_check.py --only estimator     # one part (throughput, estimator, resume, inference, flow)
    python bench/gpu_check.py --dry-run            # the same code on CPU with tiny dimensions, under a minute

Parts, one top-level section of ``gpu_check.json`` each (plus ``device``):

- ``throughput``: a 7B-class model (the Llama-2-7B shape with random weights, vocabulary of the embedded
  tokenizer, 4-bit NF4 quantised on load like a real one), sequence length 2,048, a long-tailed chat length mix
  like guanaco's. The seed notebooks' recipe (trl SFTTrainer, padding per batch, loss on every token, r=64, paged
  AdamW 32-bit: ``train_throughput.baseline_recipe``) against our defaults (``finetune.train.train``), same
  examples, one process each: real (non-pad) tokens/s, peak reserved VRAM, final loss, and ours/recipe ratios.
  ``ours_filled`` runs our defaults at the micro-batch the memory estimator picks to fill the GPU.
- ``estimator``: the memory estimator's predicted peak and step time against the measured ones for four
  configurations (r=16/64, lengths 512/2,048, batch 1/4; every example at full length).
- ``resume``: training chunked as ZeroGPU runs it (``backends.zerogpu.run_chunked``: checkpoint, stop, resume)
  against an uninterrupted run: the largest difference of the two final adapters, within the tolerance of
  tests/test_train.py.
- ``inference``: the Playground's 4-bit load and generation tokens/s, an adapter switch against a base reload.
- ``flow``: the embedded SmolLM2 (on CUDA): format, train, generate, merge, export; each step timed.
- ``sharded`` (2+ GPUs, else it says why it skipped): FSDP vs DDP over every GPU (bench/sharded_check.py).

Each part runs in its own ``try``: a failing part records its error and the others still run. The JSON and the
Markdown are rewritten after every part, so an interrupted run keeps what it measured. A part that would start
after the time budget (``--budget-s``) is recorded as skipped. ``--dry-run`` keeps every key of a GPU run.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402 - the bench's data generator, recipe, probe and workers
import sharded_check  # noqa: E402 - the sharded part
from harness import Stopwatch, device_name, length_summary, ratio  # noqa: E402

PARTS = ("throughput", "estimator", "resume", "inference", "flow", "sharded")
# tests/test_train.py SAME_ADAPTER_ATOL: the largest LoRA weight difference of a resumed run from an
# uninterrupted one (a run one step short differs by ~1e-3); tests/test_gpu_check.py keeps them equal
RESUME_ATOL = 2e-4

# The keys of every section, GPU run or dry run (tests/test_gpu_check.py checks them).
SIDE_KEYS = ("tokens_per_s", "peak_vram_gb", "loss", "eval_loss_answers", "peak_device_used_gb", "steps",
             "real_tokens", "padding_fraction", "median_step_s", "batch_size", "settings")
SECTION_KEYS: dict[str, tuple[str, ...]] = {
    "device": ("kind", "name", "memory_gb", "dry_run", "date", "torch", "cuda", "bitsandbytes", "transformers",
               "trl", "peft", "liger_kernel", "flash_attn", "python"),
    "throughput": ("ok", "seconds", "error", "model", "data", "recipe", "ours", "ours_filled", "ratios"),
    "estimator": ("ok", "seconds", "error", "gpu", "configurations", "max_peak_error", "within_15_percent"),
    "resume": ("ok", "seconds", "error", "model", "steps", "calls", "max_abs_diff", "tolerance", "same_adapter"),
    "inference": ("ok", "seconds", "error", "model", "load_s", "new_tokens", "tokens_per_s", "adapter_switch_s",
                  "base_reload_s", "switch_vs_reload"),
    "flow": ("ok", "seconds", "error", "model", "steps"), "sharded": sharded_check.SECTION_KEYS,
}
RATIO_KEYS = ("tokens_per_s", "peak_vram_gb", "loss")
ESTIMATE_KEYS = ("name", "lora_r", "seq_len", "batch_size", "predicted_peak_gb", "measured_peak_gb", "peak_ratio",
                 "predicted_device_gb", "measured_device_gb", "predicted_step_s", "measured_step_s", "step_ratio",
                 "error")
FLOW_STEPS = ("format", "train", "generate", "merge", "export")
STEP_KEYS = ("ok", "seconds", "detail", "error")


# ---------------------------------------------------------------------------------------------
# sizes: the GPU run and the dry run differ in dimensions only


class Scale:
    """Every size the check uses; ``dry`` shrinks them for a CPU run under a minute."""

    def __init__(self, dry: bool):
        self.dry = dry
        self.model = "tiny" if dry else "llama-7b"  # train_throughput.materialize names
        self.seq_len = 128 if dry else 2048
        self.batch = 2 if dry else 4
        self.examples = 4 if dry else 32  # throughput: one epoch = examples / batch steps per side
        self.eval_examples = 2 if dry else 8
        # guanaco-like: openassistant-guanaco's rendered conversations have a median of ~300 tokens and a tail past
        # 2,000 (scaled to the dry run's length)
        self.lo, self.median, self.hi = (16, 40, 180) if dry else (32, 300, 2600)
        self.estimator = ([("r16-len64-b1", 16, 64, 1), ("r64-len64-b4", 64, 64, 4), ("r16-len128-b4", 16, 128, 4),
                           ("r64-len128-b1", 64, 128, 1)] if dry else
                          [("r16-len512-b1", 16, 512, 1), ("r64-len512-b4", 64, 512, 4),
                           ("r16-len2048-b4", 16, 2048, 4), ("r64-len2048-b1", 64, 2048, 1)])
        self.estimator_steps = 1 if dry else 3  # the median step skips the first (warm-up) one when there are more
        self.resume_steps, self.resume_chunk = (2, 1) if dry else (12, 4)
        self.new_tokens = 4 if dry else 64
        self.flow_model = "tiny" if dry else ""  # "": the embedded SmolLM2-135M-Instruct
        self.flow_steps = 1 if dry else 20
        self.filled_max_batch = 4 if dry else 64


# ---------------------------------------------------------------------------------------------
# the report


def empty_report(dry: bool) -> dict[str, Any]:
    """Every section with every key (None until measured): a GPU run and a dry run have the same keys."""
    report: dict[str, Any] = {name: {k: None for k in keys} for name, keys in SECTION_KEYS.items()}
    t = report["throughput"]
    for side in ("recipe", "ours", "ours_filled"):
        t[side] = {k: None for k in SIDE_KEYS}
    t["ratios"] = {k: None for k in RATIO_KEYS}
    report["estimator"]["configurations"] = []
    report["flow"]["steps"] = {s: {k: None for k in STEP_KEYS} for s in FLOW_STEPS}
    report["device"]["dry_run"] = dry
    for name in PARTS:
        report[name]["ok"] = False
    report["budget"] = {"budget_s": None, "total_s": None, "skipped": []}
    return report


def device_section(dry: bool) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available() and not dry
    out: dict[str, Any] = {
        "kind": "cuda" if cuda else "cpu",
        "name": device_name("cuda" if cuda else "cpu"),
        "memory_gb": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "dry_run": dry,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }
    for name, module in (("bitsandbytes", "bitsandbytes"), ("transformers", "transformers"), ("trl", "trl"),
                         ("peft", "peft"), ("liger_kernel", "liger_kernel"), ("flash_attn", "flash_attn")):
        out[name] = _version(module)
    return out


def _version(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module.replace("_", "-"))
    except PackageNotFoundError:
        return "installed"


def write_report(report: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("gpu_check.json", json.dumps(report, indent=2, default=str) + "\n"),
                       ("gpu_check.md", markdown(report))):
        tmp = out / (name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out / name)


def _f(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"
    return str(v)


def markdown(r: dict[str, Any]) -> str:
    d = r["device"]
    lines = [f"# GPU check: {d['name']} ({d['kind']}{', dry run: tiny dimensions, not GPU figures' if d['dry_run'] else ''})",
             "", f"{d['date']}; torch {d['torch']} (CUDA {d['cuda']}), bitsandbytes {d['bitsandbytes']}, "
             f"transformers {d['transformers']}, trl {d['trl']}, peft {d['peft']}, liger-kernel {d['liger_kernel']}, "
             f"flash-attn {d['flash_attn']}.", ""]
    t = r["throughput"]
    lines += ["## Throughput: notebook recipe vs our defaults", ""]
    if t.get("model"):
        lines += [f"Model: {t['model'].get('name')} ({_f(t['model'].get('params'))} parameters, random weights, 4-bit "
                  f"NF4 on load). Data: {_f((t.get('data') or {}).get('examples'))} conversations, "
                  f"{(t.get('data') or {}).get('token_lengths')}, max length {(t.get('data') or {}).get('max_length')}.", ""]
    lines += ["| side | batch | real tokens/s | peak reserved VRAM GB | peak device GB | final loss | held-out loss (answers) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for side in ("recipe", "ours", "ours_filled"):
        s = t[side]
        lines.append(f"| {side} | {_f(s['batch_size'])} | {_f(s['tokens_per_s'])} | {_f(s['peak_vram_gb'])} | "
                     f"{_f(s['peak_device_used_gb'])} | {_f(s['loss'])} | {_f(s['eval_loss_answers'])} |")
    q = t["ratios"]
    lines += [f"| **ours / recipe** | | **{_f(q['tokens_per_s'])}x** | **{_f(q['peak_vram_gb'])}x** | | "
              f"{_f(q['loss'])}x | |", ""]
    e = r["estimator"]
    lines += ["## Memory estimator: predicted vs measured", "",
              f"GPU in the catalog: {e.get('gpu')}. Largest peak error: {_f(e.get('max_peak_error'))}; "
              f"all within 15%: {_f(e.get('within_15_percent'))}.", "",
              "| configuration | predicted peak GB | measured peak GB | ratio | predicted device GB | measured device GB "
              "| predicted step s | measured step s | ratio |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in e["configurations"]:
        lines.append(f"| {c['name']} | {_f(c['predicted_peak_gb'])} | {_f(c['measured_peak_gb'])} | "
                     f"{_f(c['peak_ratio'])} | {_f(c['predicted_device_gb'])} | {_f(c['measured_device_gb'])} | "
                     f"{_f(c['predicted_step_s'])} | {_f(c['measured_step_s'])} | "
                     f"{_f(c['step_ratio'])} |" + (f" error: {c['error']}" if c.get("error") else ""))
    s = r["resume"]
    lines += ["", "## Chunked (ZeroGPU) resume vs uninterrupted", "",
              f"{_f(s.get('steps'))} steps in {_f(s.get('calls'))} calls: largest adapter difference "
              f"{_f(s.get('max_abs_diff'))} (tolerance {_f(s.get('tolerance'))}): same adapter {_f(s.get('same_adapter'))}.",
              "", "## Inference (Playground, 4-bit)", ""]
    i = r["inference"]
    lines += [f"Load {_f(i.get('load_s'))} s; {_f(i.get('tokens_per_s'))} new tokens/s ({_f(i.get('new_tokens'))} "
              f"tokens, greedy); adapter switch {_f(i.get('adapter_switch_s'))} s vs base reload "
              f"{_f(i.get('base_reload_s'))} s ({_f(i.get('switch_vs_reload'))}x).", "",
              "## Whole flow (embedded SmolLM2)", "", "| step | ok | seconds | detail |", "|---|---|---:|---|"]
    for name in FLOW_STEPS:
        st = r["flow"]["steps"][name]
        lines.append(f"| {name} | {_f(st['ok'])} | {_f(st['seconds'])} | {st.get('detail') or st.get('error') or ''} |")
    lines += ["", "## Parts", "", "| part | ok | seconds | error |", "|---|---|---:|---|"]
    for name in PARTS:
        p = r[name]
        err = (p.get("error") or "").splitlines()[0][:160] if p.get("error") else ""
        lines.append(f"| {name} | {_f(p['ok'])} | {_f(p['seconds'])} | {err} |")
    b = r["budget"]
    lines += ["", f"Total {_f(b.get('total_s'))} s of a {_f(b.get('budget_s'))} s budget"
              + (f"; skipped: {', '.join(b['skipped'])}" if b.get("skipped") else "") + "."]
    return "\n".join(lines) + "\n\n" + sharded_check.markdown(r["sharded"])


# ---------------------------------------------------------------------------------------------
# shared helpers


class Context:
    """What the parts share: sizes, device, folders, the random-weight model, the clock."""

    def __init__(self, args: argparse.Namespace):
        self.scale = Scale(args.dry_run)
        self.device = "cpu" if args.dry_run else "cuda"
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gpu-check-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.isolate = not args.dry_run  # GPU: each training side in its own process, so peaks do not mix
        self.started = time.perf_counter()
        self.budget_s = args.budget_s
        self.seed = 0
        self._model_dir: Path | None = None

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def model_dir(self) -> Path:
        if self._model_dir is None:
            t = time.perf_counter()
            self._model_dir = tt.materialize(self.scale.model, self.device, self.work)
            free_memory()  # the random weights were built on the GPU: the workers need that memory
            log(f"model {self._model_dir.name} ready in {time.perf_counter() - t:.0f} s")
        return self._model_dir

    def gpu(self) -> Any:
        """The catalog entry of this device (the estimator's figures are for it)."""
        from finetune import memory

        if self.device == "cpu":
            return memory.get_gpu("cpu")
        import torch

        name = torch.cuda.get_device_name(0).lower()
        total = torch.cuda.get_device_properties(0).total_memory / 2**30
        for key, words in (("h200", ("h200",)), ("h100", ("h100",)), ("a100-80gb", ("a100",)), ("l40s", ("l40s",)),
                           ("l4", ("l4",)), ("a10g", ("a10g",)), ("t4", ("t4",)), ("rtx-pro-6000", ("pro 6000",))):
            if any(w in name for w in words) and (key != "a100-80gb" or total > 50):
                return memory.get_gpu(key)
        import dataclasses

        return dataclasses.replace(memory.get_gpu("a100-80gb"), name="this-gpu", label=name,
                                   nominal_gb=round(total), usable_gb=round(total, 1))

    def run_side(self, spec: dict[str, Any]) -> dict[str, Any]:
        """One training side: a subprocess on the GPU (clean peaks), in this process on a dry run."""
        if self.isolate:  # never past the budget: a worker still running then is stopped (its part records it)
            return tt.run_side(spec, verbose=True, timeout_s=max(30.0, self.left_s()))
        with tempfile.TemporaryDirectory(prefix="gpu-check-side-", dir=self.work) as tmp:
            out = tt.run_spec({**spec, "work_dir": tmp})
        free_memory()
        return out


def log(text: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def free_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def gb(mb: Any) -> float | None:
    return round(mb / 1024, 3) if isinstance(mb, (int, float)) else None


def side_row(res: dict[str, Any], batch: int) -> dict[str, Any]:
    return {"tokens_per_s": res.get("tokens_per_s"), "peak_vram_gb": gb(res.get("peak_memory_mb")),
            "loss": res.get("final_loss"), "eval_loss_answers": res.get("eval_loss_assistant"),
            "peak_device_used_gb": gb(res.get("peak_device_used_mb")), "steps": res.get("steps"),
            "real_tokens": res.get("real_tokens"), "padding_fraction": res.get("padding_fraction"),
            "median_step_s": res.get("median_step_s"), "batch_size": batch, "settings": res.get("settings")}


def data_files(ctx: Context, name: str, n: int, lo: int, hi: int, median: int, seed: int) -> Path:
    return tt.write_jsonl(tt.generate_conversations(n, lo, hi, median, seed), ctx.work / "data" / name / "train.jsonl")


# ---------------------------------------------------------------------------------------------
# the parts


def part_throughput(ctx: Context, sec: dict[str, Any]) -> None:
    from finetune import memory
    from finetune.models import load_tokenizer

    sc = ctx.scale
    model_dir = ctx.model_dir()
    tok = load_tokenizer(str(model_dir))
    train_file = data_files(ctx, "throughput", sc.examples, sc.lo, sc.hi, sc.median, ctx.seed)
    eval_file = data_files(ctx, "throughput-eval", sc.eval_examples, sc.lo, sc.hi, sc.median, ctx.seed + 1)
    examples, tok_train = tt.render(train_file, tok, sc.seq_len)
    _, tok_eval = tt.render(eval_file, tok, sc.seq_len)
    lengths = [len(x) for x in tok_train["input_ids"]]
    spec = memory.load_model_spec(str(model_dir), allow_hub=False)
    sec["model"] = {"name": f"{sc.model} (Llama-2-7B shape)" if not sc.dry else "tiny Llama", "path": str(model_dir),
                    "params": spec.num_params, "vocab_size": spec.vocab_size, "hidden_size": spec.hidden_size,
                    "layers": spec.num_layers, "quantization": "nf4 on load"}
    sec["data"] = {"examples": len(examples), "max_length": sc.seq_len, "token_lengths": length_summary(lengths),
                   "real_tokens_per_side": sum(lengths)}
    common = dict(device=ctx.device, model_dir=str(model_dir), max_length=sc.seq_len, batch_size=sc.batch,
                  seed=ctx.seed, eval_ids=tok_eval["input_ids"], eval_labels=tok_eval["labels"])
    results: dict[str, dict[str, Any]] = {}
    for side, spec_side in (("recipe", {**common, "side": "baseline", "texts": [e.text for e in examples]}),
                            ("ours", {**common, "side": "ours", "train_file": str(train_file)})):
        log(f"throughput: {side} ...")
        results[side] = ctx.run_side({**spec_side, "label": side})
        sec[side] = side_row(results[side], sc.batch)
        log(f"throughput: {side} {sec[side]['tokens_per_s']} tok/s, peak {sec[side]['peak_vram_gb']} GB")
    sec["ratios"] = {"tokens_per_s": ratio(sec["ours"]["tokens_per_s"], sec["recipe"]["tokens_per_s"]),
                     "peak_vram_gb": ratio(sec["ours"]["peak_vram_gb"], sec["recipe"]["peak_vram_gb"]),
                     "loss": ratio(sec["ours"]["loss"], sec["recipe"]["loss"]),
                     "eval_loss_answers": ratio(sec["ours"]["eval_loss_answers"], sec["recipe"]["eval_loss_answers"])}
    # our defaults at the micro-batch the estimator says fills this device (QLoRA, the same length)
    from finetune.settings import Device

    base = memory.TrainSetup.from_config(tt.ours_config({**common, "train_file": str(train_file)}), ctx.gpu(),
                                         device=Device.detect(ctx.device))  # the kernels this machine has
    plan = memory.auto_configure(spec, ctx.gpu(), seq_len=sc.seq_len, methods=("qlora",), base=base,
                                 target_batch=sc.filled_max_batch, allow_hub=False)
    filled = max(1, min(plan.batch_size, sc.filled_max_batch))
    if ctx.left_s() < 120 and not sc.dry:
        sec["ours_filled"]["settings"] = {"skipped": "time budget"}
        return
    log(f"throughput: ours at batch {filled} (estimator's fill of {plan.gpu}) ...")
    n = filled * (1 if sc.dry else 3)  # 3 steps: the median step skips the first
    filled_file = data_files(ctx, f"filled-{n}", n, sc.lo, sc.hi, sc.median, ctx.seed + 2)
    res = ctx.run_side({**common, "side": "ours", "train_file": str(filled_file), "batch_size": filled,
                        "overrides": {"training.gradient_checkpointing": plan.gradient_checkpointing},
                        "eval_ids": None, "eval_labels": None, "label": "ours_filled"})
    sec["ours_filled"] = side_row(res, filled)
    sec["ours_filled"]["settings"] = {**(res.get("settings") or {}), "estimator_plan": plan.to_dict()}


def part_estimator(ctx: Context, sec: dict[str, Any]) -> None:
    from finetune import memory
    from finetune.models import load_tokenizer
    from finetune.settings import Device

    sc = ctx.scale
    model_dir = ctx.model_dir()
    tok = load_tokenizer(str(model_dir))
    spec = memory.load_model_spec(str(model_dir), allow_hub=False)
    gpu = ctx.gpu()
    device = Device.detect(ctx.device)
    sec["gpu"] = gpu.name
    errors = []
    for name, r, length, batch in sc.estimator:
        row: dict[str, Any] = {k: None for k in ESTIMATE_KEYS}
        row.update(name=name, lora_r=r, seq_len=length, batch_size=batch)
        sec["configurations"].append(row)
        if ctx.left_s() < 60 and not sc.dry:
            row["error"] = "skipped: time budget"
            continue
        try:
            n = batch * sc.estimator_steps
            # every example longer than the length, truncated to it: the estimator's worst case, measured (the
            # first answer still starts within the length: a prompt is under half of a conversation)
            path = data_files(ctx, f"estimator-{n}-{length}", n, length * 9 // 8, length * 3 // 2, length * 5 // 4,
                              ctx.seed)
            side = dict(device=ctx.device, model_dir=str(model_dir), max_length=length, batch_size=batch, seed=ctx.seed,
                        max_steps=sc.estimator_steps, eval_ids=None, eval_labels=None, side="ours",
                        train_file=str(path), overrides={"lora.r": r, "lora.alpha": 2 * r}, label=name)
            setup = memory.TrainSetup.from_config(tt.ours_config(side), gpu, device=device)
            est = memory.estimate_training(spec, setup, gpu, advise=False)
            # torch's reserved memory does not hold the CUDA context: compare the allocator's part
            row["predicted_peak_gb"] = round(est.peak_gb - est.breakdown.get("cuda_context", 0.0), 3)
            # the whole device (nvidia-smi's view): CUDA context and paged optimizer states included; the parent
            # process's own CUDA context is in the measured figure too
            row["predicted_device_gb"] = round(est.peak_gb, 3)
            row["predicted_step_s"] = round(setup.tokens / memory.tokens_per_second(spec, setup, gpu), 4)
            log(f"estimator: {name} ...")
            res = ctx.run_side(side)
            row["measured_peak_gb"] = gb(res.get("peak_memory_mb"))
            row["measured_device_gb"] = gb(res.get("peak_device_used_mb"))
            row["measured_step_s"] = res.get("median_step_s")
            row["peak_ratio"] = ratio(row["predicted_peak_gb"], row["measured_peak_gb"])
            row["step_ratio"] = ratio(row["predicted_step_s"], row["measured_step_s"])
            if row["peak_ratio"] is not None:
                errors.append(abs(row["peak_ratio"] - 1))
            log(f"estimator: {name} predicted {row['predicted_peak_gb']} GB, measured {row['measured_peak_gb']} GB")
        except Exception as e:  # noqa: BLE001 - one configuration's failure is recorded, the others run
            row["error"] = f"{e.__class__.__name__}: {str(e).strip()[-400:]}"
            free_memory()
    sec["max_peak_error"] = round(max(errors), 3) if errors else None
    sec["within_15_percent"] = bool(errors) and len(errors) == len(sc.estimator) and max(errors) <= 0.15
    bad = [c["name"] for c in sec["configurations"] if c.get("error")]
    if bad:
        raise RuntimeError(f"configurations failed: {', '.join(bad)}")


def _flow_config(ctx: Context, model: str, steps: int, save_steps: int) -> Any:
    from finetune.config import RunConfig

    cfg = RunConfig()
    cfg.name = "gpu-check"
    cfg.model.id = model
    cfg.training.max_steps = steps
    cfg.training.save_steps = save_steps
    cfg.training.seed = ctx.seed
    cfg.lora.dropout = 0.1  # exercises the RNG state across resume, as the CPU test does
    return cfg


def part_resume(ctx: Context, sec: dict[str, Any]) -> None:
    from finetune.backends import zerogpu
    from finetune.train import train

    sc = ctx.scale
    model = str(tt.materialize("tiny", ctx.device, ctx.work)) if sc.dry else ""
    sec["model"] = "tiny Llama" if sc.dry else "embedded SmolLM2-135M-Instruct"
    sec["tolerance"] = RESUME_ATOL
    root = ctx.work / "resume"
    shutil.rmtree(root, ignore_errors=True)
    log("resume: uninterrupted run ...")
    full = train(_flow_config(ctx, model, sc.resume_steps, sc.resume_chunk), runs_root=root / "full")
    log("resume: chunked run (ZeroGPU calls) ...")
    run_dir = root / "chunked" / "run"
    states = list(zerogpu.run_chunked(_flow_config(ctx, model, sc.resume_steps, sc.resume_chunk), run_dir,
                                      steps_per_call=sc.resume_chunk))
    sec["steps"] = states[-1].get("step")
    sec["calls"] = len(states)
    if states[-1].get("status") != "finished" or full.adapter_dir is None:
        raise RuntimeError(f"chunked run ended {states[-1].get('status')} at step {sec['steps']}")
    a, b = _adapter_tensors(full.adapter_dir), _adapter_tensors(run_dir / "adapter")
    if a.keys() != b.keys():
        raise RuntimeError("the two adapters hold different tensors")
    sec["max_abs_diff"] = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    sec["same_adapter"] = sec["max_abs_diff"] <= RESUME_ATOL
    free_memory()


def _adapter_tensors(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def _random_adapter(loaded: Any, folder: Path, seed: int, r: int = 16) -> Path:
    """A LoRA adapter for the loaded base with random (non-zero) weights, saved like a trained one."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(loaded.model, LoraConfig(r=r, lora_alpha=2 * r, target_modules="all-linear",
                                                    init_lora_weights=False, task_type="CAUSAL_LM"))
    model.peft_config["default"].base_model_name_or_path = loaded.base_name
    model.save_pretrained(folder, safe_serialization=True)
    loaded.model = model.unload()  # the base again, without LoRA layers
    return folder


def part_inference(ctx: Context, sec: dict[str, Any]) -> None:
    import torch

    from finetune import inference
    from finetune.config import QuantizationConfig

    sc = ctx.scale
    model_dir = str(ctx.model_dir())
    q = QuantizationConfig(load_in="4bit")
    sec["model"] = f"{sc.model}, 4-bit NF4"
    inference._cache.clear()
    free_memory()
    with Stopwatch(ctx.device) as clock:
        loaded = inference.load(model_dir, q)
    sec["load_s"] = round(clock.s, 2)
    prompt = loaded.tokenizer("Write a short story about a river and a bridge.", return_tensors="pt").to(loaded.model.device)
    gen = dict(max_new_tokens=sc.new_tokens, min_new_tokens=sc.new_tokens, do_sample=False,
               pad_token_id=loaded.tokenizer.pad_token_id or loaded.tokenizer.eos_token_id)
    with torch.no_grad():
        loaded.model.generate(**prompt, max_new_tokens=2, do_sample=False)  # warm-up (kernels, caches)
        with Stopwatch(ctx.device) as clock:
            out = loaded.model.generate(**prompt, **gen)
    sec["new_tokens"] = int(out.shape[1] - prompt["input_ids"].shape[1])
    sec["tokens_per_s"] = round(sec["new_tokens"] / clock.s, 2)
    log(f"inference: {sec['tokens_per_s']} tokens/s")
    folders = ctx.work / "adapters"
    shutil.rmtree(folders, ignore_errors=True)
    a = _random_adapter(loaded, folders / "a", 1)
    b = _random_adapter(loaded, folders / "b", 2)
    inference.attach(loaded, a)
    inference.attach(loaded, b)
    with Stopwatch(ctx.device) as clock:
        inference.attach(loaded, a)  # both attached: a switch, no reload
    sec["adapter_switch_s"] = round(clock.s, 4)
    del loaded, out
    inference._cache.clear()
    free_memory()
    with Stopwatch(ctx.device) as clock:
        again = inference.load(model_dir, q)  # what a switch without attached adapters costs: the base again
        inference.attach(again, a)
    sec["base_reload_s"] = round(clock.s, 3)
    sec["switch_vs_reload"] = ratio(sec["adapter_switch_s"], sec["base_reload_s"])
    del again
    inference._cache.clear()
    free_memory()


def part_flow(ctx: Context, sec: dict[str, Any]) -> None:
    from finetune import data, export, inference
    from finetune.config import DataConfig
    from finetune.config import SAMPLE_DATA
    from finetune.models import load_tokenizer
    from finetune.train import train

    sc = ctx.scale
    model = str(tt.materialize("tiny", ctx.device, ctx.work)) if sc.dry else ""
    sec["model"] = "tiny Llama" if sc.dry else "embedded SmolLM2-135M-Instruct"
    root = ctx.work / "flow"
    shutil.rmtree(root, ignore_errors=True)
    steps = sec["steps"]
    state: dict[str, Any] = {}

    def step(name: str, fn: Callable[[], str]) -> None:
        t = time.perf_counter()
        try:
            steps[name].update(ok=True, detail=fn())
        except Exception as e:  # noqa: BLE001 - the step's error is the result; later steps still try
            steps[name].update(ok=False, error=f"{e.__class__.__name__}: {str(e).strip()[-400:]}")
        steps[name]["seconds"] = round(time.perf_counter() - t, 2)
        log(f"flow: {name} {'ok' if steps[name]['ok'] else 'FAILED'} in {steps[name]['seconds']} s")

    def fmt() -> str:
        res = data.format_dataset(str(SAMPLE_DATA), DataConfig(template="model"), tokenizer=load_tokenizer(model))
        return f"{len(res.examples)} examples ({res.shape})"

    def trn() -> str:
        result = train(_flow_config(ctx, model, sc.flow_steps, sc.flow_steps), runs_root=root / "runs")
        state["adapter"] = result.adapter_dir
        m = result.metrics
        return f"{result.step} steps, loss {m.get('first_loss')} -> {m.get('final_loss')}"

    def gen() -> str:
        answer = inference.generate_batch(["What is the capital of France?"], adapter=str(state["adapter"]),
                                          max_new_tokens=16)[0]
        state["answer"] = answer
        return repr(answer[:80])

    def merge() -> str:
        out = export.merge_adapter(state["adapter"], root / "merged")
        state["merged"] = out
        return f"{sum(f.stat().st_size for f in out.iterdir()) / 2**20:.0f} MB"

    def exp() -> str:
        # the merged folder as anyone loads it: plain transformers, no peft, no finetune code
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        folder = state["merged"]
        tok = AutoTokenizer.from_pretrained(folder)
        net = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(ctx.device)
        ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                      add_generation_prompt=True, return_tensors="pt", return_dict=True).to(ctx.device)
        out = net.generate(**ids, max_new_tokens=16, do_sample=False)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        # and as llama.cpp / Ollama run it: one GGUF file with the trained chat template
        gguf = export.export_model(state["adapter"], "gguf", root / "model-q8_0.gguf", quant="q8_0").out
        assert gguf is not None
        return (f"loads with plain transformers and answers {text[:60]!r}; GGUF q8_0 "
                f"{gguf.stat().st_size / 2**20:.0f} MB")

    for name, fn in zip(FLOW_STEPS, (fmt, trn, gen, merge, exp)):
        step(name, fn)
    inference._cache.clear()
    free_memory()
    failed = [n for n in FLOW_STEPS if not steps[n]["ok"]]
    if failed:
        raise RuntimeError(f"flow steps failed: {', '.join(failed)}")


PART_FUNCS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "throughput": part_throughput, "estimator": part_estimator, "resume": part_resume,
    "inference": part_inference, "flow": part_flow, "sharded": lambda ctx, sec: sharded_check.part_sharded(
        ctx, sec, ctx.model_dir, lambda: data_files(ctx, "sharded", 64, 32, 1000, 300, ctx.seed), ctx.gpu)}
# seconds a part needs on an H100/H200 (planning the budget: a part that would not finish is skipped)
PART_NEEDS_S = {"throughput": 150, "estimator": 100, "resume": 30, "inference": 45, "flow": 40,
                "sharded": sharded_check.NEEDS_S}


# ---------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    out = Path(args.out)
    report = empty_report(args.dry_run)
    report["budget"]["budget_s"] = args.budget_s
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run with --dry-run to check the script on CPU")
    report["device"].update(device_section(args.dry_run))
    ctx = Context(args)
    log(f"device {report['device']['name']}; work folder {ctx.work}; budget {args.budget_s} s")
    write_report(report, out)
    for name in args.only or PARTS:
        sec = report[name]
        if not args.dry_run and ctx.left_s() < PART_NEEDS_S[name] * 0.5:
            sec["error"] = f"skipped: {ctx.left_s():.0f} s of the budget left"
            report["budget"]["skipped"].append(name)
            log(f"{name}: skipped (time budget)")
            continue
        log(f"{name}: start ({ctx.left_s():.0f} s of the budget left)")
        t = time.perf_counter()
        try:
            PART_FUNCS[name](ctx, sec)
            sec["ok"] = True
        except Exception as e:  # noqa: BLE001 - a failing part is recorded; the others still run
            sec["ok"] = False
            sec["error"] = f"{e.__class__.__name__}: {e}\n{traceback.format_exc()[-3000:]}"
            log(f"{name}: FAILED: {e.__class__.__name__}: {str(e)[:300]}")
            free_memory()
        sec["seconds"] = round(time.perf_counter() - t, 1)
        report["budget"]["total_s"] = round(time.perf_counter() - ctx.started, 1)
        write_report(report, out)
        log(f"{name}: {'ok' if sec['ok'] else 'failed'} in {sec['seconds']} s")
    report["budget"]["total_s"] = round(time.perf_counter() - ctx.started, 1)
    write_report(report, out)
    if not args.work and not args.keep_work:
        shutil.rmtree(ctx.work, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--out", default=".", help="folder for gpu_check.json and gpu_check.md (default: here)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny dimensions, every key of a GPU run (< 1 min)")
    p.add_argument("--only", action="append", choices=PARTS, metavar="NAME",
                   help=f"run this part only (repeatable): {', '.join(PARTS)}")
    p.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds (default 480 = 8 minutes)")
    p.add_argument("--work", help="folder for the random-weight models and data (default: a temporary folder, removed)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder")
    args = p.parse_args(argv)
    report = run(args)
    failed = [n for n in (args.only or PARTS) if not report[n]["ok"]]
    print(f"wrote {Path(args.out) / 'gpu_check.json'} and gpu_check.md; "
          + (f"failed or skipped: {', '.join(failed)}" if failed else "every part ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
