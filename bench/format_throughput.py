"""Formatting throughput: our pipeline vs a naive per-row baseline, measured in the same run.

    .venv/bin/python bench/format_throughput.py            # 100,000 alpaca rows, each side 3 times
    .venv/bin/python bench/format_throughput.py --rows 5000 --repeat 1

Both sides start from the same alpaca JSONL file and write Llama-2 JSONL; the two outputs must be
byte-identical (asserted), so the ratio compares equal work. The baseline is the code one writes first:
pandas ``iterrows``, one ``render`` call, one ``json.dumps`` and one ``write`` per row (compact separators,
as our files have them). Our pipeline also checks every row (missing/empty/non-text cells, duplicates,
control strings, broken escapes, spreadsheet formulas) and still has to be faster. Each side runs
``--repeat`` times, alternating (ours, naive, ours, ...) so that drift in the machine's load hits both; the
medians are compared.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from finetune.config import DataConfig  # noqa: E402
from finetune.data import format_dataset, write_jsonl  # noqa: E402
from finetune.templates import render  # noqa: E402

WORDS = ("model", "data", "token", "answer", "prompt", "layer", "weight", "adapter", "rank", "batch",
         "gradient", "loss", "epoch", "café", "schedule", "memory")


def generate(n: int, path: Path) -> None:
    """n distinct alpaca rows shaped like Stanford Alpaca: a short instruction, an `input` in a third of
    the rows, a ~250-character answer; mostly English with accents everywhere and CJK in 1 row of 10."""
    lines = []
    for i in range(n):
        words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(5 + i % 23)]
        if i % 10 == 0:
            words.append("東京")
        row = {
            "instruction": f"Task {i}: explain the {' '.join(words[:4])}.",
            "input": " ".join(words) if i % 3 == 0 else "",
            "output": f"Answer {i}. " + " ".join(reversed(words)) * (1 + i % 4),
        }
        lines.append(json.dumps(row, ensure_ascii=False))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def naive(src: Path, out: Path) -> int:
    """The per-row baseline: pandas iterrows + render + dumps + write for every row."""
    import pandas as pd

    df = pd.read_json(src, lines=True, dtype=False)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for _, row in df.iterrows():
            user = row["instruction"]
            if isinstance(row["input"], str) and row["input"].strip():
                user = f"{user}\n\n{row['input']}"
            messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            r = render(messages, "llama2")
            obj = {"text": r.text, "prompt": r.prompt, "completion": r.completion, "messages": messages}
            f.write(json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n")
            n += 1
    return n


def ours(src: Path, out: Path) -> int:
    result = format_dataset(src, DataConfig(template="llama2"))
    assert not result.problems, result.problems[:3]
    return write_jsonl(result.examples, out)


def timed(fn, src: Path, out: Path) -> tuple[int, float]:
    out.unlink(missing_ok=True)  # every run writes a new file (freeing the last one's blocks is not timed)
    start = time.perf_counter()
    n = fn(src, out)
    return n, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows to generate (default 100,000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per side; the medians are compared (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = tmp / "alpaca.jsonl"
        generate(args.rows, src)
        times: dict[str, list[float]] = {"ours": [], "naive": []}
        for _ in range(max(1, args.repeat)):
            n_ours, t = timed(ours, src, tmp / "ours.jsonl")
            times["ours"].append(t)
            n_naive, t = timed(naive, src, tmp / "naive.jsonl")
            times["naive"].append(t)
            assert n_ours == n_naive == args.rows, (n_ours, n_naive)
        same = (tmp / "ours.jsonl").read_bytes() == (tmp / "naive.jsonl").read_bytes()
        assert same, "the two outputs differ: the comparison would not be fair"
        size = (tmp / "ours.jsonl").stat().st_size
    t_ours, t_naive = statistics.median(times["ours"]), statistics.median(times["naive"])
    ours_rate, naive_rate = n_ours / t_ours, n_naive / t_naive
    runs = f"median of {len(times['ours'])}" if len(times["ours"]) > 1 else "one run"
    print(f"{args.rows:,} alpaca rows -> Llama-2 JSONL ({size / 1e6:.1f} MB, identical bytes from both; {runs} each)")
    for label, key, t, rate in (("pipeline (finetune.data):", "ours", t_ours, ours_rate),
                                ("naive per-row baseline:  ", "naive", t_naive, naive_rate)):
        every = ", ".join(f"{x:.2f}" for x in times[key])
        print(f"  {label} {t:7.2f} s  {rate:>10,.0f} rows/s   (runs: {every} s)")
    print(f"  speed-up: {ours_rate / naive_rate:.1f}x (target >= 10x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
