"""The training methods: ``training.method`` sft, dpo, orpo, kto and grpo, each one entry of :data:`REGISTRY`.

``train(config)`` (finetune/train.py) runs every method the same way (run folder, events, checkpoints, resume,
chunks, the adapter bundle); what differs is the method's entry: the data it trains on (SFT's conversations
tokenized here, finetune/tokenization.py; the others' rows rendered with the run's template,
finetune/data/preference.py), its trainer, the metrics its events carry, what the estimator counts per example,
whether it compares with a reference model, and its one-line description. Training, the estimator, the model
card, the Dataset tab's preview and the Method picker ask the entry; a new method is one more entry (and its
name among ``training.method``'s choices, with its own fields, in config.py).

- sft: any supported conversation shape; the answers are imitated.
- dpo: pairs; the reference model is the base with the adapter disabled (no second copy with LoRA).
- orpo: pairs; no reference model (the SFT loss plus an odds-ratio term, weight ``training.orpo_lambda``).
- kto: single answers with thumbs up/down; reference as for dpo.
- grpo: prompts; ``training.grpo_num_generations`` answers sampled per prompt, scored by the rewards
  (finetune/rewards.py); a reference pass only when ``training.grpo_beta`` > 0.

>>> sequences_per_example("dpo"), sequences_per_example("grpo", num_generations=8), needs_reference("orpo", 0.0)
(2, 8, False)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .config import RunConfig, TrainingConfig, sample_data
from .dialogs import TrainedDialogs

if TYPE_CHECKING:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import Trainer, TrainerCallback

    from .data import Example
    from .data.preference import MethodData
    from .models import Model, Tokenizer
    from .templates import Message

ANY_SHAPE = "any"  # SFT's data shape: every shape data/detect.py reads, tokenized here (data/format.py)


@dataclass(frozen=True)
class RunData:
    """A method's data for one run: the datasets its trainer takes and what comes with them."""

    train: Dataset
    eval: Dataset | None
    summary: dict[str, Any]  # the ``started`` event's ``data``, the model card's
    dialogs: TrainedDialogs
    held_out: list[Example]  # the rows ``data.test_split`` held out (SFT's)
    examples: MethodData | None  # a text-row method's formatted examples (answered at each save)


@dataclass(frozen=True)
class TrainerParts:
    """What every method's trainer is built from (``common``: the run's shared arguments, trainer.py)."""

    model: Model
    tokenizer: Tokenizer
    common: dict[str, Any]
    train: Dataset
    eval: Dataset | None
    peft_config: LoraConfig | None  # None: ``model`` is a PeftModel already (``training.init_adapter``)
    callbacks: list[TrainerCallback]
    device: str
    loss: str  # settings.resolve's loss (SFT's trained-positions loss or trl's)

    def trl_kwargs(self) -> dict[str, Any]:
        return dict(model=self.model, train_dataset=self.train, eval_dataset=self.eval,
                    processing_class=self.tokenizer, peft_config=self.peft_config, callbacks=self.callbacks)


def _one(t: TrainingConfig) -> int:
    return 1


def _no(t: TrainingConfig) -> bool:
    return False


def _zero(t: TrainingConfig) -> float:
    return 0.0


