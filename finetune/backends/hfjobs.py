"""Hugging Face Jobs: the same ``python -m finetune train`` on a rented GPU, submitted with huggingface_hub's
Jobs API, pushing the adapter to the user's Hub repo at the end.

What is sent (see :func:`job_spec`, a plain dict you can print before anything leaves the machine):
- ``image``: this app's own Space image (``hf.co/spaces/<space>``: the same code and libraries as the app)
  or a Docker image with finetune installed;
- ``command``: ``python -m finetune train --config-env FINETUNE_CONFIG_B64 --run-dir ... --events-json
  --push-to REPO`` (plus ``--distributed ddp|fsdp --num-processes N`` on an N-GPU flavor: the command starts
  accelerate itself with the generated config, as on one's own machine);
- ``env``: the run config as base64 YAML (a job has no file from here), nothing secret;
- ``secrets``: the *name* ``HF_TOKEN`` only. :func:`request` puts the user's token there at submission, the
  one place it goes: never the command, the env, the logs, the run folder or the events;
- ``timeout``: the time estimate of :mod:`finetune.memory` times a margin, plus start-up time.

Status and live loss come from the job's log: the train command prints our events as JSON lines
(:func:`parse_events`). Locally the run has a folder like any other (``config.yaml``, ``job.json``,
``events.jsonl`` mirrored from the log by :func:`sync`), so the run list shows it after an app restart.

>>> spec = job_spec(RunConfig(), "a10g-small", "me/my-adapter", space_id="me/finetune", timeout_s=3600)  # doctest: +SKIP
>>> spec["flavor"], spec["secrets"], spec["command"][:4]  # doctest: +SKIP
('a10g-small', ['HF_TOKEN'], ['python', '-m', 'finetune', 'train'])
"""

from __future__ import annotations

import base64
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from .. import memory, runs
from ..hub import _scrub  # the token never leaves in a message or a log line
from ..config import RunConfig
from ..errors import UserError, is_programming_error
from ..events import EVENTS_FILE, TERMINAL, EventLog, read_events
from ..io import atomic_write_json, atomic_write_text
from ..refs import classify

if TYPE_CHECKING:
    from ..launch_plan import LaunchPlan

NAME = "hf-jobs"
TOKEN_SECRET = "HF_TOKEN"  # huggingface_hub and hub.push_adapter read the token from this variable
CONFIG_ENV = "FINETUNE_CONFIG_B64"
SPACE_APP_DIR = "/home/user/app"  # where a Gradio Space's image holds the app's code
JOB_RUNS_DIR = "/tmp/finetune-runs"  # writable in any image; the job's disk is gone when it ends
DEFAULT_FLAVOR = "a10g-small"

# Jobs flavor -> the GPU in memory.GPUS (for the time estimate); the count comes from the name (x2, x4, x8).
FLAVOR_GPUS = {flavor: gpu for flavor, (gpu, _) in memory.JOBS_FLAVORS.items()}  # the catalog's Jobs flavors
# Timeout = estimate x TIME_MARGIN + STARTUP_S, at least MIN_TIMEOUT_S. The estimate is +-35% on its anchors
# (memory.tokens_per_second), hence 1.5x; start-up is the image pull, the model download and its load
# (a 7B model in 4-bit: 5-10 min). A job is billed per minute it runs, so a generous limit costs nothing
# unless the job hangs.
TIME_MARGIN = 1.5
STARTUP_S = 900
MIN_TIMEOUT_S = 1800

# Job stage -> run status when the log has no final event of its own.
_STAGE_STATUS = {"SCHEDULING": "queued", "RUNNING": "running", "COMPLETED": "finished", "CANCELED": "stopped",
                 "ERROR": "failed", "DELETED": "failed"}
_DONE_STAGES = ("COMPLETED", "CANCELED", "ERROR", "DELETED")


class JobError(ValueError, UserError):
    """A job that cannot be built or reached; the message says what to change (and never holds the token)."""


