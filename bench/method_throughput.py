"""Preference and RL tuning speed: our DPO, ORPO, KTO and GRPO against plain trl's trainer of each, same run.

    .venv/bin/python bench/method_throughput.py --method dpo               # 20 steps each side, ~3 min on 2 cores
    .venv/bin/python bench/method_throughput.py --method orpo --repeat 2   # two rounds, order alternating
    .venv/bin/python bench/method_throughput.py --method grpo --json       # one JSON object

Baseline: trl's ``DPOTrainer`` / ``ORPOTrainer`` / ``KTOTrainer`` / ``GRPOTrainer`` written as trl's docs show it,
with a peft ``LoraConfig`` (``baseline_trainer``). Ours: ``finetune.train.train(config)`` with ``training.method``
set, everything else the RunConfig defaults except the settings both sides share (``ours_config``).

Both sides: the embedded SmolLM2-135M-Instruct in fp32, the method's bundled sample data rendered once through the
same template (``--template``, the rows ``methods.rows_for_trl`` hands trl: the same text on both sides), LoRA r16 /
alpha 32 on all linear layers, dropout 0, learning rate 1e-3 with a linear schedule and no warmup, ``--batch-size``
examples per step, max length 256, beta 0.1, no gradient checkpointing (trl's configs turn it on by default: 20-30%
slower on CPU; ``--baseline-checkpointing`` keeps trl's default), ``--steps`` steps, the same seed (so the same
examples in the same order). DPO: the same loss on both sides, the sigmoid preference loss plus the SFT term on the
chosen answers at ``--sft-weight`` (trl ``loss_type=["sigmoid", "sft"]``, our ``training.dpo_sft_weight``; 0 is
plain sigmoid DPO on both).

Each side runs in its own subprocess (peak memory does not mix), ``--repeat`` rounds with the order alternating; a
round's ratio is taken within the round and the reported ratio is the rounds' median. Measured: steps/s of the
training loop (``on_train_begin`` to ``on_train_end``), tokens/s (the prompt and answer tokens of every sequence a
step trains: a pair is two sequences, a KTO row its answer and the mismatched one of its KL estimate, GRPO the
prompt and each sampled answer), peak RSS (``VmHWM``, reset when training starts), the loss at step N and the mean of
the last five steps. GRPO also: the time inside ``generate`` and its share of the loop, and sampled tokens/s (the
answer tokens up to the first end token / the time generating).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULT_TAG, device_name, ratio, resolve_device, run_worker  # noqa: E402

METHODS = ("dpo", "orpo", "kto", "grpo")


# ---------------------------------------------------------------------------------------------
# the worker (one side, one subprocess)


class Probe:
    """Times the training loop and each step, keeps the losses, reads peak RSS, times ``generate``."""

    def __init__(self) -> None:
        self.t0 = self.t1 = 0.0
        self.step_times: list[float] = []
        self.losses: list[float] = []
        self.logs: list[dict[str, Any]] = []
        self.peak_mb = self.start_mb = 0.0
        self.gen_s = 0.0
        self.gen_tokens = 0
        self.gen_calls = 0
        self.training = False

    def time_generate(self) -> None:
        """Wrap transformers' ``generate``: seconds inside it and the tokens it sampled (to the first end token)."""
        from transformers import GenerationMixin

        probe, original = self, GenerationMixin.generate

        def generate(model: Any, *args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            out = original(model, *args, **kwargs)
            if probe.training:
                probe.gen_s += time.perf_counter() - t
                probe.gen_calls += 1
                ids = kwargs.get("input_ids", args[0] if args else None)
                seqs = out if hasattr(out, "shape") else out.sequences
                new = seqs[:, ids.shape[1]:] if ids is not None else seqs
                eos = model.generation_config.eos_token_id
                eos = [eos] if isinstance(eos, int) else list(eos or [])
                import torch

                ended = torch.zeros_like(new, dtype=torch.bool)
                for e in eos:
                    ended |= new == e
                before_end = (ended.cumsum(dim=1) - ended.int()) == 0  # tokens up to and including the first end
                probe.gen_tokens += int(before_end.sum())
            return out

        GenerationMixin.generate = generate  # type: ignore[method-assign]

    def callback(self) -> Any:
        from transformers import TrainerCallback

        probe = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                probe.start_mb = _proc_status("VmRSS")
                try:  # Linux: 5 resets the high-water mark VmHWM to the current RSS
                    Path("/proc/self/clear_refs").write_text("5")
                except OSError:
                    pass
                probe.training = True
                probe.t0 = time.perf_counter()

            def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                self._s = time.perf_counter()

            def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                probe.step_times.append(time.perf_counter() - self._s)

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
                if logs and "loss" in logs:
                    probe.losses.append(float(logs["loss"]))
                    probe.logs.append(dict(logs))

            def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
                probe.t1 = time.perf_counter()
                probe.training = False
                probe.peak_mb = _proc_status("VmHWM")

        return _Cb()


def _proc_status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def rendered_rows(spec: dict[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """The method's sample rows rendered with the template, as trl reads them (both sides train on these)."""
    from finetune import methods
    from finetune.config import RunConfig
    from finetune.models import load_tokenizer

    tok = load_tokenizer(spec["model_dir"])
    cfg = RunConfig()
    cfg.training.method = spec["method"]
    cfg.data.template = spec["template"]
    cfg.data.val_fraction = 0.0
    return methods.rows_for_trl(methods.load_data(cfg, tok), tok), tok


def exact_match(completions: list[Any], answer: list[str], **kwargs: Any) -> list[float]:
    """Plain trl's reward function for the GRPO baseline: 1 where the answer equals the row's answer."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [1.0 if t.strip() == a.strip() else 0.0 for t, a in zip(texts, answer)]


def baseline_trainer(spec: dict[str, Any], probe: Probe) -> Any:
    """trl's trainer of the method as its docs show it: model, tokenizer, dataset, config, LoraConfig."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    rows, tokenizer = rendered_rows(spec)
    model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    peft_config = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    common = dict(output_dir=spec["work_dir"], per_device_train_batch_size=spec["batch_size"],
                  learning_rate=spec["lr"], lr_scheduler_type="linear", warmup_steps=0, max_steps=spec["steps"],
                  logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, use_cpu=True, bf16=False,
                  seed=spec["seed"], gradient_checkpointing=spec["baseline_checkpointing"])
    method, ds = spec["method"], Dataset.from_list(rows)
    cb = [probe.callback()]
    if method == "dpo":
        from trl import DPOConfig, DPOTrainer

        w = spec["sft_weight"]
        args = DPOConfig(**common, beta=spec["beta"], max_length=spec["max_length"],
                         loss_type=["sigmoid", "sft"] if w > 0 else ["sigmoid"], loss_weights=[1.0, w] if w > 0 else None)
        return DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=cb)
    if method == "orpo":
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        args = ORPOConfig(**common, beta=spec["beta"], max_length=spec["max_length"])
        return ORPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=peft_config,
                           callbacks=cb)
    if method == "kto":
        from trl import KTOConfig, KTOTrainer

        args = KTOConfig(**common, beta=spec["beta"], max_length=spec["max_length"])
        return KTOTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer, peft_config=peft_config,
                          callbacks=cb)
    from trl import GRPOConfig, GRPOTrainer

    args = GRPOConfig(**common, num_generations=spec["num_generations"], max_completion_length=spec["completion_length"],
                      beta=0.0, temperature=1.0, log_completions=False)
    return GRPOTrainer(model=model, reward_funcs=[exact_match], args=args, train_dataset=ds, processing_class=tokenizer,
                       peft_config=peft_config, callbacks=cb)


