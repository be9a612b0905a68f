"""A sharded (FSDP) run on the CPU: 2 gloo processes started by ``python -m finetune train --distributed fsdp
--num-processes 2`` on the embedded SmolLM2.

- each process holds about half of the base model's parameter bytes: the ``started`` event says so, and a
  callback in the processes measures each one's local shards (``DTensor.to_local``) independently;
- the loss of every step equals a one-process run with the same global batch (4 = 2 processes x 2), within
  LOSS_TOLERANCE;
- the adapter is one plain PEFT adapter that loads with ``peft`` alone and answers like the one-process adapter;
- a run killed after its first checkpoint and resumed ends with the same losses and weights as an
  uninterrupted sharded run.

Slow (three runs and a resume of a 135M model on 2 processes: ~8 minutes on 2 cores): ``pytest -m slow``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from finetune import launch_plan

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
# fp32 on the CPU: the two layouts sum the same numbers in another order (gradients all-reduced across 2
# processes, each process's mean over its own rows); measured difference ~1e-6, a real bug is 1e-2 or more
LOSS_TOLERANCE = 1e-4
# the adapters' weights after 4 steps, by the same argument: each tensor within 1e-4 of its norm (measured: 2e-5)
WEIGHT_TOLERANCE = 1e-4
ARGS = ["--template", "llama2", "--max-steps", "4", "--set", "training.save_steps=2", "--set",
        "training.warmup_ratio=0", "--set", "training.learning_rate=1e-3", "--quiet"]

MEASURE = """
import json, os, sys
from torch.distributed.tensor import DTensor
from transformers import TrainerCallback
from finetune.config import RunConfig
from finetune.train import train

class Measure(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kw):
        if state.global_step != 1:
            return
        held, sharded = 0, 0
        for name, p in model.named_parameters():
            if "lora_" in name:
                continue
            local = p.to_local() if isinstance(p, DTensor) else p
            sharded += isinstance(p, DTensor)
            held += local.numel() * local.element_size()
        quantized = [m.weight for m in model.modules() if type(m).__name__ == "Linear4bit"]
        out = {"rank": int(os.environ["RANK"]), "bytes": held, "sharded_params": sharded,
               "quantized_params": len(quantized), "quantized_dtypes": sorted({str(p.dtype) for p in quantized}),
               "quantized_sharded": sum(isinstance(p, DTensor) for p in quantized)}
        with open(os.path.join(sys.argv[3], f"rank{out['rank']}.json"), "w") as f:
            json.dump(out, f)

