"""The trainer a run builds: the arguments every method's trl config takes, the SFTTrainer whose loss projects
only the trained positions, the experiment trackers, and a resumed adapter kept in its training dtype."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import runs
from .config import RunConfig
from .errors import TrainingError
from .settings import ResolvedSettings

if TYPE_CHECKING:
    import torch
    from transformers import Trainer
    from trl.trainer.sft_trainer import SFTTrainer  # the class trl's lazy top-level module hands out

    from .models import Model


def trainer_settings(resolved: ResolvedSettings) -> dict[str, Any]:
    """The SFTConfig arguments that come from the resolved settings: optimizer and mixed precision."""
    return {"optim": resolved.optim, **resolved.trainer_precision}


# The package each tracker needs (the others: transformers names theirs when one is missing).
TRACKER_PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def trackers(config: RunConfig, run_dir: Path) -> list[str]:
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


def trainer_arguments(config: RunConfig, run_dir: Path, has_eval: bool, checkpointing: bool,
                      settings: ResolvedSettings, device: str) -> dict[str, Any]:
    """The arguments of every method's trainer config (trl's SFTConfig, DPOConfig...): the schedule, batch,
    precision, checkpoints and logging of ``training.*``; ``has_eval``: the run holds out validation rows."""
    t = config.training
    return dict(
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
        eval_strategy=("steps" if t.eval_steps > 0 else "no") if has_eval else "no",
        eval_steps=t.eval_steps if t.eval_steps > 0 else None,
        report_to=trackers(config, run_dir) or "none",
        run_name=run_dir.name,
        project=t.project,
        disable_tqdm=True,
        use_cpu=device == "cpu",
        include_num_input_tokens_seen="non_padding",
        **trainer_settings(settings),
    )


def trained_positions_trainer(loss: str = "trained_positions") -> type[SFTTrainer]:
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


def keep_adapter_dtypes(trainer: Trainer) -> None:
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
