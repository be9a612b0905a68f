"""The run config: everything a run needs, in one typed object that round-trips through YAML.

The UI edits one, the CLI reads one (``--set section.key=value`` overrides), a backend receives one,
and ``train(config)`` executes it. Secrets (HF tokens) are never part of it.

>>> cfg = RunConfig()
>>> cfg = apply_overrides(cfg, ["lora.r=64", "training.learning_rate=1e-4"])
>>> (cfg.lora.r, cfg.training.learning_rate)
(64, 0.0001)
>>> RunConfig.from_yaml(cfg.to_yaml()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import reprlib
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence, TypeVar

import yaml

from .errors import UserError
from .templates import TEMPLATE_NAMES

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


class ConfigWarning(UserWarning):
    """A valid config with a risky setting (e.g. trust_remote_code); shown, not refused."""


# Values quoted in messages are cut short: a hostile YAML (nested aliases, "billion laughs") must not turn
# one error message into gigabytes of text.
_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlist, _repr.maxdict = 2, 60, 60, 4, 4


def _show(value: Any) -> str:
    return _repr.repr(value)


class ConfigError(ValueError, UserError):
    """One or more problems in a config; ``problems`` lists each as 'field: what is wrong; the fix'."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        head = f"{where}{len(self.problems)} problem(s) in the config"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


def doc(text: str, *, choices: Sequence[str] | Mapping[str, str] = (), min: float | None = None,
        max: float | None = None, exclusive: str = "", ceiling: float | None = None, unit: str = "", note: str = "",
        ceiling_note: str = "", fix: str = "", too_high: str = "", unknown: str = "", method: str = "",
        ) -> dict[str, object]:
    """A field's one rule: its one-line help (units, memory effect), shown by the UI and the CLI, and what
    ``problems`` checks, the form offers and the estimator accepts.

    ``choices``: the allowed values (a mapping gives each one's gloss, shown in the help). ``min`` / ``max``: the
    range (inclusive; ``exclusive`` names the open ends: "min", "max" or "both"). ``ceiling``: a sanity bound
    beyond which a value is a typo or an attack on a shared machine (inclusive, or open when ``exclusive`` names
    "max"). In the messages: ``unit`` follows each bound, ``note`` the lower one and ``ceiling_note`` the ceiling,
    ``fix`` ends every range message, ``too_high`` says what a value over the ceiling is (default: out of range)
    and ``unknown`` what a value outside the choices is (default: not one of them). ``method``: the
    ``training.method`` the field belongs to (checked, and shown in the form, for that method only).
    """
    meta: dict[str, object] = {"help": text}
    for key, value in (("choices", choices), ("min", min), ("max", max), ("exclusive", exclusive),
                       ("ceiling", ceiling), ("unit", unit), ("note", note), ("ceiling_note", ceiling_note),
                       ("fix", fix), ("too_high", too_high), ("unknown", unknown), ("method", method)):
        if value not in (None, "", ()):
            meta[key] = value
    return meta


# Sanity bounds: beyond them a value is a typo or an attack on a shared machine, not a training plan.
MAX_EPOCHS = 1000
MAX_STEPS = 10_000_000
MAX_BATCH = 4096
MAX_LENGTH = 1_048_576
SEED_MAX = 2**32 - 1  # a seed numpy and torch both take
_KTO_WEIGHT: dict[str, Any] = dict(min=0, exclusive="min", fix="1.0 weighs both kinds of rows equally", method="kto")


@dataclass
class ModelConfig:
    id: str = field(
        default="",
        metadata=doc("Base model: Hub id, local folder or .gguf file; empty = the embedded SmolLM2-135M-Instruct"),
    )
    revision: str | None = field(default=None, metadata=doc("Hub branch, tag or commit of the base model"))
    gguf_file: str | None = field(default=None, metadata=doc("GGUF file inside the model folder/repo, if any"))
    trust_remote_code: bool = field(
        default=False, metadata=doc("Run Python code shipped with the model repo (off: only use repos you trust)")
    )
    attn_implementation: str = field(
        default="sdpa", metadata=doc("Attention kernel", choices=("sdpa", "eager", "flash_attention_2",
                                                               "flash_attention_3", "flex_attention"))
    )