@dataclass(frozen=True)
class Method:
    """One training method: everything that differs from one method to another."""

    name: str
    description: str  # what it learns from, one line (UI and CLI help)
    data: str  # the data it needs, in words (the Method picker)
    shape: str  # ANY_SHAPE, or the data/preference.py shape its rows have (text rows trl tokenizes)
    datasets: Callable[[RunConfig, Tokenizer], RunData]
    trainer: Callable[[RunConfig, TrainerParts], Trainer]
    card: Callable[[TrainingConfig], str]  # the settings it trained with, for the model card
    metrics: tuple[str, ...] = ()  # what its step events carry besides the loss (trl's log names)
    reward_means: bool = False  # its logs carry "rewards/<function>/mean" per reward, carried too
    sequences: Callable[[TrainingConfig], int] = _one  # sequences one example puts through the model
    generates: bool = False  # its sequences are answers it samples (max_completion_length tokens each)
    reference: Callable[[TrainingConfig], bool] = _no  # whether it compares with a reference model
    beta: Callable[[TrainingConfig], float] = _zero  # how strongly it holds the model near the reference

    @property
    def text_rows(self) -> bool:
        """Its rows are rendered text trl tokenizes (data/preference.py), not token ids and labels made here:
        no packed attention, and the training model is not the one ``finetune eval`` loads."""
        return self.shape != ANY_SHAPE

    def is_metric(self, key: str) -> bool:
        return key in self.metrics or (self.reward_means and key.startswith("rewards/") and key.endswith("/mean"))

    def step_metrics(self, logs: dict[str, Any]) -> dict[str, float] | None:
        """Its metrics in one trainer log (rounded); None for a method that has none."""
        if not self.metrics:
            return None
        keys = list(self.metrics) + [k for k in logs if k not in self.metrics and self.is_metric(k)]
        return {k: round(float(logs[k]), 6) for k in keys if isinstance(logs.get(k), (int, float))}

    def run_metrics(self, log_history: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """What the run's metrics add for the method: its name and each metric's last logged training value."""
        if not self.metrics:
            return {}
        out: dict[str, Any] = {"method": self.name}
        for entry in log_history:
            if "loss" in entry:
                out.update(self.step_metrics(entry) or {})
        return out


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
                             split=d.split, shape=get(config.training.method).shape)


def _text_data(config: RunConfig, tokenizer: Tokenizer) -> RunData:
    """A text-row method's data (train, eval or None, summary, dialogs, its formatted examples)."""
    from datasets import Dataset

    from .dialogs import sample_dialogs

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
    dialogs = TrainedDialogs(data.default_system_prompt, sample_dialogs(data.val_examples, data.examples))
    return RunData(train_ds, eval_ds, summary, dialogs, [], data)


def _sft_data(config: RunConfig, tokenizer: Tokenizer) -> RunData:
    from .tokenization import sft_datasets

    from .data import DataError, ShapeError

    try:
        train_ds, eval_ds, summary, dialogs, held_out = sft_datasets(config, tokenizer)
    except ShapeError as e:  # pairs or labelled answers asked of SFT: the error names the method that reads them
        fitting = methods_for_columns(e.columns)
        if not fitting:
            raise
        raise DataError(e.file, None, f"{method_hint(fitting, sft_reads=False)} (training.method)") from None
    return RunData(train_ds, eval_ds, summary, dialogs, held_out, None)


# ---------------------------------------------------------------------------------------------
# the trainers: each method's trl trainer with the run's shared arguments (``TrainerParts.common``: output
# folder, schedule, batch, precision, checkpoints). With ``peft_config`` None (``training.init_adapter``) dpo and
# kto compare with a frozen copy of the starting adapter, not with the bare base.


def _sft_trainer(config: RunConfig, p: TrainerParts) -> Trainer:
    from trl import SFTConfig, SFTTrainer  # type: ignore[attr-defined]  # trl's lazy top-level module

    from .trainer import trained_positions_trainer

    t = config.training
    sft_args = SFTConfig(
        **p.common,
        # padding-free without packing: trl wants max_length=None (we truncated already)
        max_length=None if (t.padding_free and not t.packing) else t.max_length,
        packing=t.packing,
        padding_free=t.padding_free,
        dataset_num_proc=None,
        completion_only_loss=None,
    )
    trainer_cls: type[SFTTrainer] = trained_positions_trainer(p.loss) if p.loss != "trl" else SFTTrainer
    return trainer_cls(args=sft_args, **p.trl_kwargs())


