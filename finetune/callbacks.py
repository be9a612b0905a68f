"""The trainer callbacks of a run: events into the run folder and the stop rules (``events_callback``), a clean
adapter in every checkpoint, the test set scored and preference samples answered at each save, and the CPU shared
with the app that started the run.

Each is built by a function that imports transformers only when a run needs it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from . import methods
from .adapter import find_adapter_dir
from .config import RunConfig
from .distributed import gathered_adapter, is_main_process, rank0_decides, sharded
from .events import EventSink
from .gauge import Gauge
from .halt import Halt

if TYPE_CHECKING:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

    from .cpushare import CpuShare
    from .degeneration import SaveSamples
    from .evaluate import SaveEvaluation
    from .models import Model, Tokenizer

    class EventsCallback(TrainerCallback):
        """What ``events_callback`` returns: its callback, and why it halted the run (None: it did not)."""

        halt_reason: str | None
        halt_message: str | None


def events_callback(log: EventSink, run_dir: Path, halt: Halt, method: str = "sft",
                    beta: float = 0.0, estimated_step_s: float | None = None) -> EventsCallback:
    """A ``step`` event per logged step (loss, speed, ETA, the gauge, the method's metrics), ``eval`` and
    ``checkpoint`` events, and ``halt``'s rules at each step's end: a halted run saves a checkpoint and ends the
    call (``halt_reason``). ``beta``: the method's (methods.beta), which scales the reward margin a dpo or kto step
    logs.

    The ETA is measured (:func:`eta_seconds`): the wall time per step since the end of the process's first step
    (which also loads data, warms kernels up and allocates: several times a steady step), saves and their scoring
    included. Until a step after the first is done, it is the estimator's (``estimated_step_s``, memory.time_cost;
    the event says ``eta_estimated``), or none."""
    from transformers import TrainerCallback

    from .degeneration import margin_warning

    class Events(TrainerCallback):
        def __init__(self) -> None:
            self.halt_reason: str | None = None
            self.halt_message: str | None = None  # why, when not the user's stop or a chunk's end
            self.last_time = time.time()
            self.last_tokens = 0
            self.first_done: tuple[int, float] | None = None  # (step, time) at the end of this process's first step
            self.step_times: list[float] = []
            self.gauge = Gauge()
            self.margin_warned = False  # the reward margin's warning is written once per process

        def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                           **kw: Any) -> None:
            self.last_tokens = state.num_input_tokens_seen or 0
            self.last_time = time.time()

        def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                        **kw: Any) -> None:
            now = time.time()
            self.step_times.append(now - self.last_time)
            self.last_time = now
            if self.first_done is None:
                self.first_done = (state.global_step, now)
            per_step = sum(self.step_times[-5:]) / len(self.step_times[-5:])
            reason, message = halt.decide(state.global_step, state.max_steps, per_step, now, run_dir)
            if message is not None:
                self.halt_message = message
            reason = rank0_decides(reason)
            if reason and state.global_step < state.max_steps:
                self.halt_reason = reason
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                   logs: dict[str, float] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "loss" not in logs:
                return
            now = time.time()
            elapsed = now - halt.started_at
            tokens = state.num_input_tokens_seen or 0
            eta, estimated = eta_seconds(state.global_step, state.max_steps, now, self.first_done, estimated_step_s)
            # int: transformers types logging_steps as float (below 1 it is a ratio); ours is a whole number >= 1
            tps = (tokens - self.last_tokens) / max(sum(self.step_times[-int(args.logging_steps):]), 1e-9)
            self.last_tokens = tokens
            metrics = methods.get(method).step_metrics(logs)
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
                eta_s=eta,
                **({"eta_estimated": True} if estimated else {}),
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

    return cast("EventsCallback", Events())  # Events is EventsCallback's shape, defined once transformers is imported


def eta_seconds(step: int, max_steps: int, now: float, first_done: tuple[int, float] | None,
                estimated_step_s: float | None = None) -> tuple[float | None, bool]:
    """The time left at ``step`` and whether it is the estimator's: measured as the wall time per step since the end
    of the process's first step (``first_done``: its step and time); before a later step ends, the estimated step
    time (None: no ETA yet).

    >>> eta_seconds(6, 10, 110.0, (2, 100.0))  # 4 steps in 10 s, 4 left
    (10.0, False)
    >>> eta_seconds(1, 10, 50.0, (1, 50.0), estimated_step_s=3.0)
    (27.0, True)
    """
    left = max(0, max_steps - step)
    if first_done is not None and step > first_done[0]:
        return round((now - first_done[1]) / (step - first_done[0]) * left, 1), False
    if estimated_step_s:
        return round(estimated_step_s * left, 1), True
    return None, False


def checkpoint_adapter_callback(config: RunConfig, tokenizer: Tokenizer, base_name: str, system_prompt: str,
                                data_summary: dict[str, Any], device: str) -> TrainerCallback:
    """After each checkpoint save: ``checkpoint-N/adapter/``, a clean adapter of that step (weights, tokenizer,
    trained template, model card; no pickles), so any checkpoint can be evaluated, chatted with, pushed or
    merged."""
    from transformers import TrainerCallback

    from .adapter import write_checkpoint_adapter
    from .card import write_model_card

    class CheckpointAdapter(TrainerCallback):
        def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    model: Model | None = None, **kw: Any) -> None:
            assert args.output_dir is not None  # train() sets it
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if sharded():  # the checkpoint holds shards: the adapter's weights are gathered (every process takes part)
                assert model is not None  # the trainer passes it
                weights = gathered_adapter(model)
                if weights is not None:
                    model.save_pretrained(path, state_dict=weights, safe_serialization=True, selected_adapters=["default"])
            if not is_main_process():
                return
            losses = [h["loss"] for h in state.log_history if "loss" in h]
            metrics = {"steps": state.global_step, **({"first_loss": losses[0], "final_loss": losses[-1]} if losses else {})}
            folder = write_checkpoint_adapter(path, config, tokenizer, base_name, metrics, system_prompt)
            write_model_card(folder, config, base_name, metrics, state.log_history, data_summary, device,
                             tokenizer=tokenizer, plot=False)

    return CheckpointAdapter()

def evaluation_event(log: EventSink, entry: dict[str, Any], **extra: Any) -> None:
    from .evaluate import METRICS

    log.emit("evaluation", step=entry["step"], model=entry["checkpoint"], n=entry.get("n"),
             **{m: entry.get(m) for m in METRICS}, **extra)


def evaluate_at_save_callback(evaluation: SaveEvaluation, tokenizer: Tokenizer, log: EventSink,
                              events: EventsCallback, halt: Halt) -> TrainerCallback:
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
            left = halt.time_left()
            if left is not None and halt.time_budget_s is not None:
                if left < 2 * (evaluation.last_seconds or halt.time_budget_s / 4):
                    log.emit("note", step=step, message=f"checkpoint {step} is scored when the run ends: too little "
                             "time is left in this call")
                    return
            for entry in evaluation.at_save(model, tokenizer, Path(args.output_dir) / f"checkpoint-{step}"):
                evaluation_event(log, entry)

    return EvaluateAtSave()


def samples_at_save_callback(samples: SaveSamples, log: EventSink, events: EventsCallback,
                             halt: Halt) -> TrainerCallback:
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
            left = halt.time_left()
            if left is not None and self.last_seconds is not None:
                if left < 2 * self.last_seconds:
                    return
            began = time.time()
            step = state.global_step
            checkpoint = Path(args.output_dir) / f"checkpoint-{step}"
            adapter = find_adapter_dir(checkpoint)
            if adapter is None or adapter == checkpoint:
                return  # the checkpoint adapter callback writes adapter/ first (with the template to prompt with)
            first = samples.baseline is None
            answers, warnings = samples.at_save(adapter)
            self.last_seconds = time.time() - began
            # the starting model's answers once, beside the first save's: what the warnings compare against
            start = {"baseline": [a.to_json() for a in samples.baseline or []]} if first else {}
            log.emit("samples", step=step, samples=[a.to_json() for a in answers], warnings=warnings, **start)

    return SamplesAtSave()


def share_callback(share: CpuShare, log: EventSink) -> TrainerCallback:
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