train(RunConfig.load(sys.argv[1]), sys.argv[2], callbacks=[Measure()])
"""


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "finetune", "train", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return done


def events(run_dir: Path, kind: str) -> list[dict]:
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


def losses(run_dir: Path) -> list[float]:
    return [e["loss"] for e in events(run_dir, "step")]


def weights(adapter: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter / "adapter_model.safetensors"))


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and bool(a) and all(
        float((a[k] - b[k]).norm()) <= WEIGHT_TOLERANCE * float(b[k].norm()) + 1e-8 for k in a)


def answer(adapter: Path, prompt: str) -> str:
    """Greedy answer of base + adapter loaded with plain transformers and peft (no finetune code)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(adapter)
    base = AutoModelForCausalLM.from_pretrained(embedded_model_dir(), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    ids = tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    return tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rows = (ROOT / "finetune" / "samples" / "city_year.jsonl").read_text().splitlines()[:32]
    path = tmp_path_factory.mktemp("data") / "d.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def one_process(data, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "one"
    cli("--data", str(data), *ARGS, "--distributed", "none", "--set", "training.batch_size=4", "--run-dir", str(run_dir))
    return run_dir


def measured_run(data: Path, tmp: Path, *extra: str) -> tuple[Path, list[dict]]:
    """A sharded run whose processes are started with the generated accelerate config around a script that adds
    the measuring callback to the same ``train``."""
    from finetune.cli import build_parser
    from finetune.commands.train import build_config

    run_dir, cfg_path, script = tmp / "run", tmp / "cfg.yaml", tmp / "measure.py"
    args = build_parser().parse_args(["train", "--data", str(data), *ARGS, "--distributed", "fsdp",
                                      "--num-processes", "2", "--set", "training.batch_size=2", *extra])
    cfg = build_config(args)
    assert cfg is not None
    cfg.save(cfg_path)
    script.write_text(MEASURE)
    plan = launch_plan.plan(cfg, gpus=0)
    config_file = launch_plan.write_accelerate_config(plan, tmp)
    cmd = launch_plan.launch_command(plan, str(config_file), [], python=sys.executable, port=launch_plan.free_port())
    cmd = [*cmd[:cmd.index("-m", 3)], str(script), str(cfg_path), str(run_dir), str(tmp)]
    done = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return run_dir, [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def sharded_measured(data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """An uninterrupted sharded run (fp32 weights), measured in its processes."""
    return measured_run(data, tmp_path_factory.mktemp("measured"))


def test_each_process_holds_half_of_the_base(sharded_measured):
    run_dir, measured = sharded_measured
    layout = events(run_dir, "started")[0]["distributed"]
    total = layout["param_bytes_total"]
    assert layout["strategy"] == "fsdp" and layout["world_size"] == 2
    assert 530e6 < total < 545e6  # SmolLM2-135M in fp32, its tied embedding once
    for rank, m in enumerate(measured):
        assert m["sharded_params"] > 200  # every block's weights are sharded parameters
        assert abs(m["bytes"] - total / 2) / total < 0.02, m  # about half, measured in the process
        assert m["bytes"] == layout["param_bytes_per_rank"][rank]  # what the event said, to the byte


def test_loss_per_step_equals_one_process_with_the_same_global_batch(sharded_measured, one_process):
    one, two = losses(one_process), losses(sharded_measured[0])
    assert len(one) == len(two) == 4
    assert max(abs(a - b) for a, b in zip(one, two)) < LOSS_TOLERANCE, (one, two)
    assert two[-1] < two[0]  # it learned


def test_the_adapter_is_plain_peft_and_answers_like_the_one_process_adapter(sharded_measured, one_process):
    two, one = sharded_measured[0] / "adapter", one_process / "adapter"
    config = json.loads((two / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 16  # the default preset's rank
    assert same_weights(weights(two), weights(one))
    prompt = "Extract the city and the year as JSON.\nIvan moved to Oslo in 1972."
    assert answer(two, prompt) == answer(one, prompt)


def test_a_killed_sharded_run_resumes_to_the_uninterrupted_result(data, sharded_measured, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "finetune", "train", "--data", str(data), *ARGS, "--distributed",
                             "fsdp", "--num-processes", "2", "--set", "training.batch_size=2", "--run-dir",
                             str(run_dir)], cwd=ROOT, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    try:
        while not (run_dir / "checkpoints" / "checkpoint-2" / "adapter").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.5)
    finally:
        # the command, accelerate's launcher and both training processes (torch's launcher puts the training
        # processes in sessions of their own), as a crash of the machine would
        import psutil

        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        proc.wait()
        _, alive = psutil.wait_procs(tree, timeout=30)
        assert not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE], alive
    assert not (run_dir / "adapter").exists()
    killed_at = max(e["step"] for e in events(run_dir, "step"))
    assert killed_at < 4
    cli("--run-dir", str(run_dir))  # resumes from checkpoint-2 with the run's own config and layout
    assert events(run_dir, "started")[-1]["resumed_from"] == "checkpoints/checkpoint-2"
    uninterrupted = sharded_measured[0]
    resumed_steps = {e["step"]: e["loss"] for e in events(run_dir, "step")}
    straight = {e["step"]: e["loss"] for e in events(uninterrupted, "step")}
    assert all(abs(resumed_steps[s] - straight[s]) < LOSS_TOLERANCE for s in (3, 4)), (resumed_steps, straight)
    assert same_weights(weights(run_dir / "adapter"), weights(uninterrupted / "adapter"))


def test_4bit_weights_shard_too(data, tmp_path):
    """bitsandbytes' CPU backend runs QLoRA: with the 4-bit weights stored in the compute dtype, FSDP shards them
    like any other parameter (stored as uint8 they would stay whole on every process)."""
    run_dir, measured = measured_run(data, tmp_path, "--set", "quantization.load_in=4bit")
    layout = events(run_dir, "started")[0]["distributed"]
    total = layout["param_bytes_total"]
    assert 150e6 < total < 180e6  # 4-bit linear layers (NF4 + double quant) and a 16-bit embedding
    for rank, m in enumerate(measured):
        assert m["quantized_params"] > 200 and m["quantized_sharded"] == m["quantized_params"], m
        assert m["quantized_dtypes"] == ["torch.bfloat16"], m  # the compute dtype on the CPU
        assert abs(m["bytes"] - total / 2) / total < 0.02 and m["bytes"] == layout["param_bytes_per_rank"][rank]
    assert (run_dir / "adapter" / "adapter_model.safetensors").exists()
    assert events(run_dir, "finished")


def test_dpo_trains_sharded_like_one_process(tmp_path):
    """DPO's reference is the base with the adapter disabled: sharded, it must still be the base (a reference equal
    to the policy would leave every reward margin at 0). Per-step loss and rewards against one process with the
    same global batch; each process averages its own pairs, so the tolerance is looser than SFT's token mean
    (measured: loss 4e-4, chosen reward 0.1%)."""
    common = ["--method", "dpo", "--max-steps", "3", "--set", "training.save_steps=3", "--set",
              "training.warmup_ratio=0", "--quiet"]
    cli(*common, "--distributed", "fsdp", "--num-processes", "2", "--set", "training.batch_size=2",
        "--run-dir", str(tmp_path / "two"))
    cli(*common, "--distributed", "none", "--set", "training.batch_size=4", "--run-dir", str(tmp_path / "one"))
    two, one = events(tmp_path / "two", "step"), events(tmp_path / "one", "step")
    assert [e["step"] for e in two] == [e["step"] for e in one] == [1, 2, 3]
    for a, b in zip(two, one):
        assert abs(a["loss"] - b["loss"]) < 2e-3, (a, b)
        assert a["metrics"]["rewards/chosen"] == pytest.approx(b["metrics"]["rewards/chosen"], rel=0.02, abs=1e-4)
    assert abs(two[-1]["metrics"]["rewards/margins"]) > 1e-3  # the reference is not the policy
    assert (tmp_path / "two" / "adapter" / "adapter_model.safetensors").exists()
