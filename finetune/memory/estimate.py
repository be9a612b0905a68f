"""Will it fit: the peak GPU memory of a training step, and of inference.

Arithmetic only: no GPU, no weight download, no torch. The model's numbers come from
:mod:`finetune.memory.architecture`, the GPU's from :mod:`finetune.memory.hardware`, and a RunConfig's
"auto" values are resolved by :func:`finetune.settings.resolve` as training resolves them.

Units: "GB" in this module and in what it prints is GiB (2**30 bytes), the unit torch and nvidia-smi
report; a "16 GB" T4 shows 15.0 of them.

The peak of a training step is the sum of
  weights        base weights at their precision (NF4 / int8 / 16-bit / fp32)
  lora           adapter weights
  gradients      one per trainable parameter
  optimizer      AdamW moments (32-bit: 8 bytes, 8-bit: 2 bytes per trainable parameter)
  activations    what backward needs: per-layer checkpoints, one recomputed layer, attention scores
  logits         the vocabulary projection and the loss (fp32 log-softmax unless the loss is chunked)
  cuda_context   CUDA context and kernel workspaces, outside the allocator
  fragmentation  memory the caching allocator keeps reserved but cannot reuse
On several GPUs (``TrainSetup.strategy``), per GPU: data parallel adds its gradient buckets; FSDP divides
weights, adapters, gradients and optimizer states by the GPU count (all of them to CPU RAM with offload) and
adds the gathered blocks (:func:`block_weight_bytes`).
(see :func:`estimate_training`). ``bench/README-memory.md`` compares the result with published peaks.

API: :func:`estimate` (a RunConfig on a GPU -> :class:`MemoryEstimate`: verdict, breakdown, explanation,
suggestions), :func:`estimate_training` (a ModelSpec and a :class:`TrainSetup`), :func:`estimate_time`
(-> :class:`TimeEstimate`), :func:`estimate_inference` (the playground).

>>> est = estimate(model="meta-llama/Llama-3.1-8B-Instruct", gpu="t4", method="qlora", seq_len=1024, batch_size=1)
>>> est.verdict, est.fits
('fits', True)
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .architecture import Linear, ModelSpec, linear_layers, load_model_spec, spec_for_config  # noqa: F401 - doctests
from .hardware import (CUDA_CONTEXT_GB, GPUS, EstimateError, GiB, GpuSpec, figures_source,
                       fit_verdict, get_gpu)
# What is trained (train_setup) and how long and how much (time_cost) have their own modules; importable from here.
from .time_cost import THROUGHPUT_ANCHORS as THROUGHPUT_ANCHORS
from .time_cost import TimeEstimate as TimeEstimate
from .time_cost import estimate_time as estimate_time
from .time_cost import flops_per_token as flops_per_token
from .time_cost import tokens_per_second as tokens_per_second
from .train_setup import ATTENTION as ATTENTION
from .train_setup import LOSSES as LOSSES
from .train_setup import METHODS as METHODS
from .train_setup import OPTIMIZERS as OPTIMIZERS
from .train_setup import WEIGHT_FORMATS as WEIGHT_FORMATS
from .train_setup import TrainSetup, check_setup, setup_for
from .train_setup import default_setup as default_setup
from .train_setup import device_of as device_of

if TYPE_CHECKING:  # imported for annotations only: the config module is light, torch is never needed
    from ..config import RunConfig


# ---------------------------------------------------------------------------------------------
# the components, in bytes


def _bytes_per_quantized_param(weights: str, double_quant: bool) -> float:
    """Bytes per weight of a bitsandbytes-quantized linear layer, scales included."""
    if weights in ("nf4", "fp4"):
        # 4 bits + one fp32 absmax per 64-weight block (0.5 bit); double quantization stores that absmax in
        # 8 bits with one fp32 per 256 blocks: 0.127 bit (QLoRA paper, section 3)
        return 0.5 + (1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64)
    if weights == "int8":
        return 1.0  # LLM.int8: one byte per weight (+ one fp32 scale per output row, negligible)
    return {"bf16": 2.0, "fp16": 2.0, "fp32": 4.0}[weights]


def _compute_bytes(s: TrainSetup) -> int:
    """Bytes of a matmul input/output: 2 under bf16/fp16 mixed precision, 4 in fp32."""
    return 4 if s.precision == "fp32" else 2


def _stream_bytes(s: TrainSetup) -> int:
    """Bytes of the residual stream and of the linear layers' outputs (bitsandbytes returns its input dtype)."""
    return 4 if (s.precision == "fp32" or (s.kbit_upcast and s.quantized)) else _compute_bytes(s)


