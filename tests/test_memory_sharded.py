"""The estimator on several GPUs: per-GPU memory of data parallel and of FSDP (the shard, the gathered blocks,
activations, the LoRA optimizer states, offload), within 15% of every published per-GPU figure under its stated
conditions; time on N GPUs and cost = N x price; the Jobs command of a multi-GPU flavor accepted by
huggingface_hub's job spec; ZeroGPU refusing a multi-GPU run. Offline, arithmetic only."""

from __future__ import annotations

import pytest

from finetune import memory as m
from finetune.backends import hfjobs, zerogpu
from finetune.config import RunConfig
from finetune.errors import UserError
from finetune.presets import load_preset

# Published per-GPU peaks of Llama-2-70B QLoRA on 2 GPUs. Stated conditions (peft docs, examples/sft
# run_peft_qlora_fsdp.sh and run_peft_qlora_deepspeed_stage3.sh): batch 2 per GPU, sequences packed to 2048
# tokens, gradient checkpointing, flash attention 2, LoRA r 8 on all linear layers with dropout 0.1, NF4 with
# double quantization stored in bf16, bf16, adamw_torch; FSDP FULL_SHARD with and without CPU offload, and
# DeepSpeed ZeRO-3 (which shards the same way: weights, gradients and optimizer states split over the GPUs).
# Stack of the time (2024): TRL 0.x, the fp32 residual stream of kbit training (kbit_upcast, as in
# bench/memory_reference.csv) and transformers' full-logits loss.
PEFT_FSDP = "https://huggingface.co/docs/peft/accelerate/fsdp"
PEFT_DS = "https://huggingface.co/docs/peft/accelerate/deepspeed"
PUBLISHED = [
    # (id, offload, published GB per GPU, source)
    ("fsdp-qlora-70b-2gpu", False, 35.6, PEFT_FSDP),
    ("fsdp-qlora-70b-2gpu-offload", True, 19.6, PEFT_FSDP),
    ("zero3-qlora-70b-2gpu", False, 36.6, PEFT_DS),
]
CONDITIONS = dict(method="qlora", weights="nf4", double_quant=True, batch_size=2, seq_len=2048, lora_r=8,
                  lora_targets="all-linear", lora_dropout=0.1, precision="bf16", optim="adamw_torch",
                  gradient_checkpointing=True, attn="flash_attention_2", loss="full", kbit_upcast=True,
                  strategy="fsdp", gpus=2)


PRESET_70B = "llama-3.1-70b-qlora-4xl40s"


def llama2_70b() -> m.ModelSpec:
    return m.load_model_spec("meta-llama/Llama-2-70b-hf", allow_hub=False)


@pytest.mark.parametrize("row", PUBLISHED, ids=lambda r: r[0])
def test_sharded_estimates_match_the_published_per_gpu_figures(row):
    _, offload, published, source = row
    assert source.startswith("https://")
    est = m.estimate_training(llama2_70b(), m.TrainSetup(**CONDITIONS, offload=offload), "a100-80gb", advise=False)
    assert est.peak_gb == pytest.approx(published, rel=0.15)


def test_answer_ai_70b_on_two_24gb_gpus_fits():
    # github.com/AnswerDotAI/fsdp_qlora README: Llama-2-70B, batch 2, context 512, gradient checkpointing,
    # CPU offload, QLoRA, on 2x 24 GB
    s = m.TrainSetup(**{**CONDITIONS, "seq_len": 512, "lora_dropout": 0.0}, offload=True)
    assert m.estimate_training(llama2_70b(), s, "a10g", advise=False).fits
    assert not m.estimate_training(llama2_70b(), s.with_(strategy="none", gpus=1, offload=False), "a10g").fits


def test_per_gpu_memory_of_each_layout():
    spec = llama2_70b()
    base = m.TrainSetup(**{**CONDITIONS, "strategy": "none", "gpus": 1})
    one = m.breakdown_bytes(spec, base, m.get_gpu("a100-80gb"))
    two = m.breakdown_bytes(spec, base.with_(strategy="fsdp", gpus=2), m.get_gpu("a100-80gb"))
    four = m.breakdown_bytes(spec, base.with_(strategy="fsdp", gpus=4), m.get_gpu("a100-80gb"))
    ddp = m.breakdown_bytes(spec, base.with_(strategy="ddp", gpus=4), m.get_gpu("a100-80gb"))
    for key in ("weights", "lora", "gradients", "optimizer"):  # the shard: 1/N of each
        assert two[key] == pytest.approx(one[key] / 2) and four[key] == pytest.approx(one[key] / 4)
    assert two["activations"] == one["activations"]  # each GPU runs its own batch
    # two blocks gathered whole (the one computing, the one prefetched) and the LM head
    head = spec.vocab_size * spec.hidden_size * 4
    assert two["gathered_blocks"] == pytest.approx(2 * m.block_weight_bytes(spec, base) + head)
    assert four["gathered_blocks"] == two["gathered_blocks"]
    assert ddp["weights"] == one["weights"] and ddp["ddp_buckets"] == one["gradients"]  # the whole model each
    off = m.breakdown_bytes(spec, base.with_(strategy="fsdp", gpus=2, offload=True), m.get_gpu("a100-80gb"))
    assert off["weights"] == off["optimizer"] == 0
    assert m.offloaded_bytes(spec, base.with_(strategy="fsdp", gpus=2, offload=True)) == pytest.approx(
        sum(one[k] for k in ("weights", "lora", "gradients", "optimizer")) / 2)
    with pytest.raises(m.EstimateError, match="strategy fsdp needs 2 or more GPUs"):
        base.with_(strategy="fsdp", gpus=1)


