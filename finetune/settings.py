"""The one place where a config's "auto" settings become concrete ones on a device.

Training (``train.py``), the memory estimator (``memory.TrainSetup.from_config``) and the model card all call
:func:`resolve`, so the precision, optimizer, weight format and LoRA targets they report are the ones a run
actually uses. Pure: the device is a parameter (:meth:`Device.detect` asks torch, once, where needed).

>>> from finetune.config import RunConfig
>>> cpu = resolve(RunConfig(), Device("cpu"))
>>> cpu.precision, cpu.optim, cpu.weights, cpu.compute_dtype
('fp32', 'adamw_torch_fused', 'nf4', 'bfloat16')
>>> t4 = resolve(RunConfig(), Device("cuda", bf16=False))
>>> t4.precision, t4.optim, t4.compute_dtype
('fp16', 'paged_adamw_32bit', 'float16')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import parse_target_modules

if TYPE_CHECKING:  # annotations only: settings stay importable without loading the config's dependents
    from .config import RunConfig

# training.precision -> the 16-bit dtype names torch and transformers use
_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
_PRECISION = {v: k for k, v in _DTYPE.items()}


@dataclass(frozen=True)
class Device:
    """Where a run trains: ``kind`` as torch names it (cpu, cuda) and whether it computes in bf16 natively."""

    kind: str
    bf16: bool = True  # CUDA: Ampere (compute capability 8.0) and newer; a T4 (Turing) has none
    liger: bool = False  # liger-kernel is installed (its Triton kernels run on CUDA only)
    flash_attn: bool = False  # flash-attn is installed (variable-length attention kernels, CUDA only)

    @classmethod
    def detect(cls, kind: str) -> Device:
        """The device ``kind`` of this machine (asks torch whether CUDA supports bf16, and which optional kernel
        packages are installed)."""
        if kind != "cuda":
            return cls(kind)
        import importlib.util

        import torch

        return cls(kind, bool(torch.cuda.is_bf16_supported()), liger=importlib.util.find_spec("liger_kernel") is not None,
                   flash_attn=importlib.util.find_spec("flash_attn") is not None)


@dataclass(frozen=True)
class SpeedOptions:
    """Implementation choices that change speed, not results (bench/train_throughput.py --variants measures
    each one; the defaults are the measured best, bench/README-train.md)."""

    # CPU: the LM head and cross-entropy run on the trained positions only (prompt and padding positions never
    # reach the 49k-wide vocabulary projection); on CUDA trl's fused Triton LM head already does this in tiles.
    trained_positions_loss: bool = True
    # CPU + bf16: load the non-quantized weights (embeddings, norms, LM head) in bf16 too, so autocast does not
    # cast fp32 activations and the LM head again in every layer and step. Off: measured +10% tokens/s and -30%
    # peak RSS, but the held-out loss rose by 0.09 (the residual stream in bf16); fp32 weights + bf16 autocast
    # keep the quality of fp32 training.
    bf16_weights_on_cpu: bool = False
    # CPU: gradient checkpointing only when the run would not fit in RAM without it (train.use_checkpointing).
    checkpoint_only_when_needed_on_cpu: bool = True
    # CPU + sdpa + padding-free: attention runs sequence by sequence inside the concatenated row
    # (packed_attention.packed_sdpa_attention) instead of over the whole row with a block-diagonal mask.
    per_sequence_attention_on_cpu: bool = True

    # The CUDA choices below never act on CPU (resolve: the CPU path is the one measured above). Until
    # bench/gpu_check.py has measured them on a GPU (bench/README-gpu.md) they are reasoned, not measured, defaults.

    # CUDA + sdpa + padding-free: variable-length attention over the concatenated row, no [row, row] mask:
    # flash-attn's varlen kernel where flash-attn is installed, else SDPA sequence by sequence (flash SDPA
    # backend per sequence). Off: SDPA over the whole row with a block-diagonal mask (memory-efficient backend).
    varlen_attention_on_cuda: bool = True
    # CUDA + liger-kernel installed + a supported architecture (models.LIGER_ARCHITECTURES): Liger's RMSNorm
    # (keeps its input and one fp32 rstd per token instead of an fp32 copy: -2 bytes/hidden/norm/token), RoPE
    # (in place) and SwiGLU (recomputes silu(gate) * up in backward: -1 MLP-width tensor per token and layer).
    liger_kernels_on_cuda: bool = True
    # CUDA: the loss of the trained positions through a chunked linear cross-entropy (finetune/loss.py, or
    # Liger's fused linear cross-entropy with liger_kernels_on_cuda) instead of trl's fused LM head. Both avoid
    # the [tokens, vocab] logits; off until bench/gpu_check.py shows it beats trl's Triton kernel.
    chunked_loss_on_cuda: bool = False


@dataclass(frozen=True)
class ResolvedSettings:
    """A config's settings on one device, nothing left "auto"."""

    device: str  # cpu | cuda
    precision: str  # trainer mixed precision: bf16 | fp16 | fp32
    compute_dtype: str  # 4-bit layers' matmul dtype: bfloat16 | float16 | float32
    model_dtype: str  # dtype of the weights bitsandbytes does not quantize (all of them for load_in none)
    optim: str  # a transformers optimizer name
    attn_implementation: str
    load_in: str  # 4bit | 8bit | none
    method: str  # qlora (4-bit base) | lora (8/16/32-bit base)
    weights: str  # base linear weights in memory: nf4 | fp4 | int8 | bf16 | fp16 | fp32
    double_quant: bool
    gradient_checkpointing: bool  # as configured; train.use_checkpointing may skip it on CPU (SpeedOptions)
    lora_targets: list[str] | str  # "all-linear" or module names
    lora_dropout: float
    # how the training loss is computed (finetune.loss; SpeedOptions): trl (trl's fused LM head over the trained
    # positions), trained_positions (CPU: LM head on the trained positions, then chunked cross-entropy),
    # chunked (CUDA: chunked linear cross-entropy on the trained positions), liger (Liger's fused linear CE)
    loss: str = "trl"
    kernels: str = "none"  # liger | none: fused RMSNorm/RoPE/SwiGLU (CUDA, supported architectures)
    # the attention of padding-free batches: per_sequence_sdpa, flash_attention_2 (varlen), or attn_implementation
    attention: str = "sdpa"
    # gradient checkpointing re-runs each layer's forward without torch's reentrant autograd.Function: it works
    # with frozen inputs (QLoRA's embeddings) and lets the recomputation free its tensors layer by layer
    checkpoint_reentrant: bool = False

    @property
    def trainer_precision(self) -> dict[str, bool]:
        """The ``bf16``/``fp16`` flags of transformers' TrainingArguments (both off: fp32)."""
        return {"bf16": self.precision == "bf16", "fp16": self.precision == "fp16"}


