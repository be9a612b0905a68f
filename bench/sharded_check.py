"""The GPU check's ``sharded`` part: the same 7B-class QLoRA run laid out over every GPU of the machine, sharded
(FSDP) and data parallel (DDP), each started as the command line starts it (``finetune.launch_plan``: accelerate
with the generated config): each process's peak reserved memory against the estimator's per-GPU figure
(``memory.estimate_training`` with ``strategy="fsdp", gpus=N``), and tokens/s sharded vs data parallel.

It needs two or more CUDA GPUs; on a machine with fewer (and in ``--dry-run``) it records why it skipped.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

SECTION_KEYS = ("ok", "seconds", "error", "skipped", "gpus", "model", "steps", "fsdp", "ddp", "estimated_peak_gb",
                "peak_ratio", "fsdp_vs_ddp_tokens_per_s")
SIDE_KEYS = ("per_gpu_peak_gb", "tokens_per_s", "final_loss")
NEEDS_S = 150  # on 2 H100s: two runs of a few steps of a 7B-class model, each loading it in 4-bit
STEPS = 6

# Runs inside each training process: the process's peak reserved memory at the end of training, one file a rank.
PEAK_RECORDER = """
import json, os, sys
import torch
from transformers import TrainerCallback
from finetune.config import RunConfig
from finetune.train import train

class Peak(TrainerCallback):
    def on_train_end(self, args, state, control, **kw):
        rank = int(os.environ.get("RANK", "0"))
        with open(os.path.join(sys.argv[3], f"peak{rank}.json"), "w") as f:
            json.dump({"rank": rank, "peak_gb": torch.cuda.max_memory_reserved() / 2**30}, f)

train(RunConfig.load(sys.argv[1]), sys.argv[2], callbacks=[Peak()])
"""


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _config(model: Path, data: Path, strategy: str, gpus: int) -> Any:
    from finetune.config import RunConfig

    cfg = RunConfig()
    cfg.name = f"gpu-check-{strategy}"
    cfg.model.id, cfg.data.source, cfg.data.template = str(model), str(data), "chatml"
    cfg.quantization.load_in = "4bit"
    t = cfg.training
    t.max_steps, t.batch_size, t.max_length, t.save_steps = STEPS, 4, 1024, STEPS
    t.distributed, t.num_processes = strategy, gpus
    return cfg


def run_side(cfg: Any, work: Path) -> dict[str, Any]:
    """One launch of ``cfg`` as the command line starts it, with the peak recorder in every process."""
    from finetune import launch_plan
    from finetune.events import read_events

    work.mkdir(parents=True, exist_ok=True)
    cfg_path, script, run_dir = work / "config.yaml", work / "peak.py", work / "run"
    cfg.save(cfg_path)
    script.write_text(PEAK_RECORDER)
    plan = launch_plan.plan(cfg, gpus=cfg.training.num_processes)
    config_file = launch_plan.write_accelerate_config(plan, work)
    cmd = launch_plan.launch_command(plan, str(config_file), [], python=sys.executable, port=launch_plan.free_port())
    cmd = [*cmd[:cmd.index("-m", 3)], str(script), str(cfg_path), str(run_dir), str(work)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    if done.returncode != 0:
        raise RuntimeError(f"{cfg.training.distributed} run failed: {(done.stdout + done.stderr)[-2000:]}")
    steps = [e for e in read_events(run_dir) if e["type"] == "step"]
    peaks = [json.loads(p.read_text())["peak_gb"] for p in sorted(work.glob("peak*.json"))]
    rates = [e["tokens_per_s"] for e in steps[1:] if e.get("tokens_per_s")]  # the first step warms up
    return {"per_gpu_peak_gb": round(max(peaks), 2) if peaks else None,
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None,
            "final_loss": steps[-1].get("loss") if steps else None}


def part_sharded(ctx: Any, sec: dict[str, Any], materialize: Any, data_file: Any, this_gpu: Any) -> None:
    """The part: ``materialize`` builds the random-weight model folder, ``data_file`` the training data,
    ``this_gpu`` the estimator's entry of this machine's GPU."""
    from finetune import memory

    n = 0 if ctx.scale.dry else visible_gpus()
    sec["gpus"] = n
    for side in ("fsdp", "ddp"):
        sec[side] = {k: None for k in SIDE_KEYS}
    if n < 2:
        sec["skipped"] = (f"needs 2 or more CUDA GPUs; this machine has {n}" + (" (dry run: CPU)" if ctx.scale.dry
                                                                                 else ""))
        return
    model, data = materialize(), data_file()
    sec["model"], sec["steps"] = model.name, STEPS
    for side in ("fsdp", "ddp"):
        sec[side] = run_side(_config(model, data, side, n), ctx.work / "sharded" / side)
    cfg = _config(model, data, "fsdp", n)
    gpu = this_gpu()
    est = memory.estimate_training(memory.spec_for_config(cfg, allow_hub=False), memory.setup_for(cfg, gpu), gpu,
                                   advise=False)  # setup_for reads the layout (fsdp over n GPUs) from the config
    sec["estimated_peak_gb"] = round(est.peak_gb, 2)
    measured = sec["fsdp"]["per_gpu_peak_gb"]
    sec["peak_ratio"] = round(measured / est.peak_gb, 3) if measured else None
    a, b = sec["fsdp"]["tokens_per_s"], sec["ddp"]["tokens_per_s"]
    sec["fsdp_vs_ddp_tokens_per_s"] = round(a / b, 3) if a and b else None


def markdown(sec: dict[str, Any]) -> str:
    """The part's lines of gpu_check.md."""
    if sec.get("skipped"):
        return f"## sharded\n\nskipped: {sec['skipped']}\n"
    sides = {side: sec.get(side) or {} for side in ("fsdp", "ddp")}  # empty until the part ran
    rows = "\n".join(f"| {side} | {v.get('per_gpu_peak_gb')} | {v.get('tokens_per_s')} |" for side, v in sides.items())
    return (f"## sharded ({sec.get('gpus')} GPUs, {sec.get('model')})\n\n| layout | peak per GPU (GiB) | tokens/s |\n"
            f"| --- | ---: | ---: |\n{rows}\n\nestimated FSDP peak per GPU {sec.get('estimated_peak_gb')} GiB "
            f"(measured / estimated {sec.get('peak_ratio')}); FSDP / DDP tokens/s {sec.get('fsdp_vs_ddp_tokens_per_s')}\n")


