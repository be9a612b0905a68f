"""`python -m finetune launch --skypilot [CONFIG.yaml] [--data FILE] [--template NAME] [--set key=value ...]
--nodes N --gpus-per-node G --accelerator A100-80GB [--distributed auto|ddp|fsdp] --out task.yaml`

Writes the run as a SkyPilot task for one's own cluster or cloud (`sky launch task.yaml`): N nodes of G GPUs, one
training process per GPU through accelerate's launcher with the generated config, each node told its rank and the
head node's address by SkyPilot. The run is planned as on this machine (finetune/launch_plan.py): ``auto`` shards
when the run does not fit one of the GPUs. The project folder is the task's workdir (synced to every node); a
sharded run's checkpoints are written by every node, so resume a multi-node run from a run folder on shared storage.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("launch", help="write a run as a task for another launcher (SkyPilot)", description=__doc__)
    p.add_argument("config", nargs="?", help="run config YAML or preset name (default: smollm2-135m-cpu)")
    p.add_argument("--skypilot", action="store_true", required=True, help="write a SkyPilot task (sky launch)")
    p.add_argument("--model", help="base model: Hub id, local folder or .gguf file")
    p.add_argument("--data", help="data file (in the project folder) or Hub dataset id")
    p.add_argument("--template", help="prompt template")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.r=64")
    p.add_argument("--distributed", choices=("auto", "ddp", "fsdp"),
                   help="auto (data parallel when the run fits one GPU, else sharded), ddp or fsdp (default: the "
                        "config's training.distributed)")
    p.add_argument("--nodes", type=int, default=1, help="machines (default 1)")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs of each machine (default 8)")
    p.add_argument("--accelerator", default="A100-80GB",
                   help="SkyPilot accelerator name (A100-80GB, H100, L40S, A10G...; default A100-80GB)")
    p.add_argument("--gpu", help="the estimator's GPU for auto (memory.GPUS: a100-80gb, h100, l40s...; default: "
                   "from --accelerator)")
    p.add_argument("--out", required=True, help="where to write the task YAML")
    p.set_defaults(func=run)


# the estimator's catalog name of SkyPilot's accelerator names
ACCELERATOR_GPUS = {"A100-80GB": "a100-80gb", "A100": "a100-40gb", "H100": "h100", "H200": "h200", "L40S": "l40s",
                    "L4": "l4", "A10G": "a10g", "T4": "t4", "RTXPRO6000": "rtx-pro-6000"}


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from finetune import launch_plan, memory, runs
    from finetune.cli import UsageError
    from finetune.commands.train import build_config
    from finetune.config import ConfigError, validate

    for name in ("method", "test_split", "init_adapter", "reward_module", "config_env", "run_dir", "runs_root",
                 "num_processes"):
        setattr(args, name, None)
    args.num_processes = args.nodes * args.gpus_per_node
    if args.nodes < 1 or args.gpus_per_node < 1:
        raise UsageError("--nodes and --gpus-per-node must be 1 or more")
    gpu = args.gpu or ACCELERATOR_GPUS.get(args.accelerator)
    try:
        cfg = build_config(args)
        assert cfg is not None, "build_config returns None only to resume a --run-dir, which launch has not"
        validate(cfg)
        fits = None
        if cfg.training.distributed == "auto" and args.num_processes > 1:
            if gpu is None:
                raise UsageError(f"--accelerator {args.accelerator}: give --gpu (the estimator's name of that GPU: "
                                 f"{', '.join(memory.GPUS)}) or --distributed ddp|fsdp")
            fits = launch_plan.fits_one_gpu(cfg, gpu)
        plan = launch_plan.plan(cfg, gpus=args.gpus_per_node, fits_one=fits, nodes=args.nodes)
        task = launch_plan.skypilot_task(cfg, plan, args.accelerator, runs.new_run_id(cfg.name))
    except (ConfigError, launch_plan.LaunchError, memory.EstimateError) as e:
        raise UsageError(str(e).replace("\n", " ")) from e
    Path(args.out).write_text(yaml.safe_dump(task, sort_keys=False))
    print(f"{plan.reason}; {args.nodes} node(s) x {args.gpus_per_node} {args.accelerator}: sky launch {args.out}",
          file=sys.stderr)
    return 0