# ---------------------------------------------------------------------------------------------
# the job specification (pure)


def gpu_count(flavor: str) -> int:
    """GPUs of a flavor: ``a10g-largex2`` -> 2, ``l4x4`` -> 4, ``l40sx1`` / ``h200`` -> 1."""
    return memory.JOBS_FLAVORS[check_flavor(flavor)][1]


def check_flavor(flavor: str) -> str:
    if flavor not in FLAVOR_GPUS:
        raise JobError(f"unknown Jobs flavor '{flavor}'; choose a GPU flavor: {', '.join(FLAVOR_GPUS)}")
    return flavor


def portable_config(config: RunConfig) -> RunConfig:
    """The config as a job can run it: the embedded default model by its Hub id, and no local paths (the job
    cannot see this machine's files)."""
    from ..models import EMBEDDED_REPO_ID

    cfg = copy.deepcopy(config)
    model = (cfg.model.id or "").strip()
    if not model:
        cfg.model.id = EMBEDDED_REPO_ID  # the same model the app embeds, downloaded by the job
    elif classify(model, strict=False).kind == "path" or cfg.model.gguf_file and Path(cfg.model.gguf_file).exists():
        raise JobError(f"model.id {model} is a path on this machine, which the job cannot read; upload the model "
                       "to the Hub and use its id (org/name)")
    source = (cfg.data.source or "").strip()
    if source and classify(source, strict=False).kind == "path":
        raise JobError(f"data.source {source} is a file on this machine, which the job cannot read; push it as a "
                       "dataset (the Dataset tab's push, or finetune.hub.push_dataset) and use its id")
    if cfg.training.init_adapter.strip():
        raise JobError("training.init_adapter is an adapter on this machine, which the job cannot read; train the "
                       "continued run here (local backend), or leave it empty for a fresh LoRA")
    return cfg


def estimate_timeout_s(config: RunConfig, flavor: str, tokens: int | None = None) -> int:
    """The job's time limit from memory.estimate_time on the flavor's GPU(s), with a margin (see TIME_MARGIN).

    ``tokens``: training tokens per epoch (needed when the run counts epochs, not steps). A steps-based run
    is bounded by every example filling ``max_length``: steps x batch x grad_accum x max_length x GPUs.
    """
    gpu = memory.get_gpu(FLAVOR_GPUS[check_flavor(flavor)])
    n = gpu_count(flavor)
    t = config.training
    if t.max_steps > 0:
        total, epochs = t.max_steps * t.batch_size * t.grad_accum * t.max_length * n, 1.0
    elif tokens:
        total, epochs = tokens, t.epochs
    else:
        raise JobError("the time limit of an epochs-based run needs its size: pass tokens (training tokens per "
                       "epoch, printed by `python -m finetune format`), set training.max_steps, or give timeout_s")
    try:
        spec = memory.spec_for_config(config)
        setup = memory.setup_for(config, gpu)
        if n > 1:
            plan = job_plan(config, flavor)
            setup = setup.with_(strategy=plan.strategy, gpus=n, offload=plan.offload)
        est = memory.estimate_time(spec, setup, gpu, total, epochs)
    except memory.EstimateError as e:
        raise JobError(f"cannot estimate the run's duration ({e}); give timeout_s (--timeout MINUTES)") from e
    seconds = est.seconds
    return max(MIN_TIMEOUT_S, math.ceil((seconds * TIME_MARGIN + STARTUP_S) / 60) * 60)


def job_plan(config: RunConfig, flavor: str) -> LaunchPlan:
    """The layout of the run on the flavor's GPUs (``training.distributed``; ``auto``: data parallel when the run
    fits one of them, else sharded), as the job's own ``python -m finetune train`` will plan it there."""
    from ..launch_plan import LaunchError, plan

    gpu = memory.get_gpu(FLAVOR_GPUS[check_flavor(flavor)])
    cfg = copy.deepcopy(config)
    cfg.training.num_processes = cfg.training.num_processes or gpu_count(flavor)
    try:
        fits = memory.estimate(cfg, gpu=gpu).fits if cfg.training.distributed == "auto" else None
        return plan(cfg, gpus=gpu_count(flavor), fits_one=fits)
    except (LaunchError, memory.EstimateError) as e:
        raise JobError(f"flavor {flavor}: {e}") from e


