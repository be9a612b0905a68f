"""The methods beyond SFT: ``training.method`` dpo, orpo, kto and grpo, each on its trl trainer.

``train(config)`` (finetune/train.py) runs every method the same way (run folder, events, checkpoints, resume,
chunks, the adapter bundle); what differs lives here: the data each method trains on (rendered with the run's
template, finetune/data/preference.py), the trainer and its config, the metrics its events carry, and what the
estimator counts per step.

- dpo: pairs; the reference model is the base with the adapter disabled (no second copy with LoRA).
- orpo: pairs; no reference model (the SFT loss plus an odds-ratio term, weight ``training.orpo_lambda``).
- kto: single answers with thumbs up/down; reference as for dpo.
- grpo: prompts; ``training.grpo_num_generations`` answers sampled per prompt, scored by the rewards
  (finetune/rewards.py); a reference pass only when ``training.grpo_beta`` > 0.

>>> sequences_per_example("dpo"), sequences_per_example("grpo", num_generations=8), needs_reference("orpo", 0.0)
(2, 8, False)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .config import RunConfig, choices, sample_data

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import Trainer, TrainerCallback

    from .data.preference import MethodData
    from .models import Model, Tokenizer
    from .templates import Message

METHODS = choices("training.method")  # as the field declares them
PREFERENCE = ("dpo", "orpo", "kto", "grpo")  # the methods whose data is not SFT's

# What each method's step events carry besides the loss (trl's log names; "rewards/<function>/mean" per reward).
METRICS: dict[str, tuple[str, ...]] = {
    "dpo": ("rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected"),
    "orpo": ("rewards/margins", "rewards/accuracies", "log_odds_ratio", "nll_loss"),
    "kto": ("kl", "rewards/chosen", "rewards/rejected", "rewards/margins"),
    "grpo": ("reward", "reward_std", "completions/mean_length", "kl"),
}


def step_metrics(method: str, logs: dict[str, Any]) -> dict[str, float]:
    """The method's metrics in one trainer log (rounded; the per-reward means of grpo included)."""
    if method not in METRICS:
        return {}
    keys = list(METRICS[method])
    if method == "grpo":
        keys += [k for k in logs if k.startswith("rewards/") and k.endswith("/mean")]
    return {k: round(float(logs[k]), 6) for k in keys if isinstance(logs.get(k), (int, float))}


def final_metrics(method: str, log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each method metric's last logged training value (for the run's metrics and the model card)."""
    out: dict[str, float] = {}
    for entry in log_history:
        if "loss" in entry:
            out.update(step_metrics(method, entry))
    return out


def sequences_per_example(method: str, num_generations: int = 1) -> int:
    """Sequences one training example puts through the model: a pair is two (chosen and rejected), a kto row
    two (its answer and a mismatched one for the KL estimate), a grpo prompt its group of sampled answers."""
    return {"dpo": 2, "orpo": 2, "kto": 2, "grpo": num_generations}.get(method, 1)


def beta(config: RunConfig) -> float:
    """The method's beta: how strongly dpo and kto (and grpo's KL term) hold the model near the reference; the
    reward margins dpo and kto log are beta x log-probability ratios. 0 for methods without one."""
    t = config.training
    return {"dpo": t.dpo_beta, "kto": t.kto_beta, "grpo": t.grpo_beta}.get(t.method, 0.0)


def needs_reference(method: str, grpo_beta: float = 0.0) -> bool:
    """Whether the method compares with a reference model. With LoRA that is the base with the adapter
    disabled: an extra forward pass per step, no extra weights."""
    return method in ("dpo", "kto") or (method == "grpo" and grpo_beta > 0)


# ---------------------------------------------------------------------------------------------
# data


def _strip_bos(tokenizer: Tokenizer) -> str:
    """The bos string to take off rendered prompts: trl tokenizes text with the tokenizer's special tokens on,
    so where the tokenizer adds bos itself, a rendered bos would be doubled."""
    bos = getattr(tokenizer, "bos_token", None)
    if not bos:
        return ""
    ids = tokenizer("a")["input_ids"]
    return bos if ids and ids[0] == tokenizer.bos_token_id else ""


def _last_user(messages: Sequence[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def rows_for_trl(data: MethodData, tokenizer: Tokenizer, examples: Sequence[Any] | None = None) -> list[dict[str, Any]]:
    """The examples as the rows trl's trainer of the method reads (rendered text, not messages: the run's
    template decides the format, as for SFT)."""
    from .data.preference import FeedbackExample, PairExample, PromptExample

    bos = _strip_bos(tokenizer)

    def prompt(text: str) -> str:
        return text[len(bos):] if bos and text.startswith(bos) else text

    out: list[dict[str, Any]] = []
    for ex in data.examples if examples is None else examples:
        if isinstance(ex, PairExample):
            out.append({"prompt": prompt(ex.prompt), "chosen": ex.chosen, "rejected": ex.rejected})
        elif isinstance(ex, FeedbackExample):
            out.append({"prompt": prompt(ex.prompt), "completion": ex.completion, "label": ex.label})
        elif isinstance(ex, PromptExample):
            out.append({"prompt": prompt(ex.prompt), "answer": ex.answer, "user_text": _last_user(ex.messages)})
    return out


def load_data(config: RunConfig, tokenizer: Tokenizer) -> MethodData:
    from .data.preference import format_for_method

    d = config.data
    return format_for_method(d.source or str(sample_data(config.training.method)), config.training.method, template=d.template,
                             system_prompt=d.system_prompt, columns=d.columns or None, tokenizer=tokenizer,
                             strict=d.strict, val_fraction=d.val_fraction, seed=d.seed, hub_config=d.hub_config,
                             split=d.split)


def datasets(config: RunConfig, tokenizer: Tokenizer) -> tuple[Dataset, Dataset | None, dict[str, Any], MethodData]:
    """The method's data as (train, eval or None, summary, the formatted examples), as ``tokenization.sft_datasets``
    gives SFT's."""
    from datasets import Dataset

    data = load_data(config, tokenizer)
    train_ds = Dataset.from_list(rows_for_trl(data, tokenizer))
    eval_ds = Dataset.from_list(rows_for_trl(data, tokenizer, data.val_examples)) if data.val_examples else None
    summary = {
        "source": data.source,
        "method": data.method,
        "shape": str(data.shape),
        "rows_in": data.rows_in,
        "train_examples": len(train_ds),
        "eval_examples": len(eval_ds) if eval_ds is not None else 0,
        "skipped": dict(data.skipped),
    }
    return train_ds, eval_ds, summary, data


