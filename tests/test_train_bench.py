"""The training benchmark's machinery at toy scale (tiny model, a few examples): both sides process the same
real tokens, the JSON has its keys, the README block is rewritten in place; and the trained-positions loss
the CPU path uses equals trl's loss, gradients included. Speed itself is not asserted here."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def load_bench():
    spec = importlib.util.spec_from_file_location("train_throughput", ROOT / "bench" / "train_throughput.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_chat_lengths_are_long_tailed(smollm2_tokenizer, tmp_path):
    bench = load_bench()
    rows = bench.generate_conversations(120, lo=20, hi=2000, median=250, seed=0)
    path = bench.write_jsonl(rows, tmp_path / "train.jsonl")
    examples, tok = bench.render(path, smollm2_tokenizer, max_length=4096)
    lengths = sorted(len(x) for x in tok["input_ids"])
    s = bench.length_summary(lengths)
    assert s["min"] < 80 and 150 < s["p50"] < 400 and 900 < s["max"] <= 2400, s
    assert s["p90"] > 1.8 * s["p50"]  # a long tail, like chat data
    # every example has trained (assistant) tokens, and the answers are a function of the prompt
    assert all(any(x != -100 for x in lab) for lab in tok["labels"])
    assert all(len(r["messages"]) % 2 == 0 for r in rows)


def test_readme_block_is_rewritten_in_place():
    bench = load_bench()
    side = lambda tps, mem, loss: {"tokens_per_s": tps, "peak_memory_mb": mem, "final_loss": loss,  # noqa: E731
                                   "eval_loss_assistant": loss - 1, "eval_loss_all": loss, "loadavg": [1.5, 1, 1]}
    res = {"device": "cpu", "device_name": "Test CPU, 2 cores", "model": "/m/SmolLM2", "model_params": 134_515_008,
           "dataset": {"train_examples": 48, "eval_examples": 12, "max_length": 512, "batch_size": 4,
                       "real_tokens_per_side": 6906, "token_lengths": {"min": 21, "p50": 116, "max": 372}},
           "baseline": side(200.0, 3300.0, 5.3), "ours": side(400.0, 2400.0, 3.7),
           "ratio_tokens_per_s": 1.873, "ratio_peak_memory": 0.727, "pairs": [{}, {}]}
    block = bench.results_table(res, "python bench/train_throughput.py --quick --readme")
    assert "| **ours / baseline** | **1.873x** | **0.727x** |" in block
    assert "| finetune defaults (ours) | 400 | 2400 | 3.7 | 2.7 | 3.7 |" in block
    assert "Test CPU, 2 cores" in block and "SmolLM2 (135M parameters)" in block and "--quick --readme" in block
    text = f"# T\n\n## Benchmarks\n\nbefore\n{bench.BEGIN}\nold table\n{bench.END}\nafter\n"
    once = bench.rewrite_block(text, block)
    assert "old table" not in once and once.startswith("# T\n\n## Benchmarks\n\nbefore\n") and once.endswith("after\n")
    assert bench.rewrite_block(once, block) == once  # idempotent: only the block changes
    with pytest.raises(SystemExit, match="add the markers"):
        bench.rewrite_block("# no markers\n", block)


def test_benchmark_json_equal_work_on_tiny_model(tiny_model_dir):
    """One command, both sides, ratios: the acceptance path of the benchmark, at toy scale."""
    cmd = [sys.executable, str(ROOT / "bench" / "train_throughput.py"), "--json", "--device", "cpu",
           "--model", str(tiny_model_dir), "--examples", "8", "--eval-examples", "2", "--max-length", "96",
           "--lo", "20", "--hi", "90", "--median", "40", "--batch-size", "4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=str(ROOT), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"device", "ours", "baseline", "ratio_tokens_per_s", "ratio_peak_memory"} <= res.keys()
    assert res["device"] == "cpu"
    expected = res["dataset"]["real_tokens_per_side"]
    for name in ("ours", "baseline"):
        side = res[name]
        assert {"tokens_per_s", "peak_memory_mb", "final_loss"} <= side.keys()
        assert side["tokens_per_s"] > 0 and side["peak_memory_mb"] > 0 and side["final_loss"] > 0
        # equal work: each side counted, batch by batch, exactly the real tokens of one epoch
        assert side["real_tokens"] == expected and side["real_tokens_match"], (name, side["real_tokens"], expected)
        assert side["steps"] == 2  # 8 examples, batch 4, one epoch
        assert side["eval_loss_assistant"] > 0 and side["eval_loss_all"] > 0
    assert res["baseline"]["padded_slots"] > expected  # pad-to-longest batches carry padding
    assert res["ours"]["padded_slots"] == expected and res["ours"]["padding_fraction"] == 0  # padding-free
    assert res["baseline"]["settings"]["gradient_checkpointing"] is True
    assert res["ours"]["settings"]["lora_r"] == 16 and res["baseline"]["settings"]["lora_r"] == 64
    assert res["ratio_tokens_per_s"] == pytest.approx(res["ours"]["tokens_per_s"] / res["baseline"]["tokens_per_s"], rel=1e-2)
    assert res["ratio_peak_memory"] == pytest.approx(res["ours"]["peak_memory_mb"] / res["baseline"]["peak_memory_mb"], rel=1e-2)


def _batch_and_trainers(model_dir: Path, tmp_path: Path, padding_free: bool):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from finetune.trainer import trained_positions_trainer

    tok = AutoTokenizer.from_pretrained(model_dir)
    g = torch.Generator().manual_seed(0)
    rows = {"input_ids": [], "labels": []}
    for n, prompt in ((23, 9), (40, 30), (11, 4), (31, 31)):  # the last one has no trained token at all
        ids = torch.randint(5, 400, (n,), generator=g).tolist()
        rows["input_ids"].append(ids)
        rows["labels"].append([-100] * prompt + ids[prompt:])
    ds = Dataset.from_dict(rows)
    trainers = []
    for cls in (SFTTrainer, trained_positions_trainer()):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        args = SFTConfig(output_dir=str(tmp_path / cls.__name__), per_device_train_batch_size=4, report_to="none",
                         use_cpu=True, bf16=False, padding_free=padding_free, max_length=None if padding_free else 64,
                         gradient_checkpointing=False, disable_tqdm=True)
        trainer = cls(model=model, args=args, train_dataset=ds, processing_class=tok,
                      peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
        for name, p in trainer.model.named_parameters():  # non-zero B, so the LoRA path carries gradient
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
        trainers.append(trainer)
    batch = trainers[0].data_collator([ds[i] for i in range(4)])
    return batch, trainers


@pytest.mark.parametrize("padding_free", [True, False])
def test_trained_positions_loss_equals_trl_loss(tiny_model_dir, tmp_path, padding_free):
    batch, trainers = _batch_and_trainers(tiny_model_dir, tmp_path, padding_free)
    assert ("position_ids" in batch) == padding_free
    losses, grads = [], []
    for trainer in trainers:
        model = trainer.model.train()
        model.zero_grad()
        loss = trainer.compute_loss(model, {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    trl_loss, ours = losses
    assert torch.isfinite(ours) and ours > 0
    assert torch.allclose(ours, trl_loss, rtol=1e-5, atol=1e-5), (ours, trl_loss)
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name, g in grads[0].items():
        assert torch.allclose(grads[1][name], g, rtol=1e-4, atol=1e-6), name
    # with num_items_in_batch (gradient accumulation) the sum is divided by that count instead
    model = trainers[1].model
    with torch.no_grad():
        n = int((batch["labels"][:, 1:] != -100).sum())
        scaled = trainers[1].compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(2 * n))
    assert torch.allclose(scaled, ours / 2, rtol=1e-5)


def test_per_sequence_attention_equals_each_sequence_alone(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from finetune.packed_attention import use_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    lens = [30, 5, 61, 1, 17]
    ids = torch.randint(5, 400, (1, sum(lens)), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32)
    row = dict(input_ids=ids, position_ids=torch.cat([torch.arange(n) for n in lens])[None], cu_seq_lens_q=cu,
               cu_seq_lens_k=cu, max_length_q=max(lens), max_length_k=max(lens), use_cache=False)
    with torch.no_grad():
        masked = model(**row).logits  # transformers' SDPA with the block-diagonal mask
        use_packed_attention(model)
        packed = model(**row).logits
        alone = torch.cat([model(input_ids=ids[:, a:b], use_cache=False).logits
                           for a, b in zip(cu[:-1].tolist(), cu[1:].tolist())], dim=1)
        padded = model(input_ids=ids[:, :40], attention_mask=torch.ones(1, 40, dtype=torch.long)).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
        reference = plain(input_ids=ids[:, :40], attention_mask=torch.ones(1, 40, dtype=torch.long)).logits
    assert torch.allclose(packed, alone, atol=1e-5)  # no token attends across an example boundary
    assert torch.allclose(packed, masked, atol=1e-4)
    assert torch.allclose(padded, reference, atol=1e-6)  # anything but a padding-free row: plain SDPA