SAMPLE_DATA = Path(__file__).parent / "samples" / "city_year.jsonl"  # the data of a run whose data.source is empty
# The same task as preference data, for the methods that need its shape: each pair's chosen answer is the sample's
# JSON, its rejected one a wrong city, a wrong year or a sentence instead of JSON (kto: the same answers, each with
# its thumbs up or down). Held out for all of them: samples/city_year_heldout.jsonl.
METHOD_SAMPLE_DATA = {"dpo": SAMPLE_DATA.with_name("city_year_pairs.jsonl"),
                      "orpo": SAMPLE_DATA.with_name("city_year_pairs.jsonl"),
                      "kto": SAMPLE_DATA.with_name("city_year_feedback.jsonl")}


def sample_data(method: str = "sft") -> Path:
    """The bundled data a run of ``method`` trains on when ``data.source`` is empty."""
    return METHOD_SAMPLE_DATA.get(method, SAMPLE_DATA)


@dataclass
class DataConfig:
    source: str = field(
        default="", metadata=doc("Data file (CSV/TSV/JSON/JSONL/Parquet) or Hub dataset id; empty = bundled sample")
    )
    hub_config: str | None = field(default=None, metadata=doc("Hub dataset configuration (subset) name"))
    split: str = field(default="train", metadata=doc("Hub dataset split to read"))
    columns: dict[str, str] = field(
        default_factory=dict,
        metadata=doc("Column mapping override, e.g. {instruction: question, output: answer}"),
    )
    template: str = field(
        default="model", metadata=doc("Prompt template", choices=TEMPLATE_NAMES, unknown="is unknown; choose one of")
    )
    system_prompt: str = field(default="", metadata=doc("System prompt added to every example that has none"))
    train_on: str = field(
        default="assistant",
        metadata=doc("Which tokens carry the loss", choices={"assistant": "answers only", "all": ""}),
    )
    val_fraction: float = field(
        default=0.0, metadata=doc("Fraction of rows held out for evaluation (0 to 0.5)", min=0, max=0.5))
    test_source: str = field(
        default="", metadata=doc("Test file of prompts and reference answers, scored at each checkpoint save and "
                                 "when the run ends (finetune eval); empty = none")
    )
    test_split: float = field(
        default=0.0, metadata=doc("Fraction of rows held out as the test set (0 to 0.5; seeded, apart from the "
                                  "validation rows), kept in the run folder as test_set.jsonl; instead of test_source",
                                  min=0, max=0.5)
    )
    test_limit: int = field(
        default=0, metadata=doc("Score at most this many rows of the run's test set (the first ones), at each "
                                "checkpoint save and at the end; 0 = all", min=0, note="(0 = all rows)")
    )
    test_max_new_tokens: int = field(
        default=256, metadata=doc("Longest answer, in tokens, when the run scores its test set (greedy; a "
                                  "reference longer than this cannot match)", min=1, max=4096)
    )
    strict: bool = field(default=False, metadata=doc("Stop at the first bad row instead of skipping it"))
    seed: int = field(default=42, metadata=doc("Seed of the train/validation/test split", min=0, max=SEED_MAX))
    keep_duplicates: bool = field(
        default=False, metadata=doc("Keep rows that repeat an earlier row (default: each repeat is skipped, naming it)")
    )


@dataclass
class LoraSettings:
    r: int = field(default=16, metadata=doc("LoRA rank: higher = more capacity, more memory (linear)", min=1,
                                            ceiling=1024, too_high="too large", fix="typical: 8 to 64"))
    alpha: float = field(default=32, metadata=doc("LoRA scaling numerator: update scale = alpha / r", min=0,
                                                  exclusive="min", fix="a common choice is 2 × lora.r"))
    # 0 lets peft skip the dropout copy of every adapted layer's input (bench/README-train.md: faster, less
    # memory, same held-out loss on a one-epoch fine-tune)
    dropout: float = field(default=0.0, metadata=doc("Dropout on the LoRA input, 0 to 0.5 (0: fastest)", min=0, max=1,
                                                     exclusive="max", fix="typical 0.05"))
    target_modules: list[str] | str = field(
        default="all-linear",
        metadata=doc("Layers that get adapters: all-linear or a list such as [q_proj, v_proj]"),
    )
    bias: str = field(default="none", metadata=doc("Train biases too", choices=("none", "all", "lora_only")))
    use_rslora: bool = field(default=False, metadata=doc("Rank-stabilised scaling alpha/sqrt(r)"))
    use_dora: bool = field(default=False, metadata=doc("Weight-decomposed LoRA (DoRA): slower, sometimes better"))


ALL_LINEAR = "all-linear"  # peft's name for "every linear layer but the LM head"