def test_time_on_n_gpus_and_cost_is_n_times_the_price():
    spec = llama2_70b()
    s = m.setup_for(None, m.get_gpu("a100-80gb")).with_(batch_size=2, seq_len=2048)
    one = m.estimate_time(spec, s, "a100-80gb", tokens=10_000_000)
    four = m.estimate_time(spec, s.with_(strategy="ddp", gpus=4), "a100-80gb", tokens=10_000_000)
    sharded = m.estimate_time(spec, s.with_(strategy="fsdp", gpus=4), "a100-80gb", tokens=10_000_000)
    assert four.tokens_per_second == pytest.approx(one.tokens_per_second * 4 * m.PARALLEL_EFFICIENCY["ddp"])
    assert sharded.seconds > four.seconds  # gathering every block costs time data parallel does not spend
    price = m.get_gpu("a100-80gb").usd_per_hour
    assert four.usd == pytest.approx(-(-four.seconds // 60) * price * 4 / 60)


def test_the_70b_preset_trains_sharded_on_four_l40s_and_not_on_one():
    cfg = load_preset(PRESET_70B)
    assert cfg.training.distributed == "fsdp" and cfg.training.num_processes == 4
    sharded = m.estimate(cfg, gpu="l40s", allow_hub=False)
    assert sharded.verdict == "fits" and sharded.setup.strategy == "fsdp" and sharded.setup.gpus == 4
    assert sharded.breakdown["weights"] < 10  # a quarter of the 4-bit weights per GPU
    cfg.training.distributed, cfg.training.num_processes = "none", 0
    assert not m.estimate(cfg, gpu="l40s", allow_hub=False).fits  # why the preset shards
    assert m.estimate(cfg, gpu="a100-80gb", allow_hub=False).fits  # one 80 GB GPU holds it whole


def test_a_4_gpu_jobs_command_is_what_huggingface_hub_sends(monkeypatch):
    from huggingface_hub import JobHardware
    from huggingface_hub._jobs_api import JobSpec, _create_job_spec

    from finetune.cli import build_parser

    cfg = load_preset(PRESET_70B)
    cfg.training.num_processes = 0  # every GPU of the flavor
    spec = hfjobs.job_spec(cfg, "l40sx4", "me/out", space_id="me/finetune", timeout_s=7200)
    payload = _create_job_spec(image=spec["image"], command=spec["command"], env=spec["env"],
                               secrets={"HF_TOKEN": "x"}, flavor=JobHardware(spec["flavor"]),
                               timeout=spec["timeout"], labels=spec["labels"])
    parsed = JobSpec(**payload)
    assert parsed.flavor == "l40sx4" and parsed.command == spec["command"]
    # the job runs our own train command, which plans the layout and starts accelerate itself
    args = build_parser().parse_args(parsed.command[3:])
    assert (args.distributed, args.num_processes) == ("fsdp", 4) and args.config_env == hfjobs.CONFIG_ENV


def test_zerogpu_refuses_a_multi_gpu_run(tmp_path):
    cfg = RunConfig()
    cfg.training.distributed, cfg.training.num_processes = "fsdp", 2
    with pytest.raises(UserError, match="ZeroGPU lends one GPU per call.*multi-GPU Hugging Face Jobs flavor"):
        zerogpu.start(cfg, tmp_path)
    assert not list(tmp_path.iterdir())  # refused before any run folder


def test_every_jobs_flavor_gets_a_layout_and_the_cheapest_fitting_one_is_named():
    from finetune.ui.hparams_tab import time_cost_markdown

    cfg = load_preset(PRESET_70B)
    cfg.training.distributed, cfg.training.num_processes = "auto", 0
    options = m.layout_options(cfg, 10_000_000, allow_hub=False)
    assert {o.flavor for o in options} == set(m.JOBS_FLAVORS)
    by = {o.flavor: o for o in options}
    assert by["l40sx1"].label == "1 GPU" and not by["l40sx1"].fits  # 48 GB of a 70B QLoRA: no room on one L40S
    assert by["l40sx4"].label == "4 GPUs sharded" and by["l40sx4"].fits  # so auto shards it there
    assert by["a100x4"].label == "4 GPUs data parallel"  # fits one A100 80 GB: data parallel
    assert by["l40sx4"].usd == pytest.approx(-(-by["l40sx4"].hours * 60 // 1) * 4 * m.get_gpu("l40s").usd_per_hour / 60)
    best = m.cheapest_layout(cfg, 10_000_000, allow_hub=False)
    assert best is not None and best.fits
    assert best.usd == min(o.usd for o in options if o.fits and o.usd is not None)
    cfg.training.max_steps = 100
    shown = time_cost_markdown(cfg, "l40s")
    assert f"Cheapest Jobs flavor that fits: **`{m.cheapest_layout(cfg, 100 * 2 * 2 * 2048, allow_hub=False).flavor}`**" in shown
    assert "4 GPUs sharded `l40sx4`" in shown


def test_the_estimate_command_gives_per_gpu_memory_and_the_n_gpu_flavor(capsys):
    import json

    from finetune.cli import main

    args = ["estimate", "--model", "meta-llama/Llama-3.1-70B-Instruct", "--gpu", "l40s", "--tokens", "10000000", "--json"]
    assert main(args) == 0
    one = json.loads(capsys.readouterr().out)
    assert main([*args, "--gpus", "4"]) == 0
    four = json.loads(capsys.readouterr().out)
    assert one["setup"]["strategy"] == "none" and four["setup"]["strategy"] == "fsdp" and four["setup"]["gpus"] == 4
    assert four["breakdown"]["weights"] == pytest.approx(one["breakdown"]["weights"] / 4, rel=0.01)
    assert not one["fits"] and four["fits"] and four["time"]["flavor"] == "l40sx4"
    assert four["time"]["hours"] < one["time"]["hours"]