def ours_config(spec: dict[str, Any]) -> Any:
    """The RunConfig ours trains: the defaults, then the settings both sides share."""
    from finetune.config import RunConfig, apply_overrides

    cfg = RunConfig()
    cfg.name = "bench"
    cfg.model.id = spec["model_dir"]
    cfg.data.template = spec["template"]
    cfg.data.val_fraction = 0.0
    cfg.quantization.load_in = "none"
    cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout, cfg.lora.target_modules = 16, 32, 0.0, "all-linear"
    t = cfg.training
    t.method, t.precision, t.gradient_checkpointing = spec["method"], "fp32", False
    t.learning_rate, t.lr_scheduler, t.warmup_ratio = spec["lr"], "linear", 0.0
    t.batch_size, t.max_length, t.max_steps, t.seed = spec["batch_size"], spec["max_length"], spec["steps"], spec["seed"]
    t.save_steps = 10**6  # no checkpoints (the baseline saves none)
    t.dpo_beta = t.kto_beta = spec["beta"]
    t.orpo_lambda = spec["beta"]
    t.dpo_sft_weight = spec["sft_weight"]
    t.grpo_num_generations, t.max_completion_length = spec["num_generations"], spec["completion_length"]
    t.grpo_beta = 0.0
    cfg.rewards.exact_match = 1.0
    return apply_overrides(cfg, spec.get("overrides", {}))


