"""Auto-configuration: the method, micro-batch, accumulation, checkpointing and optimizer that fit a GPU.

:func:`auto_configure` (-> :class:`AutoPlan`), :func:`apply_plan` writes a plan into a config, and
:func:`configure_for` does both for a RunConfig (the Hyperparameters tab's "Auto-configure" button);
:func:`layout_options` / :func:`cheapest_layout`: "1 GPU", "N GPUs data parallel" or "N GPUs sharded" on each
Hugging Face Jobs flavor, and the cheapest one the run fits.

>>> plan = auto_configure("mistralai/Mistral-7B-v0.1", "t4", seq_len=1024)
>>> plan.method
'qlora'
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .architecture import ModelSpec, load_model_spec, spec_for_config
from ..settings import resolve_optim
from .estimate import MemoryEstimate, breakdown_bytes, estimate_training, smallest_gpu
from .time_cost import estimate_time
from .hardware import SAFE_FRACTION, EstimateError, GiB, GpuSpec, fit_verdict, get_gpu
from .train_setup import TrainSetup, default_setup, device_of, setup_for

if TYPE_CHECKING:  # imported for annotations only: the config module is light, torch is never needed
    from ..config import RunConfig

@dataclass
class AutoPlan:
    """Settings chosen for a model on a GPU, the estimate they give, and why."""

    gpu: str
    method: str
    weights: str
    batch_size: int
    grad_accum: int
    gradient_checkpointing: bool
    optim: str
    seq_len: int
    fits: bool
    reason: str
    estimate: MemoryEstimate | None = None
    smallest_gpu: str | None = None  # when nothing fits on `gpu`: the smallest catalog GPU that works
    gpus: int = 1  # more than 1: the run is sharded (FSDP) over this many of `gpu` (nothing fits one of them)

    def settings(self) -> dict[str, object]:
        return {"method": self.method, "weights": self.weights, "batch": self.batch_size,
                "grad_accum": self.grad_accum, "gradient_checkpointing": self.gradient_checkpointing,
                "optim": self.optim, "seq_len": self.seq_len, "gpus": self.gpus}

    def to_dict(self) -> dict[str, object]:
        return {**self.settings(), "gpu": self.gpu, "fits": self.fits, "reason": self.reason,
                "smallest_gpu": self.smallest_gpu,
                "peak_gb": round(self.estimate.peak_gb, 2) if self.estimate else None}


def _largest_batch(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec, max_batch: int) -> int:
    """The largest power-of-two micro-batch <= max_batch that fits with the safety margin (0 if none)."""
    b = 1 << int(math.log2(max(1, max_batch)))
    while b >= 1:
        peak = sum(breakdown_bytes(spec, s.with_(batch_size=b), gpu).values()) / GiB
        if fit_verdict(peak, gpu) == "fits":
            return b
        b //= 2
    return 0


_METHOD_WORDS = {"lora": "16-bit LoRA", "qlora": "QLoRA (4-bit base)", "full": "full fine-tuning"}


def auto_configure(model: str | ModelSpec | None, gpu: str | GpuSpec, *, seq_len: int | None = None,
                   target_batch: int | None = None, base: TrainSetup | None = None,
                   methods: tuple[str, ...] = ("lora", "qlora"), allow_hub: bool = True) -> AutoPlan:
    """Choose method, micro-batch, gradient accumulation, checkpointing and optimizer so a run fits ``gpu``.

    Methods are tried in ``methods`` order (16-bit LoRA first: no quantization error and faster, then QLoRA;
    add "full" to allow full fine-tuning). For a method, the largest micro-batch without gradient checkpointing
    is taken when it holds at least 4 examples (or the whole target batch), else the largest one with it;
    gradient accumulation makes up the effective ``target_batch`` (default: base batch x accumulation, 16).
    When nothing fits, ``smallest_gpu`` names the smallest catalog GPU where the leanest setup does.

    >>> auto_configure("mistralai/Mistral-7B-v0.1", "a100-80gb", seq_len=2048).method
    'lora'
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    spec = model if isinstance(model, ModelSpec) else load_model_spec(model, allow_hub=allow_hub)
    base = base or default_setup(gpu)
    seq = seq_len or base.seq_len
    effective = target_batch or (base.batch_size * base.grad_accum if (base.batch_size * base.grad_accum) > 1 else 16)
    auto_optim = resolve_optim("auto", device_of(gpu))
    rejected: list[str] = []
    for method in methods:
        optims = [auto_optim]  # what training.optim "auto" trains with on this device
        if method == "full" and not gpu.is_cpu:
            optims.append("paged_adamw_8bit")
        for optim in optims:
            s = base.with_(method=method, optim=optim, seq_len=seq, grad_accum=1)
            plain = _largest_batch(spec, s.with_(gradient_checkpointing=False), gpu, effective)
            ckpt = _largest_batch(spec, s.with_(gradient_checkpointing=True), gpu, effective)
            if plain >= min(4, effective):
                micro, gc = plain, False
            elif ckpt:
                micro, gc = ckpt, True
            else:
                continue
            accum = max(1, math.ceil(effective / micro))
            chosen = s.with_(batch_size=micro, grad_accum=accum, gradient_checkpointing=gc)
            est = estimate_training(spec, chosen, gpu, advise=False)
            why = (f"{_METHOD_WORDS[method]} fits {gpu.name}: micro-batch {micro} x {seq} tokens"
                   f"{' with' if gc else ' without'} gradient checkpointing, {accum} accumulation step(s) for an "
                   f"effective batch of {micro * accum}; peak {est.peak_gb:.1f} GB of {gpu.usable_gb:.1f} GB")
            if rejected:
                why += " (" + "; ".join(rejected) + ")"
            return AutoPlan(gpu.name, method, chosen.weights, micro, accum, gc, optim, seq, True, why, est)
        lean = base.with_(method=method, optim=optims[-1], seq_len=seq, batch_size=1, gradient_checkpointing=True)
        lean_peak = sum(breakdown_bytes(spec, lean, gpu).values()) / GiB
        rejected.append(f"{_METHOD_WORDS[method]} needs {lean_peak:.1f} GB even at micro-batch 1")
    leanest = base.with_(method=methods[-1], seq_len=seq, batch_size=1, gradient_checkpointing=True,
                         optim=auto_optim)
    est = estimate_training(spec, leanest, gpu, advise=False)
    bigger = smallest_gpu(spec, leanest)
    why = (f"nothing fits {gpu.name} ({SAFE_FRACTION:.0%} of {gpu.usable_gb:.1f} GB) at {seq} tokens: "
           + "; ".join(rejected)
           + (f". Smallest GPU where it fits: {bigger}" if bigger else ". No catalog GPU fits it; shorten max_length"))
    return AutoPlan(gpu.name, leanest.method, leanest.weights, 1, max(1, effective), True, leanest.optim, seq,
                    False, why, est, bigger)