def parse_target_modules(value: list[str] | str) -> list[str] | str:
    """``lora.target_modules`` as peft takes it: ``all-linear``, or a list of module names (a comma-separated
    string such as the form's "q_proj, v_proj" is split; blanks are dropped).

    >>> parse_target_modules(" q_proj, v_proj,"), parse_target_modules("all-linear")
    (['q_proj', 'v_proj'], 'all-linear')
    """
    if isinstance(value, str):
        if value.strip() == ALL_LINEAR:
            return ALL_LINEAR
        value = value.split(",")
    return [name.strip() for name in value if name.strip()]


@dataclass
class QuantizationConfig:
    load_in: str = field(
        default="4bit", metadata=doc("Base weights", choices={"4bit": "QLoRA, ~0.5 byte/param", "8bit": "1 byte",
                                                              "none": "2-4 bytes"})
    )
    quant_type: str = field(default="nf4", metadata=doc("4-bit data type", choices={"nf4": "QLoRA", "fp4": ""}))
    double_quant: bool = field(default=True, metadata=doc("Quantize the quantization constants too (~0.4 bit/param)"))
    compute_dtype: str = field(
        default="auto", metadata=doc("Matmul dtype", choices=("auto", "bfloat16", "float16", "float32")))


@dataclass
class TrainingConfig:
    learning_rate: float = field(
        default=2e-4, metadata=doc("Peak learning rate (LoRA: 1e-4 to 3e-4 is typical)", min=0, ceiling=1,
                                   exclusive="both", too_high="far too high", fix="LoRA usually uses 1e-4 to 3e-4"))
    epochs: float = field(default=1.0, metadata=doc("Passes over the training data (ignored when max_steps > 0)",
                                                    ceiling=MAX_EPOCHS, fix="typical: 1 to 3"))
    max_steps: int = field(default=0, metadata=doc("Stop after this many optimizer steps; 0 = use epochs", min=0,
                                                   ceiling=MAX_STEPS, note="(0 = use epochs)"))
    batch_size: int = field(default=4, metadata=doc(
        "Examples per device step: memory grows linearly", min=1, ceiling=MAX_BATCH,
        ceiling_note="(raise training.grad_accum for a larger effective batch)"))
    grad_accum: int = field(default=1, metadata=doc("Steps accumulated per update: effective batch = batch × accum",
                                                    min=1, ceiling=MAX_BATCH))
    max_length: int = field(default=1024, metadata=doc("Tokens per example (longer is truncated): memory grows linearly",
                                                       min=16, ceiling=MAX_LENGTH, unit="tokens"))
    packing: bool = field(default=False, metadata=doc("Pack several examples into one row (fewer pad tokens)"))
    # measured on varied-length chat data: no compute on pad tokens (24% of a pad-to-longest batch there)
    padding_free: bool = field(default=True, metadata=doc("Concatenate the batch without padding (same result, less memory, faster)"))
    lr_scheduler: str = field(default="cosine", metadata=doc("Learning rate after warmup", choices=(
        "cosine", "linear", "constant", "constant_with_warmup")))
    warmup_ratio: float = field(default=0.03, metadata=doc("Fraction of steps spent warming up the learning rate",
                                                           min=0, max=1, exclusive="max"))
    weight_decay: float = field(default=0.0, metadata=doc("AdamW weight decay", min=0))
    max_grad_norm: float = field(default=1.0, metadata=doc("Gradient clipping norm (0 = off)", min=0))
    optim: str = field(
        default="auto", metadata=doc("Optimizer", choices=("auto", "adamw_torch", "paged_adamw_32bit",
                                                           "paged_adamw_8bit", "adamw_8bit", "sgd"))
    )
    gradient_checkpointing: bool = field(
        default=True,
        metadata=doc("Recompute activations in backward: much less memory, ~30% slower (on CPU only when RAM needs it)"),
    )
    precision: str = field(default="auto", metadata=doc("Training precision", choices=("auto", "bf16", "fp16", "fp32")))
    seed: int = field(default=42, metadata=doc("Seed of initialisation and data order", min=0, max=SEED_MAX))
    logging_steps: int = field(default=1, metadata=doc("Steps between loss events", min=1))
    eval_steps: int = field(default=0, metadata=doc("Steps between evaluations; 0 = at the end only", min=0,
                                                    note="(0 = at the end)"))
    save_steps: int = field(default=20, metadata=doc("Steps between checkpoints: a crash loses at most this many",
                                                     min=1))
    save_total_limit: int = field(default=2, metadata=doc("Checkpoints kept (older ones are deleted)", min=1))
    report_to: str = field(
        default="none",
        metadata=doc("Experiment tracking: none, trackio (a local dashboard: `trackio show`), tensorboard, wandb, "
                     "mlflow, ... (comma separated); a tracker uses its own login, never a token from the config"),
    )
    project: str = field(default="finetune", metadata=doc("The tracker's project: runs of one project are compared"))
    init_adapter: str = field(
        default="",
        metadata=doc("Start from this LoRA adapter instead of a fresh one (a run, RUN@STEP, RUN@best, or an adapter "
                     "folder; same base model; its own LoRA settings are used): e.g. SFT first, then DPO or GRPO"),
    )
    # -- the method, and the fields of each method other than sft (finetune/methods.py) ----------------------
    method: str = field(
        default="sft",
        metadata=doc("Training method", choices={
            "sft": "imitate answers", "dpo": "prefer chosen over rejected answers",
            "orpo": "prefer chosen over rejected answers, no reference model", "kto": "learn from thumbs up/down",
            "grpo": "maximise rewards on sampled answers"}),
    )
    dpo_beta: float = field(
        default=0.1, metadata=doc("DPO: strength of the pull towards the base model (higher: stays closer to it)",
                                  min=0, exclusive="min", fix="0.1 is typical (0.01 to 0.5)", method="dpo"))
    orpo_lambda: float = field(
        default=0.1, metadata=doc("ORPO: weight of the preference (odds-ratio) term added to the SFT loss",
                                  min=0, exclusive="min", fix="0.1 is typical (0.05 to 1)", method="orpo"))
    kto_beta: float = field(
        default=0.1, metadata=doc("KTO: strength of the pull towards the base model (higher: stays closer to it)",
                                  min=0, exclusive="min", fix="0.1 is typical", method="kto"))
    kto_desirable_weight: float = field(
        default=1.0, metadata=doc("KTO: weight of thumbs-up rows (raise it when they are rarer than thumbs-down)",
                                  **_KTO_WEIGHT))
    kto_undesirable_weight: float = field(
        default=1.0, metadata=doc("KTO: weight of thumbs-down rows (raise it when they are rarer than thumbs-up)",
                                  **_KTO_WEIGHT))
    grpo_num_generations: int = field(
        default=4, metadata=doc("GRPO: answers sampled per prompt and compared with each other (group size)", min=2,
                                note="(answers are compared within a group)", method="grpo"))
    max_completion_length: int = field(
        default=64, metadata=doc("GRPO: most tokens generated per sampled answer: time grows linearly", min=1,
                                 max=32768, unit="tokens", method="grpo"))
    grpo_beta: float = field(
        default=0.0, metadata=doc("GRPO: KL penalty towards the base model (0: none, and no reference pass)", min=0,
                                  note="(0 = no KL penalty)", method="grpo"))
    grpo_temperature: float = field(
        default=1.0, metadata=doc("GRPO: sampling temperature of the answers (higher: more varied groups)", min=0,
                                  exclusive="min", fix="1.0 is typical", method="grpo"))


