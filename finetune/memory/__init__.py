"""Will it fit, how long, how much: GPU memory, auto-configuration, time and cost before a run starts.

Arithmetic only: no GPU, no weight download, no torch. Where each concept lives:

- :mod:`.hardware`: the GPU catalog (:data:`GPUS`, :func:`get_gpu`), Hugging Face Jobs prices, ZeroGPU tiers
  and daily quota, and what "fits" means (:func:`fit_verdict`).
- :mod:`.architecture`: a model's numbers (:class:`ModelSpec`, :func:`load_model_spec`, :func:`spec_for_config`).
- :mod:`.train_setup`: what is trained, as the estimator sees it (:class:`TrainSetup`, :func:`setup_for`).
- :mod:`.estimate`: the memory estimate (:func:`estimate`, :func:`estimate_training`, :func:`estimate_inference`).
- :mod:`.time_cost`: throughput, duration, Jobs cost and ZeroGPU quota (:func:`estimate_time`).
- :mod:`.auto`: auto-configuration (:func:`auto_configure`, :func:`apply_plan`, :func:`configure_for`).

>>> est = estimate(model="meta-llama/Llama-3.1-8B-Instruct", gpu="t4", method="qlora", seq_len=1024, batch_size=1)
>>> est.verdict, est.fits
('fits', True)
>>> plan = auto_configure("mistralai/Mistral-7B-v0.1", "t4", seq_len=1024)
>>> plan.method
'qlora'
"""

from __future__ import annotations

from .architecture import (Linear, ModelSpec, count_params, embedding_params, linear_layers, load_model_spec,
                           spec_for_config, spec_from_config, spec_from_gguf)
from .auto import AutoPlan, LayoutOption, apply_plan, auto_configure, cheapest_layout, configure_for, layout_options
from .estimate import (COMPONENT_HELP, block_weight_bytes, offloaded_bytes, InferenceEstimate, MemoryEstimate, activation_bytes, breakdown_bytes, estimate,
                       estimate_inference, estimate_training, kv_cache_bytes, layer_activation_bytes,
                       layer_backward_transient_bytes, logits_bytes, lora_params, optimizer_bytes_per_param,
                       smallest_gpu, suggest, targeted_layers, trainable_params, weight_bytes)
from .hardware import (JOBS_FLAVORS, flavor_price, CATALOG_DATE, CUDA_CONTEXT_GB, GPUS, MEASURED_GPUS, SAFE_FRACTION, ZEROGPU,
                       ZEROGPU_DAILY_QUOTA_MIN, EstimateError, GiB, GpuSpec, ZeroGpuFacts, figures_source,
                       fit_verdict, forget_live_prices, get_gpu, parse_jobs_hardware, prices_source,
                       refresh_jobs_prices)
from .time_cost import PARALLEL_EFFICIENCY, THROUGHPUT_ANCHORS, TimeEstimate, parallel_speedup, estimate_time, flops_per_token, tokens_per_second
from .train_setup import (ATTENTION, LOSSES, METHODS, OPTIMIZERS, WEIGHT_FORMATS, TrainSetup, check_setup,
                          default_setup, device_of, setup_for)

__all__ = [
    "JOBS_FLAVORS", "LayoutOption", "cheapest_layout", "flavor_price", "layout_options", "PARALLEL_EFFICIENCY", "block_weight_bytes", "offloaded_bytes", "parallel_speedup",
    "CATALOG_DATE", "ZEROGPU", "ZeroGpuFacts", "forget_live_prices", "parse_jobs_hardware", "prices_source",
    "refresh_jobs_prices", "ATTENTION", "COMPONENT_HELP", "CUDA_CONTEXT_GB", "GPUS", "LOSSES", "METHODS", "OPTIMIZERS", "SAFE_FRACTION",
    "THROUGHPUT_ANCHORS", "WEIGHT_FORMATS", "ZEROGPU_DAILY_QUOTA_MIN", "AutoPlan", "EstimateError", "GiB", "GpuSpec",
    "InferenceEstimate", "Linear", "MemoryEstimate", "ModelSpec", "TimeEstimate", "TrainSetup", "activation_bytes",
    "apply_plan", "auto_configure", "breakdown_bytes", "check_setup", "configure_for", "count_params",
    "default_setup", "device_of", "embedding_params", "estimate", "estimate_inference", "estimate_time", "estimate_training",
    "MEASURED_GPUS", "figures_source", "fit_verdict", "flops_per_token", "get_gpu", "kv_cache_bytes", "layer_activation_bytes",
    "layer_backward_transient_bytes", "linear_layers", "load_model_spec", "logits_bytes", "lora_params",
    "optimizer_bytes_per_param", "setup_for", "smallest_gpu", "spec_for_config", "spec_from_config",
    "spec_from_gguf", "suggest", "targeted_layers", "tokens_per_second", "trainable_params", "weight_bytes",
]