def _adapter_bytes(s: TrainSetup) -> int:
    """Bytes per LoRA weight: trl >= 1.x casts QLoRA adapters to bf16; PEFT keeps 16-bit-LoRA adapters in
    fp32 (autocast_adapter_dtype=True), and so did TRL 0.x for every quantized model."""
    if s.precision == "fp32" or s.kbit_upcast or s.method == "lora":
        return 4
    return 2


def weight_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """Base weights: the decoder's linear layers at ``s.weights``; embeddings, LM head and norms stay 16-bit
    (bitsandbytes never quantizes them), or fp32 after prepare_model_for_kbit_training."""
    linear = spec.num_layers * sum(ln.d_in * ln.d_out * ln.copies for ln in linear_layers(spec))
    other = spec.num_params - linear
    if s.method == "full":
        return spec.num_params * _bytes_per_quantized_param(s.weights, False)
    other_bytes = 4 if (s.weights == "fp32" or (s.kbit_upcast and s.quantized)) else 2
    return linear * _bytes_per_quantized_param(s.weights, s.double_quant) + other * other_bytes


def targeted_layers(spec: ModelSpec, targets: tuple[str, ...] | str) -> list[Linear]:
    """The linear layers LoRA wraps: every one for ``all-linear``, else those whose name is listed."""
    layers = linear_layers(spec)
    if isinstance(targets, str):
        if targets == "all-linear":
            return layers
        targets = (targets,)
    wanted = {t.split(".")[-1] for t in targets}
    return [ln for ln in layers if ln.name in wanted]


def lora_params(spec: ModelSpec, s: TrainSetup) -> int:
    """Adapter parameters: r x (d_in + d_out) per wrapped layer (DoRA adds a d_out magnitude vector)."""
    per_layer = sum((s.lora_r * (ln.d_in + ln.d_out) + (ln.d_out if s.use_dora else 0)) * ln.copies
                    for ln in targeted_layers(spec, s.lora_targets))
    return spec.num_layers * per_layer


def trainable_params(spec: ModelSpec, s: TrainSetup) -> int:
    return spec.num_params if s.method == "full" else lora_params(spec, s)


def _trainable_bytes(s: TrainSetup) -> int:
    if s.method == "full":
        return 4 if s.weights == "fp32" else 2
    return _adapter_bytes(s)


def optimizer_bytes_per_param(optim: str, param_bytes: int) -> float:
    """AdamW keeps two moments per trainable parameter: torch's in the parameter's dtype, bitsandbytes'
    32-bit ones in fp32, its 8-bit ones in one byte each (block-wise scales are ~1% more)."""
    if optim in ("adamw_torch", "adamw_torch_fused"):
        return 2 * param_bytes
    if optim == "paged_adamw_32bit":
        return 8.0
    if optim in ("adamw_8bit", "paged_adamw_8bit"):
        return 2.0 * 1.016
    return 0.0  # sgd without momentum


def _norm_count(spec: ModelSpec) -> int:
    return 1 if spec.parallel_attn else 2


