"""What the bench scripts share: where they write, which device they measure, a clock that waits for the GPU,
and ratios against a baseline.

A script in ``bench/`` imports it after putting its own folder on ``sys.path`` (run as a script, Python does
that already; loaded from a test by file path, it does not)::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import harness

Importing it puts the repository first on ``sys.path``, so ``finetune`` is this checkout's.

>>> ratio(150.0, 100.0), ratio(1, 0), ratio(None, 2.0)
(1.5, None, None)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = ROOT / "bench" / "out"  # generated data and random-weight models, reused between runs (gitignored)


def resolve_device(requested: str = "auto") -> str:
    """``--device``: 'auto' is the device training would use (the GPU when there is one); else as given."""
    if requested != "auto":
        return requested
    from finetune.adapter import pick_device

    return pick_device()


def sync(device: str) -> None:
    """Wait until the GPU has run what was queued on it: CUDA calls return before the work is done, so a
    clock read without this times the queueing, not the work."""
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


class Stopwatch:
    """Seconds of the ``with`` block, the GPU's queued work finished on entry and on exit.

    >>> with Stopwatch("cpu") as w:
    ...     pass
    >>> w.s >= 0
    True
    """

    def __init__(self, device: str):
        self.device = device
        self.s = 0.0
        self._t0 = 0.0

    def __enter__(self) -> Stopwatch:
        sync(self.device)
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        sync(self.device)
        self.s = time.perf_counter() - self._t0


def device_name(device: str) -> str:
    """The GPU's name, or the CPU's model and core count: what a reader needs to compare two results."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_name(0)
    name = "CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def ratio(a: Any, b: Any) -> float | None:
    """``a / b`` to three decimals (ours against the baseline); None where either is missing or ``b`` is 0."""
    return round(a / b, 3) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def length_summary(lengths: list[int]) -> dict[str, float]:
    """Count, min, percentiles, max and mean of token lengths (the shape of a dataset in one line)."""
    s = sorted(lengths)

    def q(p: float) -> int:
        return s[min(len(s) - 1, int(p * (len(s) - 1) + 0.5))]

    return {"n": len(s), "min": s[0], "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": s[-1],
            "mean": round(sum(s) / len(s), 1)}


RESULT_TAG = "BENCH_RESULT "  # the line a worker prints its result JSON on


def run_worker(script: str | Path, spec: dict[str, Any], *, prefix: str,
               timeout_s: float | None = None) -> dict[str, Any]:
    """Run one side of a benchmark in a fresh process (``script --worker spec.json``, offline, quiet) and return the
    result it printed after ``RESULT_TAG``, with ``process_s`` (the process's wall time) added."""
    import json
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        spec = {**spec, "work_dir": tmp}
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "TRANSFORMERS_VERBOSITY": "error"}
        started = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(Path(script).resolve()), "--worker", str(path)],
                                  capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=timeout_s)
        except subprocess.TimeoutExpired as e:
            tail = "\n".join(str(e.stderr or "").splitlines()[-20:])
            raise RuntimeError(f"{spec['side']} worker ran past {timeout_s:.0f} s and was stopped:\n{tail}") from None
        took = time.perf_counter() - started
    lines = [x for x in proc.stdout.splitlines() if x.startswith(RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-40:])
        raise RuntimeError(f"{spec['side']} worker failed (exit {proc.returncode}):\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1][len(RESULT_TAG):])
    result["process_s"] = round(took, 1)
    return result