@dataclass
class HubSettings:
    repo_id: str = field(default="", metadata=doc("Hub repo to push the adapter to, e.g. you/my-adapter"))
    private: bool = field(default=True, metadata=doc("Create the Hub repo as private"))


@dataclass
class RewardSettings:
    """GRPO's reward: the weighted sum of the built-in checks whose weight is not 0 (finetune/rewards.py)."""

    exact_match: float = field(
        default=0.0, metadata=doc("Weight of: the answer equals the row's answer/reference (trimmed; 0 = off)"))
    numeric_match: float = field(
        default=0.0, metadata=doc("Weight of: the answer's last number equals the reference's number"))
    regex: str = field(default="", metadata=doc("A regular expression the whole answer should match"))
    regex_weight: float = field(default=0.0, metadata=doc("Weight of the regex match"))
    json_valid: float = field(default=0.0, metadata=doc("Weight of: the answer is valid JSON (and fits json_schema)"))
    json_schema: str = field(default="", metadata=doc("A JSON schema (as JSON text) the JSON answer must fit"))
    contains: list[str] = field(default_factory=list, metadata=doc("Keywords the answer should contain"))
    contains_weight: float = field(default=0.0, metadata=doc("Weight of: share of the keywords found"))
    excludes: list[str] = field(default_factory=list, metadata=doc("Keywords the answer must not contain"))
    excludes_weight: float = field(default=0.0, metadata=doc("Weight of: none of the excluded keywords appears"))
    length_target: int = field(default=0, metadata=doc("Target answer length in characters (0 = off)"))
    length_weight: float = field(default=0.0, metadata=doc("Weight of: closeness to the target length"))
    judge_model: str = field(
        default="", metadata=doc("A local reward model folder (sequence classification) that scores answers"))
    judge_weight: float = field(default=0.0, metadata=doc("Weight of the reward model's score"))
    module: str = field(
        default="", metadata=doc("Python file of reward functions: command line only (--reward-module), the app "
                                 "refuses it"))

    def weights(self) -> dict[str, float]:
        """The weight of each built-in check, by field name (every number of this section is one), in order."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.type in (float, "float")}


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    hub: HubSettings = field(default_factory=HubSettings)
    rewards: RewardSettings = field(default_factory=RewardSettings)
    name: str = field(default="", metadata=doc("A name for the run (shown in the run list)"))

    # -- YAML ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        text: str = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        return text

    def without_local_paths(self) -> "RunConfig":
        """A copy to publish (the run config pushed with an adapter): every absolute path of this machine (the data
        file, a model folder, the adapter a run continued from) reduced to its file name, which still says what it
        was; the machine's folders are left out."""
        data = self.to_dict()
        for section in data.values():
            if isinstance(section, dict):
                for key, value in section.items():
                    if isinstance(value, str) and Path(value).is_absolute():
                        section[key] = Path(value).name
        return RunConfig.from_dict(data)

    def save(self, path: str | Path) -> None:
        from .io import atomic_write_text

        atomic_write_text(Path(path), self.to_yaml())

    @classmethod
    def from_dict(cls, data: dict[Any, Any] | None, source: str | None = None) -> "RunConfig":
        """Build from a (possibly partial) nested dict; unknown keys and wrong types are all reported."""
        problems: list[str] = []
        cfg = _build(cls, data or {}, "", problems)
        if problems:
            raise ConfigError(problems, source)
        return cfg

    @classmethod
    def from_yaml(cls, text: str, source: str | None = None) -> "RunConfig":
        return cls.from_dict(_load_yaml(text, source), source)

    @classmethod
    def load(cls, path: str | Path) -> "RunConfig":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError([f"cannot read the file ({e.__class__.__name__}: {e}); check the path"], str(path))
        return cls.from_yaml(text, str(path))


