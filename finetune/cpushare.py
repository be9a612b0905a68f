"""A CPU training run beside the app that started it: every core while the machine is otherwise idle, one fewer
per core that something else (the app serving, other runs, other programs) is using.

torch runs each operation on one thread per core, and the threads wait for each other: when the web server
takes a core, the thread that loses it stalls every step. Measured with ``bench/load_test.py`` on 2 cores,
training with 2 threads fell from 38 to 1.9 steps/s under load, and the app's chats took 40 s instead of
0.3 s. With one thread the run kept its speed under load, but alone it trained 1.7 times slower
(SmolLM2-135M: 2.40 s a step instead of 1.39). So the run watches the load of the cores it may run on (the
per-core lines of ``/proc/stat`` for the cores of its affinity, less its own CPU time: whatever else runs
there, the app or not, takes a core from it) and sets its threads at step boundaries: all of its share of the
cores while they are otherwise idle, fewer while something else is busy.
"""

from __future__ import annotations

import math
import os
import time
from typing import Callable

ENV = "FINETUNE_SHARE_CPU_WITH"  # set by the app (to its process id) when it starts a local run: share the CPU
BUSY_CORES = 0.25  # a core is in use when something takes at least this much of one over the last interval


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


# /proc/stat per-core fields: user nice system idle iowait irq softirq steal; busy = all but idle and iowait
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)


def cores_busy_seconds(cores: set[int] | None = None) -> float | None:
    """Busy CPU seconds so far of ``cores`` (default: the cores this process may run on), every process counted;
    None where ``/proc/stat`` cannot be read."""
    cores = cores if cores is not None else (os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None)
    try:
        lines = open("/proc/stat", encoding="ascii").read().splitlines()
    except OSError:
        return None
    ticks = 0
    for line in lines:
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or name == "cpu" or (cores is not None and int(name[3:]) not in cores):
            continue
        values = rest.split()
        ticks += sum(int(values[i]) for i in _BUSY_FIELDS if i < len(values))
    return ticks / os.sysconf("SC_CLK_TCK")


def others_cpu_seconds(_pid: int = 0) -> float | None:
    """CPU seconds used on this process's cores by everything but this process (the app, other runs, other
    programs): the machine's load the run shares its cores with. None where it cannot be read."""
    busy, own = cores_busy_seconds(), process_cpu_seconds(os.getpid())
    return None if busy is None or own is None else busy - own


class CpuShare:
    """Decides the training's thread count from the recent CPU use of everything else on its cores.

    ``most``: the threads the run may use when nothing else runs (its share of the machine's cores).
    ``cpu_seconds(app_pid)``: the CPU seconds so far of what the run shares with (default: the machine's load
    on its cores, :func:`others_cpu_seconds`). ``check`` returns the thread count to use now, or None to keep
    the current one; it measures at most every ``interval`` seconds. Threads go down at once when the load
    rises, and back up only after ``calm`` measurements in a row found it low enough: an app that serves in
    bursts does not make the run switch at every burst (a thread that finds its core taken costs more than a
    core left idle briefly).
    """

    def __init__(self, app_pid: int, most: int, interval: float = 1.0, calm: int = 2,
                 clock: Callable[[], float] = time.monotonic,
                 cpu_seconds: Callable[[int], float | None] = others_cpu_seconds):
        self.app_pid, self.most, self.interval, self.calm = app_pid, max(1, most), interval, max(1, calm)
        self._calm_checks = 0
        self.clock, self.cpu_seconds = clock, cpu_seconds
        self.current = self.most
        self.load_cores = 0.0
        self._last = (clock(), cpu_seconds(app_pid))

    def want(self, load_cores: float) -> int:
        """The threads to use while something else takes ``load_cores`` cores."""
        if load_cores < BUSY_CORES:
            return self.most
        return max(1, self.most - math.ceil(load_cores - BUSY_CORES))

    def check(self) -> int | None:
        now = self.clock()
        then, used_then = self._last
        if now - then < self.interval:
            return None
        used = self.cpu_seconds(self.app_pid)
        self._last = (now, used)
        if used is None or used_then is None:  # nothing to measure (gone, or unreadable): the run has the machine
            self.load_cores = 0.0
        else:
            self.load_cores = max(0.0, used - used_then) / (now - then)
        threads = self.want(self.load_cores)
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


def for_device(device: str) -> CpuShare | None:
    """The app's request to share the CPU (:func:`from_env`) for a run on ``device``: on CPU only, None otherwise."""
    if device != "cpu":
        return None
    from . import slots

    try:
        concurrent = slots.max_concurrent()
    except ValueError:
        concurrent = 1
    return from_env(cpu_cores(), concurrent)
