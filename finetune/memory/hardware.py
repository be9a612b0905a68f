"""The accelerators a run can use: memory, speed, Hugging Face Jobs price, ZeroGPU quota; what "fits" means.

Units: "GB" here is GiB (2**30 bytes), the unit torch and nvidia-smi report; a "16 GB" T4 shows 15.0 of them.

>>> get_gpu("t4").usable_gb, fit_verdict(14.0, get_gpu("t4"))
(15.0, 'tight')
"""

from __future__ import annotations

import dataclasses
import os
import time
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


# The one catalog of hardware facts that change: Hugging Face Jobs flavors and prices, ZeroGPU hardware, quotas
# and call limits. Written down on CATALOG_DATE; Jobs prices are replaced by the live listing when the app is online
# (refresh_jobs_prices), and everything that shows a price, a quota or a limit reads it from here.
CATALOG_DATE = "2026-12-02"

# usable_gb: nvidia-smi "memory.total" (MiB / 1024) of each board. Offline Jobs prices, billed per minute, as listed
# on CATALOG_DATE: t4-small $0.40/h, a10g-large $1.50/h, a100-large $2.50/h, h200 $5.00/h (shared/STACK.md);
# a10g-small $1.00/h, l4x1 $0.80/h, l40sx1 $1.80/h (https://huggingface.co/docs/hub/en/spaces-gpus). No Jobs
# flavor offers an A100-40GB or an H100; rtx-pro-6000 is a flavor whose price was not in the sources checked (None:
# the estimate says so instead of guessing; the live listing fills it in when online).
# ZeroGPU (2026): an RTX Pro 6000 Blackwell; "large" is half a card (48 GB), "xlarge" the whole card (96 GB) at
# twice the quota.
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
        GpuSpec("zerogpu-large", "ZeroGPU large (half an RTX Pro 6000 Blackwell)", 48, 47.8, 250, 0.25,
                zerogpu_quota_factor=1.0),
        GpuSpec("zerogpu-xlarge", "ZeroGPU xlarge (a whole RTX Pro 6000 Blackwell)", 96, 95.6, 500, 0.25,
                zerogpu_quota_factor=2.0),
        # CPU: memory is this machine's RAM; 0.2 effective TFLOP/s is an order of magnitude (shared/STACK.md:
        # SmolLM2-135M on 2 cores, batch 4 of short examples, 1.5-1.9 s/step); measure a few steps instead.
        GpuSpec("cpu", "this machine's CPU", 0, 0, 0.5, 0.4, bf16=True),
    )
}


# Hugging Face Jobs GPU flavors (huggingface_hub's JobHardware names): flavor -> (catalog GPU, GPUs). A flavor of
# N GPUs costs its live listed price, else N times its GPU's one-GPU price.
JOBS_FLAVORS: dict[str, tuple[str, int]] = {
    "t4-small": ("t4", 1), "t4-medium": ("t4", 1), "l4x1": ("l4", 1), "l4x4": ("l4", 4),
    "a10g-small": ("a10g", 1), "a10g-large": ("a10g", 1), "a10g-largex2": ("a10g", 2), "a10g-largex4": ("a10g", 4),
    "l40sx1": ("l40s", 1), "l40sx4": ("l40s", 4), "l40sx8": ("l40s", 8),
    "a100-large": ("a100-80gb", 1), "a100x4": ("a100-80gb", 4), "a100x8": ("a100-80gb", 8),
    "h200": ("h200", 1), "h200x2": ("h200", 2), "h200x4": ("h200", 4), "h200x8": ("h200", 8),
    "rtx-pro-6000": ("rtx-pro-6000", 1), "rtx-pro-6000x2": ("rtx-pro-6000", 2), "rtx-pro-6000x4": ("rtx-pro-6000", 4),
    "rtx-pro-6000x8": ("rtx-pro-6000", 8),
}


def flavor_price(flavor: str) -> float | None:
    """USD per hour of a Jobs flavor: the live listing's, else its GPUs' offline one-GPU price times their count
    (None: no price known)."""
    if flavor in _live_prices:
        return _live_prices[flavor]
    name, n = JOBS_FLAVORS[flavor]
    one = get_gpu(name).usd_per_hour
    return None if one is None else one * n


@dataclass(frozen=True)
class ZeroGpuFacts:
    """ZeroGPU as it is on CATALOG_DATE."""

    card: str
    sizes: dict[str, str]  # ``spaces.GPU(size=...)`` -> catalog entry (GPUS)
    daily_quota_min: dict[str, int]  # GPU minutes per day, per account tier
    usd_per_10_min_beyond_quota: float  # credits, once the day's quota is spent
    default_call_s: int  # a call's duration unless it asks for another
    max_call_s: int  # about the longest a call may ask for
    torch_compile: bool  # whether torch.compile works inside a call


