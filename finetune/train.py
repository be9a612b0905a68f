"""``train(config)``: one QLoRA/LoRA run on trl's SFTTrainer, top to bottom (setup, train, save).

The run folder is written as it goes: ``config.yaml`` first, ``events.jsonl`` line by line, checkpoints
every ``training.save_steps`` (adapter + optimizer + scheduler + RNG + data position), ``adapter/`` at
the end. Calling ``train`` on an existing run folder resumes from its last checkpoint, so a killed
process loses at most one save interval, and the resumed run ends with the same adapter as an
uninterrupted one.

>>> from finetune.config import RunConfig
>>> cfg = RunConfig()
>>> cfg.training.max_steps = 30
>>> result = train(cfg)  # doctest: +SKIP
>>> result.status, result.adapter_dir  # doctest: +SKIP
('finished', PosixPath('runs/20261123-101500-3f9c2a7d1b/adapter'))
"""

from __future__ import annotations

import dataclasses
import errno
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence, cast

from . import methods, runs
from .adapter import find_adapter_dir, pick_device, write_run_files, write_tokenizer
from .config import SAMPLE_DATA, ConfigError, RunConfig, validate
from .errors import UserError, is_programming_error
from .events import EventLog
from .io import DISK_FULL_FIX, DiskFullError
from .limits import LimitError, RunCaps, check_steps, time_limit_message
from .models import ModelError
from .settings import Device, ResolvedSettings, SpeedOptions, resolve
from .templates import token_labels

if TYPE_CHECKING:
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
    from peft import LoraConfig
    from trl.trainer.sft_trainer import SFTTrainer  # the class trl's lazy top-level module hands out

    from .config import LoraSettings, TrainingConfig
    from .cpushare import CpuShare
    from .data import Example
    from .degeneration import SaveSamples
    from .evaluate import SaveEvaluation
    from .models import Model, Tokenizer
    from .templates import Message

    class _EventsCallback(TrainerCallback):
        """What ``_make_callback`` returns: its callback, and why it halted the run (None: it did not)."""

        halt_reason: str | None
        halt_message: str | None

Encoding = tuple[list[int], list[tuple[int, int]]]  # one text's token ids and their (start, end) characters


class TrainingError(RuntimeError, UserError):
    """A run that could not start or went wrong; the message says what to change."""


def is_main_process() -> bool:
    """Under ``accelerate launch`` / torchrun every process runs ``train``; only global rank 0 writes the run
    folder (config, events, adapter), so a 2-GPU run leaves one event per step, not two."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


class _Events(Protocol):
    """Where a run's events go: :class:`EventLog` (rank 0) or :class:`_SilentLog`."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]: ...


class _SilentLog:
    """The event log of a process other than rank 0: events are built (callers read them) but not written."""

    def emit(self, type: str, **fields: Any) -> dict[str, Any]:
        return {"type": type, "time": round(time.time(), 3), **fields}


@dataclass
class RunResult:
    run_id: str
    run_dir: Path
    status: str  # finished | stopped | paused
    step: int
    max_steps: int
    adapter_dir: Path | None
    metrics: dict[str, Any]


# ---------------------------------------------------------------------------------------------
# run folder


def open_run(config: RunConfig | None, run_dir: str | Path | None = None, root: str | Path | None = None) -> tuple[RunConfig, Path, bool]:
    """Create a run folder (or reopen one to resume). Returns (config, folder, resuming)."""
    if run_dir is not None:
        run_dir = Path(run_dir)
        saved = run_dir / runs.CONFIG_FILE
        if saved.exists():
            existing = RunConfig.load(saved)
            if config is not None and _identity(config) != _identity(existing):
                raise TrainingError(
                    f"{run_dir} already holds a run with a different config; resume it without changing the "
                    "config (only training.max_steps/epochs may grow), or use a new --run-dir"
                )
            if config is not None and is_main_process():  # extending a run: more steps or epochs
                existing.training.max_steps = config.training.max_steps
                existing.training.epochs = config.training.epochs
                existing.save(saved)
            return existing, run_dir, True
    elif world_size() > 1:
        # each process would draw its own random run id: they must share one folder
        raise TrainingError("a multi-process run (accelerate launch) needs --run-dir so every process uses the same run folder")
    else:
        run_dir = runs.runs_root(root) / runs.new_run_id((config or RunConfig()).name)
    config = config or RunConfig()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write-test-{os.getpid()}"  # per process: ranks probe the same folder at once
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise TrainingError(f"cannot write the run folder {run_dir}: {e.strerror or e}; choose a writable --run-dir") from e
    if is_main_process():
        config.save(run_dir / runs.CONFIG_FILE)
    return config, run_dir, False


def _identity(cfg: RunConfig) -> dict[str, Any]:
    """The parts of a config that must not change when a run is resumed."""
    d = cfg.to_dict()
    d["training"] = {k: v for k, v in d["training"].items() if k not in ("max_steps", "epochs")}
    d.pop("hub", None)
    return d


# ---------------------------------------------------------------------------------------------
# data -> token ids + labels


