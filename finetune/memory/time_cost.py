"""How long, how much: training throughput from FLOPs and measured anchors (:func:`tokens_per_second`), and a
run's duration, Hugging Face Jobs cost and ZeroGPU quota (:func:`estimate_time` -> :class:`TimeEstimate`).

Arithmetic only, like the memory estimate (:mod:`finetune.memory.estimate`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .architecture import ModelSpec, linear_layers, load_model_spec  # noqa: F401 - doctests
from .hardware import JOBS_FLAVORS, ZEROGPU_DAILY_QUOTA_MIN, EstimateError, GpuSpec, get_gpu
from .train_setup import TrainSetup, default_setup  # noqa: F401 - doctests


THROUGHPUT_ANCHORS = (
    # (gpu, model, method, gradient checkpointing, batch, seq len (approx.), measured tokens/s, source)
    ("a100-80gb", "mistralai/Mistral-7B-v0.1", "lora", True, 4, 512, 3598, "fms-acceleration a100_80gb.csv #12"),
    ("a100-80gb", "mistralai/Mistral-7B-v0.1", "qlora", True, 4, 512, 2749, "fms-acceleration a100_80gb.csv #24"),
    ("a100-80gb", "mistralai/Mistral-7B-v0.1", "full", True, 4, 512, 2775, "fms-acceleration a100_80gb.csv #0"),
    ("a100-80gb", "NousResearch/Llama-2-70b-hf", "qlora", True, 4, 512, 457, "fms-acceleration a100_80gb.csv #44"),
    ("l40s", "meta-llama/Llama-3.2-3B", "lora", False, 4, 256, 6750, "peft MetaMathQA lora--llama-3.2-3B-rank32"),
)
# 4-bit layers dequantize before every matmul: 2749 / 3598 tok/s on the anchors above. LLM.int8's mixed
# matmul is slower still (0.5: an assumption, no anchor).
_METHOD_SPEED = {"nf4": 0.76, "fp4": 0.76, "int8": 0.5}


# Several GPUs: N GPUs train about EFFICIENCY x N times as fast as one. Data parallel all-reduces the (LoRA)
# gradients once a step; FSDP also gathers every block's weights twice a step (forward, and the recomputation
# in backward), which overlaps with compute only in part. Offloading the shards to CPU RAM moves every block
# over PCIe each pass. Assumptions to be replaced by measurements (bench/gpu_check.py --sharded), no anchor yet.
PARALLEL_EFFICIENCY = {"none": 1.0, "ddp": 0.85, "fsdp": 0.8}
OFFLOAD_SPEED = 0.35


def parallel_speedup(s: TrainSetup) -> float:
    """How many times one GPU's throughput the ``s.gpus`` GPUs of ``s.strategy`` reach."""
    if s.strategy == "none":
        return 1.0
    return s.gpus * PARALLEL_EFFICIENCY[s.strategy] * (OFFLOAD_SPEED if s.offload else 1.0)


def flops_per_token(spec: ModelSpec, s: TrainSetup) -> float:
    """Training FLOPs per token: forward 2 x active matmul weights + causal attention; backward repeats the
    forward for input gradients (and again for weight gradients in full fine-tuning); checkpointing adds
    one more forward."""
    active = spec.num_layers * sum(ln.d_in * ln.d_out * ln.active for ln in linear_layers(spec))
    active += spec.vocab_size * spec.hidden_size  # LM head
    forward = 2.0 * active + 2.0 * spec.num_layers * s.seq_len * spec.q_dim
    passes = (3 if s.method == "full" else 2) + (1 if s.gradient_checkpointing else 0) + (1 if s.reference else 0)
    return passes * forward


# Sampling one token at a time is memory-bound: a decoding step reaches about a tenth of a training step's
# arithmetic rate (rough; grpo's generation dominates its step time on small models).
DECODE_SLOWDOWN = 10.0


