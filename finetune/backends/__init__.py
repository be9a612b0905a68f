"""Where training runs. Each backend has ``start(config, root, ...) -> run_id`` plus status, stop and logs by run
id; the UI and the CLI pick one by name from ``BACKENDS``.

- ``local``: a process on this machine (``status`` reads the run folder);
- ``hf-jobs``: a Hugging Face Job on a rented GPU (``sync`` mirrors the job's log into the run folder; the
  user's token is passed as ``token=`` or read from HF_TOKEN);
- ``zerogpu``: ``start`` creates the run folder; the app then drives chained ``@spaces.GPU`` calls inside its own
  process with ``zerogpu.run_chunked`` (only on a ZeroGPU Space: ``zerogpu.available()``).

Local runs wait in the machine-wide queue of ``backends.queue`` when every training slot is busy.
"""

from __future__ import annotations

from . import hfjobs, local, zerogpu

BACKENDS = {"local": local, "hf-jobs": hfjobs, "zerogpu": zerogpu}


def get_backend(name: str):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available here: {', '.join(BACKENDS)}")
    return BACKENDS[name]