def tokenize_examples(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids and labels (-100 outside the trained character spans), truncated to ``max_length``.

    The text already contains the template's bos/eos strings, so no special tokens are added.
    A token is trained on when its characters overlap a trained span (``templates.token_labels``). Each distinct
    text is tokenized once.
    """
    texts = [ex.text for ex in examples]
    distinct = list(dict.fromkeys(texts))
    enc = tokenizer(distinct, add_special_tokens=False, return_offsets_mapping=True, truncation=False) if distinct else {}
    encoded: dict[str, Encoding] = {t: (ids, offsets) for t, ids, offsets
                                    in zip(distinct, enc.get("input_ids", []), enc.get("offset_mapping", []))}
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for ex, text in zip(examples, texts):
        ids, offsets = encoded[text]
        lab = token_labels(ids, offsets, ex.spans)
        input_ids.append(list(ids[:max_length]))
        labels.append(lab[:max_length])
    return {"input_ids": input_ids, "labels": labels}


@dataclass(frozen=True)
class TrainedDialogs:
    """What the adapter keeps of the data: the default system prompt and dialogs to check its template on."""

    system_prompt: str  # every training row's shared system prompt, else the configured one
    dialogs: list[list[Message]]  # a sample of the validation (else training) conversations


def _datasets(config: RunConfig, tokenizer: Tokenizer
              ) -> tuple[Dataset, Dataset | None, dict[str, Any], TrainedDialogs, list[Example]]:
    """Format the configured data with the template and tokenize it: (train, eval or None, summary, dialogs, the
    examples ``data.test_split`` held out)."""
    from datasets import Dataset

    from . import data
    from .verify import sample_dialogs

    d, t = config.data, config.training
    source = d.source or str(SAMPLE_DATA)
    result = data.format_dataset(
        source,
        d,
        tokenizer=tokenizer,
        measure_tokens=False,  # tokenize_examples below tokenizes each example once, with the offsets labels need
        max_length=t.max_length,
    )
    train_tok = tokenize_examples(result.examples, tokenizer, t.max_length)
    keep = [i for i, lab in enumerate(train_tok["labels"]) if any(x != -100 for x in lab)]
    if not keep:
        raise TrainingError(
            f"{source}: no example has trained-on tokens within training.max_length={t.max_length}; "
            "raise max_length or shorten the prompts"
        )
    train_ds = Dataset.from_dict({k: [v[i] for i in keep] for k, v in train_tok.items()})
    eval_ds = None
    if result.val_examples:
        ev = tokenize_examples(result.val_examples, tokenizer, t.max_length)
        eval_ds = Dataset.from_dict(ev)
    summary = {
        "source": source,
        "shape": str(result.shape),
        "rows_in": result.rows_in,
        "train_examples": len(train_ds),
        "eval_examples": len(eval_ds) if eval_ds is not None else 0,
        **({"test_examples": len(result.test_examples)} if d.test_split > 0 else {}),
        "skipped": dict(result.skipped),
        "dropped_no_trained_tokens": len(result.examples) - len(keep),
        "train_tokens": sum(len(x) for x in train_ds["input_ids"]),
    }
    # the default system prompt the Dataset tab announces: the rows' shared one, else the one set
    dialogs = TrainedDialogs(result.default_system_prompt, sample_dialogs(result.val_examples, result.examples))
    return train_ds, eval_ds, summary, dialogs, result.test_examples


# ---------------------------------------------------------------------------------------------
# the adapter a run starts from


@dataclass(frozen=True)
class StartAdapter:
    """``training.init_adapter`` checked: the adapter folder, how cards name it, and its LoRA settings (which the
    run trains with: the weights only fit their own rank and layers)."""

    folder: Path
    label: str
    lora: LoraSettings


def start_adapter(config: RunConfig, base_name: str) -> StartAdapter | None:
    """The adapter ``training.init_adapter`` names (a run folder, a checkpoint or an adapter folder; the CLI and
    the app turn ``RUN``, ``RUN@STEP`` and ``RUN@best`` into these), checked before anything loads: a LoRA adapter
    in safetensors, trained on this run's base model (``base_name``, as adapters record it). None: a fresh LoRA."""
    from .adapter import (adapter_label, check_adapter_files, find_adapter_dir, lora_settings, lora_weights_path,
                          read_base_model, read_lora_config)

    text = config.training.init_adapter.strip()
    if not text:
        return None
    folder = find_adapter_dir(Path(text).expanduser())
    if folder is None:
        raise TrainingError(f"training.init_adapter {text}: no adapter there (no adapter_config.json); give a "
                            "finished run, one of its checkpoints (RUN@STEP) or an adapter folder")
    label = adapter_label(folder)
    check_adapter_files(folder, label)
    lora_weights_path(folder)
    kind = str(read_lora_config(folder).get("peft_type") or "LORA")
    if kind.upper() != "LORA":
        raise TrainingError(f"training.init_adapter {label} is a {kind} adapter; a run can only continue a LoRA "
                            "adapter")
    base = read_base_model(folder)
    if base and not _same_model(base, base_name):
        raise TrainingError(f"training.init_adapter {label} was trained on {base}, but this run's base model is "
                            f"{base_name}; set model.id to {base}, or start from an adapter trained on {base_name}")
    return StartAdapter(folder, label, lora_settings(folder))


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _lora_note(config: RunConfig, start: StartAdapter) -> str | None:
    """What the run does with the config's own LoRA fields when it starts from an adapter (None: they agree)."""
    from .config import parse_target_modules

    lo, own = config.lora, start.lora
    targets = parse_target_modules(lo.target_modules)
    same_targets = targets == "all-linear" or sorted(targets) == own.target_modules  # all-linear: peft's own list
    if same_targets and dataclasses.replace(lo, target_modules=own.target_modules) == own:
        return None
    shown = ", ".join(own.target_modules) if isinstance(own.target_modules, list) else own.target_modules
    return (f"LoRA settings come from the adapter {start.label} (r={own.r}, alpha={own.alpha:g}, "
            f"dropout={own.dropout:g}, targets {shown}); the config's lora.* (r={lo.r}, alpha={lo.alpha:g}, "
            f"dropout={lo.dropout:g}) are not used")


# ---------------------------------------------------------------------------------------------
# device and precision


def resolved_settings(config: RunConfig, device: str, speed: SpeedOptions = SpeedOptions()) -> ResolvedSettings:
    """The config's "auto" values on ``device`` of this machine (:func:`finetune.settings.resolve`)."""
    return resolve(config, Device.detect(device), speed)


def trainer_settings(resolved: ResolvedSettings) -> dict[str, Any]:
    """The SFTConfig arguments that come from the resolved settings: optimizer and mixed precision."""
    return {"optim": resolved.optim, **resolved.trainer_precision}


PACKED_SDPA = "finetune_packed_sdpa"


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, cu_seq_lens_q: torch.Tensor | None = None,
                          cu_seq_lens_k: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA over each sequence of a padding-free row separately (causal, no mask).

    A padding-free batch is one row holding every example; plain SDPA attends over the whole row with a
    block-diagonal [row, row] mask, so its cost grows with the square of the batch's total length (4 x 1024 tokens:
    16.8M scores per head instead of 4 x 1.05M) and nothing skips the masked blocks on CPU. Here each example only
    attends to itself: the cost of padded batches without their padding. The same result as the masked row
    (tests/test_train_bench.py). Anything but a single padding-free row goes to transformers' SDPA unchanged.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or cu_seq_lens_q.numel() <= 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                                   **{k: v for k, v in kwargs.items() if k != "is_causal"})[0]
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(outs, dim=1), None  # [1, row, heads, head_dim], as sdpa_attention_forward returns