def resolve_precision(value: str, device: Device) -> str:
    """bf16 where the GPU supports it, fp16 on older GPUs, fp32 on CPU (unless set explicitly).

    CPU stays fp32 even where bf16 is native (AMX): the 4-bit layers already multiply in their bf16 compute
    dtype and trl keeps QLoRA adapters in bf16, so autocast only adds casts. Measured on SmolLM2-135M QLoRA
    (bench/train_throughput.py --variants): fp32 1.0-1.19x the tokens/s of bf16 autocast, held-out loss 0.02
    lower.
    """
    if value != "auto":
        return value
    if device.kind == "cuda":
        return "bf16" if device.bf16 else "fp16"
    return "fp32"


def resolve_compute_dtype(value: str, device: Device) -> str:
    """The 4-bit layers' matmul dtype: bf16 where the device supports it, else fp16 on CUDA; bf16 on CPU
    (bitsandbytes' CPU kernels dequantize to bf16: half the bytes moved of fp32); fp32 elsewhere."""
    if value != "auto":
        return value
    if device.kind == "cuda":
        return "bfloat16" if device.bf16 else "float16"
    return "bfloat16" if device.kind == "cpu" else "float32"


# What training.optim "auto" trains with, by device kind (resolve_optim).
AUTO_OPTIM = {"cuda": "paged_adamw_32bit", "cpu": "adamw_torch_fused"}