def _dpo_trainer(config: RunConfig, p: TrainerParts) -> Trainer:
    from trl import DPOConfig, DPOTrainer  # type: ignore[attr-defined]

    t = config.training
    # The SFT term (trl's "sft" loss: the chosen answers' mean token loss) beside the sigmoid preference loss: plain DPO
    # can win the preference by pushing both answers down, and on data the base does not already answer like, its
    # samples degenerate while its metrics look perfect (presets/smollm2-135m-dpo.yaml says what was measured).
    sft_term = t.dpo_sft_weight > 0
    dpo_args = DPOConfig(**p.common, beta=t.dpo_beta, max_length=t.max_length, dataset_num_proc=None,
                         loss_type=["sigmoid", "sft"] if sft_term else ["sigmoid"],
                         loss_weights=[1.0, t.dpo_sft_weight] if sft_term else None)
    from .preference_trainers import dpo_supported, packed_dpo_trainer

    cls = packed_dpo_trainer() if _packed_pairs(p) and dpo_supported(dpo_args) else DPOTrainer
    return cls(args=dpo_args, **p.trl_kwargs())


def _packed_pairs(p: TrainerParts) -> bool:
    """Whether dpo, orpo and kto train on packed rows (finetune/preference_trainers.py: each pair's prompt once, the
    LM head on the answers only): with every loss implementation but trl's own (``settings.resolve``'s loss), for
    models whose logits are the plain LM head's (``loss.supports``)."""
    from .loss import supports

    return p.loss != "trl" and supports(p.model)


def _orpo_trainer(config: RunConfig, p: TrainerParts) -> Trainer:
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    t = config.training
    orpo_args = ORPOConfig(**{**p.common, "include_num_input_tokens_seen": "no"}, beta=t.orpo_lambda,
                           max_length=t.max_length, dataset_num_proc=None)
    from .preference_trainers import packed_orpo_trainer

    cls = packed_orpo_trainer() if _packed_pairs(p) else ORPOTrainer
    return cls(args=orpo_args, **p.trl_kwargs())


def _kto_trainer(config: RunConfig, p: TrainerParts) -> Trainer:
    from trl import KTOConfig, KTOTrainer  # type: ignore[attr-defined]

    t = config.training
    kto_args = KTOConfig(**p.common, beta=t.kto_beta, desirable_weight=t.kto_desirable_weight,
                         undesirable_weight=t.kto_undesirable_weight, max_length=t.max_length, dataset_num_proc=None)
    from .preference_trainers import kto_supported, packed_kto_trainer

    cls = packed_kto_trainer() if _packed_pairs(p) and kto_supported(kto_args) else KTOTrainer
    return cls(args=kto_args, **p.trl_kwargs())


def _grpo_trainer(config: RunConfig, p: TrainerParts) -> Trainer:
    from trl import GRPOConfig, GRPOTrainer  # type: ignore[attr-defined]

    from .rewards import reward_functions

    t = config.training
    funcs, weights = reward_functions(config.rewards, p.device)
    grpo_args = GRPOConfig(**{**p.common, "include_num_input_tokens_seen": "no"},
                           num_generations=t.grpo_num_generations, max_completion_length=t.max_completion_length,
                           beta=t.grpo_beta, temperature=t.grpo_temperature, reward_weights=weights,
                           log_completions=False, **grpo_sampler(t, p.device))
    reward_funcs: list[Any] = list(funcs)  # trl's annotation wants list[float | None] returns (invariant)
    return GRPOTrainer(reward_funcs=reward_funcs, args=grpo_args, **p.trl_kwargs())


def grpo_sampler(t: TrainingConfig, device: str) -> dict[str, Any]:
    """GRPOConfig's sampling arguments: vLLM in the training process (trl's colocate mode) when
    ``training.grpo_vllm`` is on, which needs a CUDA GPU and the vllm package; else none (generate, KV cache).

    >>> grpo_sampler(TrainingConfig(), "cpu")
    {}
    """
    import importlib.util

    from .errors import UserError

    if not t.grpo_vllm:
        return {}
    if device != "cuda":
        raise UserError(f"training.grpo_vllm samples with vLLM, which needs a CUDA GPU (this run trains on {device}): "
                        "set training.grpo_vllm to false")
    if importlib.util.find_spec("vllm") is None:
        raise UserError("training.grpo_vllm needs the vllm package (pip install vllm, in the version trl supports), "
                        "or set training.grpo_vllm to false")
    return {"use_vllm": True, "vllm_mode": "colocate"}


