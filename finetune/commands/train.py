"""`python -m finetune train [CONFIG.yaml] [--model ID_OR_DIR] [--data FILE] [--template NAME]
[--max-steps N] [--epochs E] [--method sft|dpo|orpo|kto|grpo] [--init-adapter RUN_OR_ADAPTER] [--reward-module FILE.py] [--set key=value ...] [--run-dir DIR] [--events-json] [--push-to REPO]
[--backend local|hf-jobs --flavor FLAVOR]`

Flags override the config file, which is optional: with nothing given it trains the embedded default
model on the bundled sample. An existing --run-dir is resumed from its last checkpoint.
--backend local (default) trains in this process; `accelerate launch --multi_gpu --num_processes N -m
finetune train ... --run-dir DIR` trains across N GPUs (DDP). --backend hf-jobs submits the run to a
Hugging Face Job on --flavor (token from HF_TOKEN, sent as a job secret only) and prints the job id.
--push-to pushes the adapter of a finished run to a Hub repo (token from HF_TOKEN).
--queue-dir DIR waits for a free slot in that machine-wide training queue first (at most
$FINETUNE_MAX_CONCURRENT_RUNS runs train at once; the app keeps its own waiting runs in <runs root>/.queue and
starts their process when a slot frees): the run folder shows "queued (position N)" meanwhile, and a STOP file
in it takes the run out of the line. --step-cap and --time-limit are a shared server's caps on one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune.config import RunConfig
    from finetune.train import RunResult


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from finetune.methods import METHODS

    p = sub.add_parser("train", help="fine-tune a model (resumes an existing --run-dir)", description=__doc__)
    p.add_argument("config", nargs="?", help="run config YAML or preset name (default: smollm2-135m-cpu; with "
                   "--method dpo|orpo|kto|grpo: smollm2-135m-<method>)")
    p.add_argument("--model", help="base model: Hub id, local folder or .gguf file")
    p.add_argument("--data", help="data file or Hub dataset id (default: the bundled sample)")
    p.add_argument("--template", help="prompt template (llama2, llama3, chatml, mistral, alpaca, falcon, model)")
    p.add_argument("--max-steps", type=int, help="optimizer steps (overrides epochs)")
    p.add_argument("--epochs", type=float, help="passes over the data")
    p.add_argument("--method", choices=METHODS,
                   help="sft (default): imitate answers; dpo/orpo: preference pairs (prompt/chosen/rejected); "
                        "kto: prompt/completion/label rows; grpo: prompts scored by the rewards (rewards.* fields)")
    p.add_argument("--init-adapter", metavar="RUN_OR_ADAPTER",
                   help="start from this LoRA adapter instead of a fresh one: a run id or folder, RUN@STEP (one of its "
                        "checkpoints), RUN@best, or an adapter folder; same base model, its own LoRA settings "
                        "(e.g. SFT first, then --method grpo --init-adapter SFT_RUN)")
    p.add_argument("--reward-module", metavar="FILE.py",
                   help="grpo: a Python file whose reward_* functions (prompts, completions, **columns) -> one float "
                        "per completion are added to the rewards; runs its code: only for your own machine")
    p.add_argument("--test-split", type=float, metavar="FRACTION",
                   help="hold out this fraction of the rows (0 to 0.5) as the test set, scored at each checkpoint "
                   "save and when the run ends (data.test_split)")
    p.add_argument("--distributed", choices=("auto", "none", "ddp", "fsdp"),
                   help="several GPUs: auto (default: data parallel when the model fits one GPU, else sharded), none, "
                        "ddp (data parallel), fsdp (sharded: each GPU holds 1/N of the model); the command starts "
                        "accelerate itself and keeps its config in the run folder (training.distributed)")
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="training processes, one per GPU (default: every visible GPU; training.num_processes)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="any config field, e.g. lora.r=64")
    p.add_argument("--run-dir", help="the run folder (default: runs/<new id>); an existing one is resumed")
    p.add_argument("--runs-root", help="where new run folders go (default: $FINETUNE_RUNS or ./runs)")
    p.add_argument("--quiet", action="store_true", help="print only the run folder at the end")
    p.add_argument("--events-json", action="store_true",
                   help="print every event as one JSON line on stdout (what a job's log is parsed from)")
    p.add_argument("--push-to", metavar="REPO", help="push the adapter to this Hub repo when the run finishes")
    p.add_argument("--config-env", metavar="VAR",
                   help="read the run config as base64 YAML from this environment variable (how a job gets it)")
    p.add_argument("--queue-dir", metavar="DIR",
                   help="wait for a free slot in this training queue before training (needs --run-dir)")
    p.add_argument("--step-cap", type=int, metavar="STEPS",
                   help="refuse to train a run planned over this many steps (a shared server's FINETUNE_MAX_STEPS)")
    p.add_argument("--time-limit", type=float, metavar="MINUTES",
                   help="checkpoint and stop after this many minutes of training; resume to go on (a shared "
                        "server's FINETUNE_MAX_RUN_MINUTES)")
    p.add_argument("--queue-slot-fd", type=int, help=argparse.SUPPRESS)  # a training slot the app took for this run
    p.add_argument("--queue-ticket", help=argparse.SUPPRESS)  # a place in line taken by the app for this run
    p.add_argument("--queue-ticket-fd", type=int, help=argparse.SUPPRESS)  # its locked, inherited descriptor
    p.add_argument("--backend", default="local", choices=("local", "hf-jobs"),
                   help="local: train here (default); hf-jobs: submit a Hugging Face Job and print its id")
    jobs = p.add_argument_group("hf-jobs")
    jobs.add_argument("--flavor", default="a10g-small", help="Jobs hardware: t4-small, l4x1, a10g-small, a10g-large, "
                      "l40sx1, a100-large, h200, a10g-largex2 ... (default: a10g-small)")
    jobs.add_argument("--space", help="Space whose image runs the job (default: $SPACE_ID, this app's Space)")
    jobs.add_argument("--image", help="Docker image with finetune installed, instead of a Space's image")
    jobs.add_argument("--timeout", type=int, metavar="MINUTES", help="job time limit (default: from the time estimate)")
    jobs.add_argument("--tokens", type=int, help="training tokens per epoch, for the time estimate of an epochs-based run")
    p.set_defaults(func=run)


def build_config(args: argparse.Namespace) -> RunConfig | None:
    """The config from file/preset + flags, or None when resuming a run folder with no flags."""
    from pathlib import Path

    from finetune.config import apply_overrides
    from finetune.presets import default_preset, load_preset

    overrides: list[str] = list(args.set)
    for flag, key in (("model", "model.id"), ("data", "data.source"), ("template", "data.template"),
                      ("max_steps", "training.max_steps"), ("epochs", "training.epochs"),
                      ("method", "training.method"), ("test_split", "data.test_split"),
                      ("init_adapter", "training.init_adapter"), ("distributed", "training.distributed"),
                      ("num_processes", "training.num_processes")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if getattr(args, "reward_module", None):
        overrides.append(f"rewards.module={Path(args.reward_module).expanduser().resolve()}")
    resuming = args.run_dir and (Path(args.run_dir) / "config.yaml").exists()
    if getattr(args, "config_env", None):
        cfg = config_from_env(args.config_env)
    elif resuming and not args.config and not overrides:
        return None
    else:
        cfg = load_preset(args.config or default_preset(getattr(args, "method", None)))
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    if cfg.training.init_adapter:
        cfg.training.init_adapter = init_adapter_path(cfg.training.init_adapter, args.runs_root)
    return cfg


def init_adapter_path(text: str, runs_root: str | None) -> str:
    """``training.init_adapter`` as the absolute folder it names: a run id or folder, ``RUN@STEP``, ``RUN@best``
    (resolved as ``export`` resolves them) or an adapter folder."""
    from pathlib import Path

    from finetune.cli import UsageError
    from finetune.commands.export import adapter_ref

    found = Path(adapter_ref(text, runs_root)).expanduser()
    if not found.exists():
        raise UsageError(f"--init-adapter {text}: no run or adapter folder of that name; give a run id or folder, "
                         "RUN@STEP, RUN@best or an adapter folder (a Hub adapter: download it first)")
    return str(found.resolve())


def config_from_env(var: str) -> RunConfig:
    """A run config sent inline: base64 of its YAML in an environment variable (a job has no config file)."""
    from finetune.cli import UsageError
    from finetune.config import RunConfig

    encoded = os.environ.get(var)
    if not encoded:
        raise UsageError(f"--config-env {var}: the variable is not set; set it to the base64 of a run config YAML")
    try:
        text = base64.b64decode(encoded, validate=True).decode("utf-8")
    except ValueError as e:
        raise UsageError(f"--config-env {var}: not base64 of UTF-8 text ({e}); encode the YAML with base64") from e
    return RunConfig.from_yaml(text, source=f"${var}")


class Printer:
    """A one-line progress bar on a terminal, plain event lines otherwise; or JSON lines on stdout."""

    def __init__(self, quiet: bool, events_json: bool = False) -> None:
        self.quiet = quiet
        self.events_json = events_json
        self.tty = sys.stderr.isatty()

    def __call__(self, e: dict[str, Any]) -> None:
        if self.events_json:
            # one line per event, flushed: a job's log streams it and backends.hfjobs parses it
            print(json.dumps(e, ensure_ascii=False), flush=True)
            return
        if self.quiet:
            return
        kind = e["type"]
        if kind == "step":
            total = e.get("max_steps") or 0
            done = int(30 * e["step"] / total) if total else 0
            eta = f" eta {e['eta_s']:.0f}s" if e.get("eta_s") is not None else ""
            line = (f"[{'#' * done}{'.' * (30 - done)}] step {e['step']}/{total} loss {e.get('loss', 0):.4f} "
                    f"{e.get('tokens_per_s') or 0:.0f} tok/s{eta}")
            print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
            return
        if self.tty:
            print(file=sys.stderr)
        detail = {k: v for k, v in e.items() if k not in ("type", "time", "data")}
        print(f"{kind}: {detail}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from finetune.cli import UsageError
    from finetune.config import ConfigError
    from finetune.errors import UserError
    from finetune.models import ModelError
    from finetune.runs import RunError
    from finetune.train import TrainingError, is_main_process, train, world_size

    if args.push_to:
        _check_repo(args.push_to)
    if args.backend == "hf-jobs":
        return submit_job(args)
    if world_size() == 1 and (code := launch_if_planned(args)) is not None:
        return code
    if args.run_dir and is_main_process():
        _hold_run(args.run_dir)
    if args.queue_slot_fd is not None:
        _SLOT.append(args.queue_slot_fd)  # inherited and locked: the slot is this process's until it ends
    elif args.queue_dir and not wait_in_queue(args):
        return 0  # stopped while waiting
    printer = Printer(args.quiet, args.events_json)
    caps = None
    if args.step_cap is not None or args.time_limit is not None:
        from finetune.limits import RunCaps

        caps = RunCaps(args.step_cap, args.time_limit)
    try:
        cfg = build_config(args)
        result = train(cfg, args.run_dir, runs_root=args.runs_root, on_event=printer, caps=caps)
    except (ConfigError, ModelError, TrainingError, RunError) as e:
        raise UsageError(str(e).replace("\n", " ")) from e
    except UserError as e:  # data errors and the like carry their own message
        raise UsageError(str(e)) from e
    if not is_main_process():  # accelerate launch: rank 0 reports and pushes
        return 0
    if args.push_to and result.status == "finished":
        push(result, args.push_to, printer)
    print(result.run_dir)
    return 0 if result.status in ("finished", "paused", "stopped") else 1


def launch_if_planned(args: argparse.Namespace) -> int | None:
    """A run planned over several processes (``training.distributed``, ``num_processes``): start them through
    accelerate with the generated config and return their exit status; None: train in this process."""
    from pathlib import Path

    from finetune import launch_plan, runs
    from finetune.cli import UsageError
    from finetune.config import ConfigError, RunConfig, validate

    try:
        cfg = build_config(args)
        if cfg is not None:
            validate(cfg)  # a refusal (a method that cannot train sharded...) comes before anything starts
        plan = launch_plan.local_plan(cfg if cfg is not None else RunConfig.load(Path(args.run_dir) / runs.CONFIG_FILE))
    except (ConfigError, launch_plan.LaunchError) as e:
        raise UsageError(str(e).replace("\n", " ")) from e
    if not plan.launched:
        return None
    run_dir = Path(args.run_dir) if args.run_dir else runs.runs_root(args.runs_root) / runs.new_run_id(
        (cfg or RunConfig()).name)
    if args.queue_dir and args.queue_slot_fd is None:
        args.run_dir = str(run_dir)
        if not wait_in_queue(args):
            return 0
    if not args.quiet:
        print(f"{plan.reason}: accelerate starts {plan.num_processes} processes "
              f"({run_dir / launch_plan.ACCELERATE_CONFIG})", file=sys.stderr)
    flags = [*(["--quiet"] if args.quiet else []), *(["--events-json"] if args.events_json else []),
             *(["--push-to", args.push_to] if args.push_to else []),
             *(["--step-cap", str(args.step_cap)] if args.step_cap is not None else []),
             *(["--time-limit", str(args.time_limit)] if args.time_limit is not None else [])]
    return launch_plan.start_processes(plan, cfg, run_dir, flags)


_SLOT: list[int] = []  # the queue slot this process trains in: held (open) until the process ends
_RUN: list[int] = []  # the run folder's process lock: held until the process ends


def _hold_run(run_dir: str) -> None:
    """Train the folder alone: a resumed run's process waits here until the process it follows has ended."""
    from pathlib import Path

    from finetune import runs

    path = Path(run_dir)
    path.mkdir(parents=True, exist_ok=True)
    if (path / runs.CONFIG_FILE).exists():
        # a resume is recorded before it waits: the run reads "resuming" (not as it was), and a stop reaches it too
        # (a new run is recorded when its folder is made, before its config is written: runs.open_run)
        runs.record_process(path, resume=True)
    _RUN.append(runs.hold_process_lock(path))


