"""DPO, ORPO and KTO with each example's two sequences in one padding-free row, the prompt once
(finetune/pair_packing.py), and the LM head on scored tokens only.

trl's trainers of these methods pad chosen and rejected (KTO: the answer and the mismatched answer of the KL
estimate) to the longest of the batch, run the shared prompt twice, and score every position over the whole
vocabulary with its fused LM head (also computing entropy and top-1 metrics there); KTO runs four forwards a step.
These subclasses keep trl's tokenization, truncation, arguments and loss formulas and replace the batch and the
forward: one row per batch, one forward with autograd, one reference forward without it (the adapter disabled, or
the frozen starting adapter ``ref``), the log-probabilities of the scored tokens only. Same losses as trl's
(tests/test_preference_trainers.py compares them on one batch); what trl logs and nothing reads (entropy, mean
logits, token accuracy) is not computed. ``settings.resolve``'s loss ``trl`` keeps trl's own trainers.

>>> dpo_pair({"prompt_ids": [1, 2], "chosen_ids": [3, 4], "rejected_ids": [5]}, max_length=3)
([1, 2, 3], [0, 0, 1], [1, 2, 5], [0, 0, 1])
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .pair_packing import Pair, counts, pack_pairs, per_sequence, token_logps

if TYPE_CHECKING:
    import torch
    from transformers import Trainer


def _cut(ids: list[int], mask: list[int], max_length: int | None, mode: str = "keep_start") -> tuple[list[int], list[int]]:
    """trl's per-sequence truncation of prompt + completion (its collators' ``keep_start`` / ``keep_end``)."""
    if max_length is None:
        return ids, mask
    sl = slice(None, max_length) if mode == "keep_start" else slice(-max_length, None)
    return ids[sl], mask[sl]


def dpo_pair(ex: dict[str, Any], max_length: int | None, mode: str = "keep_start") -> Pair:
    """A DPO example (trl's ``prompt_ids``, ``chosen_ids``, ``rejected_ids``) as two sequences, completions scored."""
    p = list(ex["prompt_ids"])
    a = _cut(p + list(ex["chosen_ids"]), [0] * len(p) + [1] * len(ex["chosen_ids"]), max_length, mode)
    b = _cut(p + list(ex["rejected_ids"]), [0] * len(p) + [1] * len(ex["rejected_ids"]), max_length, mode)
    return a[0], a[1], b[0], b[1]


PROMPT_NLL = 2  # kind of ORPO's chosen prompt tokens: in its NLL term, not in the answer's log-probability


def orpo_pair(ex: dict[str, Any]) -> Pair:
    """An ORPO example (trl's tokenized ``chosen_input_ids``/``chosen_labels``, truncated already): the chosen
    sequence's every token is in the NLL term (kind 2 on the prompt), the answers' tokens (kind 1) in the odds."""
    a, al = list(ex["chosen_input_ids"]), ex["chosen_labels"]
    b, bl = list(ex["rejected_input_ids"]), ex["rejected_labels"]
    return a, [1 if x != -100 else PROMPT_NLL for x in al], b, [1 if x != -100 else 0 for x in bl]


def kto_pair(ex: dict[str, Any], max_length: int | None) -> Pair:
    """A KTO row (trl's ``prompt_ids``, ``completion_ids``, ``KL_completion_ids``): its answer, then the mismatched
    answer of the KL estimate after the same prompt."""
    p = list(ex["prompt_ids"])
    a = _cut(p + list(ex["completion_ids"]), [0] * len(p) + [1] * len(ex["completion_ids"]), max_length)
    b = _cut(p + list(ex["KL_completion_ids"]), [0] * len(p) + [1] * len(ex["KL_completion_ids"]), max_length)
    return a[0], a[1], b[0], b[1]


class PairCollator:
    """The batch as one packed row (:func:`pair_packing.pack_pairs`), plus the examples' KTO labels."""

    def __init__(self, pair: Callable[[dict[str, Any]], Pair]):
        self.pair = pair

    def __call__(self, examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        import torch

        batch = pack_pairs([self.pair(e) for e in examples])
        if "label" in examples[0]:
            batch["label"] = torch.tensor([bool(e["label"]) for e in examples])
        return batch


def _reference_logps(trainer: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """The scored tokens' log-probabilities under the reference: no autograd, the adapter disabled (or the frozen
    starting adapter ``ref``), or trl's separate reference model."""
    import contextlib

    import torch
    from trl.models.utils import disable_gradient_checkpointing
    from trl.trainer.utils import use_adapter

    model = trainer.ref_model
    context: Any = contextlib.nullcontext()
    if model is None:
        model = trainer.model
        unwrapped = trainer.accelerator.unwrap_model(trainer.model)
        context = use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None)
    with torch.no_grad(), disable_gradient_checkpointing(trainer.model, trainer.args.gradient_checkpointing_kwargs), \
            context:
        return token_logps(model, inputs)


def _gathered_mean(trainer: Any, t: torch.Tensor) -> float:
    return float(trainer.accelerator.gather_for_metrics(t.detach()).float().mean().item())


def _count_tokens(trainer: Any, inputs: dict[str, Any], mode: str) -> None:
    if mode == "train":
        trainer._total_train_tokens += int(trainer.accelerator.gather_for_metrics(inputs["tokens"]).sum().item())
    trainer._metrics[mode]["num_tokens"] = [trainer._total_train_tokens]


def _loss_only(trainer: Any, model: Any, inputs: dict[str, Any]) -> tuple[torch.Tensor, None, None]:
    """prediction_step: the evaluation loss (trl's would rebuild full logits for ``compute_metrics``)."""
    import torch

    inputs = trainer._prepare_inputs(inputs)
    with torch.no_grad(), trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, inputs)
    return loss.detach(), None, None


def _packed(model: Any) -> None:
    from .packed_attention import use_packed_attention

    use_packed_attention(model)


# ---------------------------------------------------------------------------------------------
# the trainers (built on first use: trl is imported lazily)


def dpo_supported(args: Any) -> bool:
    """The DPO settings the packed trainer computes as trl does (the rest: trl's own trainer)."""
    return (set(args.loss_type) <= {"sigmoid", "sft"} and args.ld_alpha is None and not args.use_weighting
            and args.f_divergence_type == "reverse_kl" and not args.precompute_ref_log_probs)


def packed_dpo_trainer() -> type[Trainer]:
    import torch.nn.functional as F
    from trl import DPOTrainer  # type: ignore[attr-defined]

    class PackedDPOTrainer(DPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            a = kwargs["args"]
            _packed(kwargs["model"])
            kwargs["data_collator"] = PairCollator(partial(dpo_pair, max_length=a.max_length, mode=a.truncation_mode))
            super().__init__(*args, **kwargs)
            if self.ref_model is not None:
                _packed(self.ref_model)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            mode = "train" if model.training else "eval"
            n = inputs["spans"].shape[0]
            tok = token_logps(model, inputs)
            logps = per_sequence(tok, inputs, 2 * n)
            ref = per_sequence(_reference_logps(self, inputs), inputs, 2 * n)
            chosen_ratio, rejected_ratio = logps[:n] - ref[:n], logps[n:] - ref[n:]
            loss = tok.new_zeros(())
            for kind, weight in zip(self.loss_types, self.loss_weights, strict=True):
                if kind == "sigmoid":
                    loss = loss + F.logsigmoid(self.beta * (chosen_ratio - rejected_ratio)).neg().mean() * weight
                else:  # "sft": the chosen answers' mean token NLL over the batch
                    loss = loss + tok[inputs["seq"] < n].neg().mean() * weight
            m = self._metrics[mode]
            chosen_r, rejected_r = self.beta * chosen_ratio.detach(), self.beta * rejected_ratio.detach()
            m["rewards/chosen"].append(_gathered_mean(self, chosen_r))
            m["rewards/rejected"].append(_gathered_mean(self, rejected_r))
            m["rewards/accuracies"].append(_gathered_mean(self, (chosen_r > rejected_r).float()))
            m["rewards/margins"].append(_gathered_mean(self, chosen_r - rejected_r))
            m["logps/chosen"].append(_gathered_mean(self, logps[:n]))
            m["logps/rejected"].append(_gathered_mean(self, logps[n:]))
            _count_tokens(self, inputs, mode)
            return (loss, {}) if return_outputs else loss

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: list[str] | None = None) -> Any:
            return _loss_only(self, model, inputs)

    return PackedDPOTrainer


def packed_orpo_trainer() -> type[Trainer]:
    from trl.experimental.orpo import ORPOTrainer

    class PackedORPOTrainer(ORPOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _packed(kwargs["model"])
            kwargs["args"].remove_unused_columns = False  # the collator reads trl's tokenized columns by name
            kwargs["data_collator"] = PairCollator(orpo_pair)
            super().__init__(*args, **kwargs)

        def get_batch_loss_metrics(self, model: Any, batch: dict[str, Any],
                                   train_eval: str = "train") -> tuple[torch.Tensor, dict[str, float]]:
            n = batch["spans"].shape[0]
            tok = token_logps(model, batch)
            nll = tok[batch["seq"] < n].neg().mean()  # every chosen token, prompt included (trl's ORPO NLL)
            mean = per_sequence(tok, batch, 2 * n, (1,)) / counts(batch, 2 * n, (1,)).clamp(min=1)
            odds = self.odds_ratio_loss(mean[:n], mean[n:])  # type: ignore[arg-type]  # trl annotates FloatTensor
            losses, chosen_r, rejected_r, log_odds_ratio, log_odds_chosen = odds
            loss = nll - losses.mean()
            p = "eval_" if train_eval == "eval" else ""
            metrics = {f"{p}rewards/chosen": chosen_r, f"{p}rewards/rejected": rejected_r,
                       f"{p}rewards/accuracies": (chosen_r > rejected_r).float(),
                       f"{p}rewards/margins": chosen_r - rejected_r, f"{p}logps/chosen": mean[:n],
                       f"{p}logps/rejected": mean[n:], f"{p}nll_loss": nll, f"{p}log_odds_ratio": log_odds_ratio,
                       f"{p}log_odds_chosen": log_odds_chosen}
            return loss, {k: _gathered_mean(self, v) for k, v in metrics.items()}

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: list[str] | None = None) -> Any:
            import torch

            with torch.no_grad():
                loss, metrics = self.get_batch_loss_metrics(model, inputs, train_eval="eval")
            self.store_metrics(metrics, train_eval="eval")
            return loss.detach(), None, None

    return PackedORPOTrainer


def kto_supported(args: Any) -> bool:
    return args.loss_type == "kto" and not args.precompute_ref_log_probs and args.per_device_train_batch_size > 1


def packed_kto_trainer() -> type[Trainer]:
    import torch
    import torch.nn.functional as F
    from trl import KTOTrainer  # type: ignore[attr-defined]

    class PackedKTOTrainer(KTOTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            _packed(kwargs["model"])
            kwargs["data_collator"] = PairCollator(partial(kto_pair, max_length=kwargs["args"].max_length))
            super().__init__(*args, **kwargs)
            if self.ref_model is not None:
                _packed(self.ref_model)

        def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                         num_items_in_batch: Any = None) -> Any:
            mode = "train" if model.training else "eval"
            n = inputs["spans"].shape[0]
            logps = per_sequence(token_logps(model, inputs), inputs, 2 * n)
            ref = per_sequence(_reference_logps(self, inputs), inputs, 2 * n)
            ratio = logps[:n] - ref[:n]
            kl = self.accelerator.gather_for_metrics((logps[n:].detach() - ref[n:]).mean()).mean().clamp(min=0)
            good = inputs["label"].to(ratio.device)
            chosen_losses = 1 - F.sigmoid(self.beta * (ratio[good] - kl))
            rejected_losses = 1 - F.sigmoid(self.beta * (kl - ratio[~good]))
            loss = torch.cat((self.desirable_weight * chosen_losses, self.undesirable_weight * rejected_losses)).nanmean()
            m = self._metrics[mode]
            m["kl"].append(float(kl.item()))
            rewards = self.beta * ratio.detach()
            n_good = int(self.accelerator.gather_for_metrics(good.sum()).sum().item())
            n_bad = int(self.accelerator.gather_for_metrics((~good).sum()).sum().item())
            for name, sel, count in (("chosen", good, n_good), ("rejected", ~good, n_bad)):
                if count:
                    m[f"rewards/{name}"].append(
                        float(self.accelerator.gather_for_metrics(rewards[sel].nansum()).nansum().item()) / count)
                    m[f"logps/{name}"].append(
                        float(self.accelerator.gather_for_metrics(logps[:n][sel].detach().nansum()).nansum().item())
                        / count)
            if n_good and n_bad:
                m["rewards/margins"].append(m["rewards/chosen"][-1] - m["rewards/rejected"][-1])
            _count_tokens(self, inputs, mode)
            return (loss, {}) if return_outputs else loss

        def prediction_step(self, model: Any, inputs: dict[str, Any], prediction_loss_only: bool,
                            ignore_keys: list[str] | None = None) -> Any:
            return _loss_only(self, model, inputs)

    return PackedKTOTrainer