def apply_plan(cfg: RunConfig, plan: AutoPlan) -> RunConfig:
    """A copy of ``cfg`` with the plan's settings written into its fields."""
    if plan.method == "full":
        raise EstimateError("the run config has no full fine-tuning switch; choose a LoRA plan")
    from ..config import apply_overrides, choices

    optim = plan.optim
    if optim not in choices("training.optim") and optim == resolve_optim("auto", device_of(get_gpu(plan.gpu))):
        optim = "auto"  # e.g. the fused AdamW of CPU runs: only reachable through "auto"
    return apply_overrides(cfg, {
        "quantization.load_in": "4bit" if plan.method == "qlora" else ("8bit" if plan.weights == "int8" else "none"),
        "training.batch_size": plan.batch_size,
        "training.grad_accum": plan.grad_accum,
        "training.gradient_checkpointing": plan.gradient_checkpointing,
        "training.optim": optim,
        "training.max_length": plan.seq_len,
        # one GPU: the layout is decided where the run starts; more: sharded over them
        "training.distributed": "fsdp" if plan.gpus > 1 else "auto",
        "training.num_processes": plan.gpus if plan.gpus > 1 else 0,
    })


def configure_for(cfg: RunConfig, gpu: str | GpuSpec, *, allow_hub: bool = True) -> tuple[RunConfig, AutoPlan]:
    """``cfg`` with the method, batch, accumulation, checkpointing and optimizer that fit ``gpu``, and the plan.

    The config's own settings (LoRA rank and targets, max_length, effective batch) are the starting point.
    Raises EstimateError with the plan's reason (what does not fit, the smallest GPU that would) when no
    setup fits.

    >>> out, plan = configure_for(RunConfig(), "t4")  # doctest: +SKIP
    >>> plan.fits, out.training.batch_size  # doctest: +SKIP
    (True, 16)
    """
    card = get_gpu(gpu) if isinstance(gpu, str) else gpu
    spec = spec_for_config(cfg, allow_hub=allow_hub)
    base = setup_for(cfg, card).with_(strategy="none", gpus=1, offload=False)
    plan = auto_configure(spec, card, seq_len=cfg.training.max_length, base=base)
    if not plan.fits:
        plan = _sharded(spec, card, cfg.training.max_length, base, plan)
    if not plan.fits:
        raise EstimateError(plan.reason)
    return apply_plan(cfg, plan), plan


