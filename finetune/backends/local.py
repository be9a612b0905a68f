"""This machine: each run is its own process (``python -m finetune train CONFIG --run-dir DIR``).

The web server never trains in its own process, so it stays responsive, a crash cannot take it down,
stop is reliable, and an app restart finds the run still going or its folder in its last state.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from .. import runs
from ..config import RunConfig

LOG_FILE = "process.log"


def start(config: RunConfig, root: str | Path | None = None, run_id: str | None = None) -> str:
    """Create the run folder, write the config, launch the training process; return the run id."""
    run_id = runs.check_run_id(run_id) if run_id else runs.new_run_id(config.name)
    run_dir = runs.run_path(run_id, root)
    run_dir.mkdir(parents=True, exist_ok=False)
    config.save(run_dir / runs.CONFIG_FILE)
    return _launch(run_dir)


def resume(run_id: str, root: str | Path | None = None) -> str:
    """Continue a paused, stopped or interrupted run from its last checkpoint."""
    run_dir = runs.run_path(run_id, root)
    if not (run_dir / runs.CONFIG_FILE).exists():
        raise runs.RunError(f"no run '{run_id}' here")
    if status(run_id, root).status == "running":
        raise runs.RunError(f"run '{run_id}' is already running")
    return _launch(run_dir)


def _launch(run_dir: Path) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env["PYTHONUNBUFFERED"] = "1"
    root = Path(__file__).resolve().parent.parent.parent
    log = open(run_dir / LOG_FILE, "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "finetune", "train", "--run-dir", str(run_dir.resolve()), "--quiet"],
        cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,  # survives a restart of the app and is not hit by its Ctrl-C
    )
    log.close()
    # Reap the process when it ends: an unreaped (zombie) child still answers kill(pid, 0), so a crashed run
    # would read as "running" for as long as the app lives.
    threading.Thread(target=proc.wait, name=f"reap-{run_dir.name}", daemon=True).start()
    return run_dir.name


def status(run_id: str, root: str | Path | None = None) -> runs.RunState:
    return runs.read_run(runs.run_path(run_id, root))


def stop(run_id: str, root: str | Path | None = None) -> None:
    """Ask the run to stop at the next step; it writes a checkpoint and a ``stopped`` event."""
    runs.request_stop(runs.run_path(run_id, root))


def logs(run_id: str, root: str | Path | None = None, tail: int = 200) -> str:
    path = runs.run_path(run_id, root) / LOG_FILE
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        return ""
    return "\n".join(lines[-tail:])
