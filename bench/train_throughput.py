"""Training speed and memory: our pipeline vs the classic Llama-2 QLoRA notebook recipe, same run.

    .venv/bin/python bench/train_throughput.py --quick            # CPU, under 5 minutes
    .venv/bin/python bench/train_throughput.py --quick --json     # one JSON object
    .venv/bin/python bench/train_throughput.py --variants --quick # one optimization at a time (ours)
    .venv/bin/python bench/train_throughput.py --quick --repeat 3 --readme  # the README table
    .venv/bin/python bench/train_throughput.py --scaling          # bench/train_scaling_<device>.csv + .png
    .venv/bin/python bench/train_throughput.py --model llama-7b   # CUDA: 7B-class Llama, random weights

Baseline: the recipe of the classic "fine-tune Llama 2 in a notebook" tutorial, written below as the
plain script it is (``baseline_recipe``): trl ``SFTTrainer`` on a pre-formatted ``text`` column, loss on
every token, no packing, pad to the longest in the batch with ``group_by_length``, QLoRA NF4 (no double
quant) r=64 alpha=16 dropout=0.1 on the peft default modules, paged AdamW 32-bit, batch 4, bf16 (fp16 on
GPUs without bf16), gradient checkpointing as trl defaults (on), constant LR 2e-4, grad-norm 0.3.

Ours: ``finetune.train.train(config)`` with the RunConfig defaults plus ``OURS`` (the optimizations this
benchmark measured as winners; once they are the defaults, ``OURS`` changes nothing).

Equal work: both sides train exactly one epoch over the same examples (same rendered text, same
truncation to ``max_length``), so both process the same real tokens = the sum over the training
examples of min(length, max_length), prompt tokens included. Each worker counts the real tokens of every
batch it trains on (attention-mask ones; all tokens of a padding-free row) and the parent checks both
counts equal that sum. tokens/s = real tokens / wall time of the training loop (``on_train_begin`` to
``on_train_end``: forward, backward, optimizer, data collation; no model loading, no evaluation).

Each side runs in its own subprocess so peak memory does not mix: peak RSS on CPU (the kernel's
high-water mark, reset when training starts, so it is the training peak with the loaded model counted),
``torch.cuda.max_memory_reserved`` on CUDA (also reset when training starts). Quality: after training,
each side's model scores the same held-out examples: mean NLL per assistant token (the answers) and
per token (everything), so "same quality" is checked on one metric for both.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import OUT, RESULT_TAG, ROOT, device_name, length_summary, ratio, resolve_device, run_worker, sync  # noqa: E402

SCALING_DIR = ROOT / "bench"  # the scaling CSV and PNG are results: kept in the repository

# Overrides "ours" runs with on top of the RunConfig defaults. Empty: the measured winners ARE the defaults
# (finetune/config/fields.py, and the device-dependent choices in finetune/train.py; see bench/README-train.md).
OURS: dict[str, dict[str, object]] = {"cpu": {}, "cuda": {}}

# The RunConfig defaults before this benchmark (for --variants: what the optimizations replaced).
PREVIOUS_DEFAULTS = {"training.precision": "fp32", "training.gradient_checkpointing": True,
                     "training.padding_free": False, "lora.dropout": 0.05, "training.optim": "adamw_torch"}
# Every finetune.settings.SpeedOptions choice off (for --variants' "previous defaults" row).
SPEED_OFF = {"trained_positions_loss": False, "bf16_weights_on_cpu": False, "checkpoint_only_when_needed_on_cpu": False,
             "per_sequence_attention_on_cpu": False, "varlen_attention_on_cuda": False,
             "liger_kernels_on_cuda": False, "chunked_loss_on_cuda": False}

# 7B-class Llama shape (Llama-2-7B) for random-weight speed/memory runs on CUDA; vocab = the tokenizer's.
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5)
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=4096)

WORDS = """time year people way day man thing woman life child world school state family student group
country problem hand part place case week company system program question work government number night
point home water room mother area money story fact month lot right study book eye job word business issue
side kind head house service friend father power hour game line end member law car city community name
president team minute idea kid body information back parent face others level office door health person
art war history party result change morning reason research girl guy moment air teacher force education
foot boy age policy music market sense nation plan college interest death experience effect class control
care field development role effort rate heart drug show leader light voice wife police mind price report
decision son view relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center couple site project
activity star table need court oil situation cost industry figure street image phone data picture practice
piece land product doctor wall patient worker news test movie north love support technology step baby
computer type attention film tree source organization hair window evidence population river garden
bridge island forest mountain valley ocean desert lake summer winter spring autumn coffee bread apple
orange silver golden purple yellow green blue red quiet rapid gentle bright""".split()


# ---------------------------------------------------------------------------------------------
# data: chat-like conversations with a long-tailed token length


TASKS = (
    ("Reverse the order of these words:", lambda w: list(reversed(w))),
    ("Sort these words alphabetically:", sorted),
    ("Repeat every word twice:", lambda w: [x for y in w for x in (y, y)]),
    ("Write these words in upper case:", lambda w: [x.upper() for x in w]),
)


def _turn(rng: random.Random, n_words: int) -> tuple[str, str]:
    instruction, fn = TASKS[rng.randrange(len(TASKS))]
    words = [rng.choice(WORDS) for _ in range(max(1, n_words))]
    return f"{instruction} {' '.join(words)}", " ".join(fn(words))


def generate_conversations(n: int, lo: int, hi: int, median: int, seed: int) -> list[dict]:
    """``n`` conversations whose rendered length (tokens, ChatML, SmolLM2 tokenizer) follows a log-normal
    clipped to [lo, hi]: most are short, a long tail reaches ``hi``, like chat data (ShareGPT/UltraChat
    have a median of a few hundred tokens and a tail past 2,000). Every assistant answer is a
    deterministic function of its prompt (reverse, sort, repeat, upper-case a word list), so the loss on
    held-out answers measures learning, not memorisation."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        target = min(hi, max(lo, int(rng.lognormvariate(math.log(median), 0.85))))
        turns = 1 + (target > 250 and rng.random() < 0.5) + (target > 800 and rng.random() < 0.5)
        budget = target / turns - 14  # ChatML markup per turn
        msgs = []
        for _ in range(turns):
            # a word is ~1.1 tokens; prompt + answer hold the list ~2.3 times (repeat-twice makes 3)
            user, assistant = _turn(rng, int(budget / 2.6))
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
        rows.append({"messages": msgs})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def render(path: Path, tokenizer, max_length: int, train_on: str = "assistant"):
    """The rows as our pipeline renders them (ChatML) + token ids and labels, truncated to max_length."""
    from finetune.config import DataConfig
    from finetune.data import format_dataset
    from finetune.train import tokenize_examples

    res = format_dataset(str(path), DataConfig(template="chatml", train_on=train_on), tokenizer=tokenizer)
    tok = tokenize_examples(res.examples, tokenizer, max_length)
    return res.examples, tok