SHARDED_GPUS = (2, 4, 8)  # the GPU counts a run too big for one GPU is sharded over (one node's)


def _sharded(spec: ModelSpec, gpu: GpuSpec, seq_len: int, base: TrainSetup, single: AutoPlan) -> AutoPlan:
    """The plan of the fewest GPUs of ``gpu``'s kind that a run too big for one of them fits sharded (FSDP) over,
    or ``single`` (nothing fits even on 8) with its reason."""
    if gpu.is_cpu:
        return single
    for n in SHARDED_GPUS:
        plan = auto_configure(spec, gpu, seq_len=seq_len, base=base.with_(strategy="fsdp", gpus=n))
        if plan.fits:
            plan.gpus = n
            plan.reason = (f"nothing fits one {gpu.name}; sharded over {n} of them (FSDP: each holds 1/{n} of the "
                           f"base model), per GPU: {plan.reason}")
            return plan
    return single


@dataclass
class LayoutOption:
    """One way to run a config on Hugging Face Jobs: a flavor, its GPUs and how the run is laid out over them."""

    flavor: str
    gpu: str
    gpus: int
    strategy: str  # none | ddp | fsdp
    peak_gb: float  # per GPU
    fits: bool
    usd: float | None  # the run's cost (None: no price known, or no size to time)
    hours: float | None

    @property
    def label(self) -> str:
        """``1 GPU``, ``4 GPUs data parallel``, ``4 GPUs sharded``."""
        return "1 GPU" if self.gpus == 1 else f"{self.gpus} GPUs {'data parallel' if self.strategy == 'ddp' else 'sharded'}"


def layout_options(cfg: RunConfig, tokens: int | None = None, *, allow_hub: bool = True) -> list[LayoutOption]:
    """Every Jobs GPU flavor with the layout ``auto`` takes there (one GPU; several: data parallel when the run fits
    one of them, else sharded), its per-GPU peak, and the run's time and cost for ``tokens`` training tokens (all
    processes together); the fitting ones first, cheapest first."""
    from .hardware import JOBS_FLAVORS, flavor_price

    spec = spec_for_config(cfg, allow_hub=allow_hub)
    out = []
    for flavor, (name, n) in JOBS_FLAVORS.items():
        gpu = get_gpu(name)
        one = setup_for(cfg, gpu).with_(strategy="none", gpus=1, offload=False)
        single = estimate_training(spec, one, gpu, advise=False)
        setup = one if n == 1 else one.with_(strategy="ddp" if single.fits else "fsdp", gpus=n)
        est = single if n == 1 else estimate_training(spec, setup, gpu, advise=False)
        hours = usd = None
        if tokens:
            hours = estimate_time(spec, setup, gpu, tokens).hours
            price = flavor_price(flavor)
            usd = None if price is None else math.ceil(hours * 60) * price / 60
        out.append(LayoutOption(flavor, name, n, setup.strategy, est.peak_gb, est.fits, usd, hours))
    return sorted(out, key=lambda o: (not o.fits, o.usd if o.usd is not None else math.inf, o.gpus))


def cheapest_layout(cfg: RunConfig, tokens: int, *, allow_hub: bool = True) -> LayoutOption | None:
    """The cheapest Jobs flavor on which the run fits (None: none fits, or no price is known)."""
    fitting = [o for o in layout_options(cfg, tokens, allow_hub=allow_hub) if o.fits and o.usd is not None]
    return fitting[0] if fitting else None