def layer_activation_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """Bytes per token one decoder layer keeps for backward (what a checkpointed layer recomputes).

    Frozen base layers (LoRA, QLoRA) keep none of their inputs: their input gradient needs only the weight.
    What stays: each norm's fp32 copy of its input, the attention kernel's q/k/v and output, the MLP's
    gate/up/activation outputs, and what the trainable parts read (LoRA inputs, or every input in full
    fine-tuning). Eager attention adds its [heads x seq] probabilities in fp32 and in the compute dtype.
    """
    h, q, kv, i = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    c, y = _compute_bytes(s), _stream_bytes(s)
    k = spec.experts_per_token if spec.num_experts > 1 else 1
    if s.kernels == "liger":  # Liger's RMSNorm keeps its input (stream dtype) and an fp32 rstd per token
        total = _norm_count(spec) * (y * h + 4)
    else:
        total = _norm_count(spec) * 4 * h  # RMSNorm/LayerNorm compute in fp32 and keep that copy
    total += c * (q + 2 * kv) + c * q  # flash/sdpa keep q, k, v and the output (+ a tiny logsumexp)
    if s.attn == "eager":
        total += (4 + c) * spec.num_heads * s.seq_len  # softmax in fp32 + its cast for the PV matmul
    mlp_tensors = 3 if spec.gated_mlp else 1  # gate, up, act(gate) | fc1 output before the GELU
    if spec.gated_mlp and s.kernels == "liger":
        mlp_tensors = 2  # Liger's SwiGLU recomputes silu(gate) in backward
    total += k * mlp_tensors * y * i
    if spec.num_experts > 1:
        total += k * y * h  # tokens gathered per expert
    # inputs of trainable matmuls, by input group
    group_dim = {"attn_in": (y, h), "attn_out": (c, q), "mlp_in": (y, h), "mlp_out": (y, i),
                 "expert_in": (y, h), "expert_out": (y, i)}
    if s.method == "full":
        for g, (b, d) in group_dim.items():
            if any(ln.group == g for ln in linear_layers(spec)):
                total += b * d * (k if g.startswith("expert") else 1)
        return total
    ad = _adapter_bytes(s)
    per_module_copy = (ad != c and s.precision != "fp32") or s.lora_dropout > 0
    copy_bytes = c if ad != c else ad  # autocast casts the (fp32) adapter input back to the compute dtype
    seen: set[str] = set()
    for ln in targeted_layers(spec, s.lora_targets):
        b, d = group_dim[ln.group]
        mult = k if ln.group.startswith("expert") else 1
        if per_module_copy:
            total += mult * (copy_bytes + (1 if s.lora_dropout > 0 else 0)) * d  # + dropout's bool mask
        elif ln.group not in seen:
            total += mult * b * d  # lora_A keeps the shared input itself
        seen.add(ln.group)
        total += mult * ad * s.lora_r  # lora_A's output, kept by lora_B
    return total


def layer_backward_transient_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """Bytes per token alive only while one layer runs backward: MLP-width gradients, residual gradients."""
    k = spec.experts_per_token if spec.num_experts > 1 else 1
    y = _stream_bytes(s)
    return 2 * k * y * spec.intermediate_size + 2 * y * spec.hidden_size


def activation_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """Activations of one micro-batch at their peak (the first layers of backward).

    With gradient checkpointing each layer keeps only its input (the residual stream, per token) and one layer
    at a time is recomputed; without it every layer keeps everything.
    """
    h, tokens = spec.hidden_size, s.tokens
    per_layer = layer_activation_bytes(spec, s)
    transient = layer_backward_transient_bytes(spec, s)
    final_norm = 4 * h + _stream_bytes(s) * h
    if s.gradient_checkpointing:
        per_token = spec.num_layers * _stream_bytes(s) * h + per_layer + transient + final_norm
    else:
        per_token = spec.num_layers * per_layer + transient + final_norm
    extra = 0.0
    if s.use_dora:  # DoRA materialises the dequantized weight of a layer to take its column norms
        extra = 2 * _compute_bytes(s) * max(ln.d_in * ln.d_out for ln in linear_layers(spec))
    return per_token * tokens + extra


# trl's chunked log-prob kernel (trl/kernels/chunked_logprob.py): tiles of 4096 tokens x 32768 vocab entries
_LOSS_TOKEN_TILE = 4096
_LOSS_VOCAB_TILE = 32768
_LINEAR_CHUNK_ROWS = 1024  # finetune.loss.CHUNK_ROWS (tests/test_memory.py keeps them equal)


