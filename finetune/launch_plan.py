"""How one run is laid out over its processes: one GPU, data parallel (DDP) or sharded (FSDP); the accelerate
config that says so (kept in the run folder) and the command that starts it. The command line, Hugging Face Jobs
and a SkyPilot task all launch the plan made here, through accelerate (never a launcher of our own).

>>> from finetune.config import RunConfig
>>> cfg = RunConfig(); cfg.training.distributed = "fsdp"; cfg.training.num_processes = 2
>>> p = plan(cfg, gpus=0)
>>> p.strategy, p.num_processes
('fsdp', 2)
>>> accelerate_config(p)["fsdp_config"]["fsdp_reshard_after_forward"]
True
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import RunConfig
from .config.checks import SHARDED_METHODS, UNSHARDED_WHY
from .errors import UserError

if TYPE_CHECKING:
    from .memory import GpuSpec

from .memory.train_setup import STRATEGIES  # none, ddp, fsdp: training.distributed's choices but auto

ACCELERATE_CONFIG = "accelerate.yaml"  # the generated accelerate config, in the run folder
MASTER_PORT = 29500


class LaunchError(UserError):
    """A layout that cannot run: the message names the field and the fix."""


@dataclass(frozen=True)
class LaunchPlan:
    """One run's layout. ``num_processes``: all processes of all nodes (one per GPU); ``offload``: FSDP keeps
    the shards in CPU RAM; ``reason``: why ``auto`` chose it, in a sentence."""

    strategy: str
    num_processes: int = 1
    nodes: int = 1
    offload: bool = False
    reason: str = ""

    @property
    def per_node(self) -> int:
        return max(1, self.num_processes // self.nodes)

    @property
    def launched(self) -> bool:
        """Whether accelerate starts the processes (a one-process run trains in the command's own process)."""
        return self.num_processes > 1

    def to_event(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "world_size": self.num_processes}


def visible_gpus() -> int:
    """CUDA GPUs this process sees (0 on a machine without one), read without importing torch when it is not yet
    loaded (a run waiting in the queue stays a small process): the NVIDIA driver's list of GPUs, narrowed by
    ``CUDA_VISIBLE_DEVICES``."""
    import os
    import sys

    if "torch" in sys.modules:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    driver = Path("/proc/driver/nvidia/gpus")
    present = len(list(driver.iterdir())) if driver.is_dir() else 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not present:
        return present
    ids = [d.strip() for d in visible.split(",") if d.strip()]
    ids = ids[:ids.index("-1")] if "-1" in ids else ids  # CUDA stops at the first invalid id
    return min(present, len(ids))


def fits_one_gpu(config: RunConfig, gpu: GpuSpec | str, *, allow_hub: bool = False) -> bool | None:
    """The estimator's verdict: does the whole run fit one ``gpu`` (then data parallel is enough)? None: the model
    could not be estimated (its config unreachable)."""
    from . import memory

    try:
        return memory.estimate(config, gpu=gpu, allow_hub=allow_hub).fits
    except (memory.EstimateError, OSError):
        return None


def plan(config: RunConfig, gpus: int, fits_one: bool | None = None, nodes: int = 1) -> LaunchPlan:
    """The layout of ``config`` on ``nodes`` machines of ``gpus`` GPUs each. ``training.num_processes`` 0 means
    every GPU; ``auto`` picks one process on one GPU, data parallel when the model fits one GPU (``fits_one``,
    the estimator's), else FSDP. An explicit ``ddp``/``fsdp`` on a machine without GPUs runs gloo processes on
    the CPU (how the tests check it)."""
    t = config.training
    n = t.num_processes or gpus * nodes
    if t.distributed == "none" or (t.distributed == "auto" and n <= 1):
        why = "training.distributed none" if t.distributed == "none" else f"{max(gpus, 0)} GPU(s) visible"
        return LaunchPlan("none", 1, 1, False, f"one process ({why})")
    if t.distributed == "auto":
        if fits_one is None:
            raise LaunchError("training.distributed auto over several GPUs needs the estimate of one GPU; pick "
                              "training.distributed ddp or fsdp")
        strategy = "ddp" if fits_one else "fsdp"
        reason = (f"data parallel over {n} GPUs: the run fits one GPU, so each holds the whole model" if fits_one
                  else f"sharded over {n} GPUs: the run does not fit one GPU, so each holds 1/{n} of the base model")
        if strategy == "fsdp" and t.method not in SHARDED_METHODS:
            raise LaunchError(f"the run does not fit one GPU and {t.method} cannot train sharded "
                              f"({UNSHARDED_WHY.get(t.method, '')}); use a bigger GPU, or training.method "
                              f"{' or '.join(SHARDED_METHODS)}")
    else:
        strategy, reason = t.distributed, f"training.distributed {t.distributed} over {n} processes"
    if n < 2:
        raise LaunchError(f"training.distributed {strategy} needs 2 or more processes and {max(gpus, 0)} GPU(s) are "
                          "visible; set training.num_processes (--num-processes) to 2 or more, or training.distributed "
                          "none")
    if gpus > 0 and n > gpus * nodes:
        raise LaunchError(f"training.num_processes {n} is more than the {gpus * nodes} GPU(s) there (one process per "
                          f"GPU); set training.num_processes (--num-processes) to {gpus * nodes} or less, or 0 for "
                          "every GPU")
    if n % nodes:
        raise LaunchError(f"training.num_processes {n} is not a multiple of the {nodes} nodes; give every node the "
                          "same number of GPUs")
    return LaunchPlan(strategy, n, nodes, strategy == "fsdp" and t.fsdp_offload, reason)


def accelerate_config(p: LaunchPlan) -> dict[str, Any]:
    """The accelerate config of a plan (what `accelerate config` would write). FSDP: version 2, one unit per
    transformer block (accelerate takes the blocks from the model's ``_no_split_modules``), full sharding
    (parameters freed again after each block's forward), RAM-efficient loading (rank 0 reads the weights, the
    others receive their shards; accelerate turns it off for 4-bit weights, which every process loads whole), sharded checkpoints (each process writes its own part, which a resume reads
    back), and the optional CPU offload of the shards. Mixed precision stays the trainer's (``no`` here)."""
    out: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": {"none": "NO", "ddp": "MULTI_GPU", "fsdp": "FSDP"}[p.strategy],
        "num_machines": p.nodes,
        "num_processes": p.num_processes,
        "machine_rank": 0,
        "main_training_function": "main",
        "mixed_precision": "no",
        "use_cpu": False,
        "rdzv_backend": "static",
        "same_network": True,
    }
    if p.strategy == "fsdp":
        out["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_reshard_after_forward": True,  # FSDP2's FULL_SHARD
            "fsdp_state_dict_type": "SHARDED_STATE_DICT",
            "fsdp_cpu_ram_efficient_loading": True,
            "fsdp_sync_module_states": True,  # accelerate requires it with RAM-efficient loading
            "fsdp_offload_params": p.offload,
            "fsdp_activation_checkpointing": False,  # the trainer's gradient checkpointing does it
        }
    return out