# ---------------------------------------------------------------------------------------------
# the trainer


def make_trainer(config: RunConfig, model: Model, tokenizer: Tokenizer, common: dict[str, Any], train_ds: Dataset,
                 eval_ds: Dataset | None, peft_config: LoraConfig | None, callbacks: list[TrainerCallback],
                 device: str) -> Trainer:
    """The trl trainer of ``training.method`` with the run's shared arguments (``common``: output folder,
    schedule, batch, precision, checkpoints; see train._train). ``peft_config`` None: ``model`` is a PeftModel
    already (``training.init_adapter``); dpo and kto then compare with a frozen copy of the starting adapter, not
    with the bare base."""
    t = config.training
    method = t.method
    kwargs: dict[str, Any] = dict(model=model, train_dataset=train_ds, eval_dataset=eval_ds,
                                  processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks)
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]  # trl's lazy top-level module

        dpo_args = DPOConfig(**common, beta=t.dpo_beta, max_length=t.max_length, dataset_num_proc=None)
        return DPOTrainer(args=dpo_args, **kwargs)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        orpo_args = ORPOConfig(**{**common, "include_num_input_tokens_seen": "no"}, beta=t.orpo_lambda,
                               max_length=t.max_length, dataset_num_proc=None)
        return ORPOTrainer(args=orpo_args, **kwargs)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer  # type: ignore[attr-defined]

        kto_args = KTOConfig(**common, beta=t.kto_beta, desirable_weight=t.kto_desirable_weight,
                             undesirable_weight=t.kto_undesirable_weight, max_length=t.max_length,
                             dataset_num_proc=None)
        return KTOTrainer(args=kto_args, **kwargs)
    if method == "grpo":
        from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

        from .rewards import reward_functions

        funcs, weights = reward_functions(config.rewards, device)
        grpo_args = GRPOConfig(**{**common, "include_num_input_tokens_seen": "no"},
                               num_generations=t.grpo_num_generations, max_completion_length=t.max_completion_length,
                               beta=t.grpo_beta, temperature=t.grpo_temperature, reward_weights=weights,
                               log_completions=False)
        reward_funcs: list[Any] = list(funcs)  # trl's annotation wants list[float | None] returns (invariant)
        return GRPOTrainer(reward_funcs=reward_funcs, args=grpo_args, **kwargs)
    raise ValueError(f"no trainer for method {method!r}")  # sft is train._train's own; config validation names the rest


def describe(method: str) -> str:
    """One line on what the method learns from (UI and CLI help)."""
    return {
        "sft": "imitate the answers of the data (instruction tuning)",
        "dpo": "prefer the chosen answer over the rejected one, staying near the starting model (beta). It only "
               "reweighs answers the model already gives: when the base does not answer like your chosen answers, "
               "train SFT on them first and start DPO from that adapter (training.init_adapter), or use ORPO",
        "orpo": "learn the chosen answers and prefer them over the rejected ones in one pass, no reference model "
                "(needs no SFT adapter first: its SFT term teaches the chosen answers)",
        "kto": "raise good answers (label true) and lower bad ones (label false); no pairs needed. As DPO, it only "
               "reweighs answers the model already gives: start from an SFT adapter (training.init_adapter) when the "
               "base does not answer like your good answers",
        "grpo": "sample several answers per prompt and reinforce those the rewards score above their group's mean; "
                "a prompt whose answers all score alike teaches nothing, so start from an SFT adapter "
                "(training.init_adapter) when the base never earns the reward",
    }[method]
