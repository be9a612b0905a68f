"""What is being trained, as the estimator sees it: a RunConfig reduced to the settings that decide training
memory and speed (:class:`TrainSetup`), checked (:func:`check_setup`), and the setup of a config on a catalog GPU
(:func:`setup_for`, :func:`default_setup`).

>>> setup_for(None, get_gpu("t4"), method="lora").weights
'fp16'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..config import choices
from ..settings import AUTO_OPTIM
from .hardware import EstimateError, GpuSpec, get_gpu  # noqa: F401 - doctests

if TYPE_CHECKING:  # imported for annotations only: the config module is light, torch is never needed
    from ..config import RunConfig
    from ..settings import Device, SpeedOptions


METHODS = ("qlora", "lora", "full")
WEIGHT_FORMATS = ("nf4", "fp4", "int8", "bf16", "fp16", "fp32")
# The config's choices made concrete: what a user picks, and what "auto" resolves to (the fused AdamW of CPU runs
# is reachable only that way: settings.AUTO_OPTIM)
OPTIMIZERS = tuple(dict.fromkeys([*(o for o in choices("training.optim") if o != "auto"), *AUTO_OPTIM.values()]))
ATTENTION = choices("model.attn_implementation")
PRECISIONS = tuple(p for p in choices("training.precision") if p != "auto")
LOSSES = ("chunked", "linear_chunked", "full")
KERNELS = ("none", "liger")
STRATEGIES = tuple(c for c in choices("training.distributed") if c != "auto")  # none, ddp, fsdp
# ResolvedSettings.loss -> the estimator's loss: trl's fused head and the CPU trained-positions head are tiled by
# tokens x vocabulary ("chunked"); ours and Liger's fused linear cross-entropy by rows ("linear_chunked")
_LOSS_OF = {"trl": "chunked", "trained_positions": "chunked", "chunked": "linear_chunked", "liger": "linear_chunked"}


@dataclass(frozen=True)
class TrainSetup:
    """The settings that decide training memory (a RunConfig reduced to them; see :meth:`from_config`)."""

    method: str = "qlora"  # qlora: 4-bit base + LoRA; lora: 16-bit base + LoRA; full: every weight trains
    weights: str = "nf4"  # base weight format: nf4/fp4 (4-bit), int8, bf16/fp16, fp32
    double_quant: bool = True  # 4-bit: quantize the per-block scales too (~0.37 bit/param less)
    batch_size: int = 4  # examples per micro-batch
    seq_len: int = 1024  # tokens per example (padded/truncated length: the worst case)
    grad_accum: int = 1  # micro-batches per optimizer step (no memory cost)
    lora_r: int = 16
    lora_targets: tuple[str, ...] | str = "all-linear"
    lora_dropout: float = 0.0  # the config default (LoraSettings.dropout)
    use_dora: bool = False
    precision: str = "bf16"  # bf16/fp16 mixed precision, or fp32
    optim: str = "paged_adamw_32bit"
    gradient_checkpointing: bool = True
    attn: str = "sdpa"
    # Software stack. This project trains with trl >= 1.x, whose SFTTrainer scores tokens through a chunked
    # LM head (the [tokens, vocab] logits never exist); plain transformers' loss materialises them ("full").
    loss: str = "chunked"
    # peft.prepare_model_for_kbit_training (called by TRL 0.x for 4/8-bit models) casts every non-quantized
    # weight to fp32; fp32 norms then promote the whole residual stream and MLP activations to fp32.
    kbit_upcast: bool = False
    # Liger's RMSNorm/RoPE/SwiGLU (CUDA, liger-kernel installed: settings.resolve_kernels): a norm keeps its
    # input and one fp32 rstd per token instead of an fp32 copy; SwiGLU keeps gate and up, not silu(gate)
    kernels: str = "none"
    # The training method (training.method, finetune/methods.py): sequences each example puts through the model
    # (a preference pair: chosen and rejected), a no-grad reference pass per sequence (dpo, kto, grpo with a KL
    # term: with LoRA the base with the adapter disabled, no second copy of the weights), and the tokens GRPO
    # samples per answer before the training pass.
    tuning: str = "sft"
    sequences: int = 1
    reference: bool = False
    generated_tokens: int = 0
    generations: int = 1  # grpo: answers sampled per prompt
    # Several GPUs (training.distributed, finetune/launch_plan.py): none (one GPU), ddp (every GPU holds the whole
    # model) or fsdp (each of the ``gpus`` holds 1/gpus of the weights, adapters and optimizer states, and gathers
    # one block's weights at a time); ``offload``: FSDP keeps its shards in CPU RAM. Figures are per GPU.
    strategy: str = "none"
    gpus: int = 1
    offload: bool = False

    @property
    def tokens(self) -> int:
        return self.batch_size * self.seq_len * self.sequences

    @property
    def quantized(self) -> bool:
        return self.weights in ("nf4", "fp4", "int8")

    def describe(self) -> str:
        w = self.weights + ("+dq" if self.weights in ("nf4", "fp4") and self.double_quant else "")
        parts = [f"{self.method} ({w})"]
        if self.method != "full":
            t = self.lora_targets if isinstance(self.lora_targets, str) else ",".join(self.lora_targets)
            parts.append(f"r={self.lora_r} {t}")
        parts.append(f"batch {self.batch_size} x {self.seq_len} tokens")
        if self.grad_accum > 1:
            parts.append(f"grad_accum {self.grad_accum}")
        if self.tuning != "sft":
            parts.append(f"{self.tuning}: {self.sequences} sequence(s) per example"
                         + (", reference pass" if self.reference else "")
                         + (f", {self.generated_tokens} sampled tokens per answer" if self.generated_tokens else ""))
        if self.strategy != "none":
            parts.append(f"{self.gpus} GPUs " + ("data parallel" if self.strategy == "ddp" else "sharded (FSDP)"
                                                  + (", shards offloaded to CPU" if self.offload else "")))
        parts.append("grad checkpointing" if self.gradient_checkpointing else "no grad checkpointing")
        parts += [self.optim, self.attn, self.precision]
        if self.kernels != "none":
            parts.append(f"{self.kernels} kernels")
        if self.loss == "linear_chunked":
            parts.append("chunked linear cross-entropy")
        return ", ".join(parts)

    @classmethod
    def from_config(cls, cfg: RunConfig, gpu: GpuSpec | None = None, *, device: Device | None = None,
                    speed: SpeedOptions | None = None, **overrides: Any) -> TrainSetup:
        """The setup a RunConfig describes on ``gpu`` (None: a bf16 GPU), its ``auto`` values resolved by
        :func:`finetune.settings.resolve`, as training resolves them. ``device`` (default: the catalog GPU with no
        optional kernel package) and ``speed`` (default: the defaults) are what training passes to ``resolve``."""
        from ..settings import SpeedOptions, resolve

        from ..methods import get

        r = resolve(cfg, device or device_of(gpu), speed or SpeedOptions())
        t = cfg.training
        targets = r.lora_targets if isinstance(r.lora_targets, str) else tuple(r.lora_targets)
        m = get(t.method)  # a generating method: trl's batch counts answers, one sequence each
        answers, generated = m.sequences(t), (t.max_completion_length if m.generates else 0)
        base = cls(
            method=r.method, weights=r.weights, double_quant=r.double_quant, batch_size=t.batch_size,
            seq_len=t.max_length + generated, grad_accum=t.grad_accum,  # a prompt plus its sampled answer
            lora_r=cfg.lora.r, lora_targets=targets,
            lora_dropout=r.lora_dropout, use_dora=cfg.lora.use_dora, precision=r.precision, optim=r.optim,
            gradient_checkpointing=r.gradient_checkpointing, attn=r.attn_implementation,
            loss=_LOSS_OF.get(r.loss, "chunked"), kernels=r.kernels,
            tuning=t.method, sequences=1 if m.generates else answers, reference=m.reference(t),
            generated_tokens=generated, generations=answers if m.generates else 1,
            **_layout(cfg),
        )
        return base.with_(**overrides)

    def with_(self, **changes: Any) -> TrainSetup:
        """A copy with changes; changing ``method`` alone also picks its usual weight format."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if "method" in changes and "weights" not in changes:
            m = changes["method"]
            if m == "qlora" and not (self.weights in ("nf4", "fp4")):
                changes["weights"] = "nf4"
            elif m in ("lora", "full") and self.weights in ("nf4", "fp4", "int8"):
                changes["weights"] = self.precision if self.precision in ("bf16", "fp16") else "fp32"
        return check_setup(dataclasses.replace(self, **changes))


