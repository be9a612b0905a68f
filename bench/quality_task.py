"""The quality demonstration: a task the base model cannot do and the fine-tuned one can.

Task: read a sentence about a person moving somewhere and answer with exactly
``{"city": "<city>", "year": <year>}``. The base SmolLM2-135M-Instruct answers in prose or another
format; after a few minutes of LoRA on CPU the adapter answers held-out sentences (new names, cities,
years and sentence patterns) in the exact format with the right values.

    python bench/quality_task.py --write-samples      # (re)generate finetune/samples/*.jsonl
    python bench/quality_task.py                       # train with the smollm2-135m-cpu preset, report both rates
    python bench/quality_task.py --adapter runs/ID     # only evaluate an existing adapter

Prints one JSON object: base and fine-tuned exact-match rates on the held-out prompts.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT / "finetune" / "samples"

INSTRUCTION = "Extract the city and the year as JSON."
TRAIN_NAMES = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jasmin", "Kofi",
               "Lena", "Mateo", "Nadia", "Omar", "Priya", "Quentin", "Rosa", "Sven", "Tomoko"]
TEST_NAMES = ["Ulla", "Viktor", "Wanjiru", "Xavier", "Yusuf", "Zoe", "Anouk", "Bilal"]
TRAIN_CITIES = ["Paris", "Lagos", "Osaka", "Lima", "Oslo", "Cairo", "Denver", "Hanoi", "Porto", "Quito", "Turin",
                "Leeds", "Accra", "Perth", "Kyoto", "Bergen", "Austin", "Seville", "Kraków", "Nairobi"]
TEST_CITIES = ["Dublin", "Manila", "Zagreb", "Tunis", "Halifax", "Bologna", "Cusco", "Tbilisi"]
TRAIN_PATTERNS = [
    "{name} moved to {city} in {year}.",
    "In {year}, {name} relocated to {city}.",
    "{name} has lived in {city} since {year}.",
    "It was {year} when {name} arrived in {city}.",
    "After {year}, {name} made {city} home.",
]
TEST_PATTERNS = [
    "Back in {year}, {name} settled down in {city}.",
    "{name} packed up and went to {city} in {year}.",
]


def answer(city: str, year: int) -> str:
    return json.dumps({"city": city, "year": year}, ensure_ascii=False)


def make_rows(n: int, names, cities, patterns, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        city, year = rng.choice(cities), rng.randint(1900, 2024)
        sentence = rng.choice(patterns).format(name=rng.choice(names), city=city, year=year)
        rows.append({"prompt": f"{INSTRUCTION}\n{sentence}", "completion": answer(city, year)})
    return rows


def write_samples() -> None:
    SAMPLES.mkdir(parents=True, exist_ok=True)
    for name, rows in (
        ("city_year.jsonl", make_rows(240, TRAIN_NAMES, TRAIN_CITIES, TRAIN_PATTERNS, seed=1)),
        ("city_year_heldout.jsonl", make_rows(40, TEST_NAMES, TEST_CITIES, TEST_PATTERNS, seed=2)),
    ):
        with open(SAMPLES / name, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows)} rows to {SAMPLES / name}")


def exact_match_rate(answers: list[str], expected: list[str]) -> float:
    hits = 0
    for got, want in zip(answers, expected):
        try:
            hits += json.loads(got.strip()) == json.loads(want)
        except ValueError:
            pass
    return hits / len(expected)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-samples", action="store_true")
    ap.add_argument("--adapter", help="evaluate this run folder or adapter folder instead of training")
    ap.add_argument("--preset", default="smollm2-135m-cpu")
    ap.add_argument("--max-steps", type=int, default=0, help="override the preset's steps (0 = keep)")
    ap.add_argument("--runs", default=str(ROOT / "runs"))
    args = ap.parse_args(argv)
    if args.write_samples:
        write_samples()
        return 0

    from finetune.inference import generate_batch
    from finetune.presets import load_preset
    from finetune.train import train

    heldout = [json.loads(line) for line in open(SAMPLES / "city_year_heldout.jsonl", encoding="utf-8")]
    prompts = [r["prompt"] for r in heldout]
    expected = [r["completion"] for r in heldout]
    adapter = args.adapter
    seconds = None
    if adapter is None:
        import time

        cfg = load_preset(args.preset)
        cfg.data.source = str(SAMPLES / "city_year.jsonl")
        if args.max_steps:
            cfg.training.max_steps = args.max_steps
        t0 = time.time()
        result = train(cfg, runs_root=args.runs)
        seconds = round(time.time() - t0, 1)
        adapter = str(result.adapter_dir)
    tuned = generate_batch(prompts, adapter=adapter, max_new_tokens=32, temperature=0)
    base = generate_batch(prompts, adapter=None, model=_base_of(adapter), template=_template_of(adapter),
                          max_new_tokens=32, temperature=0)
    report = {
        "heldout_prompts": len(prompts),
        "base_exact_match": exact_match_rate(base, expected),
        "finetuned_exact_match": exact_match_rate(tuned, expected),
        "train_seconds": seconds,
        "adapter": adapter,
        "example": {"prompt": prompts[0], "expected": expected[0], "base": base[0], "finetuned": tuned[0]},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


def _base_of(adapter: str) -> str:
    from finetune.inference import adapter_base

    return adapter_base(adapter)


def _template_of(adapter: str) -> str:
    from finetune.inference import adapter_template

    return adapter_template(adapter)["template"]


if __name__ == "__main__":
    raise SystemExit(main())