def _use_packed_attention(model: Model) -> None:
    """Switch a loaded model's SDPA attention to ``packed_sdpa_attention`` (same masks for everything else)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    model.set_attn_implementation(PACKED_SDPA)


def use_checkpointing(config: RunConfig, device: str, model_path: str,
                      speed: SpeedOptions = SpeedOptions()) -> tuple[bool, str | None]:
    """Whether to recompute activations in backward, and why it was skipped (None when the config is followed).

    On a GPU the setting is followed: memory decides which model fits at all there. On CPU the memory is the
    machine's RAM and recomputing the forward costs ~20-30% of the step (SmolLM2-135M QLoRA, batch 4 x 512:
    bench/train_throughput.py --variants), so it is skipped when the memory estimate without it uses under half
    of the RAM.
    """
    t = config.training
    if not t.gradient_checkpointing or device != "cpu" or not speed.checkpoint_only_when_needed_on_cpu:
        return t.gradient_checkpointing, None
    from . import memory

    try:
        spec = memory.load_model_spec(model_path, allow_hub=False)
        cpu = memory.get_gpu("cpu")
        est = memory.estimate_training(spec, memory.TrainSetup.from_config(config, cpu, gradient_checkpointing=False),
                                       cpu, advise=False)
    except (memory.EstimateError, OSError, ValueError, KeyError):
        return True, None  # no estimate: keep the memory-safe choice
    if est.peak_gb > 0.5 * cpu.usable_gb:
        return True, None
    return False, (f"gradient checkpointing skipped on CPU: ~{est.peak_gb:.1f} GB without it fits in "
                   f"{cpu.usable_gb:.0f} GB of RAM, and training runs faster")


# ---------------------------------------------------------------------------------------------
# sharing the CPU with the app that started the run


def _cpu_share(device: str) -> CpuShare | None:
    """The app's request to share the CPU (finetune.cpushare), on CPU only; None otherwise."""
    if device != "cpu":
        return None
    from . import cpushare
    from . import slots

    try:
        concurrent = slots.max_concurrent()
    except ValueError:
        concurrent = 1
    return cpushare.from_env(cpushare.cpu_cores(), concurrent)


class Gauge:
    """Memory and utilisation of the training device, for the live gauge: ``mem_gb`` in use (GPU: reserved by
    torch; CPU: this process's resident memory), ``mem_total_gb`` and ``util_pct`` (GPU: the card's utilisation
    where NVML is there; CPU: this process's CPU time over the last interval, 100 per busy core)."""

    def __init__(self) -> None:
        from .cpushare import process_cpu_seconds

        self._cpu = process_cpu_seconds
        self._last = (time.monotonic(), process_cpu_seconds(os.getpid()))

    def read(self) -> dict[str, float | None]:
        import torch

        gib = 1024**3
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            try:
                util: float | None = float(torch.cuda.utilization())
            except (ModuleNotFoundError, RuntimeError):  # no NVML on this machine
                util = None
            return {"mem_gb": round(torch.cuda.memory_reserved() / gib, 2),
                    "mem_total_gb": round(props.total_memory / gib, 2), "util_pct": util}
        now, used = time.monotonic(), self._cpu(os.getpid())
        then, used_then = self._last
        self._last = (now, used)
        util = (round(100 * (used - used_then) / (now - then), 1)
                if used is not None and used_then is not None and now > then else None)
        try:
            rss = int(open("/proc/self/statm", encoding="ascii").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (OSError, ValueError, IndexError):
            return {"mem_gb": None, "mem_total_gb": None, "util_pct": util}
        return {"mem_gb": round(rss / gib, 2), "mem_total_gb": round(total / gib, 2), "util_pct": util}


# The package each tracker needs (the others: transformers names theirs when one is missing).
TRACKER_PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def _trackers(config: RunConfig, run_dir: Path) -> list[str]:
    """``training.report_to`` as the trainer takes it. Trackio writes its local dashboard next to the runs of
    the same owner (``<runs root>/.trackio``, ``trackio show`` there), so one owner's runs are compared and no other
    owner's appear; a tracker signs in with its own login, never with a token of this app."""
    import importlib.util

    from .config import reporters

    names = reporters(config.training.report_to)
    missing = [n for n in names if n in TRACKER_PACKAGES and importlib.util.find_spec(TRACKER_PACKAGES[n]) is None]
    if missing:
        raise TrainingError(f"training.report_to {', '.join(missing)}: install "
                            f"{' '.join(TRACKER_PACKAGES[n] for n in missing)} (pip), or set training.report_to: none")
    if "trackio" in names:
        os.environ.setdefault("TRACKIO_DIR", str(run_dir.parent / ".trackio"))
    return names


def _share_callback(share: CpuShare, log: _Events) -> TrainerCallback:
    """At each step boundary (at most once a second) set torch's threads from the app's recent CPU use; each
    change is a ``threads`` event."""
    import torch
    from transformers import TrainerCallback

    class ShareCpu(TrainerCallback):
        def on_step_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                          **kw: Any) -> None:
            threads = share.check()
            if threads is not None:
                torch.set_num_threads(threads)
                log.emit("threads", step=state.global_step, threads=threads, load_cores=round(share.load_cores, 2))

    return ShareCpu()