def job_command(run_dir: str, flavor: str, repo_id: str | None, config: RunConfig | None = None) -> list[str]:
    """The train command the job runs. On a multi-GPU flavor it is the same command with ``--num-processes N``:
    the job's ``python -m finetune train`` plans the layout and starts accelerate with the generated config,
    as on one's own machine (``launch_plan``)."""
    n = gpu_count(flavor)
    cmd = ["python", "-m", "finetune", "train", "--config-env", CONFIG_ENV, "--run-dir", run_dir, "--events-json"]
    if n > 1:
        layout = job_plan(config or RunConfig(), flavor)
        cmd += ["--distributed", layout.strategy, "--num-processes", str(layout.num_processes)]
    return cmd + (["--push-to", repo_id] if repo_id else [])


class JobSpec(TypedDict):
    """A job as :func:`job_spec` builds it: ``HfApi.run_job``'s keyword arguments, minus the token."""
    image: str
    command: list[str]
    env: dict[str, str]
    secrets: list[str]  # names only: request() fills in the value
    flavor: str
    timeout: int  # seconds
    labels: dict[str, str]  # {"finetune-run": run id}
    namespace: str | None


def job_spec(config: RunConfig, flavor: str = DEFAULT_FLAVOR, repo_id: str | None = None, *,
             run_id: str | None = None, space_id: str | None = None, image: str | None = None,
             timeout_s: int | None = None, tokens: int | None = None, run_root: str = JOB_RUNS_DIR,
             namespace: str | None = None) -> JobSpec:
    """What would be sent to the Jobs API (keyword arguments of ``HfApi.run_job``, minus the token).

    ``repo_id``: where the job pushes the adapter (None: no push; the adapter dies with the job's disk).
    ``space_id`` (default ``$SPACE_ID``) names the Space whose image runs the job; ``image`` replaces it with a
    Docker image that has finetune importable. ``timeout_s`` overrides the estimate.
    """
    from ..config import validate
    from ..hub import check_repo_id

    check_flavor(flavor)
    cfg = validate(portable_config(config), source="config")
    if repo_id:
        check_repo_id(repo_id)
    env = {CONFIG_ENV: base64.b64encode(cfg.to_yaml().encode("utf-8")).decode("ascii"),
           "PYTHONUNBUFFERED": "1",  # events reach the log as they happen
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
    space_id = space_id or os.environ.get("SPACE_ID")
    if image:
        pass
    elif space_id:
        image = f"hf.co/spaces/{space_id}"
        env["PYTHONPATH"] = SPACE_APP_DIR  # finetune importable whatever the image's working directory
    else:
        raise JobError("a job runs this app's code from a Space image: give space_id (your copy of this Space, "
                       "e.g. you/finetune; --space) or image (a Docker image with finetune installed; --image)")
    run_id = runs.check_run_id(run_id) if run_id else runs.new_run_id(cfg.name)
    return {
        "image": image,
        "command": job_command(f"{run_root.rstrip('/')}/{run_id}", flavor, repo_id, cfg),
        "env": env,
        "secrets": [TOKEN_SECRET],  # names only: request() fills in the value
        "flavor": flavor,
        "timeout": int(timeout_s) if timeout_s else estimate_timeout_s(cfg, flavor, tokens),
        "labels": {"finetune-run": run_id},
        "namespace": namespace,
    }


def request(spec: JobSpec, token: str | None) -> dict[str, Any]:
    """The ``run_job`` keyword arguments: the spec with the token as the value of its secret, and as the
    request's own authentication. Refuses a spec that holds the token anywhere else."""
    token = _check_token(token)
    config_yaml = base64.b64decode(spec.get("env", {}).get(CONFIG_ENV, "")).decode("utf-8", errors="replace")
    if token in json.dumps(spec) or token in config_yaml:  # the config travels base64-encoded
        raise JobError("the Hugging Face token appears in the job's config or command; remove it (the token "
                       "travels as a job secret only)")
    kwargs = {k: v for k, v in spec.items() if k != "secrets"}
    kwargs["secrets"] = {name: token for name in spec.get("secrets", [])}
    kwargs["token"] = token
    return kwargs


def _check_token(token: str | None) -> str:
    from ..hub import HubError, resolve_token

    try:
        return resolve_token(token)
    except HubError as e:
        raise JobError(str(e)) from e


def _api(api: Any) -> Any:
    """``api`` (an ``HfApi`` or a stand-in with its job methods), else a new ``HfApi``."""
    if api is not None:
        return api
    from huggingface_hub import HfApi

    return HfApi()


def submit(spec: JobSpec, token: str | None, api: Any = None) -> dict[str, Any]:
    """Submit the job; returns ``{job_id, url, namespace, stage}``."""
    kwargs = request(spec, token)
    try:
        info = _api(api).run_job(**kwargs)
    except Exception as e:  # noqa: BLE001 - auth/quota/network errors become one message without the token
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise JobError(_scrub(f"submitting the job failed: {e.__class__.__name__}: {str(e).splitlines()[0] if str(e) else ''}; "
                              "check the token has the 'jobs' permission and the account has billing set up",
                              kwargs["token"])) from None
    owner = getattr(getattr(info, "owner", None), "name", None)
    return {"job_id": info.id, "url": getattr(info, "url", ""), "namespace": owner or spec.get("namespace"),
            "stage": _stage(info)}


def _stage(info: Any) -> str:
    """``JobStage.RUNNING`` -> "RUNNING" (a str enum prints its class name in Python 3.11)."""
    stage = getattr(getattr(info, "status", None), "stage", None) or "SCHEDULING"
    return str(getattr(stage, "value", stage))


# ---------------------------------------------------------------------------------------------
# status from the log


def parse_events(log: str | list[str]) -> list[dict[str, Any]]:
    """Our events among a job's log lines: the JSON objects with a ``type`` and a ``time`` (other lines, e.g.
    library warnings, are skipped)."""
    lines = log.splitlines() if isinstance(log, str) else [x for chunk in log for x in str(chunk).splitlines()]
    events: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("type"), str) and "time" in obj:
            events.append(obj)
    return events


