"""The run config's fields: one dataclass per section, each field with its one rule (help, choices, range) declared
once by ``doc``, and ``RunConfig``, the whole config with its YAML round-trip.

>>> RunConfig.from_yaml(RunConfig().to_yaml()) == RunConfig()
True
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..templates import TEMPLATE_NAMES
from .reading import ConfigError, _build, _load_yaml


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


SAMPLE_DATA = Path(__file__).parent.parent / "samples" / "city_year.jsonl"  # the data of a run whose data.source is empty
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
        default=0, metadata=doc("Longest answer, in tokens, when the run scores its test set (greedy; a reference "
                                "longer than this cannot match); 0 = sized from the references (the longest one's "
                                "tokens plus a quarter)", min=0, max=4096, note="(0 = from the references)")
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
    # -- several GPUs: how one run is laid out over its processes (finetune/launch_plan.py) ------------------
    distributed: str = field(
        default="auto",
        metadata=doc("How the run uses several GPUs (the command line starts accelerate with a generated config)",
                     choices={
                         "auto": "one GPU when there is one; data parallel when the model fits one GPU, else sharded",
                         "none": "one process",
                         "ddp": "data parallel: every GPU holds the whole model and trains its share of each batch "
                                "(faster, fits no bigger model)",
                         "fsdp": "sharded (FSDP): each GPU holds 1/N of the base model's weights, so a model no "
                                 "single GPU holds trains (a 70B base on 2x 80 GB)"}),
    )
    num_processes: int = field(
        default=0, metadata=doc("Training processes, one per GPU (0 = every visible GPU); the batch size is per "
                                "process, so the global batch is batch x accumulation x processes",
                                min=0, ceiling=1024, note="(0 = every visible GPU)"))
    fsdp_offload: bool = field(
        default=False, metadata=doc("Sharded runs: keep the weight shards in CPU RAM between uses (less GPU memory: "
                                    "a 70B QLoRA on 2 GPUs needs about 20 GB each instead of 36; several times "
                                    "slower)"))
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
    dpo_sft_weight: float = field(
        default=1.0, metadata=doc("DPO: weight of an SFT term on the chosen answers (their mean token loss) added to "
                                  "the preference loss: it keeps the chosen answers likely so the model cannot win the "
                                  "preference by making every answer unlikely (0: plain DPO)",
                                  min=0, fix="1.0 keeps the answers; 0 is plain DPO", method="dpo"))
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
    grpo_vllm: bool = field(
        default=False, metadata=doc("GRPO: sample the answers with vLLM on the training GPU (trl's colocate mode; needs "
                                    "a CUDA GPU and the vllm package; off: transformers' generate with its KV cache)",
                                    method="grpo"))

    def steps_for(self, examples: int, processes: int = 1) -> int:
        """The optimizer steps of a run over ``examples`` training examples: ``max_steps`` when set, else the
        epochs' (``processes`` data-parallel processes each take a share of every batch).

        >>> TrainingConfig(batch_size=4, grad_accum=2, epochs=1.5).steps_for(100)
        20
        """
        if self.max_steps > 0:
            return self.max_steps
        per_epoch = math.ceil(math.ceil(examples / (self.batch_size * processes)) / self.grad_accum)
        return max(1, math.ceil(per_epoch * self.epochs))


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
        from ..io import atomic_write_text

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



# The trackers trl's trainer reports to (transformers 5.23 integrations), by their report_to names; the form offers
# the first five (any other can be typed).
REPORTERS = ("none", "trackio", "tensorboard", "wandb", "mlflow", "comet_ml", "clearml", "dagshub", "dvclive",
             "neptune", "swanlab", "codecarbon", "azure_ml", "flyte", "kubeflow")


def reporters(value: str) -> list[str]:
    """The trackers of ``training.report_to`` (empty for none)."""
    return [r for r in (x.strip() for x in value.split(",")) if r and r != "none"]