def _load_yaml(text: str, source: str | None) -> dict[Any, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        reason = getattr(e, "problem", None) or str(e)
        raise ConfigError([f"{where}not valid YAML ({reason}); check indentation and quoting"], source)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, not {type(data).__name__}"], source)
    return data


def _type_name(tp: object) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp: object, name: str, problems: list[str]) -> Any:
    """Check/convert one leaf value against its annotation (int, float, bool, str, optional, list, dict)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        if value is None and type(None) in args:
            return None
        errors: list[str] = []
        for a in args:
            if a is type(None):
                continue
            trial: list[str] = []
            out = _coerce(value, a, name, trial)
            if not trial:
                return out
            errors += trial
        problems.append(errors[0] if errors else f"{name}: invalid value {_show(value)}")
        return None
    if origin is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
        problems.append(f"{name}: expected a list of names, got {_show(value)}")
        return None
    if origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            return dict(value)
        problems.append(f"{name}: expected a mapping of names to names, got {_show(value)}")
        return None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        problems.append(f"{name}: expected true or false, got {_show(value)}")
        return None
    if tp is int:
        if isinstance(value, bool):
            problems.append(f"{name}: expected a whole number, got {_show(value)}")
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        problems.append(f"{name}: expected a whole number, got {_show(value)}")
        return None
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        problems.append(f"{name}: expected a number, got {_show(value)}")
        return None
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        problems.append(f"{name}: expected text, got {_show(value)}")
        return None
    problems.append(f"{name}: unsupported type {_type_name(tp)}")
    return None


# Names other tools use for our fields: suggested when a config uses them.
ALIASES = {
    "rank": "r", "lora_r": "r", "lora_alpha": "alpha", "lora_dropout": "dropout", "target": "target_modules",
    "lr": "learning_rate", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
    "gradient_accumulation_steps": "grad_accum", "max_seq_length": "max_length", "max_seq_len": "max_length",
    "lr_scheduler_type": "lr_scheduler", "model_id": "id", "model_name": "id", "dataset": "source",
    "bnb_4bit_quant_type": "quant_type", "bnb_4bit_use_double_quant": "double_quant",
}


_D = TypeVar("_D", bound="DataclassInstance")


def _build(cls: type[_D], data: Any, prefix: str, problems: list[str]) -> _D:
    if not isinstance(data, dict):
        problems.append(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {_show(data)}")
        return cls()
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if not isinstance(key, str):
            problems.append(f"{prefix}{_show(key)}: a key must be a name, e.g. {prefix or 'training.'}max_steps")
            continue
        name = f"{prefix}{key}"
        if key not in fields:
            close = [ALIASES[key]] if ALIASES.get(key) in fields else difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; known: {', '.join(fields)}"
            problems.append(f"{name}: unknown key{hint}")
            continue
        tp = hints[key]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # a section (hints of fields are classes)
            kwargs[key] = _build(tp, value if value is not None else {}, f"{name}.", problems)
        else:
            before = len(problems)
            out = _coerce(value, tp, name, problems)
            if len(problems) == before:
                kwargs[key] = out
    return cls(**kwargs)


def apply_overrides(cfg: RunConfig, overrides: list[str] | dict[str, Any]) -> RunConfig:
    """Return a copy with dotted ``section.key=value`` overrides applied (values parsed as YAML scalars).

    All malformed or unknown overrides are reported together.
    """
    data = cfg.to_dict()
    problems: list[str] = []
    items = overrides.items() if isinstance(overrides, dict) else [_split_override(o, problems) for o in overrides]
    for key, value in items:
        if key is None:
            continue
        parts = key.split(".")
        node = data
        for p in parts[:-1]:
            child = node.get(p)
            if not isinstance(child, dict):
                problems.append(f"{key}: unknown section '{parts[0]}'; use section.key, e.g. lora.r=64")
                break
            node = child
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems, "--set")
    return RunConfig.from_dict(data, "--set")


# The trackers trl's trainer reports to (transformers 5.23 integrations), by their report_to names.
REPORTERS = ("none", "trackio", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "dagshub", "dvclive",
             "neptune", "swanlab", "codecarbon", "azure_ml", "flyte", "kubeflow")


def reporters(value: str) -> list[str]:
    """The trackers of ``training.report_to`` (empty for none)."""
    return [r for r in (x.strip() for x in value.split(",")) if r and r != "none"]


def merge_yaml(base: RunConfig, text: str, source: str | None = None) -> RunConfig:
    """``base`` with a (possibly partial) YAML config laid over it: keys the YAML leaves out keep ``base``'s
    values (not the defaults). Unknown keys and wrong types are all reported, naming ``source``.

    >>> merge_yaml(RunConfig.from_dict({"lora": {"r": 8}}), "training:\n  max_steps: 5").lora.r
    8
    """
    data = base.to_dict()

    def lay(node: dict[str, Any], over: dict[Any, Any]) -> None:
        for key, value in over.items():
            if isinstance(node.get(key), dict) and (value is None or isinstance(value, dict)):
                lay(node[key], value or {})  # a section: merged key by key (an empty one changes nothing)
            else:
                node[key] = value

    lay(data, _load_yaml(text, source))
    return RunConfig.from_dict(data, source)


def changed_fields(before: RunConfig, after: RunConfig) -> list[tuple[str, Any, Any]]:
    """``(section.key, before, after)`` for every field that differs."""
    out: list[tuple[str, Any, Any]] = []
    a, b = before.to_dict(), after.to_dict()
    for section, fields in b.items():
        if not isinstance(fields, dict):  # a top-level field (name)
            if a[section] != fields:
                out.append((section, a[section], fields))
            continue
        for key, value in fields.items():
            if a[section][key] != value:
                out.append((f"{section}.{key}", a[section][key], value))
    return out


def _split_override(text: str, problems: list[str]) -> tuple[str | None, Any]:
    if "=" not in text:
        problems.append(f"{text}: expected key=value, e.g. training.max_steps=100")
        return None, None
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def rule(key: str) -> Mapping[str, Any]:
    """The declared rule of field ``section.name``: its help, choices and range (see ``doc``)."""
    section, _, name = key.partition(".")
    cls = typing.get_type_hints(RunConfig).get(section)
    if isinstance(cls, type) and dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == name:
                return f.metadata
    raise KeyError(key)


def rules() -> Iterator[tuple[str, Mapping[str, Any]]]:
    """``(section.name, rule)`` of every field of every section, in the config's order."""
    for section, cls in typing.get_type_hints(RunConfig).items():
        if isinstance(cls, type) and dataclasses.is_dataclass(cls):
            for f in dataclasses.fields(cls):
                yield f"{section}.{f.name}", f.metadata


