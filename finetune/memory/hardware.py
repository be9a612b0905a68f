"""The accelerators a run can use: memory, speed, Hugging Face Jobs price, ZeroGPU quota; what "fits" means.

Units: "GB" here is GiB (2**30 bytes), the unit torch and nvidia-smi report; a "16 GB" T4 shows 15.0 of them.

>>> get_gpu("t4").usable_gb, fit_verdict(14.0, get_gpu("t4"))
(15.0, 'tight')
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from ..errors import UserError

GiB = 1024**3

# Training a GPU can "just fit" at 100% of its memory is a lottery: the allocator, a long example or the
# optimizer's first step adds a little. A setup "fits" up to this share of the usable memory, is "tight"
# up to 100%, and "does not fit" above. 0.85 leaves room for the estimator's own +-15% error.
SAFE_FRACTION = 0.85

# CUDA context + cuBLAS/cuDNN workspaces: ~0.3-0.6 GB on recent drivers, outside torch's allocator (it shows
# in nvidia-smi, not in torch.cuda.memory_reserved).
CUDA_CONTEXT_GB = 0.5


@dataclass(frozen=True)
class GpuSpec:
    """One accelerator the app can run on."""

    name: str
    label: str
    nominal_gb: float  # the catalog size ("16 GB")
    usable_gb: float  # GiB the driver reports as total (nvidia-smi), before the CUDA context
    tflops: float  # dense bf16/fp16 tensor-core TFLOP/s from the spec sheet (fp32 accumulate)
    mfu: float  # share of `tflops` a Hugging Face training loop reaches on a 7B model (see THROUGHPUT_ANCHORS)
    bf16: bool = True  # T4 (Turing) has no bf16: training runs in fp16
    hf_flavor: str | None = None  # the Hugging Face Jobs flavor with this GPU, if any
    usd_per_hour: float | None = None  # that flavor's price
    zerogpu_quota_factor: float | None = None  # ZeroGPU: quota minutes used per GPU minute

    @property
    def is_cpu(self) -> bool:
        return self.name == "cpu"


def _host_ram_gb() -> float:
    """Physical memory of this machine (the 'GPU memory' of a CPU run)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    except (ValueError, OSError, AttributeError):
        return 16.0


# usable_gb: nvidia-smi "memory.total" (MiB / 1024) of each board. Prices: Hugging Face Jobs, billed per
# minute: t4-small $0.40/h, a10g-large $1.50/h, a100-large $2.50/h, h200 $5.00/h (shared/STACK.md, Nov 2026);
# a10g-small $1.00/h, l4x1 $0.80/h, l40sx1 $1.80/h: the same flavors' hourly prices in the Hub's hardware
# table (https://huggingface.co/docs/hub/en/spaces-gpus, "1x Nvidia L4 ... $0.80", "1x Nvidia L40S ...
# $1.80", "Nvidia A10G - small ... $1.00"). No Jobs flavor offers an A100-40GB or an H100; rtx-pro-6000 is
# a flavor but its price was not in the sources checked (None: the estimate says so instead of guessing).
# ZeroGPU (2026): an RTX Pro 6000 Blackwell; "large" is half a card, "xlarge" the whole card at 2x quota.
GPUS: dict[str, GpuSpec] = {
    g.name: g
    for g in (
        GpuSpec("t4", "NVIDIA T4", 16, 15.0, 65, 0.25, bf16=False, hf_flavor="t4-small", usd_per_hour=0.40),
        GpuSpec("l4", "NVIDIA L4", 24, 22.5, 121, 0.25, hf_flavor="l4x1", usd_per_hour=0.80),
        GpuSpec("a10g", "NVIDIA A10G", 24, 22.5, 125, 0.25, hf_flavor="a10g-small", usd_per_hour=1.00),
        GpuSpec("l40s", "NVIDIA L40S", 48, 45.0, 362, 0.25, hf_flavor="l40sx1", usd_per_hour=1.80),
        GpuSpec("a100-40gb", "NVIDIA A100 40GB", 40, 40.0, 312, 0.45),
        GpuSpec("a100-80gb", "NVIDIA A100 80GB", 80, 80.0, 312, 0.45, hf_flavor="a100-large", usd_per_hour=2.50),
        GpuSpec("h100", "NVIDIA H100 80GB", 80, 79.6, 989, 0.35),
        GpuSpec("h200", "NVIDIA H200", 141, 140.4, 989, 0.35, hf_flavor="h200", usd_per_hour=5.00),
        GpuSpec("rtx-pro-6000", "NVIDIA RTX Pro 6000 Blackwell", 96, 95.6, 500, 0.25, hf_flavor="rtx-pro-6000"),
        GpuSpec("zerogpu-large", "ZeroGPU large (half an RTX Pro 6000)", 48, 47.8, 250, 0.25, zerogpu_quota_factor=1.0),
        GpuSpec("zerogpu-xlarge", "ZeroGPU xlarge (an RTX Pro 6000)", 96, 95.6, 500, 0.25, zerogpu_quota_factor=2.0),
        # CPU: memory is this machine's RAM; 0.2 effective TFLOP/s is an order of magnitude (shared/STACK.md:
        # SmolLM2-135M on 2 cores, batch 4 of short examples, 1.5-1.9 s/step); measure a few steps instead.
        GpuSpec("cpu", "this machine's CPU", 0, 0, 0.5, 0.4, bf16=True),
    )
}