ZEROGPU = ZeroGpuFacts(
    card="NVIDIA RTX Pro 6000 Blackwell",
    sizes={"large": "zerogpu-large", "xlarge": "zerogpu-xlarge"},
    daily_quota_min={"unauthenticated": 2, "free": 5, "pro": 40, "team": 40, "enterprise": 60},
    usd_per_10_min_beyond_quota=1.0,
    default_call_s=60,
    max_call_s=300,
    torch_compile=False,
)
ZEROGPU_DAILY_QUOTA_MIN = ZEROGPU.daily_quota_min

# Jobs prices as read from the live hardware listing (refresh_jobs_prices): flavor -> USD per hour. Empty until
# read: the offline prices of GPUS apply. A cache of public prices, the same for every user.
_live_prices: dict[str, float] = {}
_live_read_at: list[float] = []


def parse_jobs_hardware(listing: list[dict[str, object]]) -> dict[str, float]:
    """Flavor -> USD per hour from the Hub's Jobs hardware listing (``GET /api/jobs/hardware``: name, unitCostUSD
    or unitCostMicroUSD per unitLabel). Entries without a price or with an unknown unit are left out."""
    per_hour = {"second": 3600.0, "minute": 60.0, "hour": 1.0}
    out: dict[str, float] = {}
    for item in listing:
        name, unit = item.get("name"), item.get("unitLabel", "minute")
        cost = item.get("unitCostUSD")
        if not isinstance(cost, (int, float)) and isinstance(item.get("unitCostMicroUSD"), (int, float)):
            cost = float(item["unitCostMicroUSD"]) / 1e6  # type: ignore[arg-type]
        if isinstance(name, str) and isinstance(cost, (int, float)) and unit in per_hour:
            out[name] = round(float(cost) * per_hour[str(unit)], 4)
    return out


def refresh_jobs_prices(listing: list[dict[str, object]] | None = None) -> dict[str, float]:
    """Read the Jobs prices from the live hardware listing (or ``listing``, a copy of it) and use them from now on;
    returns them. Offline (HF_HUB_OFFLINE) or unreachable: raises, and the offline prices stay."""
    if listing is None:
        from huggingface_hub import constants, get_session

        if constants.HF_HUB_OFFLINE:
            raise EstimateError("offline (HF_HUB_OFFLINE=1): the Jobs prices of the offline table "
                                f"({CATALOG_DATE}) are used")
        import httpx2  # huggingface_hub's HTTP client

        try:
            response = get_session().get(f"{constants.ENDPOINT}/api/jobs/hardware", timeout=10)
            response.raise_for_status()
            listing = response.json()
        except (httpx2.HTTPError, OSError, ValueError) as e:  # unreachable, refused, or not JSON
            raise EstimateError(f"the Jobs hardware listing cannot be read ({e.__class__.__name__}); the offline "
                                f"prices of {CATALOG_DATE} stay") from None
    prices = parse_jobs_hardware(listing or [])
    if not prices:
        raise EstimateError("the Jobs hardware listing has no prices; the offline table stays")
    _live_prices.clear()
    _live_prices.update(prices)
    _live_read_at[:] = [time.time()]
    return prices


def forget_live_prices() -> None:
    """Back to the offline prices (tests)."""
    _live_prices.clear()
    _live_read_at.clear()


def prices_source() -> str:
    """Where the Jobs prices shown come from: the live listing (when it was read) or the dated offline table."""
    if _live_read_at:
        return f"Hugging Face Jobs prices read live at {time.strftime('%Y-%m-%d %H:%M', time.gmtime(_live_read_at[0]))} UTC"
    return f"Hugging Face Jobs prices as listed on {CATALOG_DATE} (offline table)"

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




class EstimateError(ValueError, UserError):
    """Input the estimator cannot use; the message says what to change."""


def get_gpu(name: str) -> GpuSpec:
    """A catalog entry by name (case-insensitive); ``cpu`` reports this machine's RAM as its memory."""
    key = (name or "").strip().lower()
    if key not in GPUS:
        raise EstimateError(f"unknown GPU '{name}'; choose one of: {', '.join(GPUS)}")
    gpu = GPUS[key]
    if gpu.hf_flavor and gpu.hf_flavor in _live_prices:
        gpu = dataclasses.replace(gpu, usd_per_hour=_live_prices[gpu.hf_flavor])
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
