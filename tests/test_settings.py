"""One resolution of "auto" settings: training, the memory estimator and the model card see the same concrete
values on CPU and on CUDA GPUs (simulated: the device is a parameter); one parser of lora.target_modules;
speed options are explicit and the benchmark can turn every one off."""

from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import pytest

from finetune import memory, train
from finetune.card import model_card
from finetune.config import RunConfig, apply_overrides, parse_target_modules
from finetune.presets import load_preset, preset_paths
from finetune.settings import Device, SpeedOptions, resolve

ROOT = Path(__file__).resolve().parent.parent

# catalog GPU -> the device training would detect on it
DEVICES = {"cpu": Device("cpu"), "t4": Device("cuda", bf16=False), "a100-80gb": Device("cuda", bf16=True),
           "h200": Device("cuda", bf16=True)}

CONFIGS = {name: load_preset(name) for name in preset_paths()} | {
    "defaults": RunConfig(),
    "explicit": apply_overrides(RunConfig(), {"training.precision": "fp32", "training.optim": "adamw_8bit",
                                              "quantization.load_in": "none", "lora.target_modules": "q_proj, v_proj",
                                              "lora.dropout": 0.1, "model.attn_implementation": "eager"}),
}


@pytest.mark.parametrize("gpu", list(DEVICES))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_estimator_training_and_card_see_the_same_resolved_settings(name, gpu):
    cfg, device = CONFIGS[name], DEVICES[gpu]
    resolved = resolve(cfg, device)
    assert memory.device_of(memory.get_gpu(gpu)) == device
    # the estimator
    setup = memory.TrainSetup.from_config(cfg, memory.get_gpu(gpu))
    targets = resolved.lora_targets if isinstance(resolved.lora_targets, str) else tuple(resolved.lora_targets)
    assert (setup.precision, setup.optim, setup.weights, setup.method, setup.attn) == (
        resolved.precision, resolved.optim, resolved.weights, resolved.method, resolved.attn_implementation)
    assert (setup.lora_dropout, setup.lora_targets, setup.gradient_checkpointing) == (
        cfg.lora.dropout, targets, cfg.training.gradient_checkpointing)
    # training: the trainer's optimizer and mixed-precision flags
    args = train.trainer_settings(resolved)
    assert args["optim"] == setup.optim
    assert (args["bf16"], args["fp16"]) == (setup.precision == "bf16", setup.precision == "fp16")
    # the card
    card = model_card(cfg, "org/base", {"steps": 1}, [], {}, gpu, settings=resolved)
    assert f"| precision | {setup.precision}, optimizer {setup.optim} |" in card
    # nothing is left "auto"
    assert "auto" not in (resolved.precision, resolved.optim, resolved.compute_dtype, resolved.model_dtype)


def test_cpu_and_gpu_defaults_are_what_training_uses():
    cpu, t4, a100 = (resolve(RunConfig(), DEVICES[g]) for g in ("cpu", "t4", "a100-80gb"))
    assert (cpu.precision, cpu.optim, cpu.model_dtype, cpu.compute_dtype) == ("fp32", "adamw_torch_fused", "float32", "bfloat16")
    assert (t4.precision, t4.optim, t4.model_dtype) == ("fp16", "paged_adamw_32bit", "float16")
    assert (a100.precision, a100.optim, a100.model_dtype) == ("bf16", "paged_adamw_32bit", "bfloat16")
    bf16_cpu = apply_overrides(RunConfig(), {"training.precision": "bf16"})
    assert resolve(bf16_cpu, DEVICES["cpu"]).model_dtype == "float32"
    assert resolve(bf16_cpu, DEVICES["cpu"], SpeedOptions(bf16_weights_on_cpu=True)).model_dtype == "bfloat16"
    # the estimator's own defaults are the config's
    assert memory.TrainSetup().lora_dropout == RunConfig().lora.dropout
    assert memory.default_setup(memory.get_gpu("cpu")) == memory.TrainSetup.from_config(RunConfig(), memory.get_gpu("cpu"))


def test_the_card_written_after_training_resolves_on_the_training_device(tmp_path):
    from finetune.card import write_model_card

    path = write_model_card(tmp_path, RunConfig(), "org/base", {"steps": 1}, [], {}, "cpu")
    assert "| precision | fp32, optimizer adamw_torch_fused |" in path.read_text()
    # which figures were measured, on which device, and that none is an estimate
    assert "- measured during this run on CPU: the duration and the losses above; nothing on this card is an estimate" \
        in path.read_text()


def test_the_hyperparameters_tab_says_its_figures_are_estimates():
    from finetune.ui.hparams_tab import estimate_view

    verdict, _ = estimate_view(RunConfig(), "a100-80gb")
    assert "*Estimate: computed from the model's architecture for NVIDIA A100 80GB, not measured there." in verdict


def test_auto_configure_on_cpu_writes_an_optimizer_the_config_accepts():
    cfg, plan = memory.configure_for(RunConfig(), "cpu", allow_hub=False)
    assert plan.optim == "adamw_torch_fused" and cfg.training.optim == "auto"
    assert resolve(cfg, DEVICES["cpu"]).optim == plan.optim