def summarize(events: list[dict[str, Any]], stage: str | None = None) -> dict[str, Any]:
    """Status, step, loss curve and messages of a run from its events and the job's stage."""
    out: dict[str, Any] = {"status": "queued", "step": 0, "max_steps": 0, "loss": None, "losses": [], "eval_loss": None,
           "message": "", "pushed_to": None}
    for e in events:
        kind = e["type"]
        if kind == "started":
            out["status"] = "running"
            out["max_steps"] = e.get("max_steps") or out["max_steps"]
        elif kind == "step":
            out["step"], out["max_steps"] = e.get("step", out["step"]), e.get("max_steps") or out["max_steps"]
            if e.get("loss") is not None:
                out["loss"] = e["loss"]
                out["losses"] = [p for p in out["losses"] if p[0] < e["step"]] + [(e["step"], e["loss"])]
        elif kind == "eval":
            out["eval_loss"] = e.get("eval_loss")
        elif kind in TERMINAL or kind == "paused":
            out["status"], out["message"] = kind, e.get("message", "")
        elif kind == "pushed":
            out["pushed_to"] = e.get("url") or e.get("repo_id")
        elif kind == "push_failed":
            out["status"], out["message"] = "failed", e.get("message", "")
    if stage in _DONE_STAGES and out["status"] not in TERMINAL:
        out["status"] = _STAGE_STATUS[stage]  # the job ended without a final event (killed, timed out, crashed)
    elif stage == "SCHEDULING":
        out["status"] = "queued"
    return out


