"""Where training runs. Each backend has ``start(config, root, ...) -> run_id`` plus status, stop and logs by run
id; the UI and the CLI pick one by name from ``BACKENDS``.

- ``local``: a process on this machine (``status`` reads the run folder);
- ``hf-jobs``: a Hugging Face Job on a rented GPU (``sync`` mirrors the job's log into the run folder; the
  user's token is passed as ``token=`` or read from HF_TOKEN);
- ZeroGPU runs inside the app's own process in chunks: ``backends.zerogpu.run_chunked``.
"""

from __future__ import annotations

from . import hfjobs, local

BACKENDS = {"local": local, "hf-jobs": hfjobs}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available here: {', '.join(BACKENDS)}")
    return BACKENDS[name]