def choices(key: str) -> tuple[str, ...]:
    """The values field ``key`` allows (empty: any)."""
    return tuple(rule(key).get("choices", ()))


def field_help(section: str, name: str) -> str:
    """The one-line help of a config field, its choices included (for UI hints and CLI --help).

    >>> field_help("lora", "bias")
    'Train biases too: none, all or lora_only'
    """
    meta = rule(f"{section}.{name}")
    text: str = meta.get("help", "")
    allowed = meta.get("choices", ())
    if not allowed:
        return text
    glossed = allowed.items() if isinstance(allowed, Mapping) else ((value, "") for value in allowed)
    items = [f"{value} ({gloss})" if gloss else value for value, gloss in glossed]
    return f"{text}: {', '.join(items[:-1])} or {items[-1]}" if len(items) > 1 else f"{text}: {items[0]}"


def _number(value: float, thousands: bool = False) -> str:
    if float(value).is_integer():
        return f"{int(value):,}" if thousands and value >= 10_000 else str(int(value))
    return str(value)


def range_problem(key: str, value: float) -> str | None:
    """What is wrong with ``value`` for field ``key`` by its declared range and ceiling, naming field and fix;
    None when it is within them.

    >>> range_problem("data.val_fraction", 0.9)
    'data.val_fraction must be between 0 and 0.5, got 0.9'
    """
    if not math.isfinite(value):
        return f"{key} must be a finite number, got {value}"
    meta = rule(key)
    lo: float | None = meta.get("min")
    hi: float | None = meta.get("max")
    top: float | None = meta.get("ceiling")
    opened: str = meta.get("exclusive", "")
    lo_open, hi_open = opened in ("min", "both"), opened in ("max", "both")
    unit = f" {meta['unit']}" if "unit" in meta else ""
    fix = f"; {meta['fix']}" if "fix" in meta else ""
    below = lo is not None and (value <= lo if lo_open else value < lo)
    over = hi is not None and (value >= hi if hi_open else value > hi)
    if lo is not None and hi is not None and (below or over):
        if opened:
            span = f"in {'(' if lo_open else '['}{_number(lo)}, {_number(hi)}{')' if hi_open else ']'}"
        else:
            span = f"between {_number(lo)} and {_number(hi)}"
        return f"{key} must be {span}{unit}, got {value}{fix}"
    if lo is not None and below:
        note = f" {meta['note']}" if "note" in meta else ""
        return f"{key} must be {'>' if lo_open else '>='} {_number(lo)}{unit}{note}, got {value}{fix}"
    if hi is not None and over:
        return f"{key} must be {'<' if hi_open else '<='} {_number(hi)}{unit}, got {value}{fix}"
    if top is not None and (value >= top if hi_open else value > top):
        limit = f"less than {_number(top, True)}" if hi_open else f"at most {_number(top, True)}"
        note = f" {meta['ceiling_note']}" if "ceiling_note" in meta else ""
        return f"{key} {value} is {meta.get('too_high', 'out of range')}; use {limit}{unit}{note}{fix}"
    return None