# ---------------------------------------------------------------------------------------------
# the callback that writes events and honours stop / chunk limits


def _make_callback(log: _Events, run_dir: Path, should_stop: Callable[[], bool] | None, until_step: int | None,
                   time_budget_s: float | None, started_at: float, method: str = "sft",
                   time_limit_s: float | None = None, beta: float = 0.0) -> _EventsCallback:
    """``beta``: the method's (methods.beta), which scales the reward margin a dpo or kto step logs."""
    from transformers import TrainerCallback

    from .degeneration import margin_warning

    class Events(TrainerCallback):
        def __init__(self) -> None:
            self.halt_reason: str | None = None
            self.halt_message: str | None = None  # why, when not the user's stop or a chunk's end
            self.last_time = time.time()
            self.last_tokens = 0
            self.first_step: int | None = None
            self.step_times: list[float] = []
            self.gauge = Gauge()
            self.margin_warned = False  # the reward margin's warning is written once per process

        def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                           **kw: Any) -> None:
            self.first_step = state.global_step
            self.last_tokens = state.num_input_tokens_seen or 0
            self.last_time = time.time()

        def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                        **kw: Any) -> None:
            now = time.time()
            self.step_times.append(now - self.last_time)
            self.last_time = now
            halt: str | None = None
            if should_stop is not None and should_stop():
                halt = "stopped"
            elif state.global_step < state.max_steps and is_main_process() and runs.claim_stop(run_dir):
                halt = "stopped"  # taken (renamed): a resume asked from now on follows this process
            elif until_step is not None and state.global_step >= until_step:
                halt = "paused"
            elif time_budget_s is not None:
                per_step = sum(self.step_times[-5:]) / len(self.step_times[-5:])
                # leave room for one more step and the checkpoint write
                if now - started_at + 2 * per_step > time_budget_s:
                    halt = "paused"
            if halt is None and time_limit_s is not None and now - started_at >= time_limit_s:
                # a shared server's cap on one run's time (limits.RunCaps): stopped as a user's stop is, resumable
                halt = "stopped"
                self.halt_message = time_limit_message(time_limit_s / 60)
            halt = _rank0_decides(halt)
            if halt and state.global_step < state.max_steps:
                self.halt_reason = halt
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   logs: dict[str, float] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.time()
            elapsed = now - started_at
            tokens = state.num_input_tokens_seen or 0
            done = state.global_step - (self.first_step or 0)
            recent = self.step_times[-10:]
            per_step = sum(recent) / len(recent) if recent else None
            # int: transformers types logging_steps as float (below 1 it is a ratio); ours is a whole number >= 1
            tps = (tokens - self.last_tokens) / max(sum(self.step_times[-int(args.logging_steps):]), 1e-9)
            self.last_tokens = tokens
            metrics = methods.step_metrics(method, logs) if method != "sft" else None
            log.emit(
                "step",
                step=state.global_step,
                max_steps=state.max_steps,
                epoch=round(state.epoch or 0, 4),
                loss=logs.get("loss"),
                lr=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_per_s=round(tps, 1),
                tokens_seen=tokens,
                elapsed_s=round(elapsed, 2),
                eta_s=round(per_step * (state.max_steps - state.global_step), 1) if per_step and done else None,
                **self.gauge.read(),
                **({"metrics": metrics} if metrics is not None else {}),
            )
            warning = margin_warning(method, metrics or {}, beta)
            if warning and not self.margin_warned:
                self.margin_warned = True
                log.emit("warning", step=state.global_step, kind="margin", message=warning)

        def on_evaluate(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                        metrics: dict[str, float] | None = None, **kw: Any) -> None:
            if metrics and "eval_loss" in metrics:
                log.emit("eval", step=state.global_step, eval_loss=metrics["eval_loss"])

        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            assert args.output_dir is not None  # train() sets it
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            log.emit("checkpoint", step=state.global_step, path=str(path.relative_to(run_dir)))

    return cast("_EventsCallback", Events())  # Events is _EventsCallback's shape, defined once transformers is imported


def _checkpoint_adapter_callback(config: RunConfig, tokenizer: Tokenizer, base_name: str, system_prompt: str,
                                 data_summary: dict[str, Any], device: str) -> TrainerCallback:
    """After each checkpoint save: ``checkpoint-N/adapter/``, a clean adapter of that step (weights, tokenizer,
    trained template, model card; no pickles), so any checkpoint can be evaluated, chatted with, pushed or
    merged."""
    from transformers import TrainerCallback

    from .adapter import write_checkpoint_adapter
    from .card import write_model_card

    class CheckpointAdapter(TrainerCallback):
        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            if not is_main_process():
                return
            assert args.output_dir is not None  # train() sets it
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            metrics = {"steps": state.global_step, **({"first_loss": losses[0], "final_loss": losses[-1]} if losses else {})}
            folder = write_checkpoint_adapter(path, config, tokenizer, base_name, metrics, system_prompt)
            write_model_card(folder, config, base_name, metrics, state.log_history, data_summary, device,
                             tokenizer=tokenizer, plot=False)

    return CheckpointAdapter()