def logits_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """The LM head and the loss.

    ``full`` (transformers' own loss): the [tokens, vocab] logits in the compute dtype, their fp32 upcast and
    the fp32 log-softmax saved for backward; backward adds the log-softmax gradient and the fp32 logits
    gradient. The peak is 12 bytes per vocabulary entry per token: the term that dominates for 128k-152k
    vocabularies (Llama 3, Qwen 2.5).
    ``chunked`` (trl >= 1.x SFTTrainer): 4096 x 32768 tiles in the compute dtype, a copy of the hidden states
    of the scored tokens and their fp32 gradient; a handful of fp32 statistics per token.
    ``linear_chunked`` (finetune/loss.py, Liger's fused linear cross-entropy): the hidden states of the scored
    tokens, their gradient (computed in forward, kept for backward), and one chunk of rows x vocabulary as fp32
    logits/softmax plus its cast to the compute dtype.
    """
    v, h, c, tokens = spec.vocab_size, spec.hidden_size, _compute_bytes(s), s.tokens
    if s.loss == "full":
        total = 12.0 * v * tokens
    elif s.loss == "linear_chunked":
        total = min(tokens, _LINEAR_CHUNK_ROWS) * v * (4 + c) + tokens * (2 * c * h + 8)
        if s.method == "full":
            total += 4.0 * v * h
    else:
        tile = min(tokens, _LOSS_TOKEN_TILE) * min(v, _LOSS_VOCAB_TILE) * c
        head_cast = min(v, _LOSS_VOCAB_TILE) * h * c if (s.kbit_upcast and s.quantized) else 0
        total = tile + head_cast + tokens * (2 * c * h + 4 * h + 32)
        if s.method == "full":
            total += 4.0 * v * h  # the LM head's gradient is accumulated in fp32 before the cast
    return total


_FRAGMENTATION = 0.10

# One line per breakdown component, for tables and tooltips.
COMPONENT_HELP = {
    "weights": "the base model's weights at their precision (embeddings and LM head stay 16-bit under 4-bit)",
    "lora": "the LoRA adapter weights being trained",
    "gradients": "one gradient per trainable weight",
    "optimizer": "AdamW's two moments per trainable weight (8-bit optimizers: a quarter of 32-bit)",
    "activations": "what backward needs: per-layer checkpoints plus one recomputed layer; grows with batch x length",
    "logits": "the vocabulary projection and the loss; large for 128k+ vocabularies unless chunked",
    "cuda_context": "CUDA context and kernel workspaces, outside PyTorch's allocator",
    "fragmentation": "memory PyTorch's caching allocator holds but cannot reuse (~10% of activations)",
    "ddp_buckets": "data parallel: a second copy of the trainable gradients, averaged across the GPUs",
    "gathered_blocks": "sharded: the block being computed and the next one, gathered whole from every GPU's "
                       "shard, and the LM head",
    "adapter": "LoRA weights loaded next to the base model",
    "kv_cache": "keys and values of every layer for the whole context",
}


@dataclass
class MemoryEstimate:
    """The peak GPU memory of one training step, its breakdown, and what it means on ``gpu``."""

    model: str
    setup: TrainSetup
    gpu: GpuSpec
    breakdown: dict[str, float]  # component -> GB, in the order they are listed in the module docstring
    peak_gb: float
    params: int
    trainable: int
    verdict: str  # "fits" | "tight" | "does not fit"
    explanation: str = ""
    suggestions: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        """Whether these figures are measured on this GPU or estimated (hardware.figures_source)."""
        return figures_source(self.gpu)

    @property
    def fits(self) -> bool:
        """True when the step fits in the GPU's memory at all ("tight" included)."""
        return self.verdict != "does not fit"

    @property
    def usage(self) -> float:
        return self.peak_gb / self.gpu.usable_gb if self.gpu.usable_gb else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "peak_gb": round(self.peak_gb, 2),
            "breakdown": {k: round(v, 3) for k, v in self.breakdown.items()},
            "fits": self.fits,
            "verdict": self.verdict,
            "gpu": self.gpu.name,
            "gpu_gb": self.gpu.nominal_gb,
            "gpu_usable_gb": self.gpu.usable_gb,
            "params": self.params,
            "trainable_params": self.trainable,
            "setup": dataclasses.asdict(self.setup),
            "explanation": self.explanation,
            "suggestions": list(self.suggestions),
            "notes": list(self.notes),
            "source": self.source,
        }