# ---------------------------------------------------------------------------------------------
# validation


def problems(cfg: RunConfig, model_max_length: int | None = None) -> list[str]:
    """Every problem in the config, each naming the field and the fix. Empty when valid.

    Each field's declared rule (``doc``: choices, range, ceiling) is checked here for every field; the checks
    below it are those that span fields."""
    out: list[str] = []
    t, lo, d = cfg.training, cfg.lora, cfg.data

    nonfinite: set[str] = set()  # reported once as such, not again by the checks below

    def need(cond: bool, msg: str) -> None:
        if not cond and msg.split(" ", 1)[0] not in nonfinite:
            out.append(msg)

    for key, meta in rules():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if isinstance(value, float) and not math.isfinite(value):
            out.append(f"{key} must be a finite number, got {value}")
            nonfinite.add(key)
        elif meta.get("method", t.method) != t.method:
            continue  # another method's field: not used by this run
        elif "choices" in meta:
            need(value in meta["choices"],
                 f"{key} '{value}' {meta.get('unknown', 'is not one of')}: {', '.join(choices(key))}")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            problem = range_problem(key, value)
            if problem:
                out.append(problem)
    need(not (d.test_split > 0 and d.test_source.strip()), "data.test_split and data.test_source both name a test "
         "set; keep one (test_split holds out training rows, test_source is a separate file)")
    need(d.test_split == 0 or t.method == "sft", f"data.test_split holds out rows of sft data; for "
         f"training.method {t.method} give a data.test_source file of prompts and references instead")
    if isinstance(lo.target_modules, list):
        need(bool(lo.target_modules), "lora.target_modules is empty; use all-linear or names such as [q_proj, v_proj]")
    else:
        need(bool(lo.target_modules.strip()), "lora.target_modules is empty; use all-linear")
    need(t.epochs > 0 or t.max_steps > 0, "training.epochs must be > 0 (or set training.max_steps)")
    unknown = [r for r in reporters(t.report_to) if r not in REPORTERS]
    need(not unknown, f"training.report_to: unknown tracker {', '.join(map(repr, unknown))}; use none or one of "
         f"{', '.join(REPORTERS[1:])} (comma separated)")
    if model_max_length:
        need(
            t.max_length <= model_max_length,
            f"training.max_length {t.max_length} exceeds the model's {model_max_length}; lower it to {model_max_length}",
        )
    if cfg.quantization.load_in == "4bit" and t.precision == "fp16" and cfg.quantization.compute_dtype == "bfloat16":
        out.append("quantization.compute_dtype bfloat16 conflicts with training.precision fp16; use float16 or auto")
    if cfg.hub.repo_id:
        parts = cfg.hub.repo_id.split("/")
        need(
            len(parts) == 2 and all(parts),
            f"hub.repo_id '{cfg.hub.repo_id}' must look like user/name",
        )
    out += method_problems(cfg)
    need("/" not in cfg.name and "\\" not in cfg.name and ".." not in cfg.name,
         f"name '{cfg.name}' must not contain '/', '\\' or '..'")
    return out