def _rank0_decides(value: str | None) -> str | None:
    """Rank 0's value on every process: a DDP rank that stops alone leaves the others waiting forever in the
    next all-reduce, and the stop file / time budget can read differently on each rank."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# ---------------------------------------------------------------------------------------------
# train


def train(
    config: RunConfig | None = None,
    run_dir: str | Path | None = None,
    *,
    runs_root: str | Path | None = None,
    on_event: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    until_step: int | None = None,
    time_budget_s: float | None = None,
    callbacks: list[TrainerCallback] | None = None,
    speed: SpeedOptions = SpeedOptions(),
    caps: RunCaps | None = None,
) -> RunResult:
    """Run (or resume) one fine-tuning run and return where its adapter is.

    ``until_step`` / ``time_budget_s`` end the call early at a checkpoint with status ``paused``
    (chunked training: call again with the same ``run_dir`` to continue). ``should_stop`` or a ``STOP``
    file in the run folder ends it with a checkpoint and status ``stopped``. ``callbacks`` are extra
    transformers TrainerCallbacks. ``speed``: implementation choices (the measured best by default; the
    benchmark turns them off one at a time). ``caps``: a shared server's limits (:mod:`finetune.limits`): a run
    planned over ``caps.max_steps`` fails before it trains; after ``caps.max_minutes`` it checkpoints and stops
    with a ``stopped`` event that says so.
    """
    started_at = time.time()
    config, run_dir, resuming = open_run(config, run_dir, runs_root)
    log: _Events = EventLog(run_dir, on_event) if is_main_process() else _SilentLog()
    try:
        return _train(config, run_dir, resuming, log, should_stop, until_step, time_budget_s, started_at,
                      callbacks or [], speed, caps)
    except (ConfigError, ModelError, TrainingError, runs.RunError) as e:
        log.emit("failed", message=str(e))
        raise
    except Exception as e:  # noqa: BLE001 - recorded in the run folder, then re-raised
        message = _explain(e, config)
        log.emit("failed", message=message, error=e.__class__.__name__)
        if message != str(e) and not is_programming_error(e):  # a bug keeps its type and traceback
            raise TrainingError(message) from e
        raise


def _explain(e: Exception, config: RunConfig) -> str:
    """Turn a CUDA out-of-memory into the settings to lower; other errors keep their message."""
    import torch

    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        t = config.training
        hints = [f"training.batch_size {t.batch_size} -> {max(1, t.batch_size // 2)} (raise grad_accum to keep the effective batch)",
                 f"training.max_length {t.max_length} -> {max(128, t.max_length // 2)}"]
        if not t.gradient_checkpointing:
            hints.append("training.gradient_checkpointing -> true")
        if config.quantization.load_in != "4bit":
            hints.append("quantization.load_in -> 4bit")
        return "out of GPU memory; lower: " + "; ".join(hints) + ". The last checkpoint is kept: resume after changing"
    if isinstance(e, OSError) and e.errno == errno.ENOSPC and not isinstance(e, DiskFullError):
        # the trainer's own checkpoint writes: the same advice as for our run files
        return f"{e.__class__.__name__}: {e}; {DISK_FULL_FIX}"
    return f"{e.__class__.__name__}: {e}"


def _train(config: RunConfig, run_dir: Path, resuming: bool, log: _Events, should_stop: Callable[[], bool] | None,
           until_step: int | None, time_budget_s: float | None, started_at: float,
           extra_callbacks: list[TrainerCallback], speed: SpeedOptions, caps: RunCaps | None = None) -> RunResult:
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # trl exports them through a lazy module

    from . import models

    # -- setup -----------------------------------------------------------------------------
    if world_size() == 1 and runs.claim_stop(run_dir):  # asked before this process began to train
        step = runs.read_run(run_dir).step
        log.emit("stopped", pid=os.getpid(), step=step, message="stopped before training began")
        return RunResult(run_dir.name, run_dir, "stopped", step, config.training.max_steps, None, {})
    device = pick_device()
    resolved = models.resolve(config.model)
    validate(config, models.model_max_length(resolved.path, resolved.revision), source=str(run_dir / runs.CONFIG_FILE))
    start = start_adapter(config, resolved.name)  # a missing or mismatched adapter fails before the data loads
    # what the adapter's files and card record: the LoRA settings the weights were trained with
    saved_config = dataclasses.replace(config, lora=start.lora) if start else config
    if config.quantization.load_in != "none" and device == "cpu" and config.quantization.load_in == "8bit":
        raise TrainingError("8-bit loading needs a CUDA GPU; use quantization.load_in: 4bit or none on CPU")
    tokenizer = models.load_tokenizer(config.model)
    t = config.training
    held_out: list[Example] = []
    if t.method == "sft":
        train_ds, eval_ds, data_summary, dialogs, held_out = _datasets(config, tokenizer)
    else:  # preference and reward methods: their own data shapes and trl trainer (finetune/methods.py)
        from .verify import sample_dialogs

        train_ds, eval_ds, data_summary, method_data = methods.datasets(config, tokenizer)
        dialogs = TrainedDialogs(method_data.default_system_prompt,
                                 sample_dialogs(method_data.val_examples, method_data.examples))
    if config.data.test_split > 0 and is_main_process():  # the run's test set, for every later evaluation
        from .evaluate import write_held_out

        write_held_out(held_out, run_dir / runs.TEST_SET)
    from .evaluate import run_test_source

    test_source = run_test_source(run_dir, config)
    if test_source:  # a bad test file is the user's to fix before training, not after
        from .evaluate import limited, read_test_set

        data_summary["test_prompts"] = len(limited(read_test_set(test_source), config.data.test_limit))
    if caps is not None:  # an epochs run is planned only now, from the rows its data has
        try:
            check_steps(caps, _planned_steps(t, len(train_ds)))
        except LimitError as e:
            raise TrainingError(str(e)) from None
    resume_from = runs.last_checkpoint(run_dir) if resuming else None
    share = _cpu_share(device)
    if share is not None:
        torch.set_num_threads(share.most)
    log.emit(
        "started",
        name=config.name,
        model=resolved.name,
        device=device,
        pid=os.getpid(),
        cpu_threads=torch.get_num_threads(),
        shares_cpu=share is not None,
        resumed_from=str(resume_from.relative_to(run_dir)) if resume_from else None,
        init_adapter=start.label if start else None,
        data=data_summary,
        max_steps=_planned_steps(t, len(train_ds)),
    )

    if start is not None and (note := _lora_note(config, start)):
        log.emit("note", message=note)
    transformers.set_seed(t.seed)  # LoRA init and dropout are seeded
    settings = resolved_settings(config, device, speed)
    checkpointing, checkpointing_note = use_checkpointing(config, device, str(resolved.path), speed)
    if checkpointing_note:
        log.emit("note", message=checkpointing_note)
    model_cfg = config.model
    if t.method == "sft" and settings.attention == "flash_attention_2" and model_cfg.attn_implementation != settings.attention:
        model_cfg = dataclasses.replace(model_cfg, attn_implementation=settings.attention)  # varlen on CUDA
    model, _ = models.load_model(model_cfg, config.quantization, device, dtype=getattr(torch, settings.model_dtype))
    if t.method == "sft" and settings.attention == "per_sequence_sdpa":
        _use_packed_attention(model)
    if settings.kernels == "liger":
        kernels_note = models.apply_liger_kernels(model)
        if kernels_note:
            log.emit("note", message=kernels_note)
    peft_config: LoraConfig | None = models.lora_config(config.lora)
    if start is not None:
        from peft import PeftModel

        # the adapter's weights, trainable, instead of a fresh LoRA; a resumed run starts here too and the trainer
        # then loads its checkpoint's weights over them (dpo/kto/grpo with a KL term copy these starting weights as
        # their reference, so the reference of a resumed run is the same)
        model = PeftModel.from_pretrained(model, str(start.folder), is_trainable=True)
        peft_config = None
    common: dict[str, Any] = dict(  # the arguments of every method's trainer config
        output_dir=str(run_dir / runs.CHECKPOINTS),
        learning_rate=t.learning_rate,
        num_train_epochs=t.epochs,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,  # 0 = no clipping (the Trainer clips only when > 0; None would fail there)
        gradient_checkpointing=checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": settings.checkpoint_reentrant} if checkpointing else None,
        seed=t.seed,
        data_seed=t.seed,
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy=("steps" if t.eval_steps > 0 else "no") if eval_ds is not None else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        report_to=_trackers(config, run_dir) or "none",
        run_name=run_dir.name,
        project=t.project,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        include_num_input_tokens_seen="non_padding",
        **trainer_settings(settings),
    )
    callback = _make_callback(log, run_dir, should_stop, until_step, time_budget_s, started_at, t.method,
                              caps.max_minutes * 60 if caps is not None and caps.max_minutes is not None else None,
                              beta=methods.beta(config))
    callbacks = [_checkpoint_adapter_callback(saved_config, tokenizer, resolved.name, dialogs.system_prompt, data_summary,
                                              device), callback,
                 *([_share_callback(share, log)] if share else []), *extra_callbacks]
    if test_source and is_main_process() and world_size() == 1:  # a sharded model generates on every rank or none
        from .evaluate import SaveEvaluation

        evaluation = SaveEvaluation(run_dir, test_source, base_model=resolved.name, limit=config.data.test_limit,
                                    max_new_tokens=config.data.test_max_new_tokens,
                                    in_memory=_scores_in_memory(config, settings, device))
        callbacks.insert(2, _evaluate_at_save_callback(evaluation, tokenizer, log, callback, time_budget_s, started_at))
    if t.method != "sft" and is_main_process() and world_size() == 1:
        # preference metrics cannot show a model whose answers degenerated: a few answers at each save can
        from .degeneration import SaveSamples, sample_prompts, sample_tokens

        prompts = sample_prompts(method_data.val_examples or method_data.examples)
        if prompts:
            samples = SaveSamples(prompts, base_model=resolved.name, quantization=config.quantization,
                                  max_new_tokens=sample_tokens([r for _, r in prompts], tokenizer))
            callbacks.insert(callbacks.index(callback) + 1,
                             _samples_at_save_callback(samples, log, callback, time_budget_s, started_at))
    trainer: Trainer
    if t.method == "sft":
        sft_args = SFTConfig(
            **common,
            # padding-free without packing: trl wants max_length=None (we truncated already)
            max_length=None if (t.padding_free and not t.packing) else t.max_length,
            packing=t.packing,
            padding_free=t.padding_free,
            dataset_num_proc=None,
            completion_only_loss=None,
        )
        trainer_cls: type[SFTTrainer] = _trainer_class(settings.loss) if settings.loss != "trl" else SFTTrainer
        trainer = trainer_cls(
            model=model,
            args=sft_args,
            train_dataset=train_ds,
            eval_dataset=eval_ds,
            processing_class=tokenizer,
            peft_config=peft_config,
            callbacks=callbacks,
        )
    else:
        trainer = methods.make_trainer(config, model, tokenizer, common, train_ds, eval_ds,
                                       peft_config, callbacks, device)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
    if resume_from is not None:
        _keep_adapter_dtypes(trainer)

    # -- train -------------------------------------------------------------------------------
    out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    step = trainer.state.global_step
    if callback.halt_reason:
        log.emit(callback.halt_reason, step=step, max_steps=trainer.state.max_steps,
                 message=callback.halt_message or ("stopped by the user" if callback.halt_reason == "stopped"
                                                   else "chunk ended at a checkpoint"),
                 **({"limit": "time"} if callback.halt_message else {}))
        return RunResult(run_dir.name, run_dir, callback.halt_reason, step, trainer.state.max_steps, None, {})

    # -- save ----------------------------------------------------------------------------------
    metrics: dict[str, Any] = {"train_loss": out.training_loss, "steps": step, "train_runtime_s": out.metrics.get("train_runtime")}
    if t.method != "sft":
        metrics["method"] = t.method
        metrics.update(methods.final_metrics(t.method, trainer.state.log_history))
    if eval_ds is not None:
        evaluated = trainer.evaluate()
        if "eval_loss" in evaluated:
            metrics["eval_loss"] = evaluated["eval_loss"]
            log.emit("eval", step=step, eval_loss=metrics["eval_loss"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["first_loss"], metrics["final_loss"] = losses[0], losses[-1]
    adapter_dir = run_dir / runs.ADAPTER
    if is_main_process():
        save_adapter(trainer, tokenizer, saved_config, resolved.name, run_dir, metrics, data_summary, device, dialogs, log)
    max_steps = trainer.state.max_steps
    if test_source and is_main_process():
        del trainer, model  # what remains to score loads the base afresh (a 4-bit base used for inference must not train)
        _evaluate_run(config, run_dir, test_source, log)
    log.emit("finished", step=step, adapter=runs.ADAPTER, metrics=metrics)
    return RunResult(run_dir.name, run_dir, "finished", step, max_steps, adapter_dir, metrics)


def _scores_in_memory(config: RunConfig, settings: ResolvedSettings, device: str) -> bool:
    """Whether the training model itself can answer the test set at each save: an SFT model with the weights
    ``finetune eval`` loads (unquantized, in the dtype it loads them in), so its figures are ``finetune eval``'s."""
    import torch

    from .config import QuantizationConfig
    from .models import compute_dtype

    if config.quantization.load_in != "none" or config.training.method != "sft":
        return False
    eval_dtype = compute_dtype(QuantizationConfig().compute_dtype, device) if device == "cuda" else torch.float32
    return bool(getattr(torch, settings.model_dtype) == eval_dtype)