def test_one_parser_of_target_modules():
    from finetune.models import lora_config
    from finetune.ui import forms

    assert parse_target_modules("all-linear") == parse_target_modules(" all-linear ") == "all-linear"
    assert parse_target_modules("q_proj, v_proj,") == parse_target_modules(["q_proj", " v_proj"]) == ["q_proj", "v_proj"]
    cfg = apply_overrides(RunConfig(), {"lora.target_modules": "q_proj, v_proj"})
    assert lora_config(cfg.lora).target_modules == {"q_proj", "v_proj"}
    assert memory.TrainSetup.from_config(cfg).lora_targets == ("q_proj", "v_proj")
    values = forms.config_to_values(cfg)
    assert forms.values_to_config(RunConfig(), values).lora.target_modules == ["q_proj", "v_proj"]


def test_speed_options_are_explicit_and_the_benchmark_can_turn_each_off():
    import inspect

    assert inspect.signature(train.train).parameters["speed"].default == SpeedOptions()
    assert not hasattr(train, "SPEED")
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    names = {f.name for f in dataclasses.fields(SpeedOptions)}
    assert set(bench.SPEED_OFF) == names and not any(bench.SPEED_OFF.values())
    for _, _, speed in bench.VARIANTS + bench.CUDA_VARIANTS:
        assert set(speed) <= names
        SpeedOptions(**speed)  # every variant is a valid set of options
    with pytest.raises(dataclasses.FrozenInstanceError):
        SpeedOptions().trained_positions_loss = False  # type: ignore[misc]


def test_gpu_switches_resolve_off_on_cpu_and_on_cuda_where_the_kernels_are_installed():
    cpu = resolve(RunConfig(), Device("cpu"))
    assert (cpu.loss, cpu.kernels, cpu.attention, cpu.checkpoint_reentrant) == (
        "trained_positions", "none", "per_sequence_sdpa", False)
    # every CUDA switch on and both kernel packages "installed": the CPU path stays exactly as it was
    everything = SpeedOptions(chunked_loss_on_cuda=True, liger_kernels_on_cuda=True, varlen_attention_on_cuda=True)
    assert resolve(RunConfig(), Device("cpu", liger=True, flash_attn=True), everything) == cpu
    assert resolve(RunConfig(), Device("cpu"), SpeedOptions(trained_positions_loss=False)).loss == "trl"
    # CUDA without optional packages: trl's fused LM head, no Liger, SDPA sequence by sequence
    bare = resolve(RunConfig(), Device("cuda"))
    assert (bare.loss, bare.kernels, bare.attention) == ("trl", "none", "per_sequence_sdpa")
    assert resolve(RunConfig(), Device("cuda"), everything).loss == "chunked"
    kitted = Device("cuda", liger=True, flash_attn=True)
    assert (resolve(RunConfig(), kitted).kernels, resolve(RunConfig(), kitted).attention) == ("liger", "flash_attention_2")
    assert resolve(RunConfig(), kitted, everything).loss == "liger"
    off = resolve(RunConfig(), kitted, SpeedOptions(**{k: False for k in SPEED_FIELDS}))
    assert (off.loss, off.kernels, off.attention) == ("trl", "none", "sdpa")
    # padded batches and an attention chosen explicitly are left alone
    assert resolve(apply_overrides(RunConfig(), {"training.padding_free": False}), kitted).attention == "sdpa"
    assert resolve(apply_overrides(RunConfig(), {"model.attn_implementation": "eager"}), kitted).attention == "eager"
    # 8-bit paged AdamW is an option beside the 32-bit default on CUDA
    assert resolve(RunConfig(), kitted).optim == "paged_adamw_32bit"
    assert resolve(apply_overrides(RunConfig(), {"training.optim": "paged_adamw_8bit"}), kitted).optim == "paged_adamw_8bit"


def test_the_estimator_sees_the_gpu_switches_training_resolves():
    kitted = Device("cuda", liger=True, flash_attn=True)
    gpu = memory.get_gpu("h100")
    plain = memory.TrainSetup.from_config(RunConfig(), gpu)
    assert (plain.kernels, plain.loss) == ("none", "chunked")
    full = memory.TrainSetup.from_config(RunConfig(), gpu, device=kitted, speed=SpeedOptions(chunked_loss_on_cuda=True))
    assert (full.kernels, full.loss) == ("liger", "linear_chunked")
    spec = memory.load_model_spec("meta-llama/Llama-2-7b-hf", allow_hub=False)
    assert memory.estimate_training(spec, full, gpu).peak_gb < memory.estimate_training(spec, plain, gpu).peak_gb
    # on CPU the estimate is what it was: the switches do not act there
    cpu = memory.get_gpu("cpu")
    assert memory.TrainSetup.from_config(RunConfig(), cpu, device=Device("cpu", liger=True, flash_attn=True),
                                         speed=SpeedOptions(chunked_loss_on_cuda=True)) == memory.default_setup(cpu)


SPEED_FIELDS = [f.name for f in dataclasses.fields(SpeedOptions)]