def breakdown_bytes(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec) -> dict[str, float]:
    """Each component of the peak, in bytes (sums to the peak).

    The loss's logits and the recomputed layer are counted together although backward frees the first
    before it needs the second: their blocks differ in size and the caching allocator does not reliably
    reuse one for the other; taking only the larger under-estimates long-context published peaks by up to
    19% (bench/README-memory.md).
    """
    n_train = trainable_params(spec, s)
    pbytes = _trainable_bytes(s)
    acts = activation_bytes(spec, s)
    logits = logits_bytes(spec, s)
    parts = {
        "weights": weight_bytes(spec, s),
        "lora": 0.0 if s.method == "full" else n_train * pbytes,
        "gradients": n_train * pbytes,
        "optimizer": n_train * optimizer_bytes_per_param(s.optim, pbytes),
        "activations": acts,
        "logits": logits,
        "cuda_context": 0.0 if gpu.is_cpu else CUDA_CONTEXT_GB * GiB,
        # freed activation blocks of varying sizes that the caching allocator cannot hand out again
        "fragmentation": _FRAGMENTATION * (acts + logits),
    }
    if s.reference:  # dpo, kto, grpo with a KL term: a second copy of the weights only without an adapter to
        parts["reference_model"] = weight_bytes(spec, s) if s.method == "full" else 0.0  # disable (full tuning)
    if s.strategy == "ddp":  # DDP's gradient buckets: a second copy of the trainable gradients, for the all-reduce
        parts["ddp_buckets"] = parts["gradients"]
    elif s.strategy == "fsdp":
        _shard(parts, spec, s)
    return parts


def block_weight_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """One decoder block's base weights (its linear layers at ``s.weights``, its norms 16-bit): what FSDP gathers
    whole on every GPU while the block computes."""
    linear = sum(ln.d_in * ln.d_out * ln.copies for ln in linear_layers(spec))
    return linear * _bytes_per_quantized_param(s.weights, s.double_quant and s.method != "full") + \
        _norm_count(spec) * spec.hidden_size * (4 if s.kbit_upcast and s.quantized else 2)


def _shard(parts: dict[str, float], spec: ModelSpec, s: TrainSetup) -> None:
    """FSDP on ``s.gpus`` GPUs (FULL_SHARD, a unit per block): weights, adapters, their gradients and optimizer
    states are split evenly, 1/gpus on each; the block being computed and the next one (prefetched) are gathered
    whole, and so is the LM head, kept from the end of forward into backward. ``offload``: the shards, the
    adapters' gradients and the optimizer step live in CPU RAM, so only the gathered blocks and the activations
    stay on the GPU."""
    n = s.gpus
    for key in ("weights", "lora", "gradients", "optimizer", "reference_model"):
        if key in parts:
            parts[key] = 0.0 if s.offload else parts[key] / n
    head = spec.vocab_size * spec.hidden_size * (4 if s.kbit_upcast and s.quantized else 2)
    parts["gathered_blocks"] = 2 * block_weight_bytes(spec, s) + head


def offloaded_bytes(spec: ModelSpec, s: TrainSetup) -> float:
    """CPU RAM one process of an offloaded FSDP run holds: its shard of the weights, adapters, gradients and
    optimizer states (0 without offload)."""
    if not s.offload:
        return 0.0
    whole = breakdown_bytes(spec, s.with_(strategy="none", gpus=1, offload=False), get_gpu("a100-80gb"))
    return sum(whole[k] for k in ("weights", "lora", "gradients", "optimizer")) / s.gpus