def worker(spec_path: str) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    import transformers

    transformers.logging.set_verbosity_error()
    spec = json.loads(Path(spec_path).read_text())
    probe = Probe()
    probe.time_generate()
    if spec["side"] == "baseline":
        baseline_trainer(spec, probe).train()
    else:
        from finetune.train import train

        result = train(ours_config(spec), run_dir=Path(spec["work_dir"]) / "run", callbacks=[probe.callback()])
        if result.status != "finished":
            raise SystemExit(f"our run ended {result.status}")
    print(RESULT_TAG + json.dumps(result_of(spec, probe)), flush=True)
    return 0


def result_of(spec: dict[str, Any], probe: Probe) -> dict[str, Any]:
    wall = probe.t1 - probe.t0
    steps = len(probe.step_times)
    tokens = spec["tokens_per_step"] * steps + (probe.gen_tokens if spec["method"] == "grpo" else 0)
    tail = probe.losses[-5:]
    out = {
        "steps": steps,
        "train_wall_s": round(wall, 2),
        "steps_per_s": round(steps / wall, 4) if wall else None,
        "s_per_step": round(wall / steps, 3) if steps else None,
        "median_step_s": round(statistics.median(probe.step_times[1:] or probe.step_times), 3) if steps else None,
        "tokens_per_s": round(tokens / wall, 1) if wall else None,
        "peak_memory_mb": round(probe.peak_mb, 1),
        "memory_at_start_mb": round(probe.start_mb, 1),
        "first_loss": probe.losses[0] if probe.losses else None,
        "loss_at_n": probe.losses[-1] if probe.losses else None,
        "loss_last5": round(sum(tail) / len(tail), 4) if tail else None,
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    if spec["method"] == "grpo":
        out.update(generate_s=round(probe.gen_s, 2), generate_share=round(probe.gen_s / wall, 3) if wall else None,
                   sampled_tokens=probe.gen_tokens,
                   sampled_tokens_per_s=round(probe.gen_tokens / probe.gen_s, 1) if probe.gen_s else None,
                   reward_last5=_mean([x.get("reward") for x in probe.logs[-5:]]))
    return out


def _mean(values: list[Any]) -> float | None:
    xs = [float(v) for v in values if isinstance(v, (int, float))]
    return round(sum(xs) / len(xs), 4) if xs else None


# ---------------------------------------------------------------------------------------------
# the parent: the shared spec, the rounds, the table


def tokens_per_step(spec: dict[str, Any]) -> float:
    """The prompt and answer tokens of the sequences one step trains, on average over the sample rows (both sides
    train the same rows in the same order; GRPO's sampled answers are counted by the worker)."""
    rows, tok = rendered_rows(spec)

    def n(text: str) -> int:
        return len(tok(text, add_special_tokens=False)["input_ids"])

    cap = spec["max_length"]
    if spec["method"] in ("dpo", "orpo"):
        per = [min(cap, n(r["prompt"] + r["chosen"])) + min(cap, n(r["prompt"] + r["rejected"])) for r in rows]
    elif spec["method"] == "kto":
        per = [2 * min(cap, n(r["prompt"] + r["completion"])) for r in rows]  # its answer and a mismatched one
    else:
        return spec["batch_size"] * statistics.mean(n(r["prompt"]) for r in rows)
    return spec["batch_size"] * statistics.mean(per)


def run_side(spec: dict[str, Any], verbose: bool) -> dict[str, Any]:
    result = run_worker(__file__, spec, prefix="bench-method-")
    took = result["process_s"]
    if verbose:
        print(f"  {spec['side']:<8} {result['s_per_step']} s/step, loss {result['loss_at_n']}, "
              f"peak {result['peak_memory_mb']} MB, load {result['loadavg'][0]} ({took:.0f} s)", file=sys.stderr)
    return result


def compare(args: argparse.Namespace) -> dict[str, Any]:
    from finetune.models import embedded_model_dir

    device = resolve_device("cpu")
    spec: dict[str, Any] = dict(method=args.method, model_dir=str(args.model or embedded_model_dir()),
                                template=args.template, steps=args.steps, lr=args.lr, beta=args.beta,
                                max_length=args.max_length, seed=args.seed, sft_weight=args.sft_weight,
                                batch_size=args.batch_size or (8 if args.method == "grpo" else 4),
                                num_generations=args.num_generations, completion_length=args.completion_length,
                                baseline_checkpointing=args.baseline_checkpointing,
                                overrides=dict(kv.split("=", 1) for kv in args.ours_set))
    spec["tokens_per_step"] = round(tokens_per_step(spec), 2)
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "ours": []}
    rounds = []
    for i in range(max(1, args.repeat)):
        order = ["baseline", "ours"] if (i % 2 == 0) != args.ours_first else ["ours", "baseline"]
        pair = {side: run_side({**spec, "side": side}, not args.json) for side in order}
        for side in order:
            runs[side].append(pair[side])
        rounds.append({"order": order, "ratio_steps_per_s": ratio(pair["ours"]["steps_per_s"],
                                                                  pair["baseline"]["steps_per_s"]),
                       "loadavg": pair["ours"]["loadavg"]})
    mid = sorted(range(len(rounds)), key=lambda i: rounds[i]["ratio_steps_per_s"] or 0)[(len(rounds) - 1) // 2]
    b, o = runs["baseline"][mid], runs["ours"][mid]
    out = {"method": args.method, "device": device_name(device), "settings": {k: v for k, v in spec.items()
                                                                              if k not in ("model_dir",)},
           "loss": (f"sigmoid + {args.sft_weight} x sft on both sides" if args.method == "dpo" and args.sft_weight > 0
                    else "plain sigmoid DPO on both sides" if args.method == "dpo" else "trl's loss of the method"),
           "baseline": b, "ours": o,
           "ratio_steps_per_s": _median([r["ratio_steps_per_s"] for r in rounds]),
           "ratio_peak_memory": ratio(o["peak_memory_mb"], b["peak_memory_mb"]),
           "rounds": rounds}
    if args.method == "grpo":
        out["ratio_sampled_tokens_per_s"] = ratio(o.get("sampled_tokens_per_s"), b.get("sampled_tokens_per_s"))
    return out


def _median(values: list[Any]) -> float | None:
    xs = [v for v in values if v is not None]
    return round(statistics.median(xs), 3) if xs else None


def print_table(res: dict[str, Any]) -> None:
    keys = ["steps_per_s", "s_per_step", "tokens_per_s", "peak_memory_mb", "loss_at_n", "loss_last5"]
    if res["method"] == "grpo":
        keys += ["generate_share", "sampled_tokens_per_s", "reward_last5"]
    print(f"{res['method']} on {res['device']}; {res['loss']}; {res['settings']['steps']} steps, batch "
          f"{res['settings']['batch_size']}, template {res['settings']['template']}")
    print(f"{'':<22}{'plain trl':>12}{'ours':>12}{'ours/trl':>10}")
    for k in keys:
        b, o = res["baseline"].get(k), res["ours"].get(k)
        print(f"{k:<22}{str(b):>12}{str(o):>12}{str(ratio(o, b)):>10}")
    print(f"rounds: {[(r['order'][0], r['ratio_steps_per_s'], r['loadavg'][0]) for r in res['rounds']]}")
    print(f"steps/s ratio (median of rounds): {res['ratio_steps_per_s']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=METHODS, default="dpo")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeat", type=int, default=1, help="rounds, order alternating; the ratio is their median")
    p.add_argument("--batch-size", type=int, default=0, help="examples per step (0: 4; grpo: 8 answers = 2 prompts)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--beta", type=float, default=0.1, help="dpo/kto beta, orpo lambda")
    p.add_argument("--sft-weight", type=float, default=1.0, help="dpo: weight of the SFT term on both sides (0: plain)")
    p.add_argument("--num-generations", type=int, default=4)
    p.add_argument("--completion-length", type=int, default=32)
    p.add_argument("--template", default="llama2")
    p.add_argument("--model", default="", help="model folder (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--baseline-checkpointing", action="store_true", help="trl's default gradient checkpointing on")
    p.add_argument("--ours-set", action="append", default=[], metavar="KEY=VALUE", help="override ours' config")
    p.add_argument("--ours-first", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return worker(args.worker)
    res = compare(args)
    print(json.dumps(res, indent=1)) if args.json else print_table(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