def wait_in_queue(args: argparse.Namespace) -> bool:
    """Wait for a training slot (before the heavy imports: a waiting process stays small). False: the run
    was stopped while it waited, and left the line with a ``stopped`` event."""
    from pathlib import Path

    from finetune import runs
    from finetune import slots
    from finetune.cli import UsageError
    from finetune.events import EventLog

    if not args.run_dir:
        raise UsageError("--queue-dir needs --run-dir (the run folder where the queue position is written)")
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        ticket = (slots.adopt(args.queue_ticket, args.queue_ticket_fd) if args.queue_ticket_fd is not None
                  else slots.enqueue(args.queue_dir, run_dir.name))
        log = EventLog(run_dir)
        slot = slots.wait_for_slot(args.queue_dir, ticket, should_stop=lambda: runs.claim_stop(run_dir),
                                   on_position=lambda n: log.emit("queued", position=n, **runs.process_record(os.getpid())))
    except ValueError as e:  # a bad FINETUNE_MAX_CONCURRENT_RUNS
        raise UsageError(str(e)) from e
    if slot is None:
        log.emit("stopped", pid=os.getpid(), message="removed from the queue before it started")
        return False
    _SLOT.append(slot)
    return True


def _check_repo(repo_id: str) -> None:
    """A bad repo id fails before training, not after an hour of it."""
    from finetune.cli import UsageError
    from finetune.hub import HubError, check_repo_id

    try:
        check_repo_id(repo_id)
    except HubError as e:
        raise UsageError(str(e)) from e