def status(job_id: str, token: str | None, api: Any = None, namespace: str | None = None) -> dict[str, Any]:
    """The job's stage plus what its log says: status, step/max_steps, loss, loss curve, events."""
    token = _check_token(token)
    api = _api(api)
    try:
        info = api.inspect_job(job_id=job_id, namespace=namespace, token=token)
        # a job's own output could echo the token (a failing library printing its request): scrubbed before
        # the lines become events, the run folder or a response
        lines = [_scrub(line, token) for line in api.fetch_job_logs(job_id=job_id, namespace=namespace, token=token)]
    except Exception as e:  # noqa: BLE001 - network/auth errors become one message without the token
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise JobError(_scrub(f"cannot read job {job_id}: {e.__class__.__name__}: {e}", token)) from None
    stage = _stage(info)
    events = parse_events(lines)
    out = summarize(events, stage)
    if stage in ("ERROR", "DELETED") and not out["message"]:
        out["message"] = _scrub(info.status.message or f"the job ended with {stage}", token)
    return {"job_id": job_id, "stage": stage, **out, "events": events}


def cancel(job_id: str, token: str | None, api: Any = None, namespace: str | None = None) -> None:
    """Cancel the job (billing stops; the adapter is lost unless it was pushed)."""
    token = _check_token(token)
    try:
        _api(api).cancel_job(job_id=job_id, namespace=namespace, token=token)
    except Exception as e:  # noqa: BLE001 - the Hub client's errors become one message without the token
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise JobError(_scrub(f"cannot cancel job {job_id}: {e.__class__.__name__}: {e}", token)) from None


# ---------------------------------------------------------------------------------------------
# the run folder of a job (the backend interface: start / sync / stop / logs by run id)


def start(config: RunConfig, root: str | Path | None = None, *, token: str | None = None,
          flavor: str = DEFAULT_FLAVOR, repo_id: str | None = None, space_id: str | None = None,
          image: str | None = None, timeout_s: int | None = None, tokens: int | None = None, api: Any = None) -> str:
    """Build the spec, submit it, create the local run folder (config, ``job.json``, a ``submitted`` event);
    return the run id. The token comes from ``token`` or ``HF_TOKEN`` and is stored nowhere."""
    spec = job_spec(config, flavor, repo_id, space_id=space_id, image=image, timeout_s=timeout_s, tokens=tokens)
    run_id = spec["labels"]["finetune-run"]
    job = submit(spec, token, api)
    run_dir = runs.run_path(run_id, root)
    run_dir.mkdir(parents=True, exist_ok=False)
    portable_config(config).save(run_dir / runs.CONFIG_FILE)  # what the job runs (model by its Hub id)
    record = {**job, "flavor": flavor, "repo_id": repo_id, "timeout_s": spec["timeout"], "image": spec["image"],
              "submitted": round(time.time(), 3)}
    atomic_write_json(run_dir / runs.JOB_FILE, record)
    runs.record_backend(run_dir, NAME)
    EventLog(run_dir).emit("submitted", job_id=job["job_id"], flavor=flavor, url=job["url"], repo_id=repo_id)
    return run_id


def read_job(run_id: str, root: str | Path | None = None) -> dict[str, Any]:
    path = runs.run_path(run_id, root) / runs.JOB_FILE
    if not path.exists():
        raise JobError(f"run '{run_id}' is not a Hugging Face job (no {runs.JOB_FILE}); use the local backend")
    job: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return job