# ---------------------------------------------------------------------------------------------
# models


def materialize(model: str, device: str, out_dir: Path = OUT) -> Path:
    """A local model folder for ``--model``: a folder as is; '' = the embedded SmolLM2-135M-Instruct;
    'tiny', 'llama-7b' or a config .json = a random-weight Llama with the SmolLM2 tokenizer, saved once
    under ``out_dir``/models/ (bench/out/models/; loading from a folder is what both sides do)."""
    from finetune.models import embedded_model_dir

    if not model:
        return embedded_model_dir()
    path = Path(model)
    if path.is_dir():
        return path.resolve()
    if model in ("tiny", "llama-7b"):
        shape, name = (TINY if model == "tiny" else LLAMA_7B), model
    elif path.suffix == ".json" and path.is_file():
        shape, name = json.loads(path.read_text()), "cfg-" + path.stem
    else:
        raise SystemExit(f"--model {model}: not a folder, a config .json, 'tiny' or 'llama-7b'")
    out = out_dir / "models" / name
    if (out / ".complete").exists():
        return out
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    cfg = LlamaConfig(**{**dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id, tie_word_embeddings=False), **shape})
    torch.manual_seed(0)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(f"building random-weight {name} ({device}, {dtype}) into {out} ...", file=sys.stderr)
    with torch.device(device):
        net = LlamaForCausalLM(cfg).to(dtype)
    net.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    (out / ".complete").write_text("ok")
    del net
    return out


# ---------------------------------------------------------------------------------------------
# the worker (one side, one subprocess)