def method_problems(cfg: RunConfig) -> list[str]:
    """The problems of ``training.method``'s own settings and the rewards that span fields (each field's declared
    range is ``problems``'); only the chosen method's are checked."""
    import json
    import re

    t, rw = cfg.training, cfg.rewards
    out: list[str] = []
    method = t.method
    if method != "sft" and t.packing:
        out.append(f"training.packing works with method sft only; set it to false for {method}")
    if method == "kto" and t.batch_size < 2:
        out.append(f"training.batch_size must be >= 2 for kto (its KL term pairs rows of a batch), got {t.batch_size}")
    if method == "grpo":
        g = t.grpo_num_generations
        if g >= 2 and (t.batch_size * t.grad_accum) % g:
            out.append(f"training.batch_size x grad_accum ({t.batch_size} x {t.grad_accum}) must be a multiple of "
                       f"training.grpo_num_generations ({g}); e.g. set training.batch_size to {g * max(1, t.batch_size // g)}")
        if not any(rw.weights().values()) and not rw.module:
            out.append("rewards: grpo needs at least one reward; give one a weight, e.g. rewards.exact_match=1")
    if rw.regex_weight and not rw.regex:
        out.append("rewards.regex is empty but rewards.regex_weight is set; give the pattern, e.g. ^\\d+$")
    if rw.regex:
        try:
            re.compile(rw.regex)
        except re.error as e:
            out.append(f"rewards.regex is not a valid regular expression ({e}); fix the pattern")
    if rw.json_schema:
        try:
            schema = json.loads(rw.json_schema)
        except ValueError as e:
            out.append(f"rewards.json_schema is not valid JSON ({e}); write the schema as JSON text")
        else:
            from .rewards import schema_problem

            why = schema_problem(schema)
            if why is not None:
                out.append(f"rewards.json_schema {why}; e.g. {{\"type\": \"object\", \"required\": [\"answer\"]}}")
    if rw.contains_weight and not rw.contains:
        out.append("rewards.contains is empty but rewards.contains_weight is set; list the keywords")
    if rw.excludes_weight and not rw.excludes:
        out.append("rewards.excludes is empty but rewards.excludes_weight is set; list the keywords")
    if rw.length_weight and rw.length_target <= 0:
        out.append(f"rewards.length_target must be > 0 characters when rewards.length_weight is set, got {rw.length_target}")
    if rw.judge_weight and not rw.judge_model:
        out.append("rewards.judge_model is empty but rewards.judge_weight is set; give a local reward model folder")
    return out




def config_warnings(cfg: RunConfig) -> list[str]:
    """Settings that are allowed but risky, each saying what it does and how to turn it off."""
    out = []
    if cfg.model.trust_remote_code:
        out.append("model.trust_remote_code is on: Python code from the model repo will run on this machine with "
                   "your permissions; turn it off unless you have read and trust that code")
    return out


def validate(cfg: RunConfig, model_max_length: int | None = None, source: str | None = None) -> RunConfig:
    """Raise one ConfigError listing every problem; return the config unchanged when it is valid.

    Risky but valid settings (``config_warnings``) are issued as ``ConfigWarning``.
    """
    found = problems(cfg, model_max_length)
    if found:
        raise ConfigError(found, source)
    for text in config_warnings(cfg):
        warnings.warn(text, ConfigWarning, stacklevel=2)
    return cfg
