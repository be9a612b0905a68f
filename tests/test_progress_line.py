"""The progress line's figures from the run folder: the ETA is measured from the steps after the process's first
(which loads and warms up), the estimator's before, and none once the run trains no more; elapsed time goes on
across a resume; the CPU gauge speaks in cores."""

from __future__ import annotations

from finetune import runs
from finetune.callbacks import eta_seconds
from finetune.config import RunConfig
from finetune.events import EventLog

GONE = 2**22 + 7


def test_eta_is_measured_after_the_first_step_and_estimated_before():
    # the first step took 60 s (loading, warm-up), the next ones 2 s: 4 steps left take 8 s, not 4 x 60
    assert eta_seconds(2, 6, 162.0, (1, 160.0)) == (8.0, False)
    assert eta_seconds(1, 6, 160.0, (1, 160.0), estimated_step_s=1.5) == (7.5, True)
    assert eta_seconds(1, 6, 160.0, (1, 160.0)) == (None, False)


def test_the_first_step_event_carries_the_estimators_eta(tmp_path):
    import time

    from transformers import TrainerControl, TrainerState, TrainingArguments

    from finetune.callbacks import events_callback
    from finetune.halt import Halt

    log = EventLog(tmp_path)
    cb = events_callback(log, tmp_path, Halt(started_at=time.time()), estimated_step_s=2.0)
    args, state, control = TrainingArguments(output_dir=str(tmp_path), logging_steps=1), TrainerState(), TrainerControl()
    state.max_steps = 10
    cb.on_train_begin(args, state, control)
    time.sleep(0.3)  # a slow first step
    state.global_step = 1
    cb.on_step_end(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 2.0})
    state.global_step = 2
    time.sleep(0.05)
    cb.on_step_end(args, state, control)
    cb.on_log(args, state, control, logs={"loss": 1.9})
    first, second = [e for e in runs.read_events(tmp_path) if e["type"] == "step"]
    assert first["eta_s"] == 18.0 and first["eta_estimated"] is True  # 9 steps x the estimate, not x 0.3 s
    assert "eta_estimated" not in second and second["eta_s"] < 8 * 0.3  # 8 steps x the measured ~0.05 s


def make_run(root, events):
    run_dir = root / "r1"
    run_dir.mkdir()
    RunConfig().save(run_dir / runs.CONFIG_FILE)
    log = EventLog(run_dir)
    for kind, fields in events:
        log.emit(kind, **fields)
    return run_dir


def test_a_run_that_trains_no_more_has_no_eta_and_a_resume_keeps_counting_elapsed(tmp_path):
    run_dir = make_run(tmp_path, [
        ("started", {"max_steps": 10, "pid": GONE, "device": "cpu", "cpu_threads": 2}),
        ("step", {"step": 5, "max_steps": 10, "loss": 1.0, "elapsed_s": 50.0, "eta_s": 50.0}),
        ("stopped", {"step": 5, "pid": GONE}),
    ])
    state = runs.read_run(run_dir)
    assert state.status == "stopped" and state.eta_s is None and state.elapsed_s == 50.0
    log = EventLog(run_dir)
    log.emit("started", max_steps=10, pid=GONE, device="cpu", cpu_threads=2)
    log.emit("step", step=6, max_steps=10, loss=0.9, elapsed_s=12.0, eta_s=40.0)
    log.emit("stopped", step=6, pid=GONE)
    state = runs.read_run(run_dir)
    assert state.elapsed_s == 62.0 and state.eta_s is None and state.cpu_threads == 2


def test_progress_line_words():
    from finetune.ui.train_tab import progress_html

    base = {"run_id": "r1", "step": 1, "max_steps": 10, "device": "cpu", "mem_gb": 1.0, "mem_total_gb": 8.0,
            "util_pct": 164.0, "cpu_threads": 2}
    running = progress_html(base | {"status": "running", "eta_s": 90.0, "eta_estimated": True})
    assert "ETA ~1m30s (estimated)" in running and "CPU: 1.6 of 2 cores busy (82%)" in running
    assert "ETA 1m30s" in progress_html(base | {"status": "running", "eta_s": 90.0})
    assert "ETA" not in progress_html(base | {"status": "finished", "eta_s": 90.0})


def test_durations_read_as_people_read_them():
    """One home for the wording of a time: the progress line's and the evaluation's clock, the estimates' rough
    figure (its doctests)."""
    import doctest

    from finetune import durations

    assert doctest.testmod(durations).failed == 0
    assert durations.clock(-3) == "0m00s"  # a clock never runs backwards