class Probe:
    """Times the training loop, counts the real tokens of every batch, reads peak memory, keeps the losses."""

    original_step = None  # trl's training_step before the last install()

    def __init__(self, device: str):
        self.device = device
        self.real = self.slots = self.trained = 0
        self.steps = 0
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.model = None
        self.t0 = self.t1 = 0.0
        self.cpu0 = self.cpu1 = None
        self.peak_mb = None
        self.start_mb = None
        self.device_peak_mb = None  # CUDA: the whole device's used memory (paged optimizer states, CUDA context)
        self._poll = None
        self.args: dict = {}

    def install(self):
        """Count tokens where the trainer receives each batch (padding-free rows carry no padding)."""
        import trl

        probe, original = self, trl.SFTTrainer.training_step
        Probe.original_step = original

        def training_step(trainer, model, inputs, *args, **kwargs):
            ids = inputs["input_ids"]
            mask = inputs.get("attention_mask")
            probe.real += int(mask.sum()) if mask is not None else ids.numel()
            probe.slots += ids.numel()
            probe.trained += int((inputs["labels"][:, 1:] != -100).sum())
            return original(trainer, model, inputs, *args, **kwargs)

        trl.SFTTrainer.training_step = training_step

    def callback(self):
        from transformers import TrainerCallback

        probe = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                probe.args = {"optim": str(getattr(args.optim, "value", args.optim)), "bf16": args.bf16,
                              "fp16": args.fp16, "gradient_checkpointing": args.gradient_checkpointing,
                              "padding_free": getattr(args, "padding_free", None),
                              "packing": getattr(args, "packing", None)}
                probe.start_mb = _memory_now(probe.device)
                _reset_peak(probe.device)
                if probe.device == "cuda":
                    probe._poll = DevicePoll()
                probe.cpu0 = os.times()
                probe.t0 = time.perf_counter()

            def on_step_begin(self, args, state, control, **kw):
                self._s = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                sync(probe.device)
                probe.step_times.append(time.perf_counter() - self._s)
                probe.steps += 1

            def on_log(self, args, state, control, logs=None, **kw):
                if logs and "loss" in logs:
                    probe.losses.append(float(logs["loss"]))

            def on_train_end(self, args, state, control, model=None, **kw):
                sync(probe.device)
                probe.t1 = time.perf_counter()
                probe.cpu1 = os.times()
                probe.peak_mb = _peak(probe.device)
                if probe._poll is not None:
                    probe.device_peak_mb = probe._poll.stop()
                probe.model = model

        return _Cb()

    def result(self) -> dict:
        wall = self.t1 - self.t0
        cpu = (self.cpu1.user + self.cpu1.system) - (self.cpu0.user + self.cpu0.system)
        tail = self.losses[-max(1, len(self.losses) // 4):] if self.losses else []
        steady = self.step_times[1:] or self.step_times
        return {
            "steps": self.steps,
            "real_tokens": self.real,
            "padded_slots": self.slots,
            "trained_tokens": self.trained,
            "padding_fraction": round(1 - self.real / self.slots, 4) if self.slots else None,
            "train_wall_s": round(wall, 2),
            "train_cpu_s": round(cpu, 2),
            "tokens_per_s": round(self.real / wall, 2) if wall else None,
            "tokens_per_cpu_s": round(self.real / cpu, 2) if cpu else None,
            "s_per_step": round(wall / self.steps, 3) if self.steps else None,
            "median_step_s": round(statistics.median(steady), 3) if steady else None,
            "peak_memory_mb": round(self.peak_mb, 1) if self.peak_mb is not None else None,
            "memory_at_start_mb": round(self.start_mb, 1) if self.start_mb is not None else None,
            "peak_device_used_mb": round(self.device_peak_mb, 1) if self.device_peak_mb is not None else None,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if tail else None,
            "loadavg": [round(x, 2) for x in os.getloadavg()],
        }


class DevicePoll:
    """The peak of the GPU's used memory (total - free, as nvidia-smi shows it), sampled every 20 ms in a thread:
    it includes what torch's allocator does not count (CUDA context, bitsandbytes' paged optimizer states)."""

    def __init__(self, every_s: float = 0.02):
        import threading

        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def _run(self, every_s: float) -> None:
        import torch

        while not self._stop.is_set():
            free, total = torch.cuda.mem_get_info()
            self.peak = max(self.peak, total - free)
            self._stop.wait(every_s)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def _memory_now(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.memory_reserved() / 2**20
    return _proc_status("VmRSS")


def _reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()
        return
    try:  # Linux: writing 5 resets the high-water mark VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak(device: str) -> float:
    if device == "cuda":
        import torch

        return torch.cuda.max_memory_reserved() / 2**20
    return _proc_status("VmHWM")


def _proc_status(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def eval_losses(model, input_ids: list[list[int]], labels: list[list[int]], device: str) -> dict:
    """Mean next-token NLL on the held-out examples, one at a time (no padding): over assistant tokens
    (labels != -100, what a chat fine-tune is for) and over all tokens. Same code for both sides."""
    import torch
    import torch.nn.functional as F

    model.eval()
    sums = {"assistant": [0.0, 0], "all": [0.0, 0]}
    with torch.no_grad():
        for ids, lab in zip(input_ids, labels):
            x = torch.tensor([ids], device=device)
            logits = model(input_ids=x, use_cache=False).logits[0, :-1].float()
            nll = F.cross_entropy(logits, x[0, 1:], reduction="none")
            keep = torch.tensor(lab[1:], device=device) != -100
            sums["assistant"][0] += float(nll[keep].sum())
            sums["assistant"][1] += int(keep.sum())
            sums["all"][0] += float(nll.sum())
            sums["all"][1] += nll.numel()
    return {f"eval_loss_{k}": round(s / max(n, 1), 4) for k, (s, n) in sums.items()}


def baseline_recipe(spec: dict, probe: Probe):
    """The classic Llama-2 QLoRA notebook (2023), as users still run it, on trl 1.16.

    Differences forced by today's stack, none of them a speed choice: ``max_seq_length`` is now
    ``max_length``; ``group_by_length=True`` is now ``train_sampling_strategy="group_by_length"``;
    ``warmup_ratio`` is ``warmup_steps`` < 1; ``torch_dtype`` is ``dtype``. On a CPU without paged
    memory the optimizer falls back to adamw_torch, reported in the output.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    device = spec["device"]
    model_dir = spec["model_dir"]
    bf16 = device == "cpu" or torch.cuda.is_bf16_supported()
    compute_dtype = torch.bfloat16 if bf16 else torch.float16

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    tokenizer.padding_side = "right"
    dataset = Dataset.from_dict({"text": spec["texts"]})  # the pre-formatted `text` column

    bnb_config = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_use_double_quant=False,
    )
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=bnb_config, device_map={"": 0} if device == "cuda" else {"": "cpu"},
        attn_implementation=spec.get("attn", "sdpa"),
    )
    model.config.use_cache = False
    model.config.pretraining_tp = 1

    peft_config = LoraConfig(lora_alpha=16, lora_dropout=0.1, r=spec.get("lora_r", 64), bias="none",
                             task_type="CAUSAL_LM")
    optim = spec.get("optim", "paged_adamw_32bit")
    args = SFTConfig(
        output_dir=spec["work_dir"],
        num_train_epochs=1,
        max_steps=spec.get("max_steps", -1),
        per_device_train_batch_size=spec["batch_size"],
        gradient_accumulation_steps=1,
        optim=optim,
        save_strategy="no",
        logging_steps=1,  # the notebook logs every 25 steps; every step here, to read the final loss
        learning_rate=2e-4,
        weight_decay=0.001,
        fp16=not bf16,
        bf16=bf16,
        max_grad_norm=0.3,
        warmup_steps=0.03,
        train_sampling_strategy="group_by_length",
        lr_scheduler_type="constant",
        report_to="none",
        disable_tqdm=True,
        max_length=spec["max_length"],
        packing=False,
        dataset_text_field="text",
        use_cpu=device == "cpu",
        seed=spec["seed"],
    )
    trainer = SFTTrainer(model=model, train_dataset=dataset, peft_config=peft_config, processing_class=tokenizer,
                         args=args, callbacks=[probe.callback()])
    trainer.train()
    return {"optim": optim, "lora_r": peft_config.r, "lora_targets": sorted(trainer.model.peft_config["default"].target_modules),
            "precision": "bf16" if bf16 else "fp16", "gradient_checkpointing": args.gradient_checkpointing}


def ours_config(spec: dict):
    """The RunConfig "ours" trains: the defaults, the bench's data, length, batch and steps, then the overrides."""
    from finetune.config import RunConfig, apply_overrides

    cfg = RunConfig()
    cfg.name = "bench"
    cfg.model.id = spec["model_dir"]
    cfg.data.source = spec["train_file"]
    cfg.data.template = "chatml"
    cfg.training.max_length = spec["max_length"]
    cfg.training.batch_size = spec["batch_size"]
    cfg.training.epochs = 1
    cfg.training.max_steps = max(0, spec.get("max_steps", 0))
    cfg.training.save_steps = 10**9  # a benchmark keeps no checkpoints (the notebook saves none either)
    cfg.training.seed = spec["seed"]
    return apply_overrides(cfg, spec.get("overrides", {}))


def ours_pipeline(spec: dict, probe: Probe):
    """Our pipeline, unchanged: ``finetune.train.train(config)``."""
    import dataclasses

    from finetune.settings import SpeedOptions
    from finetune.train import train

    speed = SpeedOptions(**(spec.get("speed") or {}))  # implementation choices under test (--variants)
    cfg = ours_config(spec)
    result = train(cfg, run_dir=Path(spec["work_dir"]) / "run", callbacks=[probe.callback()], speed=speed)
    t = cfg.training
    return {"optim": t.optim, "lora_r": cfg.lora.r, "lora_targets": cfg.lora.target_modules,
            "precision": t.precision, "gradient_checkpointing": t.gradient_checkpointing,
            "padding_free": t.padding_free, "packing": t.packing, "train_on": cfg.data.train_on,
            "overrides": spec.get("overrides", {}), "speed": dataclasses.asdict(speed), "status": result.status,
            "checkpointing_skipped": any(e.get("type") == "note" and "checkpointing" in e.get("message", "")
                                         for e in _events(result.run_dir))}


def _events(run_dir: Path) -> list[dict]:
    from finetune.events import read_events

    return read_events(run_dir)


def worker(spec_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    spec = json.loads(Path(spec_path).read_text())
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    print(RESULT_TAG + json.dumps(run_spec(spec)), flush=True)
    return 0


def run_spec(spec: dict) -> dict:
    """One side in this process: train, measure, evaluate (the worker's body; bench/gpu_check.py --dry-run calls
    it directly). trl's training_step is restored afterwards, so sides can follow each other in one process."""
    import trl

    original = trl.SFTTrainer.training_step
    try:
        return _run_spec(spec)
    finally:
        trl.SFTTrainer.training_step = original


def _run_spec(spec: dict) -> dict:
    import torch

    device = spec["device"]
    probe = Probe(device)
    probe.install()
    settings, note = {}, None
    run = baseline_recipe if spec["side"] == "baseline" else ours_pipeline
    try:
        settings = run(spec, probe)
    except Exception as e:  # noqa: BLE001 - paged optimizers need CUDA; the recipe then uses plain AdamW
        paged = str(spec.get("optim", "")).startswith("paged") or "paged" in str(spec.get("overrides", {}))
        if spec["side"] != "baseline" or device != "cpu" or not paged:
            raise
        note = f"paged_adamw_32bit failed on CPU ({e.__class__.__name__}: {str(e)[:160]}); used adamw_torch"
        spec["optim"] = "adamw_torch"
        import trl

        trl.SFTTrainer.training_step = Probe.original_step  # the failed attempt's counter is not the new one's
        probe = Probe(device)
        probe.install()
        settings = run(spec, probe)
    out = probe.result()
    out["settings"] = {**settings, **probe.args}
    if probe.args:
        out["settings"]["precision"] = "bf16" if probe.args["bf16"] else "fp16" if probe.args["fp16"] else "fp32"
    if note:
        out["note"] = note
    if spec.get("eval_ids") and probe.model is not None:
        t = time.perf_counter()
        out.update(eval_losses(probe.model, spec["eval_ids"], spec["eval_labels"], device))
        out["eval_s"] = round(time.perf_counter() - t, 1)
    out["lifetime_peak_rss_mb"] = round(_lifetime_rss(), 1)
    out["torch_threads"] = torch.get_num_threads()
    return out


def _lifetime_rss() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------------------------------------
# the parent: data, subprocesses, tables


def run_side(spec: dict, verbose: bool, timeout_s: float | None = None) -> dict:
    result = run_worker(__file__, spec, prefix="bench-train-", timeout_s=timeout_s)
    took = result["process_s"]
    if verbose:
        print(f"  {spec['side']:<9} {spec.get('label', ''):<28} done in {took:.0f} s "
              f"({result['tokens_per_s']} tok/s, peak {result['peak_memory_mb']} MB)", file=sys.stderr)
    return result


def prepare(args, device: str) -> dict:
    """Generate the dataset, render it once, and build the specs shared by both sides."""
    from finetune.models import load_tokenizer

    model_dir = materialize(args.model, device)
    tok = load_tokenizer(str(model_dir))
    data_dir = OUT / "data" / f"{args.examples}-{args.eval_examples}-{args.lo}-{args.hi}-{args.median}-{args.seed}"
    train_file = write_jsonl(generate_conversations(args.examples, args.lo, args.hi, args.median, args.seed),
                             data_dir / "train.jsonl")
    eval_file = write_jsonl(generate_conversations(args.eval_examples, args.lo, args.hi, args.median, args.seed + 1),
                            data_dir / "eval.jsonl")
    examples, tok_train = render(train_file, tok, args.max_length)
    _, tok_eval = render(eval_file, tok, args.max_length)
    full = [len(tok(ex.text, add_special_tokens=False)["input_ids"]) for ex in examples]
    lengths = [len(x) for x in tok_train["input_ids"]]
    if any(all(x == -100 for x in lab) for lab in tok_train["labels"]):
        raise SystemExit("an example has no assistant token within max_length: raise --max-length or lower --hi")
    # what trl will train on for the baseline: the same text, tokenized by trl (checked by the token count)
    texts = [ex.text for ex in examples]
    common = dict(device=device, model_dir=str(model_dir), max_length=args.max_length, batch_size=args.batch_size,
                  seed=args.seed, eval_ids=tok_eval["input_ids"], eval_labels=tok_eval["labels"])
    return {
        "model_dir": model_dir,
        "model_params": _param_count(model_dir),
        "lengths": full,
        "truncated_lengths": lengths,
        "real_tokens": sum(lengths),
        "baseline": {**common, "side": "baseline", "texts": texts},
        "ours": {**common, "side": "ours", "train_file": str(train_file)},
    }


def _param_count(model_dir: Path) -> int | None:
    from safetensors import safe_open

    total = 0
    for f in Path(model_dir).glob("*.safetensors"):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                total += math.prod(h.get_slice(k).get_shape())
    return total or None


def compare(args) -> dict:
    """Both sides on the same data, ``args.repeat`` times with the order alternating (baseline first, then ours
    first, ...): on a shared machine the load changes between runs, so each pair's ratio is taken within the
    pair and the reported ratio is the median of the pairs'. Each side's figures are its median run's."""
    device = resolve_device(args.device)
    prep = prepare(args, device)
    overrides = dict(OURS[device])
    overrides.update(_parse_sets(args.ours_set))
    expected = prep["real_tokens"]
    runs: dict[str, list[dict]] = {"baseline": [], "ours": []}
    pairs = []
    for i in range(max(1, args.repeat)):
        order = ["baseline", "ours"] if (i % 2 == 0) != bool(args.ours_first) else ["ours", "baseline"]
        pair = {}
        for name in order:
            spec = dict(prep[name])
            if name == "ours":
                spec["overrides"] = overrides
            spec["label"] = f"run {i + 1}/{args.repeat}"
            r = run_side(spec, not args.json)
            r["real_tokens_expected"] = expected
            r["real_tokens_match"] = r["real_tokens"] == expected
            runs[name].append(r)
            pair[name] = r
        pairs.append({"order": order,
                      "ratio_tokens_per_s": ratio(pair["ours"]["tokens_per_s"], pair["baseline"]["tokens_per_s"]),
                      "ratio_peak_memory": ratio(pair["ours"]["peak_memory_mb"], pair["baseline"]["peak_memory_mb"]),
                      "loadavg": pair["ours"]["loadavg"]})
    # the figures of both sides come from the pair with the median ratio, so the table's rows belong together
    mid = sorted(range(len(pairs)), key=lambda i: pairs[i]["ratio_tokens_per_s"] or 0)[(len(pairs) - 1) // 2]
    b, o = (dict(runs[k][mid], tokens_per_s_runs=[r["tokens_per_s"] for r in runs[k]]) for k in ("baseline", "ours"))
    return {
        "device": device if device == "cpu" else "cuda:" + device_name(device),
        "device_name": device_name(device),
        "model": str(prep["model_dir"]),
        "model_params": prep.get("model_params"),
        "dataset": {"train_examples": args.examples, "eval_examples": args.eval_examples,
                    "token_lengths": length_summary(prep["lengths"]), "max_length": args.max_length,
                    "real_tokens_per_side": expected, "batch_size": args.batch_size},
        "ours_overrides": overrides,
        "ours": o,
        "baseline": b,
        "ratio_tokens_per_s": _median([p["ratio_tokens_per_s"] for p in pairs]),
        "ratio_tokens_per_cpu_s": ratio(o["tokens_per_cpu_s"], b["tokens_per_cpu_s"]),
        "ratio_peak_memory": _median([p["ratio_peak_memory"] for p in pairs]),
        "ratio_s_per_step": ratio(o["s_per_step"], b["s_per_step"]),
        "pairs": pairs,
    }


def _median(values: list):
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


# ---------------------------------------------------------------------------------------------
# --readme: the results table between the markers in README.md

README = ROOT / "README.md"
BEGIN, END = "<!-- train-bench -->", "<!-- /train-bench -->"


def results_table(res: dict, command: str) -> str:
    """The README block: one row per side, then the ratios, from one ``compare`` result."""
    d = res["dataset"]
    L = d["token_lengths"]
    b, o = res["baseline"], res["ours"]
    model = Path(res["model"]).name
    loads = [p["loadavg"][0] for p in res.get("pairs") or [] if p.get("loadavg")] or [o["loadavg"][0]]
    lines = [
        f"Device: {res['device_name']} ({res['device']}). Model: {model}"
        + (f" ({res['model_params'] / 1e6:.0f}M parameters)" if res.get("model_params") else "")
        + f". Data: {d['train_examples']} generated chat conversations, {L['min']}-{L['max']} tokens "
          f"(median {L['p50']}), one epoch = {d['real_tokens_per_side']} real tokens per side, max_length "
          f"{d['max_length']}, batch {d['batch_size']}; {len(loads)} run(s) per side, order alternating, "
          f"1-minute load average {min(loads)}-{max(loads)} (a shared machine).",
        "",
        "| | real tokens/s | peak memory MB | final train loss | held-out loss (answers) | held-out loss (all tokens) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, r in (("notebook recipe (baseline)", b), ("finetune defaults (ours)", o)):
        lines.append(f"| {label} | {_fmt(r['tokens_per_s'])} | {_fmt(r['peak_memory_mb'])} | {_fmt(r['final_loss'])} | "
                     f"{_fmt(r.get('eval_loss_assistant'))} | {_fmt(r.get('eval_loss_all'))} |")
    lines.append(f"| **ours / baseline** | **{_fmt(res['ratio_tokens_per_s'])}x** | **{_fmt(res['ratio_peak_memory'])}x** "
                 f"| | {_fmt(ratio(o.get('eval_loss_assistant'), b.get('eval_loss_assistant')))}x "
                 f"| {_fmt(ratio(o.get('eval_loss_all'), b.get('eval_loss_all')))}x |")
    lines += ["", f"Regenerate: `{command}`. The final train loss is each side's own objective (the baseline's "
              "covers prompt tokens too); the held-out losses are the same metric for both."]
    return "\n".join(lines)


def rewrite_block(text: str, block: str) -> str:
    """``text`` with the part between the train-bench markers replaced by ``block``."""
    if BEGIN not in text or END not in text or text.index(BEGIN) > text.index(END):
        raise SystemExit(f"README.md: add the markers {BEGIN} and {END} (in that order) where the table goes")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{BEGIN}\n{block}\n{END}{tail}"


def _parse_sets(items: list[str]) -> dict:
    import yaml

    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def print_compare(res: dict) -> None:
    d = res["dataset"]
    L = d["token_lengths"]
    print(f"device {res['device']}  model {res['model']}")
    print(f"data: {d['train_examples']} train / {d['eval_examples']} held-out conversations, tokens per example "
          f"min {L['min']} p50 {L['p50']} p90 {L['p90']} p99 {L['p99']} max {L['max']} (mean {L['mean']}), "
          f"max_length {d['max_length']}, batch {d['batch_size']}")
    print(f"equal work: one epoch each = {d['real_tokens_per_side']} real tokens (prompt + answer, no padding); "
          f"counted: baseline {res['baseline']['real_tokens']}, ours {res['ours']['real_tokens']}")
    print("ours = RunConfig defaults" + "".join(f", {k}={v}" for k, v in res["ours_overrides"].items()))
    if len(res.get("pairs", [])) > 1:
        print("pairs (order alternating): " + "; ".join(
            f"{'/'.join(p['order'])}: tokens/s x{p['ratio_tokens_per_s']}, memory x{p['ratio_peak_memory']}, load {p['loadavg'][0]}"
            for p in res["pairs"]) + " -> medians below")
    rows = [
        ("real tokens/s", "tokens_per_s", "ratio_tokens_per_s"),
        ("real tokens per CPU-s", "tokens_per_cpu_s", "ratio_tokens_per_cpu_s"),
        ("s/step", "s_per_step", "ratio_s_per_step"),
        ("steps", "steps", None),
        ("padding fraction", "padding_fraction", None),
        ("peak memory MB", "peak_memory_mb", "ratio_peak_memory"),
        ("final train loss (own objective)", "final_loss", None),
        ("eval loss, assistant tokens", "eval_loss_assistant", None),
        ("eval loss, all tokens", "eval_loss_all", None),
    ]
    print(f"{'':34} {'baseline':>12} {'ours':>12} {'ours/base':>10}")
    for label, key, rkey in rows:
        b, o = res["baseline"].get(key), res["ours"].get(key)
        r = res.get(rkey) if rkey else (ratio(o, b) if isinstance(o, (int, float)) and key != "steps" else "")
        print(f"{label:34} {_fmt(b):>12} {_fmt(o):>12} {_fmt(r):>10}")
    for side in ("baseline", "ours"):
        s = res[side]["settings"]
        print(f"{side}: optim {s.get('optim')}, precision {s.get('precision')}, gradient checkpointing "
              f"{s.get('gradient_checkpointing')}, LoRA r={s.get('lora_r')} on {s.get('lora_targets')}"
              + (f"; NOTE {res[side]['note']}" if res[side].get("note") else ""))
    print(f"load average during the runs: baseline {res['baseline']['loadavg']}, ours {res['ours']['loadavg']}")


def _fmt(v) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


# ---------------------------------------------------------------------------------------------
# --variants: one optimization at a time on our pipeline


VARIANTS = [
    # (label, RunConfig overrides, finetune.settings.SpeedOptions changes): the defaults with one optimization undone
    ("defaults (every optimization)", {}, {}),
    ("previous defaults (none of them)", PREVIOUS_DEFAULTS, SPEED_OFF),
    ("- trained-positions LM head/loss", {}, {"trained_positions_loss": False}),
    ("+ bf16 autocast and bf16 weights", {"training.precision": "bf16"}, {"bf16_weights_on_cpu": True}),
    ("+ bf16 autocast", {"training.precision": "bf16"}, {}),
    ("- padding-free (pad to longest)", {"training.padding_free": False}, {}),
    ("- fused AdamW (adamw_torch)", {"training.optim": "adamw_torch"}, {}),
    ("- lora.dropout 0 (0.05)", {"lora.dropout": 0.05}, {}),
    ("- checkpointing only if needed (on)", {}, {"checkpoint_only_when_needed_on_cpu": False}),
    ("- per-sequence attention (masked row)", {}, {"per_sequence_attention_on_cpu": False}),
    ("+ bfd packing", {"training.packing": True}, {}),
    ("+ loss on all tokens", {"data.train_on": "all"}, {}),
    ("+ no double quant", {"quantization.double_quant": False}, {}),
    ("+ 16-bit base (LoRA, no 4-bit)", {"quantization.load_in": "none"}, {}),
    ("+ adamw_8bit", {"training.optim": "adamw_8bit"}, {}),
]
# CUDA only (on CPU they would equal the defaults): run by --variants on a GPU, and by bench/gpu_check.py
CUDA_VARIANTS = [
    ("- varlen attention (masked row)", {}, {"varlen_attention_on_cuda": False}),
    ("- Liger kernels", {}, {"liger_kernels_on_cuda": False}),
    ("+ chunked linear cross-entropy", {}, {"chunked_loss_on_cuda": True}),
    ("+ paged AdamW 8-bit", {"training.optim": "paged_adamw_8bit"}, {}),
]


def variants(args) -> list[dict]:
    """Our pipeline with one optimization undone (or one more tried) at a time, same data, one process each."""
    device = resolve_device(args.device)
    prep = prepare(args, device)
    every = VARIANTS + (CUDA_VARIANTS if device == "cuda" else [])
    plan = [v for v in every if not args.only or any(o in v[0] for o in args.only)]
    rows = []
    for label, overrides, speed in plan:
        spec = {**prep["ours"], "overrides": {**OURS[device], **overrides}, "speed": speed, "label": label}
        try:
            r = run_side(spec, True)
            rows.append({"variant": label, "overrides": overrides, "speed": speed, **_row(r)})
        except RuntimeError as e:
            rows.append({"variant": label, "overrides": overrides, "speed": speed, "error": str(e).splitlines()[-1][:200]})
    ref = next((r for r in rows if r["variant"].startswith("defaults") and "error" not in r), None)
    for r in rows:
        if ref and "error" not in r:
            r["tokens_per_s_vs_defaults"] = ratio(r["tokens_per_s"], ref["tokens_per_s"])
    return rows


def _row(r: dict) -> dict:
    keys = ("tokens_per_s", "tokens_per_cpu_s", "s_per_step", "steps", "padding_fraction", "peak_memory_mb",
            "final_loss", "eval_loss_assistant", "eval_loss_all", "real_tokens")
    return {k: r.get(k) for k in keys}


def print_rows(rows: list[dict], keys: list[str]) -> None:
    width = max(len(str(r.get(keys[0], ""))) for r in rows) + 2
    print(f"{keys[0]:<{width}}" + "".join(f"{k:>20}" for k in keys[1:]))
    for r in rows:
        if "error" in r:
            print(f"{r[keys[0]]:<{width}}  failed: {r['error']}")
            continue
        print(f"{str(r[keys[0]]):<{width}}" + "".join(f"{_fmt(r.get(k)):>20}" for k in keys[1:]))


# ---------------------------------------------------------------------------------------------
# --scaling: tokens/s and peak memory vs sequence length and LoRA rank


def scaling(args) -> list[dict]:
    device = resolve_device(args.device)
    lengths = args.lengths or ([512, 1024, 2048, 4096] if device == "cuda" else [128, 256, 512, 1024])
    ranks = args.ranks or [8, 16, 64, 128]
    rows = []
    from finetune.models import load_tokenizer

    model_dir = materialize(args.model, device)
    tok = load_tokenizer(str(model_dir))
    steps = args.scaling_steps
    n = steps * args.batch_size
    for sweep, values in (("seq_len", lengths), ("lora_r", ranks)):
        for v in values:
            L = v if sweep == "seq_len" else args.scaling_rank_length
            r = v if sweep == "lora_r" else None
            # every example at least L tokens long, truncated to exactly L: a clean sequence-length axis
            data_dir = OUT / "data" / f"scaling-{n}-{L}-{args.seed}"
            path = write_jsonl(generate_conversations(n, L + 40, L + 400, L + 120, args.seed), data_dir / "train.jsonl")
            examples, t = render(path, tok, L)
            common = dict(device=device, model_dir=str(model_dir), max_length=L, batch_size=args.batch_size,
                          seed=args.seed, max_steps=steps, eval_ids=None, eval_labels=None)
            ours_over = dict(OURS[device])
            if r is not None:
                ours_over["lora.r"] = r
                ours_over["lora.alpha"] = 2 * r
            for side, spec in (("baseline", {**common, "side": "baseline", "texts": [e.text for e in examples],
                                             **({"lora_r": r} if r else {})}),
                               ("ours", {**common, "side": "ours", "train_file": str(path), "overrides": ours_over})):
                spec["label"] = f"{sweep}={v}"
                try:
                    res = run_side(spec, True)
                except RuntimeError as e:
                    rows.append({"sweep": sweep, "value": v, "side": side, "seq_len": L, "lora_r": r or "",
                                 "error": str(e).splitlines()[-1][:200]})
                    continue
                rows.append({"sweep": sweep, "value": v, "side": side, "seq_len": L,
                             "lora_r": res["settings"]["lora_r"], "tokens_per_s": res["tokens_per_s"],
                             "median_step_s": res["median_step_s"],
                             "steady_tokens_per_s": round(L * args.batch_size / res["median_step_s"], 1)
                             if res["median_step_s"] else None,
                             "peak_memory_mb": res["peak_memory_mb"], "device": device})
    csv_path = SCALING_DIR / f"train_scaling_{device}.csv"
    fields = ["sweep", "value", "side", "seq_len", "lora_r", "tokens_per_s", "steady_tokens_per_s", "median_step_s",
              "peak_memory_mb", "device", "error"]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for row in rows:
            w.writerow({k: row.get(k, "") for k in fields})
    png = _plot(rows, device)
    print(f"wrote {csv_path} and {png}", file=sys.stderr)
    return rows


def _plot(rows: list[dict], device: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    for col, sweep in enumerate(("seq_len", "lora_r")):
        for side, style in (("baseline", "o--"), ("ours", "s-")):
            pts = [r for r in rows if r["sweep"] == sweep and r["side"] == side and "error" not in r]
            xs = [r["value"] for r in pts]
            axes[0][col].plot(xs, [r["steady_tokens_per_s"] for r in pts], style, label=side)
            axes[1][col].plot(xs, [r["peak_memory_mb"] for r in pts], style, label=side)
        for row in (0, 1):
            axes[row][col].set_xscale("log", base=2)
            axes[row][col].set_xlabel("sequence length (tokens)" if sweep == "seq_len" else "LoRA rank")
            axes[row][col].legend()
            axes[row][col].grid(alpha=0.3)
        axes[0][col].set_ylabel("real tokens/s (steady step)")
        axes[1][col].set_ylabel("peak memory MB (" + ("CUDA reserved" if device == "cuda" else "RSS") + ")")
    fig.suptitle(f"QLoRA training: ours vs notebook baseline ({device})")
    fig.tight_layout()
    path = SCALING_DIR / f"train_scaling_{device}.png"
    fig.savefig(path, dpi=110)
    return path


# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CPU scale: lengths 20-512, 48 examples (< 5 min on 2 cores)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--model", default="", help="model folder, a Llama config .json, 'tiny' or 'llama-7b' "
                                                 "(default: embedded SmolLM2-135M-Instruct on CPU, llama-7b on CUDA)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--examples", type=int, help="training conversations")
    p.add_argument("--eval-examples", type=int, help="held-out conversations")
    p.add_argument("--max-length", type=int, help="sequence length (truncation) for both sides")
    p.add_argument("--lo", type=int, help="shortest conversation, tokens")
    p.add_argument("--hi", type=int, help="longest conversation, tokens")
    p.add_argument("--median", type=int, help="median conversation length, tokens")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra RunConfig override for ours, e.g. training.gradient_checkpointing=true")
    p.add_argument("--ours-first", action="store_true", help="run ours before the baseline (in the first pair)")
    p.add_argument("--repeat", type=int, default=1, help="pairs of runs, order alternating; ratios are the pairs' median")
    p.add_argument("--readme", action="store_true", help="rewrite the results table in README.md (between the "
                                                          "<!-- train-bench --> markers)")
    p.add_argument("--variants", action="store_true", help="ours with one optimization at a time")
    p.add_argument("--only", nargs="*", help="with --variants: run the variants whose label contains one of these")
    p.add_argument("--scaling", action="store_true", help="write bench/train_scaling_<device>.csv and .png")
    p.add_argument("--lengths", type=int, nargs="*", help="--scaling sequence lengths")
    p.add_argument("--ranks", type=int, nargs="*", help="--scaling LoRA ranks")
    p.add_argument("--scaling-steps", type=int, default=3, help="--scaling steps per point (first one not timed)")
    p.add_argument("--scaling-rank-length", type=int, help="--scaling sequence length of the rank sweep")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)

    device = resolve_device(args.device)
    if not args.model and device == "cuda":
        args.model = "llama-7b"
    gpu = device == "cuda" and not args.quick
    defaults = dict(examples=256 if gpu else (48 if args.quick else 160),
                    eval_examples=32 if gpu else (12 if args.quick else 24),
                    max_length=2048 if gpu else (512 if args.quick else 1024),
                    lo=20, hi=2000 if gpu else (512 if args.quick else 1000),
                    median=250 if gpu else (110 if args.quick else 170))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.scaling_rank_length is None:
        args.scaling_rank_length = 2048 if device == "cuda" else 256

    if args.scaling:
        rows = scaling(args)
        if args.json:
            print(json.dumps({"device": device, "scaling": rows}))
        else:
            print_rows(rows, ["sweep", "value", "side", "steady_tokens_per_s", "median_step_s", "peak_memory_mb"])
        return 0
    if args.variants:
        rows = variants(args)
        if args.json:
            print(json.dumps({"device": device, "variants": rows}))
        else:
            print_rows(rows, ["variant", "tokens_per_s", "tokens_per_s_vs_defaults", "tokens_per_cpu_s",
                              "peak_memory_mb", "eval_loss_assistant", "eval_loss_all"])
            print(f"load average at the end: {[round(x, 2) for x in os.getloadavg()]}")
        return 0
    res = compare(args)
    if args.json:
        print(json.dumps(res))
    else:
        print_compare(res)
    if args.readme:
        command = "python bench/train_throughput.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:])
                                                                if a not in ("--json",))
        README.write_text(rewrite_block(README.read_text(encoding="utf-8"), results_table(res, command)), encoding="utf-8")
        print(f"rewrote the results table in {README}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