def resolve_optim(value: str, device: Device) -> str:
    """QLoRA paper: paged optimizers absorb memory spikes on long sequences (CUDA). On CPU the fused AdamW
    updates every LoRA tensor in one C++ loop: the per-tensor kernels of plain AdamW (~12 small ops x 420
    tensors a step on SmolLM2 all-linear) cost more than the update itself."""
    if value != "auto":
        return value
    return AUTO_OPTIM["cuda" if device.kind == "cuda" else "cpu"]


def resolve(config: RunConfig, device: Device, speed: SpeedOptions = SpeedOptions()) -> ResolvedSettings:
    """Every "auto" of ``config`` made concrete for ``device`` (and the ``speed`` choices that change dtypes)."""
    q, t, lo = config.quantization, config.training, config.lora
    precision = resolve_precision(t.precision, device)
    compute = resolve_compute_dtype(q.compute_dtype, device)
    if device.kind == "cuda":
        model_dtype = compute  # the non-quantized weights load in the matmul dtype (2 bytes/param)
    elif device.kind == "cpu" and precision == "bf16" and speed.bf16_weights_on_cpu:
        model_dtype = "bfloat16"
    else:
        model_dtype = "float32"  # CPU: fp32 master weights; autocast (if any) casts per op
    method = "qlora" if q.load_in == "4bit" else "lora"
    weights = {"4bit": q.quant_type, "8bit": "int8"}.get(q.load_in) or _PRECISION[model_dtype]
    attn = config.model.attn_implementation
    return ResolvedSettings(
        device=device.kind, precision=precision, compute_dtype=compute, model_dtype=model_dtype,
        optim=resolve_optim(t.optim, device), attn_implementation=attn,
        load_in=q.load_in, method=method, weights=weights, double_quant=q.double_quant,
        gradient_checkpointing=t.gradient_checkpointing, lora_targets=parse_target_modules(lo.target_modules),
        lora_dropout=lo.dropout, loss=resolve_loss(device, speed), kernels=resolve_kernels(device, speed),
        attention=resolve_attention(attn, t.padding_free, device, speed),
    )


def resolve_loss(device: Device, speed: SpeedOptions = SpeedOptions()) -> str:
    """How the training loss is computed (``ResolvedSettings.loss``). CPU: the LM head on the trained positions
    only (measured, bench/README-train.md); CUDA: trl's fused LM head unless ``chunked_loss_on_cuda``."""
    if device.kind == "cpu":
        return "trained_positions" if speed.trained_positions_loss else "trl"
    if device.kind == "cuda" and speed.chunked_loss_on_cuda:
        return "liger" if device.liger and speed.liger_kernels_on_cuda else "chunked"
    return "trl"


def resolve_kernels(device: Device, speed: SpeedOptions = SpeedOptions()) -> str:
    """``liger`` on CUDA where liger-kernel is installed (training still checks the architecture), else none."""
    return "liger" if device.kind == "cuda" and device.liger and speed.liger_kernels_on_cuda else "none"


def resolve_attention(attn: str, padding_free: bool, device: Device, speed: SpeedOptions = SpeedOptions()) -> str:
    """The attention a padding-free batch runs: sequence by sequence (SDPA), flash-attn's varlen kernel, or the
    configured implementation as is (padded batches, packing, eager, flash and flex attention chosen explicitly)."""
    if not padding_free or attn != "sdpa":
        return attn
    if device.kind == "cpu":
        return "per_sequence_sdpa" if speed.per_sequence_attention_on_cpu else attn
    if device.kind == "cuda" and speed.varlen_attention_on_cuda:
        return "flash_attention_2" if device.flash_attn else "per_sequence_sdpa"
    return attn