def _evaluation_event(log: _Events, entry: dict[str, Any], **extra: Any) -> None:
    from .evaluate import METRICS

    log.emit("evaluation", step=entry["step"], model=entry["checkpoint"], n=entry.get("n"),
             **{m: entry.get(m) for m in METRICS}, **extra)


def _evaluate_at_save_callback(evaluation: SaveEvaluation, tokenizer: Tokenizer, log: _Events,
                               events: _EventsCallback, time_budget_s: float | None,
                               started_at: float) -> TrainerCallback:
    """After each checkpoint save (and its ``adapter/``): the test set scored with that checkpoint, one
    ``evaluation`` event per new figure (the base model's, at step 0, on the first save), so the metric curve
    grows while the run trains. A save that ends the call (stop, a ZeroGPU chunk's end) and a save too close to
    a time budget's end are left to the evaluation when the run ends."""
    from transformers import TrainerCallback

    class EvaluateAtSave(TrainerCallback):
        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Model | None = None, **kw: Any) -> None:
            assert args.output_dir is not None and model is not None  # train() sets them
            step = state.global_step
            if events.halt_reason:
                return
            if time_budget_s is not None:
                left = time_budget_s - (time.time() - started_at)
                if left < 2 * (evaluation.last_seconds or time_budget_s / 4):
                    log.emit("note", step=step, message=f"checkpoint {step} is scored when the run ends: too little "
                             "time is left in this call")
                    return
            for entry in evaluation.at_save(model, tokenizer, Path(args.output_dir) / f"checkpoint-{step}"):
                _evaluation_event(log, entry)

    return EvaluateAtSave()