def write_accelerate_config(p: LaunchPlan, run_dir: str | Path) -> Path:
    """``<run>/accelerate.yaml``: the config the run's processes were started with, kept with the run."""
    path = Path(run_dir) / ACCELERATE_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(accelerate_config(p), sort_keys=False))
    return path


def launch_command(p: LaunchPlan, config_file: str, train_args: list[str], *, python: str = "python",
                   multi_node: bool = False, port: int = MASTER_PORT) -> list[str]:
    """``accelerate launch`` of ``python -m finetune train TRAIN_ARGS`` with the plan's config; ``port``: the
    rendezvous port of rank 0. ``multi_node``: each node's rank and the head's address come from SkyPilot's
    environment (``$SKYPILOT_NODE_RANK``; ``$HEAD_IP``, the first line of ``$SKYPILOT_NODE_IPS``, set by the task),
    left for the node's shell to expand."""
    cmd = [python, "-m", "accelerate.commands.launch", "--config_file", config_file,
           "--num_processes", str(p.num_processes), "--num_machines", str(p.nodes), "--main_process_port", str(port)]
    if multi_node:
        cmd += ["--machine_rank", "$SKYPILOT_NODE_RANK", "--main_process_ip", "$HEAD_IP"]
    return [*cmd, "-m", "finetune", "train", *train_args]


def free_port() -> int:
    """A free TCP port of this machine for rank 0's rendezvous (two runs here at once must not share one)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def shell_line(cmd: list[str]) -> str:
    """A command as one shell line; ``$VARS`` of the node's environment are left for the shell to expand."""
    return " ".join(c if c.startswith("$") else shlex.quote(c) for c in cmd)


def local_gpu() -> GpuSpec:
    """This machine's first GPU as the estimator sees it: its catalog entry when the name matches one, else the
    A100 80GB's speed figures with this board's memory."""
    import dataclasses

    import torch

    from . import memory

    props = torch.cuda.get_device_properties(0)
    named = [spec for spec in memory.GPUS.values() if spec.label.lower() in props.name.lower()]
    if named:  # the longest name the board's contains: "NVIDIA L40S" is an L40S, not an L4
        return max(named, key=lambda spec: len(spec.label))
    gb = props.total_memory / memory.GiB
    return dataclasses.replace(memory.get_gpu("a100-80gb"), name="local", label=props.name, nominal_gb=round(gb),
                               usable_gb=gb, hf_flavor=None, usd_per_hour=None)