def tokens_per_second(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec | str) -> float:
    """Expected training throughput of the run on all its GPUs (rough: +-35% on the anchors, more elsewhere;
    several GPUs: :func:`parallel_speedup`).

    Bigger matmuls use a GPU better: the 70B anchor reaches ~1.25x the 7B one's efficiency, hence the
    (params / 7B) ** 0.1 size factor, clamped to [0.5, 1.3].
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    size: float = min(1.3, max(0.5, (spec.num_params / 7e9) ** 0.1))  # float ** float is typed Any
    eff = gpu.mfu * size * _METHOD_SPEED.get(s.weights, 1.0)
    return gpu.tflops * 1e12 * eff / flops_per_token(spec, s) * parallel_speedup(s)


@dataclass
class TimeEstimate:
    """How long a run takes on a GPU and what it costs there."""

    gpu: str
    tokens: int  # training tokens per epoch
    epochs: float
    tokens_per_second: float
    seconds: float
    usd: float | None  # Hugging Face Jobs cost (None: no priced Jobs flavor for this GPU)
    flavor: str | None
    zerogpu_quota_minutes: float | None  # ZeroGPU: quota minutes the run uses
    zerogpu_days: dict[str, float] | None  # days of daily quota, per account tier
    note: str = ""

    @property
    def hours(self) -> float:
        return self.seconds / 3600

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hours"] = round(self.hours, 3)
        d["tokens_per_second"] = round(self.tokens_per_second, 1)
        d["seconds"] = round(self.seconds, 1)
        d["usd"] = None if self.usd is None else round(self.usd, 2)
        return d


def estimate_time(spec: ModelSpec, s: TrainSetup, gpu: GpuSpec | str, tokens: int, epochs: float = 1.0) -> TimeEstimate:
    """Duration = tokens x epochs / throughput; cost from the Jobs flavor's hourly price (billed per minute;
    ``s.gpus`` GPUs cost that many times one);
    ZeroGPU quota minutes (xlarge counts double) and how many days of daily quota they take.

    >>> t = estimate_time(load_model_spec(""), default_setup(get_gpu("t4")), "t4", tokens=1_000_000)
    >>> t.usd is not None and t.seconds > 0
    True
    """
    gpu = get_gpu(gpu) if isinstance(gpu, str) else gpu
    if tokens < 0 or epochs <= 0:
        raise EstimateError(f"tokens must be >= 0 and epochs > 0, got {tokens} and {epochs}")
    tps = tokens_per_second(spec, s, gpu)
    seconds = tokens * epochs * s.sequences / tps  # a preference pair trains on both its answers
    if s.generated_tokens:
        # grpo: every prompt (``tokens`` counts the prompts' tokens; at most seq_len - generated_tokens each) gets
        # ``generations`` answers, each sampled token by token, then trained on with its prompt
        answers = tokens * epochs / max(1, s.seq_len - s.generated_tokens) * s.generations
        rate = tps * flops_per_token(spec, s)  # the training loop's FLOP/s
        decode = flops_per_token(spec, s.with_(gradient_checkpointing=False, reference=False)) / 3 * DECODE_SLOWDOWN
        seconds = answers * (s.seq_len / tps + s.generated_tokens * decode / rate)
    usd = None
    if gpu.usd_per_hour is not None:
        usd = math.ceil(seconds / 60) * gpu.usd_per_hour * s.gpus / 60  # billed per started minute
    quota = days = None
    note = "compute time only: model download and loading add minutes"
    if gpu.zerogpu_quota_factor:
        quota = seconds / 60 * gpu.zerogpu_quota_factor
        days = {tier: round(quota / per_day, 2) for tier, per_day in ZEROGPU_DAILY_QUOTA_MIN.items()}
        note += "; ZeroGPU calls are short: the run is split into checkpointed chunks"
    elif gpu.hf_flavor and usd is None:
        note += f"; the {gpu.hf_flavor} Jobs price was not in the sources checked"
    elif not gpu.hf_flavor and not gpu.is_cpu:
        note += "; no Hugging Face Jobs flavor has this GPU"
    flavor = gpu.hf_flavor
    if s.gpus > 1:  # the Jobs flavor with that many of these GPUs (None: no such flavor)
        flavor = next((f for f, (g, n) in JOBS_FLAVORS.items() if g == gpu.name and n == s.gpus), None)
    return TimeEstimate(gpu.name, tokens, epochs, tps, seconds, usd, flavor, quota, days, note)


# ---------------------------------------------------------------------------------------------
# entry points for the CLI and the UI