def _reference(t: TrainingConfig) -> str:
    return "the starting adapter (frozen)" if t.init_adapter else "the base model (adapter disabled)"


_PAIRS = "prompt/chosen/rejected pairs"
_PAIR_METRICS = ("rewards/margins", "rewards/accuracies")

# The methods, in the order the Method picker and the CLI list them. A new method is one more entry.
REGISTRY: dict[str, Method] = {m.name: m for m in (
    Method("sft", "imitate the answers of the data (instruction tuning)",
           "any supported shape (instruction/output, prompt/completion, messages, ...)", ANY_SHAPE,
           _sft_data, _sft_trainer, lambda t: "supervised fine-tuning"),
    Method("dpo", "prefer the chosen answer over the rejected one, staying near the starting model (beta), with an "
                  "SFT term that keeps the chosen answers likely (dpo_sft_weight; 0 is plain DPO, which only reweighs "
                  "answers the model already gives: then train SFT on your chosen answers first and start DPO from "
                  "that adapter, training.init_adapter, or use ORPO)",
           _PAIRS, "preference", _text_data, _dpo_trainer,
           lambda t: f"beta={t.dpo_beta}; SFT weight {t.dpo_sft_weight}; reference: {_reference(t)}",
           metrics=(*_PAIR_METRICS, "rewards/chosen", "rewards/rejected"), sequences=lambda t: 2,
           reference=lambda t: True, beta=lambda t: t.dpo_beta),
    Method("orpo", "learn the chosen answers and prefer them over the rejected ones in one pass, no reference model "
                   "(needs no SFT adapter first: its SFT term teaches the chosen answers)",
           _PAIRS, "preference", _text_data, _orpo_trainer,
           lambda t: f"lambda={t.orpo_lambda}; no reference model",
           metrics=(*_PAIR_METRICS, "log_odds_ratio", "nll_loss"), sequences=lambda t: 2),
    Method("kto", "raise good answers (label true) and lower bad ones (label false); no pairs needed. As DPO, it only "
                  "reweighs answers the model already gives: start from an SFT adapter (training.init_adapter) when "
                  "the base does not answer like your good answers",
           "prompt/completion/label rows (label true or false)", "feedback", _text_data, _kto_trainer,
           lambda t: f"beta={t.kto_beta}, desirable weight {t.kto_desirable_weight}, undesirable weight "
                     f"{t.kto_undesirable_weight}",
           metrics=("kl", "rewards/chosen", "rewards/rejected", "rewards/margins"), sequences=lambda t: 2,
           reference=lambda t: True, beta=lambda t: t.kto_beta),
    Method("grpo", "sample several answers per prompt and reinforce those the rewards score above their group's "
                   "mean; a prompt whose answers all score alike teaches nothing, so start from an SFT adapter "
                   "(training.init_adapter) when the base never earns the reward",
           "prompts, with an answer column for the exact and numeric match rewards", "prompts", _text_data,
           _grpo_trainer,
           lambda t: f"{t.grpo_num_generations} answers per prompt, up to {t.max_completion_length} tokens, "
                     f"KL beta={t.grpo_beta}" + ("; sampled with vLLM" if t.grpo_vllm else ""),
           metrics=("reward", "reward_std", "completions/mean_length", "kl"), reward_means=True,
           sequences=lambda t: t.grpo_num_generations, generates=True, reference=lambda t: t.grpo_beta > 0,
           beta=lambda t: t.grpo_beta),
)}
METHODS = tuple(REGISTRY)  # training.method's choices (config.py declares the same names on the field)
METRICS: dict[str, tuple[str, ...]] = {m.name: m.metrics for m in REGISTRY.values() if m.metrics}


