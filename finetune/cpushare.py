"""A CPU training run beside the app that started it: every core while the app is idle, one fewer per core
the app is using while it serves.

torch runs each operation on one thread per core, and the threads wait for each other: when the web server
takes a core, the thread that loses it stalls every step. Measured with ``bench/load_test.py`` on 2 cores,
training with 2 threads fell from 38 to 1.9 steps/s under load, and the app's chats took 40 s instead of
0.3 s. With one thread the run kept its speed under load, but alone it trained 1.7 times slower
(SmolLM2-135M: 2.40 s a step instead of 1.39). So the run watches the app's CPU time (``/proc/PID/stat``:
the app's process only, which works inside a container too, unlike the machine-wide ``/proc/stat``) and sets
its threads at step boundaries: all of its share of the cores while the app is idle, fewer while it is busy.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

ENV = "FINETUNE_SHARE_CPU_WITH"  # the app's process id, set by the app when it starts a local run
BUSY_CORES = 0.25  # the app is using a core when it takes at least this much of one over the last interval


def cpu_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process and all its threads so far; None when it is gone."""
    try:
        text = open(f"/proc/{pid}/stat", encoding="ascii").read()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and parentheses
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuShare:
    """Decides the training's thread count from the app's recent CPU use.

    ``most``: the threads the run may use when the app is idle (its share of the machine's cores).
    ``check`` returns the thread count to use now, or None to keep the current one; it measures at most
    every ``interval`` seconds. Threads go down at once when the app gets busy, and back up only after
    ``calm`` measurements in a row found it idle enough: an app that serves in bursts does not make the run
    switch at every burst (a thread that finds its core taken costs more than a core left idle briefly).
    """

    def __init__(self, app_pid: int, most: int, interval: float = 1.0, calm: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_seconds: Callable[[int], float | None] = process_cpu_seconds):
        self.app_pid, self.most, self.interval, self.calm = app_pid, max(1, most), interval, max(1, calm)
        self._calm_checks = 0
        self.clock, self.cpu_seconds = clock, cpu_seconds
        self.current = self.most
        self.app_cores = 0.0
        self._last = (clock(), cpu_seconds(app_pid))

    def want(self, app_cores: float) -> int:
        """The threads to use while the app takes ``app_cores`` cores."""
        if app_cores < BUSY_CORES:
            return self.most
        return max(1, self.most - math.ceil(app_cores - BUSY_CORES))

    def check(self) -> int | None:
        now = self.clock()
        then, used_then = self._last
        if now - then < self.interval:
            return None
        used = self.cpu_seconds(self.app_pid)
        self._last = (now, used)
        if used is None or used_then is None:  # the app is gone (a restart): the run has the machine
            self.app_cores = 0.0
        else:
            self.app_cores = max(0.0, used - used_then) / (now - then)
        threads = self.want(self.app_cores)
        if threads > self.current:
            self._calm_checks += 1
            if self._calm_checks < self.calm:
                return None
        self._calm_checks = 0
        if threads == self.current:
            return None
        self.current = threads
        return threads


def from_env(cores: int, max_concurrent: int = 1) -> CpuShare | None:
    """The sharing a run started by the app asks for (``$FINETUNE_SHARE_CPU_WITH``), or None."""
    raw = os.environ.get(ENV, "").strip()
    if not raw.isdigit():
        return None
    return CpuShare(int(raw), max(1, cores // max(1, max_concurrent)))