def sync(run_id: str, root: str | Path | None = None, *, token: str | None = None, api: Any = None) -> runs.RunState:
    """Mirror the job's log events into the run folder (so the run list shows them) and return its state."""
    run_dir = runs.run_path(run_id, root)
    job = read_job(run_id, root)
    st = status(job["job_id"], token, api, job.get("namespace"))
    local = [e for e in read_events(run_dir) if e.get("type") == "submitted"]
    mirrored = local + st["events"]
    if st["stage"] in _DONE_STAGES and not any(e["type"] in TERMINAL for e in st["events"]):
        # the job ended without a final event of its own (cancelled, timed out, crashed): say so
        kind = "stopped" if st["stage"] == "CANCELED" else "failed"
        mirrored.append({"type": kind, "time": round(time.time(), 3), "message": st["message"] or st["stage"]})
    atomic_write_text(run_dir / EVENTS_FILE, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in mirrored))
    atomic_write_json(run_dir / runs.JOB_FILE, {**job, "stage": st["stage"], "pushed_to": st["pushed_to"]})
    return runs.read_run(run_dir)


def stop(run_id: str, root: str | Path | None = None, *, token: str | None = None, api: Any = None) -> None:
    job = read_job(run_id, root)
    cancel(job["job_id"], token, api, job.get("namespace"))


def logs(run_id: str, root: str | Path | None = None, *, token: str | None = None, api: Any = None, tail: int = 200) -> str:
    job = read_job(run_id, root)
    token = _check_token(token)
    try:
        lines = [_scrub(line, token) for line in
                 _api(api).fetch_job_logs(job_id=job["job_id"], namespace=job.get("namespace"), token=token)]
    except Exception as e:  # noqa: BLE001 - the Hub client's errors become one message without the token
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise JobError(_scrub(f"cannot read the log of job {job['job_id']}: {e.__class__.__name__}: {e}", token)) from None
    return "\n".join(lines[-tail:])


class HFJobsBackend:
    """The :class:`~finetune.backends.base.Backend` of Hugging Face Jobs, for one caller: ``token`` (None:
    HF_TOKEN) pays and is sent as the job's secret only; ``flavor`` and ``repo_id`` (where the job pushes the
    adapter) apply to ``start``. ``status`` mirrors the job's log into the run folder at most every
    ``sync_every_s`` seconds (each read fetches the whole log), and not once the run has ended; with 0, at
    every call."""

    name = NAME

    def __init__(self, token: str | None = None, *, api: Any = None, flavor: str = DEFAULT_FLAVOR,
                 repo_id: str | None = None, space_id: str | None = None, image: str | None = None,
                 timeout_s: int | None = None, tokens: int | None = None, sync_every_s: float = 0.0) -> None:
        self.token, self.api, self.flavor, self.repo_id = token, api, flavor, repo_id
        self.space_id, self.image, self.timeout_s, self.tokens = space_id, image, timeout_s, tokens
        self.sync_every_s = sync_every_s

    def start(self, config: RunConfig, root: Path) -> str:
        return start(config, root, token=self.token, flavor=self.flavor, repo_id=self.repo_id,
                     space_id=self.space_id, image=self.image, timeout_s=self.timeout_s, tokens=self.tokens,
                     api=self.api)

    def status(self, run_dir: Path) -> runs.RunState:
        """Synced from the job's log when due; a JobError says the job could not be read (the folder still
        holds the last known state)."""
        if self.sync_every_s > 0:  # 0: an explicit request (the CLI, a stop) always reads the job
            state = runs.read_run(run_dir)
            job_file = run_dir / runs.JOB_FILE
            if state.status in TERMINAL or time.time() - job_file.stat().st_mtime < self.sync_every_s:
                return state
        return sync(run_dir.name, run_dir.parent, token=self.token, api=self.api)

    def stop(self, run_dir: Path) -> None:
        """Cancel the job (billing stops; the adapter is lost unless it was pushed)."""
        stop(run_dir.name, run_dir.parent, token=self.token, api=self.api)

    def resume(self, run_dir: Path) -> str:
        raise JobError("a Hugging Face job cannot be resumed; start a new run")

    def logs(self, run_dir: Path, tail: int = 200) -> str:
        return logs(run_dir.name, run_dir.parent, token=self.token, api=self.api, tail=tail)
