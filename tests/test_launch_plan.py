"""One run over several GPUs: the layout a config plans (one process, data parallel, sharded), the accelerate
config generated for it and the launch command, read back by accelerate's own parsers; the command line that
starts accelerate itself and keeps the config in the run folder; the refusals before anything starts."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finetune import launch_plan
from finetune.cli import main
from finetune.config import RunConfig, choices, problems
from finetune.launch_plan import LaunchError, LaunchPlan, accelerate_config, launch_command, plan

ROOT = Path(__file__).resolve().parent.parent


def config(distributed: str = "auto", n: int = 0, method: str = "sft", offload: bool = False) -> RunConfig:
    cfg = RunConfig()
    cfg.training.distributed, cfg.training.num_processes, cfg.training.method = distributed, n, method
    cfg.training.fsdp_offload = offload
    return cfg


def test_the_field_declares_the_strategies_once():
    assert choices("training.distributed") == ("auto", "none", "ddp", "fsdp") == ("auto", *launch_plan.STRATEGIES)
    cfg = config(n=-1)
    assert any(p.startswith("training.num_processes") for p in problems(cfg))


def test_auto_picks_one_gpu_data_parallel_or_sharded_from_the_fit():
    assert plan(config(), gpus=1).strategy == "none"
    assert plan(config(), gpus=0).strategy == "none"
    ddp = plan(config(), gpus=4, fits_one=True)
    assert (ddp.strategy, ddp.num_processes) == ("ddp", 4) and "fits one GPU" in ddp.reason
    fsdp = plan(config(), gpus=4, fits_one=False)
    assert (fsdp.strategy, fsdp.num_processes) == ("fsdp", 4) and "1/4" in fsdp.reason
    assert plan(config(n=2), gpus=8, fits_one=False).num_processes == 2  # num_processes wins over "every GPU"
    assert plan(config("none"), gpus=8).num_processes == 1
    two_nodes = plan(config("fsdp"), gpus=4, nodes=2)
    assert (two_nodes.num_processes, two_nodes.per_node) == (8, 4)


def test_a_layout_that_cannot_run_is_refused_with_the_fix():
    with pytest.raises(LaunchError, match="--num-processes"):
        plan(config("fsdp"), gpus=0)  # no GPU and no process count: nothing to shard over
    with pytest.raises(LaunchError, match="grpo cannot train sharded"):
        plan(config(method="grpo"), gpus=2, fits_one=False)
    with pytest.raises(LaunchError, match="multiple of the 2 nodes"):
        plan(config("fsdp", n=3), gpus=2, nodes=2)
    with pytest.raises(LaunchError, match="more than the 2 GPU"):
        plan(config("fsdp", n=8), gpus=2)  # one process per GPU: ranks past the GPUs would fail after loading
    found = problems(config("fsdp", n=2, method="grpo"))
    assert any(p.startswith("training.distributed fsdp: grpo cannot train sharded") and "ddp or none" in p
               for p in found)
    assert any(p.startswith("training.fsdp_offload") for p in problems(config("ddp", n=2, offload=True)))
    assert not problems(config("fsdp", n=2, method="dpo"))


def test_the_generated_config_is_what_accelerate_reads(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    p = plan(config("fsdp", n=2, offload=True), gpus=0)
    path = launch_plan.write_accelerate_config(p, tmp_path)
    assert path == tmp_path / "accelerate.yaml"
    loaded = load_config_from_file(str(path))
    assert str(loaded.distributed_type) == "DistributedType.FSDP" and loaded.num_processes == 2
    fsdp = loaded.fsdp_config
    assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "SHARDED_STATE_DICT" and fsdp["fsdp_offload_params"] is True
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is True and fsdp["fsdp_reshard_after_forward"] is True

    cmd = launch_command(p, str(path), ["--run-dir", "runs/x"], port=29611)
    assert cmd[:3] == ["python", "-m", "accelerate.commands.launch"]
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(cmd[3:]))
    assert args.use_fsdp and args.num_processes == 2 and args.main_process_port == 29611
    assert str(args.fsdp_cpu_ram_efficient_loading).lower() == "true" and str(args.fsdp_offload_params).lower() == "true"
    assert args.training_script == "finetune" and args.module
    assert args.training_script_args == ["train", "--run-dir", "runs/x"]

    ddp = accelerate_config(LaunchPlan("ddp", 4))
    assert ddp["distributed_type"] == "MULTI_GPU" and "fsdp_config" not in ddp


def test_multi_node_takes_rank_and_head_from_the_node_environment():
    p = plan(config("fsdp"), gpus=8, nodes=2)
    line = launch_plan.shell_line(launch_command(p, "acc.yaml", ["--quiet"], multi_node=True))
    assert "--machine_rank $SKYPILOT_NODE_RANK" in line and "--main_process_ip $HEAD_IP" in line
    assert "--num_processes 16 --num_machines 2" in line


def test_the_command_line_starts_accelerate_with_the_config_kept_in_the_run(tmp_path, monkeypatch, capsys):
    started: list[tuple[list[str], dict[str, str]]] = []
    monkeypatch.setattr(subprocess, "call", lambda cmd, env: started.append((cmd, env)) or 0)
    run_dir = tmp_path / "run"
    code = main(["train", "--distributed", "fsdp", "--num-processes", "2", "--max-steps", "3",
                 "--run-dir", str(run_dir), "--quiet"])
    assert code == 0 and len(started) == 1
    cmd, env = started[0]
    kept = yaml.safe_load((run_dir / "accelerate.yaml").read_text())
    assert kept["distributed_type"] == "FSDP" and kept["num_processes"] == 2
    assert cmd[cmd.index("--config_file") + 1] == str(run_dir / "accelerate.yaml")
    assert cmd[cmd.index("-m", 3):] == ["-m", "finetune", "train", "--config-env", launch_plan.CONFIG_ENV,
                                         "--run-dir", str(run_dir), "--quiet"]
    sent = RunConfig.from_yaml(base64.b64decode(env[cmd[cmd.index("--config-env") + 1]]).decode())
    assert (sent.training.distributed, sent.training.num_processes, sent.training.max_steps) == ("fsdp", 2, 3)
    assert not (run_dir / "config.yaml").exists()  # rank 0 of the launched processes writes the run


def test_the_command_line_refuses_before_anything_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: pytest.fail("nothing may start"))
    assert main(["train", "--distributed", "fsdp", "--num-processes", "2", "--method", "grpo",
                 "--run-dir", str(tmp_path / "r")]) == 2
    assert "grpo cannot train sharded" in capsys.readouterr().err
    assert main(["train", "--distributed", "fsdp", "--run-dir", str(tmp_path / "r2")]) == 2
    assert "--num-processes" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_train_tab_shows_how_a_run_is_laid_out(tmp_path):
    from finetune import runs
    from finetune.events import EventLog
    from finetune.ui.train_tab import progress_html

    layout = {"strategy": "fsdp", "world_size": 2, "param_bytes_per_rank": [269030016, 269030016],
              "param_bytes_total": 538060032}
    EventLog(tmp_path).emit("started", name="r", model="m", device="cpu", pid=1, distributed=layout)
    state = runs.read_run(tmp_path).to_dict()
    assert state["distributed"] == layout
    assert "2 processes, sharded (FSDP): each holds 0.27 of 0.54 GB of the base model's weights" in progress_html(state)
    EventLog(tmp_path).emit("started", name="r", model="m", device="cpu", pid=1,
                            distributed={"strategy": "none", "world_size": 1, "param_bytes_per_rank": [538060032],
                                         "param_bytes_total": 538060032})
    assert "ft-layout" not in progress_html(runs.read_run(tmp_path).to_dict())  # one process: nothing to say


def test_the_skypilot_task_is_what_skypilot_loads(tmp_path, capsys, monkeypatch):
    sky = pytest.importorskip("sky", reason="SkyPilot's task loader: pip install --no-deps -r requirements-skypilot.txt")
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser

    out = tmp_path / "task.yaml"
    assert main(["launch", "--skypilot", "llama-3.1-70b-qlora-4xl40s", "--data", "data.jsonl", "--distributed", "auto",
                 "--nodes", "2", "--gpus-per-node", "4", "--accelerator", "L40S", "--out", str(out)]) == 0
    assert "sharded over 8 GPUs" in capsys.readouterr().err  # auto: a 70B QLoRA does not fit one L40S
    task = sky.Task.from_yaml(str(out))
    assert task.num_nodes == 2 and [r.accelerators for r in task.resources] == [{"L40S": 4}]
    sent = RunConfig.from_yaml(base64.b64decode(task.envs[launch_plan.CONFIG_ENV]).decode())
    assert (sent.training.distributed, sent.training.num_processes, sent.data.source) == ("fsdp", 8, "data.jsonl")

    # each node writes the plan's accelerate config, then runs accelerate's launcher with its rank and the head
    run = task.run
    assert 'HEAD_IP="$(echo "$SKYPILOT_NODE_IPS" | head -n1)"' in run
    config_text = run.split("<<'ACCELERATE'\n", 1)[1].split("\nACCELERATE\n", 1)[0]
    (tmp_path / "accelerate.yaml").write_text(config_text)
    loaded = load_config_from_file(str(tmp_path / "accelerate.yaml"))
    assert str(loaded.distributed_type) == "DistributedType.FSDP" and loaded.num_machines == 2
    line = run.strip().splitlines()[-1].replace('"$SKYPILOT_NODE_RANK"', "1").replace('"$HEAD_IP"', "10.0.0.1")
    argv = line.split()
    monkeypatch.chdir(tmp_path)  # the node's working folder, where the task wrote accelerate.yaml
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[3:]))
    assert (args.num_processes, args.num_machines, args.machine_rank, args.main_process_ip) == (8, 2, 1, "10.0.0.1")
    assert args.use_fsdp and args.training_script_args[:1] == ["train"]
    # the token of a gated base model is a secret given at launch (`sky launch --secret HF_TOKEN`), never in the file
    written = yaml.safe_load(out.read_text())
    assert written["secrets"] == {"HF_TOKEN": None} and "HF_TOKEN" not in written["envs"]
    given = sky.Task.from_yaml_config(written, secrets_overrides=[("HF_TOKEN", "hf_test")])
    assert list(given.secrets) == ["HF_TOKEN"]


def test_this_machines_gpu_is_the_catalog_entry_whose_whole_name_it_carries(monkeypatch):
    import torch

    from finetune import memory

    class Props:
        total_memory = 48 * memory.GiB

    for board, expected in (("NVIDIA L40S", "l40s"), ("NVIDIA L4", "l4")):
        Props.name = board
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: Props)
        assert launch_plan.local_gpu().name == expected, board


def test_auto_without_an_estimate_of_the_model_trains_one_process(monkeypatch):
    monkeypatch.setattr(launch_plan, "visible_gpus", lambda: 4)
    monkeypatch.setattr(launch_plan, "local_gpu", lambda: "a100-80gb")
    cfg = config()
    cfg.model.id = "someone/a-model-nobody-can-read"
    p = launch_plan.local_plan(cfg)
    assert (p.strategy, p.num_processes) == ("none", 1) and "could not be estimated" in p.reason


def test_planning_a_run_loads_no_torch():
    # a run waiting in the queue is a small process: the command line plans before it waits, without torch
    code = ("import sys; from finetune.commands.train import build_config; from finetune.cli import build_parser; "
            "from finetune import launch_plan; "
            "cfg = build_config(build_parser().parse_args(['train'])); p = launch_plan.local_plan(cfg); "
            "assert p.strategy == 'none' and p.num_processes == 1, p; "
            "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-2000:]