def push(result: RunResult, repo_id: str, printer: Printer) -> str:
    """Push the finished run's adapter (token from HF_TOKEN) and record a ``pushed`` event."""
    from finetune.cli import UsageError
    from finetune.config import RunConfig
    from finetune.events import EventLog
    from finetune.hub import HubError, push_adapter
    from finetune.runs import CONFIG_FILE

    assert result.adapter_dir is not None, "push() is called for a finished run, which has its adapter"
    log = EventLog(result.run_dir, printer)
    private = RunConfig.load(result.run_dir / CONFIG_FILE).hub.private
    try:
        url = push_adapter(result.adapter_dir, repo_id, private=private)
    except HubError as e:  # the message never holds the token (hub scrubs it)
        log.emit("push_failed", repo_id=repo_id, message=str(e))
        raise UsageError(f"{e}; the adapter is kept in {result.adapter_dir}: push it with the app or hub.push_adapter") from e
    log.emit("pushed", repo_id=repo_id, url=url)
    return url


def submit_job(args: argparse.Namespace) -> int:
    """--backend hf-jobs: build the job from the config, submit it, print the job id and where to watch it."""
    from finetune.backends import hfjobs
    from finetune.cli import UsageError
    from finetune.config import ConfigError
    from finetune.hub import HubError

    if args.run_dir:
        raise UsageError("--run-dir is for local runs; a job's run folder is created under --runs-root")
    try:
        cfg = build_config(args)
        assert cfg is not None, "build_config returns None only to resume a --run-dir, refused above"
        if cfg.rewards.module:
            raise UsageError("--reward-module runs Python code from this machine: a Hugging Face job cannot read it; "
                             "use the built-in rewards (rewards.*) for a job, or train here with --backend local")
        run_id = hfjobs.start(cfg, args.runs_root, flavor=args.flavor, repo_id=args.push_to, space_id=args.space,
                              image=args.image, timeout_s=args.timeout * 60 if args.timeout else None,
                              tokens=args.tokens)
    except (ConfigError, HubError, hfjobs.JobError) as e:
        raise UsageError(str(e).replace("\n", " ")) from e
    job = hfjobs.read_job(run_id, args.runs_root)
    print(f"submitted job {job['job_id']} on {job['flavor']} (time limit {job['timeout_s'] // 60} min): {job['url']}",
          file=sys.stderr)
    print(f"follow it with: python -m finetune status {run_id}", file=sys.stderr)
    print(job["job_id"])
    return 0