def local_plan(config: RunConfig) -> LaunchPlan:
    """The plan of ``config`` on this machine: its visible GPUs, and for ``auto`` on several of them the
    estimator's verdict on one of them."""
    gpus = visible_gpus()
    t = config.training
    fits = None
    if t.distributed == "auto" and (t.num_processes or gpus) > 1 and gpus:
        fits = fits_one_gpu(config, local_gpu(), allow_hub=True)
        if fits is None:  # no estimate of the model: one GPU, as before several were planned
            return LaunchPlan("none", 1, 1, False, "one process: the model could not be estimated to plan several "
                              "GPUs; set training.distributed ddp or fsdp to use them")
    return plan(config, gpus, fits)


CONFIG_ENV = "FINETUNE_RUN_CONFIG"  # the run config handed to the launched processes (base64 of its YAML)


def start_processes(p: LaunchPlan, config: RunConfig | None, run_dir: Path, train_args: list[str]) -> int:
    """Write ``<run>/accelerate.yaml`` and run ``accelerate launch`` of the run's processes here; returns its exit
    status. ``config`` (None: the run folder's own, for a resume) reaches the processes as base64 YAML in
    ``$FINETUNE_RUN_CONFIG``; ``train_args`` are the other flags of the train command."""
    import base64
    import copy
    import os
    import subprocess
    import sys

    config_file = write_accelerate_config(p, run_dir)
    env = dict(os.environ)
    args = ["--run-dir", str(run_dir), *train_args]
    if config is not None:
        # the layout planned here is the run's: a resume elsewhere keeps it (a sharded checkpoint resumes sharded)
        config = copy.deepcopy(config)
        config.training.distributed, config.training.num_processes = p.strategy, p.num_processes
        env[CONFIG_ENV] = base64.b64encode(config.to_yaml().encode()).decode()
        args = ["--config-env", CONFIG_ENV, *args]
    if visible_gpus() == 0:  # gloo processes on the CPU share its cores instead of each taking all of them
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // p.num_processes)))
    cmd = launch_command(p, str(config_file), args, python=sys.executable, port=free_port())
    return subprocess.call(cmd, env=env)


# SkyPilot (one's own cluster or cloud): each node runs accelerate's launcher with the plan's config; SkyPilot gives
# every node its rank ($SKYPILOT_NODE_RANK), the nodes' addresses ($SKYPILOT_NODE_IPS, the head first) and their
# count ($SKYPILOT_NUM_NODES).
SKYPILOT_SETUP = "pip install -r requirements.txt"  # on each node, in the synced project folder (workdir)


def skypilot_task(config: RunConfig, p: LaunchPlan, accelerator: str, run_id: str, *,
                  workdir: str = ".", setup: str = SKYPILOT_SETUP) -> dict[str, Any]:
    """A SkyPilot task (``sky launch task.yaml``) that trains ``config`` on ``p.nodes`` nodes of ``p.per_node``
    ``accelerator`` GPUs each (``A100-80GB``, ``L40S``, ``H100``...): the run config travels as base64 YAML in
    the task's environment, the accelerate config is written on each node, and accelerate's launcher is told the
    node's rank and the head node's address from SkyPilot's environment."""
    import base64
    import copy

    if not accelerator.strip() or any(c in accelerator for c in " :\n"):
        raise LaunchError(f"accelerator '{accelerator}': give one SkyPilot accelerator name, e.g. A100-80GB or L40S")
    config = copy.deepcopy(config)  # the run as planned: its strategy and process count, not "auto"
    config.training.distributed, config.training.num_processes = p.strategy, p.num_processes
    config_yaml = yaml.safe_dump(accelerate_config(p), sort_keys=False)
    run_dir = f"runs/{run_id}"
    cmd = launch_command(p, "accelerate.yaml", ["--config-env", CONFIG_ENV, "--run-dir", run_dir, "--events-json"],
                         multi_node=p.nodes > 1)
    run = "\n".join([
        "set -e",
        'HEAD_IP="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"',
        "cat > accelerate.yaml <<'ACCELERATE'",
        config_yaml.rstrip(),
        "ACCELERATE",
        shell_line(cmd).replace("$SKYPILOT_NODE_RANK", '"$SKYPILOT_NODE_RANK"').replace("$HEAD_IP", '"$HEAD_IP"'),
    ])
    return {
        "name": f"finetune-{run_id}".lower()[:60],
        "num_nodes": p.nodes,
        "resources": {"accelerators": f"{accelerator}:{p.per_node}"},
        "workdir": workdir,
        "envs": {CONFIG_ENV: base64.b64encode(config.to_yaml().encode()).decode()},
        # a gated base model (Llama) downloads with the user's token, given at launch: `sky launch --secret HF_TOKEN`
        "secrets": {"HF_TOKEN": None},
        "setup": setup,
        "run": run + "\n",
    }
