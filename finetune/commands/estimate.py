"""`python -m finetune estimate [CONFIG.yaml] [--model ID_OR_DIR] [--method qlora|lora|full] [--gpu NAME]
[--seq-len N] [--batch N] [--auto] [--json] [--tokens N] [--epochs E]`

Will a run fit the GPU? Prints the peak-memory breakdown and a verdict (fits / tight / does not fit) with
what to change. CONFIG.yaml is a run config or a preset name; without it the config defaults are used.
--auto chooses method, micro-batch, gradient accumulation, checkpointing and optimizer for the GPU
(--batch is then the effective batch to reach). --tokens adds the training time and cost.
--json prints one JSON object: peak_gb, breakdown (name -> GB), fits, gpu, gpu_gb, ... (+ auto, time).
Works offline for the preset models and any local folder with a config.json.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from finetune.durations import rough

if TYPE_CHECKING:
    from finetune.config import RunConfig
    from finetune.memory import AutoPlan, MemoryEstimate, ModelSpec, TimeEstimate, TrainSetup


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from finetune.memory import GPUS, METHODS  # pure Python, no torch: keeps --help instant

    p = sub.add_parser("estimate", help="will it fit the GPU: memory breakdown, verdict, auto-configuration",
                       description=__doc__)
    p.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="run config file or preset name")
    p.add_argument("--model", help="Hub id, local model folder or .gguf file (overrides the config's model.id)")
    p.add_argument("--method", choices=METHODS, help="qlora (4-bit base), lora (16-bit base) or full fine-tuning")
    p.add_argument("--gpu", default="t4", type=str.lower, choices=list(GPUS), help="target GPU (default: t4)")
    p.add_argument("--seq-len", type=int, help="tokens per example (default: training.max_length)")
    p.add_argument("--batch", type=int, help="micro-batch size; with --auto the effective batch to reach")
    p.add_argument("--auto", action="store_true", help="choose the settings that fit the GPU")
    p.add_argument("--gpus", type=int, help="GPUs the run is laid out over (memory is per GPU; time and cost for all)")
    p.add_argument("--distributed", choices=("ddp", "fsdp"),
                   help="with --gpus: ddp (every GPU holds the whole model) or fsdp (sharded; default)")
    p.add_argument("--offload", action="store_true", help="fsdp: the shards in CPU RAM")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.add_argument("--tokens", type=int, help="training tokens per epoch: adds duration and cost")
    p.add_argument("--epochs", type=float, help="epochs for --tokens (default: training.epochs)")
    p.set_defaults(func=run)


def _load_config(name: str | None) -> RunConfig:
    from finetune.cli import UsageError
    from finetune.config import ConfigError, RunConfig
    from finetune.presets import load_preset

    if not name:
        return RunConfig()
    try:
        return load_preset(name)
    except ConfigError as e:
        where = f"{e.source}: " if e.source else ""
        raise UsageError(where + "; ".join(e.problems)) from e


def run(args: argparse.Namespace) -> int:
    from finetune import memory
    from finetune.cli import UsageError

    for flag, value in (("--seq-len", args.seq_len), ("--batch", args.batch), ("--tokens", args.tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.epochs is not None and args.epochs <= 0:
        raise UsageError(f"--epochs must be > 0, got {args.epochs}")
    cfg = _load_config(args.config)
    try:
        gpu = memory.get_gpu(args.gpu)
        spec = memory.spec_for_config(cfg, args.model)
        plan = None
        if args.auto:
            base = memory.setup_for(cfg, gpu, seq_len=args.seq_len)
            methods = (args.method,) if args.method else ("lora", "qlora")
            plan = memory.auto_configure(spec, gpu, seq_len=args.seq_len, target_batch=args.batch, base=base,
                                         methods=methods)
            est = memory.estimate_training(spec, plan_setup(base, plan), gpu)
        else:
            setup = memory.setup_for(cfg, gpu, method=args.method, batch_size=args.batch, seq_len=args.seq_len)
            if args.gpus is not None:  # the layout asked for here replaces the config's
                strategy = "none" if args.gpus == 1 else (args.distributed or "fsdp")
                setup = setup.with_(strategy=strategy, gpus=args.gpus, offload=args.offload)
            est = memory.estimate_training(spec, setup, gpu)
        time = None
        if args.tokens:
            time = memory.estimate_time(spec, est.setup, gpu, args.tokens, args.epochs or cfg.training.epochs)
    except memory.EstimateError as e:
        raise UsageError(str(e)) from e

    if args.json:
        out = est.to_dict()
        if plan is not None:
            out["auto"] = plan.to_dict()
        if time is not None:
            out["time"] = time.to_dict()
        print(json.dumps(out))
        return 0
    print(render(est, spec, plan, time))
    return 0


def plan_setup(base: TrainSetup, plan: AutoPlan) -> TrainSetup:
    """The TrainSetup a plan describes."""
    return base.with_(method=plan.method, weights=plan.weights, batch_size=plan.batch_size,
                      grad_accum=plan.grad_accum, gradient_checkpointing=plan.gradient_checkpointing,
                      optim=plan.optim, seq_len=plan.seq_len)


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def render(est: MemoryEstimate, spec: ModelSpec, plan: AutoPlan | None = None,
           time: TimeEstimate | None = None) -> str:
    """The estimate as a plain-text table."""
    g = est.gpu
    lines = [
        f"model    {est.model}  ({_human(est.params)} parameters, {_human(est.trainable)} trainable; {spec.source})",
        f"setup    {est.setup.describe()}",
        f"gpu      {g.name}: {g.label}, {g.nominal_gb:g} GB ({g.usable_gb:.1f} GB usable)",
    ]
    if plan is not None:
        lines.append(f"auto     {plan.reason}")
    lines += ["", f"{'component':<15}{'GB':>8}{'share':>8}"]
    for name, gb in est.breakdown.items():
        share = gb / est.peak_gb if est.peak_gb else 0.0
        lines.append(f"{name:<15}{gb:>8.2f}{share:>8.0%}")
    lines.append(f"{'peak':<15}{est.peak_gb:>8.2f}{est.usage:>8.0%}  of {g.usable_gb:.1f} GB")
    lines += ["", f"verdict  {est.verdict}", est.explanation]
    if est.suggestions:
        lines.append("to make it fit:")
        lines += [f"  - {s}" for s in est.suggestions]
    if est.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in est.notes]
    if time is not None:
        cost = f", ${time.usd:.2f} on {time.flavor}" if time.usd is not None else ""
        quota = ""
        if time.zerogpu_quota_minutes is not None and time.zerogpu_days is not None:  # set together
            days = ", ".join(f"{tier} {d:g} days" for tier, d in time.zerogpu_days.items())
            quota = f", {time.zerogpu_quota_minutes:.0f} ZeroGPU quota minutes ({days})"
        lines += ["", f"time     {time.tokens:,} tokens x {time.epochs:g} epoch(s) at ~{time.tokens_per_second:,.0f} "
                      f"tokens/s: {rough(time.seconds)}{cost}{quota}", f"         ({time.note})"]
    return "\n".join(lines)