def _samples_at_save_callback(samples: SaveSamples, log: _Events, events: _EventsCallback,
                              time_budget_s: float | None, started_at: float) -> TrainerCallback:
    """After each checkpoint save of a preference run: a ``samples`` event with the checkpoint's answers to the
    fixed sample prompts and the warnings ``degeneration.judge`` gives them. A save that ends the call (stop, a
    ZeroGPU chunk's end) or leaves too little of a time budget writes none."""
    from transformers import TrainerCallback

    class SamplesAtSave(TrainerCallback):
        def __init__(self) -> None:
            self.last_seconds: float | None = None

        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any) -> None:
            assert args.output_dir is not None  # train() sets it
            if events.halt_reason:
                return
            if time_budget_s is not None and self.last_seconds is not None:
                if time_budget_s - (time.time() - started_at) < 2 * self.last_seconds:
                    return
            began = time.time()
            step = state.global_step
            checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
            adapter = find_adapter_dir(checkpoint)
            if adapter is None or adapter == checkpoint:
                return  # the checkpoint adapter callback writes adapter/ first (with the template to prompt with)
            answers, warnings = samples.at_save(adapter)
            self.last_seconds = time.time() - began
            log.emit("samples", step=step, samples=[a.to_json() for a in answers], warnings=warnings)

    return SamplesAtSave()


def _evaluate_run(config: RunConfig, run_dir: Path, test_source: str, log: _Events) -> None:
    """Evaluate the finished adapter and every kept checkpoint on the run's test set, taking what was scored at
    the saves from the run's report (each step is scored once): an ``evaluation`` event for each figure computed
    now (the base model's at step 0), then the adapter's, and the report in the run folder."""
    import gc

    from .evaluate import evaluate

    gc.collect()
    if pick_device() == "cuda":
        import torch

        torch.cuda.empty_cache()
    earlier = runs.read_eval_report(run_dir)
    scored = {c["step"] for c in (earlier or {}).get("checkpoints") or []}
    log.emit("note", message=f"evaluating the adapter and its checkpoints on {Path(test_source).name}")
    report = evaluate(run_dir, test_source, checkpoints="all" if runs.checkpoints(run_dir) else "none",
                      limit=config.data.test_limit, max_new_tokens=config.data.test_max_new_tokens, reuse=earlier)
    reused = (report.get("test_set") or {}).get("fingerprint") == ((earlier or {}).get("test_set") or {}).get("fingerprint")
    if not (reused and (earlier or {}).get("base")):
        _evaluation_event(log, {"checkpoint": "base", **(report.get("base") or {}), "step": 0})
    for c in report.get("checkpoints") or []:
        if c["step"] != report.get("step") and not (reused and c["step"] in scored):
            _evaluation_event(log, c)
    _evaluation_event(log, {**report, "checkpoint": runs.ADAPTER}, report=runs.EVAL_REPORT)


