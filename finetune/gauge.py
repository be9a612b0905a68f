"""The live gauge of a run's ``step`` events: memory and utilisation of the training device."""

from __future__ import annotations

import os
import time


class Gauge:
    """Memory and utilisation of the training device, for the live gauge: ``mem_gb`` in use (GPU: reserved by
    torch; CPU: this process's resident memory), ``mem_total_gb`` and ``util_pct`` (GPU: the card's utilisation
    where NVML is there; CPU: this process's CPU time over the last interval, 100 per busy core)."""

    def __init__(self) -> None:
        from .cpushare import process_cpu_seconds

        self._cpu = process_cpu_seconds
        self._last = (time.monotonic(), process_cpu_seconds(os.getpid()))

    def read(self) -> dict[str, float | None]:
        import torch

        gib = 1024**3
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(torch.cuda.current_device())
            try:
                util: float | None = float(torch.cuda.utilization())
            except (ModuleNotFoundError, RuntimeError):  # no NVML on this machine
                util = None
            return {"mem_gb": round(torch.cuda.memory_reserved() / gib, 2),
                    "mem_total_gb": round(props.total_memory / gib, 2), "util_pct": util}
        now, used = time.monotonic(), self._cpu(os.getpid())
        then, used_then = self._last
        self._last = (now, used)
        util = (round(100 * (used - used_then) / (now - then), 1)
                if used is not None and used_then is not None and now > then else None)
        try:
            rss = int(open("/proc/self/statm", encoding="ascii").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (OSError, ValueError, IndexError):
            return {"mem_gb": None, "mem_total_gb": None, "util_pct": util}
        return {"mem_gb": round(rss / gib, 2), "mem_total_gb": round(total / gib, 2), "util_pct": util}