def _layout(cfg: RunConfig) -> dict[str, Any]:
    """The strategy, GPU count and offload a config names explicitly (``auto`` and a count of 0 depend on the
    machine: the estimate is of one GPU until the caller says how many)."""
    t = cfg.training
    if t.distributed in STRATEGIES and t.distributed != "none" and t.num_processes > 1:
        return {"strategy": t.distributed, "gpus": t.num_processes, "offload": t.distributed == "fsdp" and t.fsdp_offload}
    return {}


def check_setup(s: TrainSetup) -> TrainSetup:
    """Raise EstimateError naming every invalid field; return ``s`` when valid."""
    problems = []
    for name, allowed in (("method", METHODS), ("weights", WEIGHT_FORMATS), ("optim", OPTIMIZERS),
                          ("attn", ATTENTION), ("loss", LOSSES), ("kernels", KERNELS),
                          ("precision", PRECISIONS)):
        if getattr(s, name) not in allowed:
            problems.append(f"{name} '{getattr(s, name)}' is not one of: {', '.join(allowed)}")
    if s.strategy not in STRATEGIES:
        problems.append(f"strategy '{s.strategy}' is not one of: {', '.join(STRATEGIES)}")
    elif s.strategy != "none" and s.gpus < 2:
        problems.append(f"strategy {s.strategy} needs 2 or more GPUs, got {s.gpus}")
    if s.offload and s.strategy != "fsdp":
        problems.append("offload keeps the shards of a sharded (fsdp) run in CPU RAM; use strategy fsdp")
    for name in ("batch_size", "seq_len", "grad_accum", "lora_r", "gpus"):
        if getattr(s, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(s, name)}")
    if s.method == "qlora" and s.weights not in ("nf4", "fp4"):
        problems.append(f"method qlora needs 4-bit weights (nf4 or fp4), got {s.weights}")
    if s.method == "full" and s.quantized:
        problems.append(f"method full cannot train {s.weights} weights; use 16-bit weights or a LoRA method")
    if problems:
        raise EstimateError("; ".join(problems))
    return s


# ---------------------------------------------------------------------------------------------
# the components, in bytes



def device_of(gpu: GpuSpec | None) -> Device:
    """The training device a catalog entry stands for (None: a bf16-capable GPU)."""
    from ..settings import Device

    if gpu is None:
        return Device("cuda", bf16=True)
    return Device("cpu") if gpu.is_cpu else Device("cuda", bf16=gpu.bf16)


def default_setup(gpu: GpuSpec) -> TrainSetup:
    """The config defaults as train.py runs them on ``gpu`` (fp16 on a T4, fp32 and fused AdamW on CPU)."""
    from ..config import RunConfig

    return TrainSetup.from_config(RunConfig(), gpu)


def setup_for(config: RunConfig | None, gpu: GpuSpec, *, method: str | None = None, batch_size: int | None = None,
              seq_len: int | None = None) -> TrainSetup:
    """The TrainSetup of ``config`` (or the defaults) on ``gpu``, with command-line style overrides."""
    if config is None:
        from ..config import RunConfig

        config = RunConfig()
    s = TrainSetup.from_config(config, gpu)
    return s.with_(method=method, batch_size=batch_size, seq_len=seq_len)