def _trainer_class(loss: str = "trained_positions") -> type[SFTTrainer]:
    """SFTTrainer whose training loss projects only the trained positions through the LM head.

    ``loss`` (``ResolvedSettings.loss``): ``trained_positions`` (CPU) selects those positions' logits and takes
    their cross-entropy in chunks of rows, as below; ``chunked`` and ``liger`` (CUDA) pass their hidden states to
    :func:`finetune.loss.trained_positions_loss`, so not even their logits exist at once.

    trl's fused LM head scores every position on devices without Triton (CPU), and also computes the entropy
    and top-1 metrics over the whole vocabulary. Here the hidden states of the positions whose next token is
    trained on (assistant answers; never padding) are selected before the LM head (``logits_to_keep`` as a
    boolean mask), so the [tokens, vocab] logits exist only for those. Same loss (sum of the next-token NLL over
    trained tokens / their count or ``num_items_in_batch``); evaluation keeps trl's path.
    """
    import torch
    import torch.nn.functional as F
    from trl import SFTTrainer  # type: ignore[attr-defined]  # trl exports it through a lazy module

    impl = loss  # compute_loss below has a local of that name

    class TrainedPositionsSFTTrainer(SFTTrainer):
        ce_rows = 2048  # rows of fp32 logits per cross-entropy chunk: 2048 x 49k vocab = 400 MB at most

        def compute_loss(self, model: Model, inputs: dict[str, torch.Tensor], return_outputs: bool = False,
                         num_items_in_batch: torch.Tensor | int | None = None) -> Any:
            if return_outputs or not model.training or self.compute_loss_func is not None or self.label_smoother is not None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[no-untyped-call]  # trl leaves compute_loss unannotated
            if impl in ("chunked", "liger"):
                from .loss import supports, trained_positions_loss

                if not supports(model):  # scaled or soft-capped logits, a head with a bias: trl's exact path
                    return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)  # type: ignore[no-untyped-call]
                out = trained_positions_loss(model, inputs, num_items_in_batch, impl=impl)
                if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                    out = out * self.accelerator.num_processes
                return out
            labels = inputs["labels"]
            keep = torch.zeros_like(labels, dtype=torch.bool)
            keep[:, :-1] = labels[:, 1:] != -100  # position i predicts token i + 1
            targets = labels[:, 1:][keep[:, :-1]]
            forward: dict[str, Any] = {k: v for k, v in inputs.items() if k != "labels"}
            forward["use_cache"] = False
            logits = model(**forward, logits_to_keep=keep).logits  # [trained tokens, vocab]
            chunks = [F.cross_entropy(logits[i:i + self.ce_rows].float(), targets[i:i + self.ce_rows], reduction="sum")
                      for i in range(0, max(1, logits.shape[0]), self.ce_rows)]  # at least one
            nll = sum(chunks[1:], chunks[0])
            count = targets.numel() if num_items_in_batch is None else num_items_in_batch
            loss = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            return loss

    return TrainedPositionsSFTTrainer


def _keep_adapter_dtypes(trainer: Trainer) -> None:
    """A resumed run trains its LoRA weights in the dtype the uninterrupted run uses.

    The Trainer loads a checkpoint's adapter with peft's ``load_adapter``, which re-creates the LoRA weights in
    float32, while trl trains a QLoRA adapter in bf16: the resumed run went on in another precision (a 4-bit tiny
    Llama, 2 + 2 steps: adapters 2e-4 apart from the uninterrupted run's, 0.0 with this; found by
    bench/gpu_check.py's resume part). The weights go back to their dtype before the optimizer is built.
    """
    original = trainer._load_from_checkpoint

    def load(resume_from_checkpoint: str, model: torch.nn.Module | None = None) -> None:
        peft_model: Model = trainer.model  # transformers types it as PreTrainedModel | Module | None
        dtypes = {n: p.dtype for n, p in peft_model.named_parameters() if p.requires_grad}
        original(resume_from_checkpoint, model)
        for name, param in peft_model.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])

    trainer._load_from_checkpoint = load  # type: ignore[method-assign]  # one instance, one resume


def _planned_steps(t: TrainingConfig, n_examples: int) -> int:
    if t.max_steps > 0:
        return t.max_steps
    per_epoch = math.ceil(math.ceil(n_examples / (t.batch_size * world_size())) / t.grad_accum)  # DDP splits the data
    return max(1, math.ceil(per_epoch * t.epochs))


# ---------------------------------------------------------------------------------------------
# the adapter bundle


def save_adapter(trainer: Trainer, tokenizer: Tokenizer, config: RunConfig, base_name: str, run_dir: Path,
                 metrics: dict[str, Any], data_summary: dict[str, Any], device: str,
                 dialogs: TrainedDialogs | None = None, log: _Events | None = None) -> Path:
    """Write ``adapter/``: a plain PEFT adapter plus the template, config, metrics and a model card.

    The tokenizer carries the trained template as its chat template; the adapter is then checked with
    :func:`verify.check_template` (on ``dialogs`` and the built-in probes), the result a ``template_check``
    event and a line on the model card."""
    from .card import write_model_card
    from .verify import check_template

    out = run_dir / runs.ADAPTER
    tmp = run_dir / (runs.ADAPTER + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    model: Model = trainer.model  # a PeftModel: transformers types it as PreTrainedModel | Module | None
    model.peft_config["default"].base_model_name_or_path = base_name
    # the trained adapter only: a run that started from an adapter also holds trl's frozen copy of it ("ref")
    model.save_pretrained(tmp, safe_serialization=True, selected_adapters=["default"])
    system = dialogs.system_prompt if dialogs is not None else None
    write_tokenizer(tmp, config, tokenizer, system)
    write_run_files(tmp, config, tokenizer, metrics, system)
    check = check_template(tmp, dialogs=dialogs.dialogs if dialogs is not None else [], base_tokenizer=tokenizer)
    if log is not None:
        log.emit("template_check", **check.to_event())
    write_model_card(tmp, config, base_name, metrics, trainer.state.log_history, data_summary, device,  # + loss_curve.png
                     template_check=("Template check: " + check.message()))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out

