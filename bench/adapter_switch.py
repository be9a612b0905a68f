"""Hot-swapping LoRA adapters on one loaded base: switching costs a small fraction of loading the base.

    .venv/bin/python bench/adapter_switch.py                 # CPU, embedded SmolLM2-135M, ~30 s
    .venv/bin/python bench/adapter_switch.py --switches 200 --json

What is timed, in one process:
1. base load: ``inference.load("")`` (the embedded SmolLM2-135M-Instruct from its cached safetensors
   folder: weights + tokenizer, moved to the device; libraries imported beforehand), the faster of two
   loads, the baseline of the ratio;
2. first attach of each adapter: read its safetensors and inject the LoRA layers (``attach``: peft
   ``PeftModel.from_pretrained`` for the first one, ``load_adapter`` for the second);
3. each switch: ``inference.attach(loaded, folder)`` for an adapter that is already attached: the path
   every playground request takes (resolve the folder, check its files, ``set_adapter``). After it returns
   the model is generation-ready; the benchmark also times "switch + first forward" (the first token's
   logits under the new adapter) next to a plain forward with no switch, so nothing lazy hides in the
   first call after a switch.

Checks (not timed): after a switch the logits are exactly those of that adapter when it was attached, the
two adapters give different logits, and the cached base object is the same one throughout (never reloaded).
The two adapters are random LoRA weights (r=16 on all linear layers, non-zero B) for the embedded base:
switching costs the same for trained and random weights of the same shapes.

Target: mean switch time / base load time < 0.1 (the max is printed too: on a busy machine it carries the
scheduler's noise, a single preempted switch).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def make_adapter(folder: Path, seed: int, base_dir: Path) -> Path:
    """A LoRA adapter with random non-zero weights for the embedded base, saved as safetensors."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from finetune.models import EMBEDDED_REPO_ID

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM",
                     init_lora_weights=False)  # random A and B: the adapter changes the outputs
    peft_model = get_peft_model(model, cfg)
    peft_model.peft_config["default"].base_model_name_or_path = EMBEDDED_REPO_ID
    peft_model.save_pretrained(folder, safe_serialization=True)
    return folder


def first_logits(loaded, ids):
    import torch

    with torch.no_grad():
        return loaded.model(input_ids=ids).logits[0, -1].float().clone()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--switches", type=int, default=100, help="adapter switches to time")
    parser.add_argument("--forwards", type=int, default=4, help="switch + first forward samples (and plain forwards)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from finetune import inference
    from finetune.models import embedded_model_dir

    base_dir = embedded_model_dir()  # converted once from the GGUF and cached; not part of the timing
    import finetune.train  # noqa: F401 - library imports are not part of the load time
    from transformers import AutoTokenizer, LlamaForCausalLM  # noqa: F401

    # The base is loaded twice (evicted from the cache in between); the faster load is the baseline, so the
    # ratio is not flattered by one-off costs of a first load.
    loads = []
    for _ in range(2):
        inference._cache.clear()
        t0 = time.perf_counter()
        loaded = inference.load("")
        loads.append(time.perf_counter() - t0)
    load_s = min(loads)
    base_object = loaded.model

    with tempfile.TemporaryDirectory(prefix="adapter-switch-") as tmp:
        a = make_adapter(Path(tmp) / "a", 1, base_dir)
        b = make_adapter(Path(tmp) / "b", 2, base_dir)
        ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"].to(loaded.model.device)

        attach_s = []
        for folder in (a, b):
            t0 = time.perf_counter()
            inference.attach(loaded, folder)
            attach_s.append(time.perf_counter() - t0)
        inference.attach(loaded, a)
        want = {a: first_logits(loaded, ids)}
        inference.attach(loaded, b)
        want[b] = first_logits(loaded, ids)
        assert not torch.allclose(want[a], want[b]), "the two adapters give the same logits"

        switch_s = []
        for i in range(args.switches):
            folder = a if i % 2 == 0 else b
            t0 = time.perf_counter()
            inference.attach(loaded, folder)
            switch_s.append(time.perf_counter() - t0)
            if i < 4:  # the switch really switched (checked outside the timing)
                assert torch.equal(first_logits(loaded, ids), want[folder]), f"switch {i} did not take effect"

        ready_s, plain_s = [], []
        for i in range(args.forwards):
            folder = a if i % 2 == 0 else b
            t0 = time.perf_counter()
            inference.attach(loaded, folder)
            got = first_logits(loaded, ids)
            ready_s.append(time.perf_counter() - t0)
            assert torch.equal(got, want[folder])
            t0 = time.perf_counter()
            first_logits(loaded, ids)
            plain_s.append(time.perf_counter() - t0)

    # the base was never reloaded: the same cached object carries both adapters
    assert inference.load("") is loaded and loaded.model.get_base_model() is base_object

    result = {
        "device": str(loaded.model.device),
        "base_load_s": round(load_s, 4),
        "base_loads_s": [round(s, 4) for s in loads],
        "first_attach_s": [round(s, 4) for s in attach_s],
        "switches": len(switch_s),
        "switch_mean_ms": round(statistics.mean(switch_s) * 1e3, 3),
        "switch_max_ms": round(max(switch_s) * 1e3, 3),
        "switch_plus_first_forward_mean_ms": round(statistics.mean(ready_s) * 1e3, 2),
        "plain_forward_mean_ms": round(statistics.mean(plain_s) * 1e3, 2),
        "switch_p95_ms": round(sorted(switch_s)[int(0.95 * (len(switch_s) - 1))] * 1e3, 3),
        "ratio_max_switch_to_load": round(max(switch_s) / load_s, 5),
        "ratio_mean_switch_to_load": round(statistics.mean(switch_s) / load_s, 5),
        "ratio_first_attach_to_load": round(max(attach_s) / load_s, 4),
    }
    result["target_met"] = result["ratio_mean_switch_to_load"] < 0.1
    if args.json:
        print(json.dumps(result))
        return 0 if result["target_met"] else 1
    print(f"device: {result['device']}")
    print(f"base load (SmolLM2-135M-Instruct, weights + tokenizer): {load_s:.3f} s "
          f"(faster of {', '.join(f'{s:.3f}' for s in loads)} s)")
    print("first attach (read adapter + inject LoRA): " + ", ".join(f"{s:.3f} s" for s in attach_s))
    print(f"switch between two attached adapters ({len(switch_s)}x): mean {result['switch_mean_ms']:.3f} ms, "
          f"p95 {result['switch_p95_ms']:.3f} ms, max {result['switch_max_ms']:.3f} ms")
    print(f"switch + first forward: mean {result['switch_plus_first_forward_mean_ms']:.2f} ms "
          f"(plain forward, no switch: {result['plain_forward_mean_ms']:.2f} ms)")
    print(f"ratio mean switch / base load: {result['ratio_mean_switch_to_load']:.5f} (target < 0.1: "
          f"{'met' if result['target_met'] else 'NOT met'}); max switch / base load: "
          f"{result['ratio_max_switch_to_load']:.5f}; first attach / base load: {result['ratio_first_attach_to_load']:.3f}")
    return 0 if result["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