# The GPUs on which bench/gpu_check.py measured the estimator's peak memory and step time, as recorded in
# bench/README-gpu.md: catalog name -> "date, GPU as torch names it". Empty: no GPU was lent yet, so every GPU
# figure of the estimator is an estimate (computed from the architecture, calibrated on published peaks:
# bench/README-memory.md).
MEASURED_GPUS: dict[str, str] = {}


def figures_source(gpu: GpuSpec) -> str:
    """One sentence saying whether the memory and time figures for ``gpu`` are measured or estimated.

    >>> figures_source(get_gpu("t4")).startswith("Estimate")
    True
    """
    if gpu.name in MEASURED_GPUS:
        return (f"Estimate checked against a measurement on {MEASURED_GPUS[gpu.name]} (bench/gpu_check.py, "
                "bench/README-gpu.md).")
    where = "this machine's RAM" if gpu.is_cpu else gpu.label
    measured = ", ".join(f"{k} ({v})" for k, v in MEASURED_GPUS.items()) or "none yet"
    return (f"Estimate: computed from the model's architecture for {where}, not measured there. GPUs measured by "
            f"bench/gpu_check.py: {measured}.")


# ZeroGPU daily quota in GPU minutes (shared/STACK.md): anonymous visitors, free accounts, PRO accounts.
ZEROGPU_DAILY_QUOTA_MIN = {"anonymous": 2, "free": 5, "pro": 40}


class EstimateError(ValueError, UserError):
    """Input the estimator cannot use; the message says what to change."""


def get_gpu(name: str) -> GpuSpec:
    """A catalog entry by name (case-insensitive); ``cpu`` reports this machine's RAM as its memory."""
    key = (name or "").strip().lower()
    if key not in GPUS:
        raise EstimateError(f"unknown GPU '{name}'; choose one of: {', '.join(GPUS)}")
    gpu = GPUS[key]
    if gpu.is_cpu:
        ram = round(_host_ram_gb(), 1)
        gpu = dataclasses.replace(gpu, nominal_gb=ram, usable_gb=ram)
    return gpu


def fit_verdict(peak_gb: float, gpu: GpuSpec) -> str:
    """The verdict of a peak on ``gpu``: "fits" up to SAFE_FRACTION of its usable GB, "tight" up to all of them,
    else "does not fit"."""
    if peak_gb <= SAFE_FRACTION * gpu.usable_gb:
        return "fits"
    if peak_gb <= gpu.usable_gb:
        return "tight"
    return "does not fit"