# The shapes whose rows judge answers (pairs of a better and a worse one, answers labelled good or bad): data of one of
# them trains SFT wrongly (it would imitate the bad answers too, or cannot be read as SFT data at all).
JUDGED_SHAPES = ("preference", "feedback")


def methods_for_columns(columns: Sequence[str]) -> list[str]:
    """The methods whose judged-answers shape (:data:`JUDGED_SHAPES`) ``columns`` carry, in the registry's order.

    >>> methods_for_columns(["prompt", "chosen", "rejected"]), methods_for_columns(["prompt", "completion", "label"])
    (['dpo', 'orpo'], ['kto'])
    """
    from .data import DataError
    from .data.preference import detect_method_shape

    out: list[str] = []
    for m in REGISTRY.values():
        if m.shape in JUDGED_SHAPES:
            try:
                detect_method_shape(list(columns), m.name, shape=m.shape)
            except DataError:  # the columns lack a field of this shape: not this method's data
                continue
            out.append(m.name)
    return out


# What judged-answer data is, by its shape (methods.JUDGED_SHAPES), in the words the hint says it with
JUDGED_WORDS = {"preference": "these are preference pairs (a chosen and a rejected answer to each prompt)",
                "feedback": "these are answers labelled good or bad (a label column)"}


def method_hint(suggests: Sequence[str], sft_reads: bool) -> str:
    """What to pick for data whose answers are judged (``suggests``: methods.methods_for_columns); ``sft_reads``:
    SFT could read the rows (it would imitate the bad answers too).

    >>> method_hint(["dpo", "orpo"], False)
    'these are preference pairs (a chosen and a rejected answer to each prompt), not SFT data: pick DPO or ORPO as the method'
    """
    shapes = dict.fromkeys(get(m).shape for m in suggests)
    what = " and ".join(JUDGED_WORDS.get(s, s) for s in shapes)
    names = [m.upper() for m in suggests]
    picks = " or ".join(names) if len(names) < 3 else ", ".join(names[:-1]) + " or " + names[-1]
    why = ": SFT would imitate the bad answers too" if sft_reads else ", not SFT data"
    return f"{what}{why}: pick {picks} as the method"


def get(name: str) -> Method:
    """The entry of ``name`` (config validation names the methods first: an unknown one here is a bug)."""
    if name not in REGISTRY:
        raise ValueError(f"no method {name!r}; the methods: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def step_metrics(method: str, logs: dict[str, Any]) -> dict[str, float]:
    """The method's metrics in one trainer log (rounded; the per-reward means of grpo included)."""
    return get(method).step_metrics(logs) or {}


def final_metrics(method: str, log_history: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each method metric's last logged training value (for the run's metrics and the model card)."""
    return {k: v for k, v in get(method).run_metrics(log_history).items() if k != "method"}


def sequences_per_example(method: str, num_generations: int = 1) -> int:
    """Sequences one training example puts through the model: a pair is two (chosen and rejected), a kto row
    two (its answer and a mismatched one for the KL estimate), a grpo prompt its group of sampled answers."""
    return get(method).sequences(TrainingConfig(grpo_num_generations=num_generations))


def beta(config: RunConfig) -> float:
    """The method's beta: how strongly dpo and kto (and grpo's KL term) hold the model near the reference; the
    reward margins dpo and kto log are beta x log-probability ratios. 0 for methods without one."""
    return get(config.training.method).beta(config.training)


def needs_reference(method: str, grpo_beta: float = 0.0) -> bool:
    """Whether the method compares with a reference model. With LoRA that is the base with the adapter
    disabled: an extra forward pass per step, no extra weights."""
    return get(method).reference(TrainingConfig(grpo_beta=grpo_beta))


def describe(method: str) -> str:
    """One line on what the method learns from (UI and CLI help)."""
    return get(method).description