def estimate_training(spec: ModelSpec, setup: TrainSetup, gpu: GpuSpec | str, *, advise: bool = True) -> MemoryEstimate:
    """Peak memory of a training step of ``spec`` under ``setup`` on ``gpu``, with a verdict, a short
    explanation and (``advise``) the changes that would make it fit."""
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    setup = check_setup(setup)
    parts = {k: v / GiB for k, v in breakdown_bytes(spec, setup, gpu).items()}
    peak = sum(parts.values())
    est = MemoryEstimate(
        model=spec.name, setup=setup, gpu=gpu, breakdown=parts, peak_gb=peak, params=spec.num_params,
        trainable=trainable_params(spec, setup), verdict=fit_verdict(peak, gpu),
    )
    est.notes = _notes(spec, setup, gpu)
    if est.verdict != "fits" and setup.optim.startswith("paged_"):
        est.notes.append("paged optimizer states can spill to CPU RAM under pressure, so a 'tight' run often survives")
    est.explanation = _explain(est)
    if advise and est.verdict != "fits":
        est.suggestions = suggest(spec, setup, gpu)
    return est


def _notes(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec) -> list[str]:
    notes = []
    if s.method != "full" and not targeted_layers(spec, s.lora_targets):
        names = ", ".join(ln.name for ln in linear_layers(spec))
        notes.append(f"no layer of {spec.name} matches lora target_modules {s.lora_targets!r}; its layers: {names}")
    if s.seq_len > spec.max_positions:
        notes.append(f"seq_len {s.seq_len} exceeds the model's {spec.max_positions} positions")
    if s.attn == "eager" and s.seq_len >= 2048:
        notes.append("eager attention keeps [heads x seq x seq] scores: sdpa or flash attention avoids them")
    if gpu.name == "t4" and s.precision == "bf16":
        notes.append("T4 has no bf16: training runs in fp16")
    if spec.num_experts > 1:
        notes.append(f"mixture of experts: all {spec.num_experts} experts' weights are resident, "
                     f"activations go through {spec.experts_per_token} per token")
    return notes


def _explain(est: MemoryEstimate) -> str:
    g = est.gpu
    top = sorted(((v, k) for k, v in est.breakdown.items()), reverse=True)[:2]
    biggest = " and ".join(f"{k.replace('_', ' ')} ({v:.1f} GB)" for v, k in top)
    where = f"{g.name} ({g.usable_gb:.1f} GB usable)"
    pct = f"{100 * est.usage:.0f}%"
    if est.verdict == "fits":
        head = f"Fits: peak {est.peak_gb:.1f} GB is {pct} of {where}."
    elif est.verdict == "tight":
        head = (f"Tight: peak {est.peak_gb:.1f} GB is {pct} of {where}; a long example or allocator "
                f"fragmentation can still run out of memory.")
    else:
        head = f"Does not fit: peak {est.peak_gb:.1f} GB is more than the {where}."
    return f"{head} Largest parts: {biggest}."


