"""A run the app starts shares the CPU with it: every core while the app is idle, one fewer per core the app
uses while it serves (finetune.cpushare), measured from the app's own CPU time."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from finetune import cpushare
from finetune.events import read_events
from finetune.train import train
from test_train import tiny_config


class Fake:
    """A clock and an app CPU-time counter the test moves by hand."""

    def __init__(self):
        self.now, self.used = 100.0, 50.0

    def clock(self) -> float:
        return self.now

    def cpu(self, pid: int) -> float | None:
        return self.used


def test_threads_follow_the_apps_cpu_use():
    f = Fake()
    share = cpushare.CpuShare(1234, most=2, interval=1.0, clock=f.clock, cpu_seconds=f.cpu)
    assert share.current == 2 and share.check() is None  # too soon to measure
    f.now += 1.0
    assert share.check() is None  # the app was idle: keep every core
    f.now, f.used = f.now + 2.0, f.used + 1.9  # the app took ~1 core for 2 s
    assert share.check() == 1 and share.load_cores == pytest.approx(0.95)
    f.now, f.used = f.now + 0.5, f.used + 0.5
    assert share.check() is None  # within the interval: no new measurement
    f.now, f.used = f.now + 3.0, f.used + 0.05  # idle again (0.55 s of CPU over the 3.5 s since the last check)
    assert share.check() is None and share.load_cores == pytest.approx(0.157, abs=0.001)  # once is not enough
    f.now, f.used = f.now + 1.0, f.used + 0.6  # a short burst: still at one thread
    assert share.check() is None and share.current == 1
    f.now += 1.0
    assert share.check() is None  # idle once more
    f.now += 1.0
    assert share.check() == 2  # idle twice in a row: every core again
    f.now, f.used = f.now + 1.0, f.used + 1.0
    assert share.check() == 1  # busy: down at once
    f.cpu = lambda pid: None  # nothing to measure: the run has the machine
    f.now += 1.0
    assert share.check() is None and share.load_cores == 0
    f.now += 1.0
    assert share.check() == 2
    big = cpushare.CpuShare(1, most=8, clock=f.clock, cpu_seconds=lambda pid: 0.0)
    assert [big.want(x) for x in (0.0, 0.2, 0.3, 1.0, 1.3, 2.5, 20)] == [8, 8, 7, 7, 6, 5, 1]


def test_process_cpu_seconds_reads_a_busy_process_and_none_for_a_gone_one():
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        first = cpushare.process_cpu_seconds(busy.pid)
        import time

        deadline = time.monotonic() + 20  # on a loaded machine the busy process gets its share late
        while cpushare.process_cpu_seconds(busy.pid) - first <= 0.2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert cpushare.process_cpu_seconds(busy.pid) - first > 0.2
    finally:
        busy.kill()
        busy.wait()
    assert cpushare.process_cpu_seconds(busy.pid) is None


def test_only_a_run_the_app_started_shares(monkeypatch):
    monkeypatch.delenv(cpushare.ENV, raising=False)
    assert cpushare.from_env(4) is None  # python -m finetune train on its own: torch's own threads
    monkeypatch.setenv(cpushare.ENV, str(os.getpid()))
    share = cpushare.from_env(8, max_concurrent=2)
    assert share.app_pid == os.getpid() and share.most == 4  # its share of the cores when two runs train at once
    assert share.cpu_seconds is cpushare.others_cpu_seconds  # it watches the machine's load, not the app alone


def test_the_machines_load_counts_not_only_the_apps():
    """A busy program that is not the app takes a core from the run: the run sees it (the app, asleep, uses none)."""
    import time

    app = subprocess.Popen([sys.executable, "-c", "import time\ntime.sleep(60)"])
    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 60: pass"])
    try:
        time.sleep(0.3)
        share = cpushare.CpuShare(app.pid, most=cpushare.cpu_cores(), interval=1.0)
        app_before, others_before = cpushare.process_cpu_seconds(app.pid), cpushare.others_cpu_seconds()
        spin = time.time()
        while time.time() - spin < 1.2:  # the run itself is busy too: its own CPU time is not load
            pass
        app_used = cpushare.process_cpu_seconds(app.pid) - app_before
        others_used = cpushare.others_cpu_seconds() - others_before
        share.check()
    finally:
        for p in (app, busy):
            p.kill()
            p.wait()
    assert app_used < 0.05  # watching the app alone, the run would see an idle machine
    assert others_used > 0.3 and share.load_cores > 0.3, (others_used, share.load_cores)
    if cpushare.cpu_cores() >= 2:
        assert share.current < cpushare.cpu_cores()  # it gave a core back


@pytest.mark.skipif(cpushare.cpu_cores() < 2, reason="needs 2 cores to give one back")
def test_a_sharing_run_gives_a_core_back_while_the_app_is_busy(tiny_model_dir, tmp_path, monkeypatch):
    """A stand-in for a busy app (a process spinning on one core): the run drops to one thread fewer."""
    import torch

    busy = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 120: pass"])
    before = torch.get_num_threads()
    monkeypatch.setenv(cpushare.ENV, str(busy.pid))
    cfg = tiny_config(tiny_model_dir, max_steps=150, batch_size=2, max_length=64, save_steps=1000)
    try:
        result = train(cfg, runs_root=tmp_path)
    finally:
        busy.kill()
        busy.wait()
        torch.set_num_threads(before)
    events = read_events(result.run_dir)
    started = next(e for e in events if e["type"] == "started")
    cores = cpushare.cpu_cores()
    assert started["shares_cpu"] is True and started["cpu_threads"] == cores
    changes = [e for e in events if e["type"] == "threads"]
    assert changes and changes[0]["threads"] == cores - 1 and changes[0]["load_cores"] >= cpushare.BUSY_CORES, changes
    assert result.status == "finished"
