"""``train(config)``: one QLoRA/LoRA run on trl's trainers, read top to bottom as phases.

:func:`train` opens the run folder and records a failure; :func:`_train` is the recipe: prepare the run
(:func:`prepare_run`), load the data (:func:`load_data`), load the model and its adapter (:func:`load_model`), build
the trainer (:func:`build_trainer`), train, then save the adapter (:func:`save_run`) and finish (:func:`finish`).
Where the parts live: the callbacks in ``callbacks.py``, the stop rules in ``halt.py`` (one :class:`Halt`), the
live gauge in ``gauge.py``, tokenisation in ``tokenization.py``, the per-sequence attention in
``packed_attention.py``, the trainer's arguments and loss in ``trainer.py``, the ``adapter/`` bundle in
``adapter_bundle.py``, the adapter a run starts from in ``start_adapter.py``, a save on a full disk in
``save_space.py``, the run folder opened (``runs.open_run``) in ``runs.py``, the CPU share in ``cpushare.py``.

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
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from . import methods, runs
from .adapter import pick_device
from .adapter_bundle import save_adapter
from .callbacks import (checkpoint_adapter_callback, evaluate_at_save_callback, evaluation_event, events_callback,
                        samples_at_save_callback, share_callback)
from .config import ConfigError, RunConfig, validate
from .distributed import gathered_adapter, is_main_process, layout, shard_on_cpu, sharded, world_size
from .errors import TrainingError, UserError, is_programming_error
from .events import EventLog, EventSink, SilentLog
from .halt import Halt
from .io import DISK_FULL_FIX, DiskFullError
from .limits import LimitError, RunCaps
from .models import ModelError
from .packed_attention import use_packed_attention
from .save_space import saving
from .settings import Device, ResolvedSettings, SpeedOptions, resolve
from .start_adapter import StartAdapter, lora_note, start_adapter
from .tokenization import tokenize_examples
from .trainer import keep_adapter_dtypes, trainer_arguments, trainer_settings

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import TrainOutput

    from .callbacks import EventsCallback
    from .cpushare import CpuShare
    from .models import Model, ResolvedModel, Tokenizer

# Names other modules know from here (their homes: errors, distributed, tokenization, trainer).
__all__ = ["RunResult", "StartAdapter", "TrainingError", "is_main_process", "resolved_settings",
           "start_adapter", "tokenize_examples", "train", "trainer_settings", "use_checkpointing", "world_size"]


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
# device and precision


def resolved_settings(config: RunConfig, device: str, speed: SpeedOptions = SpeedOptions()) -> ResolvedSettings:
    """The config's "auto" values on ``device`` of this machine (:func:`finetune.settings.resolve`)."""
    return resolve(config, Device.detect(device), speed)


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
    with a ``stopped`` event that says so. The stop rules travel on as one :class:`Halt`.
    """
    halt = Halt(time.time(), should_stop, until_step, time_budget_s, caps)
    config, run_dir, resuming = runs.open_run(config, run_dir, runs_root, record=True)
    if is_main_process() and runs.read_backend(run_dir) == "local":
        # this process is the run's from now on: killed while it loads, the run reads interrupted, not new
        runs.record_process(run_dir, resuming)
    log: EventSink = EventLog(run_dir, on_event) if is_main_process() else SilentLog()
    try:
        return _train(_Call(config, run_dir, resuming, log, halt, speed, callbacks or []))
    except (ConfigError, ModelError, TrainingError, runs.RunError) as e:
        log.emit("failed", pid=os.getpid(), message=str(e), **_in_app(e))
        raise
    except Exception as e:  # noqa: BLE001 - recorded in the run folder, then re-raised
        message = _explain(e, config)
        log.emit("failed", pid=os.getpid(), message=message, error=e.__class__.__name__, **_in_app(e))
        if message != str(e) and not is_programming_error(e):  # a bug keeps its type and traceback
            raise TrainingError(message) from e
        raise
    finally:
        if is_main_process():
            runs.forget_stop(run_dir)  # the stop request it took, once its end is recorded


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


@dataclass(frozen=True)
class _Call:
    """What one ``train`` call was given, read by every phase."""

    config: RunConfig
    run_dir: Path
    resuming: bool
    log: EventSink
    halt: Halt
    speed: SpeedOptions
    callbacks: list[TrainerCallback]  # the caller's, after the run's own


@dataclass(frozen=True)
class _Setup:
    """What preparing the run decided: the device, the base model, the adapter it starts from, the tokenizer."""

    device: str
    base: ResolvedModel
    start: StartAdapter | None
    saved_config: RunConfig  # what the adapter's files and card record: the LoRA settings the weights trained with
    tokenizer: Tokenizer
    resume_from: Path | None  # the last checkpoint of a resumed run


@dataclass(frozen=True)
class _Data:
    """The method's data of the run (tokenized, with its summary and dialogs) and the run's test set."""

    run: methods.RunData
    test_source: str | None  # the run's test set, scored at each save and at the end


def _train(call: _Call) -> RunResult:
    """The recipe, one phase a line."""
    if world_size() == 1 and runs.stop_before_training(call.run_dir):  # asked since it was launched
        return _stopped_before_training(call)
    setup = prepare_run(call)
    data = load_data(call, setup)
    planned = call.config.training.steps_for(len(data.run.train), world_size())
    if call.resuming and _trained_steps(call.run_dir, setup.resume_from) >= planned:
        return _complete(call, setup, data, planned)  # nothing to train: what is missing only
    share = _cpu_share(setup)
    model, peft_config, settings, checkpointing = load_model(call, setup)
    _announce(call, setup, data, model, share)
    trainer, events = build_trainer(call, setup, data, model, peft_config, settings, checkpointing, share)
    resume_from = setup.resume_from
    with saving(call.run_dir, trainer, setup.base.path):
        out = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        if events.halt_reason:
            return _halted(call, trainer, events)
        metrics = save_run(call, setup, data, trainer, out)
    step, max_steps = trainer.state.global_step, trainer.state.max_steps
    del trainer, model  # what remains to score loads the base afresh (a 4-bit base used for inference must not train)
    return finish(call, data, step, max_steps, metrics)


def _trained_steps(run_dir: Path, resume_from: Path | None) -> int:
    """The steps the run has trained for good: its last checkpoint's, or those of its recorded end when its
    adapter is intact (a finished run whose last checkpoint was deleted)."""
    from .adapter import checkpoint_step

    done = (checkpoint_step(resume_from) or 0) if resume_from is not None else 0
    finished = _last_finished(run_dir)
    if finished is not None and _adapter_intact(run_dir):
        done = max(done, int(finished.get("step") or 0))
    return done


def _last_finished(run_dir: Path) -> dict[str, Any] | None:
    from .events import read_events

    ends = [e for e in read_events(run_dir) if e.get("type") == "finished"]
    return ends[-1] if ends else None


def _in_app(e: BaseException) -> dict[str, str]:
    """A failed event's message in the app's words too, when the error has them (the app shows those)."""
    return {"app_message": e.app_text} if isinstance(e, UserError) and e.app_text else {}


def _adapter_intact(run_dir: Path) -> bool:
    """``adapter/`` with its weights and metrics (what a finished run's save wrote last but the card)."""
    from .adapter import METRICS_FILE, is_adapter_dir

    folder = run_dir / runs.ADAPTER
    return is_adapter_dir(folder) and (folder / METRICS_FILE).is_file()


def _complete(call: _Call, setup: _Setup, data: _Data, planned: int) -> RunResult:
    """A resumed run that had trained all its planned steps before this call (finished already, or killed between
    its last checkpoint and its end, or resumed twice at once): nothing is trained again, no checkpoint is
    written or rotated away; only what is missing is written, the ``adapter/`` from the last checkpoint and the
    end events, and a note says so."""
    import json

    from .adapter import METRICS_FILE

    from .adapter import checkpoint_step

    run_dir, log = call.run_dir, call.log
    finished = _last_finished(run_dir)
    # the adapter/ is the run's latest unless a later checkpoint exists than the step it finished at (a run extended
    # after it finished, killed after its new last checkpoint): then it is built again from that checkpoint
    newest = (checkpoint_step(setup.resume_from) or 0) if setup.resume_from is not None else 0
    intact = _adapter_intact(run_dir) and (finished is None or int(finished.get("step") or 0) >= newest)
    if finished is not None and intact:
        step = int(finished.get("step") or planned)
        log.emit("note", message=f"run {run_dir.name} already finished at step {step} of {planned}: nothing to "
                 "train (raise training.max_steps or epochs to train further)")
        metrics = finished.get("metrics") if isinstance(finished.get("metrics"), dict) else {}
        log.emit("finished", pid=os.getpid(), step=step, adapter=runs.ADAPTER, metrics=metrics, again=True)
        return RunResult(run_dir.name, run_dir, "finished", step, planned, run_dir / runs.ADAPTER, dict(metrics or {}))
    checkpoint = setup.resume_from
    assert checkpoint is not None, "_trained_steps counts a run with neither a checkpoint nor an intact adapter as 0"
    state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    step = int(state.get("global_step") or 0)
    missing = "the events of its end" if intact else f"its {runs.ADAPTER}/ from {checkpoint.name}"
    log.emit("note", message=f"run {run_dir.name} had trained {step} of {planned} steps (up to {checkpoint.name}) "
             f"before it ended: nothing to train; writing {missing}")
    if intact:
        metrics = json.loads((run_dir / runs.ADAPTER / METRICS_FILE).read_text(encoding="utf-8"))
    else:
        metrics = _adapter_from_checkpoint(call, setup, data, checkpoint, finished)
    return finish(call, data, step, max(step, planned), metrics)


def _adapter_from_checkpoint(call: _Call, setup: _Setup, data: _Data, checkpoint: Path,
                             finished: dict[str, Any] | None) -> dict[str, Any]:
    """``adapter/`` and the run's metrics from ``checkpoint`` (its weights and trainer state), trained no further."""
    from transformers.trainer_callback import TrainerState
    from transformers.trainer_utils import TrainOutput

    model, peft_config, settings, checkpointing = load_model(call, setup)
    trainer, _ = build_trainer(call, setup, data, model, peft_config, settings, checkpointing, None)
    trainer.state = TrainerState.load_from_json(str(checkpoint / "trainer_state.json"))
    trainer._load_from_checkpoint(str(checkpoint))
    earlier = (finished or {}).get("metrics") or {}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    train_loss = earlier.get("train_loss", sum(losses) / len(losses) if losses else float("nan"))
    runtime = earlier.get("train_runtime_s")
    out = TrainOutput(trainer.state.global_step, train_loss, {"train_runtime": runtime} if runtime is not None else {})
    with saving(call.run_dir, trainer, setup.base.path):
        metrics = save_run(call, setup, data, trainer, out)
    del trainer, model
    return metrics


def _stopped_before_training(call: _Call) -> RunResult:
    run_dir = call.run_dir
    step = runs.read_run(run_dir).step
    call.log.emit("stopped", pid=os.getpid(), step=step, message="stopped before training began")
    return RunResult(run_dir.name, run_dir, "stopped", step, call.config.training.max_steps, None, {})


def prepare_run(call: _Call) -> _Setup:
    """The device, the base model checked against the config, the adapter to start from (checked before anything
    loads) and the tokenizer."""
    from . import models

    config = call.config
    device = pick_device()
    base = models.resolve(config.model)
    validate(config, models.model_max_length(base.path, base.revision), source=str(call.run_dir / runs.CONFIG_FILE))
    start = start_adapter(config, base.name)  # a missing or mismatched adapter fails before the data loads
    saved_config = dataclasses.replace(config, lora=start.lora) if start else config
    if config.quantization.load_in != "none" and device == "cpu" and config.quantization.load_in == "8bit":
        raise TrainingError("8-bit loading needs a CUDA GPU; use quantization.load_in: 4bit or none on CPU")
    tokenizer = models.load_tokenizer(config.model)
    resume_from = runs.last_checkpoint(call.run_dir) if call.resuming else None
    if call.resuming and is_main_process():
        _skip_incomplete(call, resume_from)
    return _Setup(device, base, start, saved_config, tokenizer, resume_from)


def _skip_incomplete(call: _Call, resume_from: Path | None) -> None:
    """Say which later checkpoints a resume cannot start from, and why (the files each lacks); remove those a
    process left half-written (no intact ``adapter/`` either: nothing there is usable, and the steps are trained
    again). A checkpoint whose adapter is intact stays: chat, evaluation and export still take it."""
    import shutil

    from .adapter import checkpoint_step, is_adapter_dir

    after = checkpoint_step(resume_from) if resume_from is not None else 0
    start = resume_from.name if resume_from is not None else "the first step"
    for folder, missing in runs.incomplete_checkpoints(call.run_dir).items():
        if (checkpoint_step(folder) or 0) <= (after or 0):
            continue
        usable = is_adapter_dir(folder / runs.ADAPTER)
        if not usable:
            shutil.rmtree(folder, ignore_errors=True)
        call.log.emit("note", message=(
            f"{runs.CHECKPOINTS}/{folder.name} lacks {', '.join(missing)}: it cannot be resumed from, so training "
            f"resumes from {start}; " + (f"its adapter stays usable as {call.run_dir.name}@{checkpoint_step(folder)}"
                                         if usable else "it was left half-written and is removed")))


def load_data(call: _Call, setup: _Setup) -> _Data:
    """The method's data formatted and tokenized, the run's test set kept and checked, the planned steps checked
    against a shared server's step cap."""
    from .evaluate import run_test_source

    config, run_dir = call.config, call.run_dir
    t = config.training
    run_data = methods.get(t.method).datasets(config, setup.tokenizer)
    summary = run_data.summary
    if config.data.test_split > 0 and is_main_process():  # the run's test set, for every later evaluation
        from .evaluate import write_held_out

        write_held_out(run_data.held_out, run_dir / runs.TEST_SET)
    test_source = run_test_source(run_dir, config)
    if test_source:  # a bad test file is the user's to fix before training, not after
        from .evaluate import limited, read_test_set

        summary["test_prompts"] = len(limited(read_test_set(test_source), config.data.test_limit))
    try:  # an epochs run is planned only now, from the rows its data has
        call.halt.check_planned(t.steps_for(len(run_data.train), world_size()))
    except LimitError as e:
        raise TrainingError(str(e)) from None
    return _Data(run_data, test_source)


def _cpu_share(setup: _Setup) -> CpuShare | None:
    """Take the CPU share the app asks for; returns it, which a callback follows."""
    import torch

    from .cpushare import for_device

    share = for_device(setup.device)
    if share is not None:
        torch.set_num_threads(share.most)
    return share


def _announce(call: _Call, setup: _Setup, data: _Data, model: Model, share: CpuShare | None) -> None:
    """The ``started`` event, with how the run is laid out over its processes (``distributed``: the bytes of the
    base model's parameters each holds), and the note on an adapter's LoRA settings."""
    import torch

    config, run_dir, start = call.config, call.run_dir, setup.start
    call.log.emit(
        "started",
        name=config.name,
        model=setup.base.name,
        device=setup.device,
        **runs.process_record(os.getpid()),
        cpu_threads=torch.get_num_threads(),
        shares_cpu=share is not None,
        resumed_from=str(setup.resume_from.relative_to(run_dir)) if setup.resume_from else None,
        init_adapter=start.label if start else None,
        data=data.run.summary,
        max_steps=config.training.steps_for(len(data.run.train), world_size()),
        distributed=layout(model, "fsdp" if sharded() else "ddp" if world_size() > 1 else "none"),
    )
    if start is not None and (note := lora_note(config, start)):
        call.log.emit("note", message=note)


def load_model(call: _Call, setup: _Setup) -> tuple[Model, LoraConfig | None, ResolvedSettings, bool]:
    """The settings made concrete on this device, the base model loaded with them, the adapter to train (a fresh
    LoRA: its config, for the trainer; the start adapter's weights: None) and whether to checkpoint activations."""
    import torch
    import transformers

    from . import models

    config, log, t = call.config, call.log, call.config.training
    transformers.set_seed(t.seed)  # LoRA init and dropout are seeded
    settings = resolved_settings(config, setup.device, call.speed)
    checkpointing, checkpointing_note = use_checkpointing(config, setup.device, str(setup.base.path), call.speed)
    if checkpointing_note:
        log.emit("note", message=checkpointing_note)
    model_cfg, varlen = config.model, not methods.get(t.method).text_rows  # rows of token ids made here
    if varlen and settings.attention == "flash_attention_2" and model_cfg.attn_implementation != settings.attention:
        model_cfg = dataclasses.replace(model_cfg, attn_implementation=settings.attention)  # varlen on CUDA
    model, _ = models.load_model(model_cfg, config.quantization, setup.device, dtype=getattr(torch, settings.model_dtype))
    if varlen and settings.attention == "per_sequence_sdpa":
        use_packed_attention(model)
    if settings.kernels == "liger":
        kernels_note = models.apply_liger_kernels(model)
        if kernels_note:
            log.emit("note", message=kernels_note)
    peft_config: LoraConfig | None = models.lora_config(config.lora)
    if setup.start is not None:
        from peft import PeftModel

        # the adapter's weights, trainable, instead of a fresh LoRA; a resumed run starts here too and the trainer
        # then loads its checkpoint's weights over them (dpo/kto/grpo with a KL term copy these starting weights as
        # their reference, so the reference of a resumed run is the same)
        model = PeftModel.from_pretrained(model, str(setup.start.folder), is_trainable=True)
        peft_config = None
    return model, peft_config, settings, checkpointing


def build_trainer(call: _Call, setup: _Setup, data: _Data, model: Model, peft_config: LoraConfig | None,
                  settings: ResolvedSettings, checkpointing: bool,
                  share: CpuShare | None) -> tuple[Trainer, EventsCallback]:
    """The method's trl trainer with the run's callbacks; returns it and the events callback, which says whether
    the run halted."""
    config, run_dir, t = call.config, call.run_dir, call.config.training
    common = trainer_arguments(config, run_dir, data.run.eval is not None, checkpointing, settings, setup.device)
    callbacks, events = _callbacks(call, setup, data, settings, share)
    parts = methods.TrainerParts(model, setup.tokenizer, common, data.run.train, data.run.eval, peft_config, callbacks,
                                 setup.device, settings.loss)
    trainer = methods.get(t.method).trainer(config, parts)
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # our events replace its raw dict prints
    shard_on_cpu(trainer)  # gloo processes of a sharded run: accelerate's FSDP on the CPU too
    if setup.resume_from is not None:
        keep_adapter_dtypes(trainer)
    return trainer, events


def estimated_step_s(config: RunConfig, device: str, summary: dict[str, Any]) -> float | None:
    """The estimator's seconds per step of a CPU run (memory.tokens_per_second on this machine's CPU, at the mean
    tokenized length of the training rows when known, else max_length): the ETA before a step is measured. None on
    other devices (a GPU's first step is over in seconds) or when the model's numbers cannot be read."""
    from . import memory

    if device != "cpu":
        return None
    t = config.training
    rows, tokens = summary.get("train_examples"), summary.get("train_tokens")
    seq_len = min(t.max_length, max(1, round(tokens / rows))) if rows and tokens else t.max_length
    try:
        cpu = memory.get_gpu("cpu")
        spec = memory.spec_for_config(config, allow_hub=False)
        tps = memory.tokens_per_second(spec, memory.setup_for(config, cpu, seq_len=seq_len), cpu)
    except (memory.EstimateError, OSError, ValueError, KeyError):
        return None
    return t.batch_size * t.grad_accum * seq_len / tps if tps > 0 else None


def _callbacks(call: _Call, setup: _Setup, data: _Data, settings: ResolvedSettings,
               share: CpuShare | None) -> tuple[list[TrainerCallback], EventsCallback]:
    """The run's callbacks in the order they act at a save: the checkpoint's adapter, the events (and stop
    rules), the test set scored and the preference samples answered with that adapter, the CPU share, then the
    caller's. Returns them and the events callback."""
    config, log, halt, device = call.config, call.log, call.halt, setup.device
    events = events_callback(log, call.run_dir, halt, config.training.method, beta=methods.beta(config),
                             estimated_step_s=estimated_step_s(config, device, data.run.summary))
    callbacks = [checkpoint_adapter_callback(setup.saved_config, setup.tokenizer, setup.base.name,
                                             data.run.dialogs.system_prompt, data.run.summary, device), events,
                 *([share_callback(share, log)] if share else []), *call.callbacks]
    single = is_main_process() and world_size() == 1  # a sharded model generates on every rank or none
    if data.test_source and single:
        from .evaluate import SaveEvaluation

        evaluation = SaveEvaluation(call.run_dir, data.test_source, base_model=setup.base.name,
                                    limit=config.data.test_limit, max_new_tokens=config.data.test_max_new_tokens,
                                    tokenizer=setup.tokenizer,
                                    in_memory=_scores_in_memory(config, settings, device))
        callbacks.insert(2, evaluate_at_save_callback(evaluation, setup.tokenizer, log, events, halt))
    if data.run.examples is not None and single:
        # preference metrics cannot show a model whose answers degenerated: a few answers at each save can
        from .degeneration import SaveSamples, sample_prompts, sample_tokens

        prompts = sample_prompts(data.run.examples.val_examples or data.run.examples.examples)
        if prompts:
            samples = SaveSamples(prompts, base_model=setup.base.name, quantization=config.quantization,
                                  max_new_tokens=sample_tokens([r for _, r in prompts], setup.tokenizer))
            callbacks.insert(callbacks.index(events) + 1, samples_at_save_callback(samples, log, events, halt))
    return callbacks, events


def _halted(call: _Call, trainer: Trainer, events: EventsCallback) -> RunResult:
    """A run its stop rules ended at a checkpoint: the ``stopped`` or ``paused`` event, no adapter."""
    run_dir, step = call.run_dir, trainer.state.global_step
    reason = events.halt_reason
    assert reason is not None  # _train calls this only for a halted run
    call.log.emit(reason, pid=os.getpid(), step=step, max_steps=trainer.state.max_steps,
                  message=events.halt_message or ("stopped by the user" if reason == "stopped"
                                                  else "chunk ended at a checkpoint"),
                  **({"limit": "time"} if events.halt_message else {}))
    return RunResult(run_dir.name, run_dir, reason, step, trainer.state.max_steps, None, {})


def save_run(call: _Call, setup: _Setup, data: _Data, trainer: Trainer, out: TrainOutput) -> dict[str, Any]:
    """The run's metrics (the held-out loss evaluated now) and, on rank 0, the ``adapter/`` bundle."""
    t, log = call.config.training, call.log
    step = trainer.state.global_step
    metrics: dict[str, Any] = {"train_loss": out.training_loss, "steps": step, "train_runtime_s": out.metrics.get("train_runtime")}
    metrics.update(methods.get(t.method).run_metrics(trainer.state.log_history))
    if data.run.eval is not None:
        evaluated = trainer.evaluate()
        if "eval_loss" in evaluated:
            metrics["eval_loss"] = evaluated["eval_loss"]
            log.emit("eval", step=step, eval_loss=metrics["eval_loss"])
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if losses:
        metrics["first_loss"], metrics["final_loss"] = losses[0], losses[-1]
    weights = gathered_adapter(trainer.model_wrapped) if sharded() else None  # every process takes part in it
    if is_main_process():
        save_adapter(trainer, setup.tokenizer, setup.saved_config, setup.base.name, call.run_dir, metrics,
                     data.run.summary, setup.device, data.run.dialogs, log, weights=weights)
    return metrics


def finish(call: _Call, data: _Data, step: int, max_steps: int, metrics: dict[str, Any]) -> RunResult:
    """The test set scored with the adapter and the kept checkpoints, then the ``finished`` event."""
    run_dir = call.run_dir
    if data.test_source and is_main_process():
        _evaluate_run(call.config, run_dir, data.test_source, call.log)
    call.log.emit("finished", pid=os.getpid(), step=step, adapter=runs.ADAPTER, metrics=metrics)
    return RunResult(run_dir.name, run_dir, "finished", step, max_steps, run_dir / runs.ADAPTER, metrics)


def _scores_in_memory(config: RunConfig, settings: ResolvedSettings, device: str) -> bool:
    """Whether the training model itself can answer the test set at each save: an SFT model with the weights
    ``finetune eval`` loads (unquantized, in the dtype it loads them in), so its figures are ``finetune eval``'s."""
    import torch

    from .config import QuantizationConfig
    from .models import compute_dtype

    if config.quantization.load_in != "none" or methods.get(config.training.method).text_rows:
        return False
    eval_dtype = compute_dtype(QuantizationConfig().compute_dtype, device) if device == "cuda" else torch.float32
    return bool(getattr(torch, settings.model_dtype) == eval_dtype)


def _evaluate_run(config: RunConfig, run_dir: Path, test_source: str, log: EventSink) -> None:
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
    report = evaluate(run_dir, test_source, checkpoints="all" if runs.adapter_checkpoints(run_dir) else "none",
                      limit=config.data.test_limit, max_new_tokens=config.data.test_max_new_tokens, reuse=earlier)
    reused = (report.get("test_set") or {}).get("fingerprint") == ((earlier or {}).get("test_set") or {}).get("fingerprint")
    if not (reused and (earlier or {}).get("base")):
        evaluation_event(log, {"checkpoint": "base", **(report.get("base") or {}), "step": 0})
    for c in report.get("checkpoints") or []:
        if c["step"] != report.get("step") and not (reused and c["step"] in scored):
            evaluation_event(log, c)
    evaluation_event(log, {**report, "checkpoint": runs.ADAPTER}, report=runs.EVAL_REPORT)
