"""Where training runs. Each backend has ``start(config, ...) -> run_id``, ``status(run_id)``, ``stop(run_id)``
and ``logs(run_id)``; the UI and the CLI pick one by name from ``BACKENDS``."""

from __future__ import annotations

from . import local

BACKENDS = {"local": local}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available here: {', '.join(BACKENDS)}")
    return BACKENDS[name]