def suggest(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec, limit: int = 4) -> list[str]:
    """Single changes that bring the peak under the safe share of ``gpu`` (or lower it most), best first.

    Each suggestion names the config field, the new value and the resulting peak.
    """
    cands: list[tuple[str, TrainSetup]] = []
    if s.batch_size > 1:
        for b in sorted({max(1, s.batch_size // 2), 1}, reverse=True):
            accum = max(1, math.ceil(s.batch_size * s.grad_accum / b))
            cands.append((f"training.batch_size {s.batch_size} -> {b} with training.grad_accum {s.grad_accum} -> "
                          f"{accum} (same effective batch)", s.with_(batch_size=b, grad_accum=accum)))
    if not s.gradient_checkpointing:
        cands.append(("training.gradient_checkpointing -> true (~30% slower, far fewer activations)",
                      s.with_(gradient_checkpointing=True)))
    if s.method != "qlora":
        cands.append(("quantization.load_in -> 4bit (QLoRA: 4-bit base weights)", s.with_(method="qlora")))
    if s.attn == "eager":
        cands.append(("model.attn_implementation -> sdpa", s.with_(attn="sdpa")))
    if s.loss == "full":
        cands.append(("train with trl's SFTTrainer (chunked loss: no [tokens x vocab] logits)", s.with_(loss="chunked")))
    if s.method == "full" and s.optim not in ("adamw_8bit", "paged_adamw_8bit"):
        cands.append(("training.optim -> paged_adamw_8bit (2 bytes of state per parameter)",
                      s.with_(optim="paged_adamw_8bit")))
    if s.seq_len > 256:
        half = max(256, s.seq_len // 2)
        cands.append((f"training.max_length {s.seq_len} -> {half} (longer examples are truncated)",
                      s.with_(seq_len=half)))
    scored = []
    for text, cand in cands:
        peak = sum(breakdown_bytes(spec, cand, gpu).values()) / GiB
        scored.append((fit_verdict(peak, gpu) != "fits", peak, text))
    scored.sort()
    out = [f"{text}: peak {peak:.1f} GB" for _, peak, text in scored[:limit]]
    if not any(not bad for bad, _, _ in scored):
        smallest = smallest_gpu(spec, s)
        out.append(f"or a bigger GPU: {smallest} fits this setup" if smallest
                   else "no GPU in the catalog fits this setup as it is")
    return out


def smallest_gpu(spec: ModelSpec, s: TrainSetup) -> str | None:
    """The catalog GPU with the least memory on which ``s`` fits with the safety margin (CPU excluded)."""
    # by catalog size, then the cheaper (priced) one: an a100-80gb Jobs flavor before an unpriced h100
    order = sorted((g for g in GPUS.values() if not g.is_cpu),
                   key=lambda g: (g.nominal_gb, g.usd_per_hour is None, g.usd_per_hour or 0.0))
    for gpu in order:
        peak = sum(breakdown_bytes(spec, s, gpu).values()) / GiB
        if fit_verdict(peak, gpu) == "fits":
            return gpu.name
    return None


# ---------------------------------------------------------------------------------------------
# inference (the playground)


@dataclass
class InferenceEstimate:
    """Memory to generate with a model: weights, KV cache for the whole context, one layer's prefill."""

    model: str
    gpu: GpuSpec
    weights: str
    batch_size: int
    context_tokens: int
    breakdown: dict[str, float]  # GB
    peak_gb: float
    verdict: str
    explanation: str = ""

    @property
    def fits(self) -> bool:
        return self.verdict != "does not fit"

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "gpu": self.gpu.name, "gpu_gb": self.gpu.nominal_gb, "weights": self.weights,
                "batch_size": self.batch_size, "context_tokens": self.context_tokens,
                "breakdown": {k: round(v, 3) for k, v in self.breakdown.items()},
                "peak_gb": round(self.peak_gb, 2), "fits": self.fits, "verdict": self.verdict,
                "explanation": self.explanation}


def kv_cache_bytes(spec: ModelSpec, tokens: int, batch_size: int = 1, dtype_bytes: int = 2) -> float:
    """Keys and values of every layer for ``tokens`` positions: 2 x layers x kv_heads x head_dim each."""
    return 2.0 * spec.num_layers * spec.kv_dim * dtype_bytes * tokens * batch_size


def estimate_inference(spec: ModelSpec, gpu: GpuSpec | str, *, weights: str = "bf16", double_quant: bool = True,
                       batch_size: int = 1, context_tokens: int | None = None, lora_r: int = 0,
                       lora_targets: tuple[str, ...] | str = "all-linear") -> InferenceEstimate:
    """Peak memory of generating ``context_tokens`` (prompt + answer) per sequence with ``spec``.

    The KV cache grows with the context; the prefill keeps one layer's activations for the whole prompt;
    generate() projects only the last position through the LM head.

    >>> est = estimate_inference(load_model_spec("meta-llama/Llama-3.1-8B-Instruct"), "t4", weights="nf4", context_tokens=4096)
    >>> est.verdict
    'fits'
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    if weights not in WEIGHT_FORMATS:
        raise EstimateError(f"weights '{weights}' is not one of: {', '.join(WEIGHT_FORMATS)}")
    ctx = context_tokens or min(spec.max_positions, 4096)
    c = 4 if (weights == "fp32" or gpu.is_cpu) else 2
    s = TrainSetup(method="qlora" if weights in ("nf4", "fp4") else "lora", weights=weights, double_quant=double_quant,
                   lora_r=max(1, lora_r), lora_targets=lora_targets, precision="fp32" if c == 4 else "bf16")
    h, i = spec.hidden_size, spec.intermediate_size
    k = spec.experts_per_token if spec.num_experts > 1 else 1
    prefill_per_token = c * (spec.q_dim + 2 * spec.kv_dim) + c * spec.q_dim + 3 * k * c * i + 4 * h
    kv = kv_cache_bytes(spec, ctx, batch_size, c)
    acts = prefill_per_token * ctx * batch_size + 4 * spec.vocab_size * batch_size
    # DynamicCache grows by concatenation: one layer's old and new cache briefly coexist
    grow = kv / spec.num_layers
    parts = {
        "weights": weight_bytes(spec, s),
        "adapter": lora_params(spec, s) * 2 if lora_r > 0 else 0.0,
        "kv_cache": kv + grow,
        "activations": acts,
        "cuda_context": 0.0 if gpu.is_cpu else CUDA_CONTEXT_GB * GiB,
        "fragmentation": _FRAGMENTATION * (acts + kv),
    }
    parts = {k2: v / GiB for k2, v in parts.items()}
    peak = sum(parts.values())
    verdict = fit_verdict(peak, gpu)
    est = InferenceEstimate(spec.name, gpu, weights, batch_size, ctx, parts, peak, verdict)
    est.explanation = (f"{verdict.capitalize()}: {peak:.1f} GB of {gpu.usable_gb:.1f} GB on {gpu.name} to chat with "
                       f"{ctx} tokens of context ({weights} weights {parts['weights']:.1f} GB, "
                       f"KV cache {parts['kv_cache']:.1f} GB).")
    return est


# ---------------------------------------------------------------------------------------------
# time and cost

# Measured training throughput (tokens/s, one GPU) that calibrates GpuSpec.mfu and the factors below:
#  - foundation-model-stack/fms-acceleration, scripts/benchmarks/refs/a100_80gb.csv (May 2024; HF SFTTrainer,
#    fp16, gradient checkpointing, flash-attn, batch 4, Alpaca): Mistral-7B LoRA r16 q/k/v/o 3598 tok/s,
#    QLoRA (bnb nf4) 2749 tok/s, full fine-tuning 2775 tok/s; Llama-2-70B QLoRA ("accelerated-peft-bnb")
#    457 tok/s.
#    https://github.com/foundation-model-stack/fms-acceleration/blob/main/scripts/benchmarks/refs/a100_80gb.csv
#  - huggingface/peft method_comparison/MetaMathQA/results/lora--llama-3.2-3B-rank32.json (June 2025; L40S,
#    bf16, LoRA r32 q/v, batch 4, no checkpointing): ~6750 tok/s.
#    https://github.com/huggingface/peft/blob/main/method_comparison/MetaMathQA/results/lora--llama-3.2-3B-rank32.json
# A100 reaches ~0.50 of its 312 TFLOP/s on the 7B LoRA row (0.45 used), the L40S 0.24 of 362. H100/H200 have
# no anchor here: 0.35 assumes Hopper's 3x peak is harder to fill with eager PyTorch kernels.
def estimate(config: RunConfig | None = None, *, model: str | ModelSpec | None = None, gpu: str | GpuSpec = "t4",
             method: str | None = None, batch_size: int | None = None, seq_len: int | None = None,
             allow_hub: bool = True) -> MemoryEstimate:
    """Peak training memory of ``config`` (or the defaults) on ``gpu``: verdict, breakdown, explanation and,
    unless it fits, what to change. ``model``/``method``/``batch_size``/``seq_len`` override the config.

    The one call behind `python -m finetune estimate` and the hyperparameters tab.
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    spec = model if isinstance(model, ModelSpec) else spec_for_config(config, model, allow_hub=allow_hub)
    s = setup_for(config, gpu, method=method, batch_size=batch_size, seq_len=seq_len)
    return estimate_training(spec, s, gpu)
