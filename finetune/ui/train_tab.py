"""Train tab: where to train (this machine, ZeroGPU, Hugging Face Jobs), start and stop runs, live progress and
loss curve, the event log, past runs, download, push."""

from __future__ import annotations

import html

import json
import os
import time
from typing import Any, Callable, Iterator, TypedDict

import gradio as gr
import pandas as pd

from .. import memory, service
from ..backends import hfjobs, zerogpu
from ..durations import clock
from ..errors import UserError, app_message
from ..limits import RunCaps
from ..runs import LIVE, RunState
from . import forms
from .common import Api, Caller, page_errors, push_row, scoped, user_errors
from .evaluation_panel import create_evaluation_panel
from .widgets import StepPlot

TABLE_COLUMNS = ["name", "run_id", "status", "step", "max_steps", "loss", "model"]
STATUS_BADGE = {
    "running": "🟢 running", "finished": "✅ finished", "failed": "❌ failed", "stopped": "⏹ stopped",
    "paused": "⏸ paused", "interrupted": "⚠️ interrupted (resumable)", "new": "… starting", "queued": "⏳ queued",
    "resuming": "… resuming",
}
LOCAL_INFO = ("This machine runs the training in its own process; the page can be closed meanwhile. One run trains "
              "at a time (FINETUNE_MAX_CONCURRENT_RUNS): a run started meanwhile waits in the queue.")
BACKEND_INFO = {
    "local": LOCAL_INFO,
    "zerogpu": ("This Space's shared GPU, in calls of a few minutes that each end at a checkpoint; the run uses your "
                "daily ZeroGPU quota (below) and the page's request lasts until the run ends."),
    "hf-jobs": ("A Hugging Face Job on a rented GPU, billed per minute to your account; it pushes the adapter to the "
                "repo below when it finishes (the job's disk is gone after)."),
}


def backend_choices(zerogpu_ok: bool, zerogpu_why: str) -> list[tuple[str, str]]:
    zero = ("ZeroGPU (this Space's shared GPU, in checkpointed calls)" if zerogpu_ok
            else f"ZeroGPU: not available, {zerogpu_why}")
    return [("This machine", "local"), (zero, "zerogpu"), ("Hugging Face Jobs (rented GPU, billed per minute)", "hf-jobs")]


def flavor_choices() -> list[tuple[str, str]]:
    """The Jobs flavors of the GPU catalog (memory.GPUS), with their memory and hourly price."""
    out: list[tuple[str, str]] = []
    for g in map(memory.get_gpu, memory.GPUS):  # with the live prices when they were read
        if g.hf_flavor and g.hf_flavor in hfjobs.FLAVOR_GPUS:
            price = f"${g.usd_per_hour:.2f}/h" if g.usd_per_hour is not None else "price not listed"
            out.append((f"{g.hf_flavor} · {g.label} {g.nominal_gb:g} GB · {price}", g.hf_flavor))
    return out


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def quota_markdown(est: zerogpu.QuotaPreview) -> str:
    """What a ZeroGPU run will take from the daily quota (zerogpu.quota_preview), per account tier."""
    used = est["gpu_seconds"]
    tiers = " · ".join(f"{tier} {q / 60:g} min ({100 * used / q:.0f}%)" for tier, q in est["daily_quota_s"].items())
    over = [tier for tier, q in est["daily_quota_s"].items() if used > q]
    lines = [f"**ZeroGPU quota this run will use: about {_minutes(used)}** of GPU time in {est['calls']} call(s) of up "
             f"to {est['steps_per_call']} steps ({est['max_steps']} steps, ~{est['per_step_s']:.2f} s/step"
             + (", every example at max_length: an upper bound" if est.get("upper_bound") else "") + ").",
             f"Daily ZeroGPU quota: {tiers}. Beyond it: credits at "
             f"${memory.ZEROGPU.usd_per_10_min_beyond_quota:g} per 10 minutes (ZeroGPU as of {memory.CATALOG_DATE})."]
    if over:
        lines.append(f"More than a day's quota for: {', '.join(over)}. The run stops at its last checkpoint when the "
                     "quota runs out; resume it when the quota is back, or lower training.max_steps.")
    return "\n\n".join(lines)


def badge(state: dict[str, Any]) -> str:
    """``🟢 running``, ``⏳ queued (position 2)``."""
    status: str = state["status"]
    text = STATUS_BADGE.get(status, status)
    if state.get("status_text") and state["status_text"] != status:
        text = text.replace(status, state["status_text"])
    return text


def progress_html(state: dict[str, Any]) -> str:
    if not state:
        return "<div class='ft-progress'>No run selected. Start one, or pick a past run.</div>"
    step, total = state.get("step") or 0, state.get("max_steps") or 0
    pct = min(100, round(100 * step / total)) if total else 0
    loss = state.get("loss")
    tps = state.get("tokens_per_s")
    msg = f"<div class='ft-msg'>{state['message']}</div>" if state.get("message") else ""
    gauge = gauge_html(state)
    return (
        f"{warnings_html(state.get('warnings') or [])}"
        f"<div class='ft-progress' id='ft-progress'>{_run_title(state)} · {badge(state)}"
        f"<div style='background:#eee;border-radius:6px;height:14px;margin:6px 0'>"
        f"<div style='background:#4f46e5;width:{pct}%;height:14px;border-radius:6px'></div></div>"
        f"step <b>{step}</b> / {total or '?'} · loss <b>{'–' if loss is None else f'{loss:.4f}'}</b>"
        f" · {'–' if tps is None else f'{tps:,.0f}'} tokens/s · elapsed {clock(state.get('elapsed_s'))}"
        f"{eta_text(state)}{layout_html(state.get('distributed') or {})}{gauge}"
        f"{metrics_html(state.get('metrics') or {})}{msg}"
        f"{samples_html(state.get('samples') or [], state.get('samples_step'))}</div>"
    )


def eta_text(state: dict[str, Any]) -> str:
    """`` · ETA 1m40s`` while the run trains (``~2m00s, estimated`` before a step is measured); empty otherwise: a
    stopped, paused or finished run has no time left to show."""
    if state.get("status") != "running":
        return ""
    eta = state.get("eta_s")
    if eta is None:
        return " · ETA: measuring the first steps"
    return f" · ETA ~{clock(eta)} (estimated)" if state.get("eta_estimated") else f" · ETA {clock(eta)}"


def cpu_text(util_pct: float, threads: int | None) -> str:
    """The CPU a run keeps busy, in cores (``util_pct`` counts 100 per busy core): ``CPU: 1.6 of 2 cores busy``."""
    cores = util_pct / 100
    if threads:
        return f"CPU: {cores:.1f} of {threads} core{'s' if threads != 1 else ''} busy ({min(100, round(util_pct / threads))}%)"
    return f"CPU: {cores:.1f} cores busy"


def _run_title(state: dict[str, Any]) -> str:
    """The run's name (escaped: anyone's text) and id."""
    name = state.get("name") or ""
    return (f"<b>{html.escape(name)}</b> <span class='ft-row'>{html.escape(state['run_id'])}</span>" if name
            else f"<b>{html.escape(state['run_id'])}</b>")


def run_choices(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """The runs of a runs table as picker choices: (its name and id, its id)."""
    return [(f"{name} · {rid}" if name else rid, rid) for name, rid in zip(frame["name"], frame["run_id"])]


def warnings_html(warnings: list[str]) -> str:
    """What the run warns about (degenerate sample answers, an exploding reward margin), above the progress bar:
    a run whose metrics look perfect can still have broken the model, and this is where people look."""
    if not warnings:
        return ""
    items = "".join(f"<li>{html.escape(w)}</li>" for w in warnings)
    return ("<div class='ft-warnings' id='ft-warnings' style='border:2px solid #dc2626;background:#fef2f2;"
            "color:#7f1d1d;border-radius:6px;padding:6px 10px;margin-bottom:6px'>⚠️ <b>The model's answers may have "
            f"degenerated</b> (the training metrics cannot show it):<ul style='margin:4px 0'>{items}</ul></div>")


def samples_html(samples: list[dict[str, Any]], step: int | None) -> str:
    """The answers of the latest checkpoint to the run's fixed sample prompts (preference runs), folded."""
    if not samples:
        return ""
    rows = "".join(
        f"<li><i>{html.escape(str(s.get('prompt', ''))[:120])}</i> → <code>{html.escape(str(s.get('answer', ''))[:300])}"
        f"</code>{'' if s.get('ended', True) else ' (no end token)'}</li>" for s in samples)
    return (f"<details class='ft-samples' id='ft-samples' style='margin-top:6px'><summary>Sample answers at step "
            f"{step}</summary><ul style='margin:4px 0'>{rows}</ul></details>")


LAYOUT_WORDS = {"ddp": "data parallel", "fsdp": "sharded (FSDP)"}


def layout_html(layout: dict[str, Any]) -> str:
    """How a run of several processes is laid out (its started event): ``2 processes, sharded (FSDP): each holds
    0.27 of 0.54 GB of the base model's weights``; empty for a run of one process."""
    n = layout.get("world_size") or 1
    if n < 2 or layout.get("strategy") not in LAYOUT_WORDS:
        return ""
    per_rank, total = layout.get("param_bytes_per_rank") or [], layout.get("param_bytes_total") or 0
    held = (f"each holds {max(per_rank) / 1e9:.2f} of {total / 1e9:.2f} GB of the base model's weights"
            if per_rank and total else "")
    return (f"<div id='ft-layout' style='margin-top:6px'>{n} processes, {LAYOUT_WORDS[layout['strategy']]}"
            f"{': ' + held if held else ''}</div>")


def gauge_html(state: dict[str, Any]) -> str:
    """Device memory in use (a bar) and utilisation at the run's last step; empty before the first."""
    used, total, util = state.get("mem_gb"), state.get("mem_total_gb"), state.get("util_pct")
    if used is None:
        return ""
    device = "GPU memory" if state.get("device") == "cuda" else "memory (RAM)"
    pct = min(100, round(100 * used / total)) if total else 0
    colour = "#16a34a" if pct < 75 else "#d97706" if pct < 90 else "#dc2626"
    busy = "" if util is None else (f" · GPU {util:.0f}% busy" if state.get("device") == "cuda"
                                    else f" · {cpu_text(util, state.get('cpu_threads'))}")
    return (f"<div id='ft-gauge' style='margin-top:6px'>{device} {used:.1f} / {total or 0:.1f} GB ({pct}%){busy}"
            f"<div style='background:#eee;border-radius:6px;height:8px;margin-top:3px'>"
            f"<div style='background:{colour};width:{pct}%;height:8px;border-radius:6px'></div></div></div>")


def metrics_html(metrics: dict[str, float]) -> str:
    """The method's live metrics (DPO/ORPO reward margins and accuracies, KTO KL, GRPO mean rewards and answer
    length) as one line; empty for SFT."""
    if not metrics:
        return ""
    items = " · ".join(f"{html.escape(k)} <b>{v:.4g}</b>" for k, v in metrics.items())
    return f"<div class='ft-metrics' id='ft-metrics'>{items}</div>"


def loss_frame(state: dict[str, Any]) -> pd.DataFrame | None:
    """Train and eval loss by step; None before the first step (an empty frame would fix the plot's
    column types wrongly and no line would ever show)."""
    rows = [{"step": s, "loss": v, "series": "train"} for s, v in state.get("losses", [])]
    rows += [{"step": s, "loss": v, "series": "eval"} for s, v in state.get("eval_losses", [])]
    if not rows:
        return None
    # explicit dtypes: an empty or object column would make the plot treat steps and losses as categories
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64"})


def compare_frame(rows: list[dict[str, Any]]) -> pd.DataFrame | None:
    """The loss points of several runs (run, step, loss); None with none."""
    if not rows:
        return None
    return pd.DataFrame(rows, columns=["run", "step", "loss"]).astype({"step": "int64", "loss": "float64"})


BACKEND_LABELS = {"local": "this machine", "zerogpu": "ZeroGPU", "hf-jobs": "Hugging Face Jobs"}


class RunSummary(TypedDict):
    """What a run will use, shown before it starts (:func:`run_summary`)."""

    data: str  # the file name, the Hub dataset id, or "the bundled sample"
    sample: bool  # no dataset was chosen: the bundled sample would be used (the app asks to confirm)
    rows: int | None  # rows in the data file (None: a Hub dataset, counted when the run starts)
    template: str  # templates.template_label of data.template
    method: str  # training.method: sft, dpo, orpo, kto or grpo
    model: str
    steps: int | None  # training.max_steps, else planned from the rows and epochs (None: unknown yet)
    backend: str


def run_summary(config_yaml: str, data_file: str | None = None, backend: str = "local",
                flavor: str | None = None) -> RunSummary:
    """The run a Start would begin (service.run_plan), in the words the tab shows."""
    from ..models import EMBEDDED_REPO_ID
    from ..templates import template_label

    plan = service.run_plan(config_yaml, data_file, backend)
    sample = not plan["source"]
    return {"data": "the bundled sample (city/year extraction)" if sample else plan["source"], "sample": sample,
            "rows": plan["rows"], "template": template_label(plan["template"]), "method": plan["method"],
            "model": plan["model"] or f"{EMBEDDED_REPO_ID} (embedded)", "steps": plan["steps"],
            "backend": BACKEND_LABELS[plan["backend"]] + (f" ({flavor})" if plan["backend"] == "hf-jobs" and flavor
                                                          else "")}


def summary_markdown(s: RunSummary) -> str:
    """The run a Start would begin: data (rows), template, method, model, steps, backend."""
    rows = f" · {s['rows']:,} rows" if s["rows"] is not None else " (rows counted when the run starts)"
    data = f"⚠️ **no dataset chosen**: {s['data']}" if s["sample"] else f"`{s['data']}`"
    steps = f"{s['steps']:,}" if s["steps"] is not None else "set by epochs (counted when the run starts)"
    return (f"**This run:** data {data}{rows} · template `{s['template']}` · method {s['method'].upper()} · "
            f"model `{s['model']}` · {steps} steps · on {s['backend']}")


def caps_markdown(caps: RunCaps | None, steps: int | None) -> str:
    """A shared server's caps on one run, shown before it starts (empty on one's own machine)."""
    if caps is None:
        return ""
    text = (f"\n\n**Limits on this server:** {caps.describe()}; a run still training at the time limit "
            "checkpoints and stops (resume it to go on).")
    if steps is not None and caps.max_steps is not None and steps > caps.max_steps:
        text += (f" ⚠️ **This run's {steps:,} steps are over the limit:** set training.max_steps to "
                 f"{caps.max_steps:,} or less, or train fewer epochs.")
    return text


def events_text(events: list[dict[str, Any]], limit: int = 40) -> str:
    lines: list[str] = []
    for e in events[-limit:]:
        t = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
        detail = {k: v for k, v in e.items() if k not in ("type", "time", "data", "pid")}
        lines.append(f"{t}  {e.get('type', '?'):<10} {json.dumps(detail, ensure_ascii=False)}")
    return "\n".join(lines)


class TrainTab(TypedDict):
    """What the Train tab gives the app: the run id box, and what to run on page load (the runs table)."""
    run_id: gr.Textbox
    load: tuple[Callable[..., tuple[pd.DataFrame, gr.Dropdown, gr.Dropdown, str]], list[gr.components.Component]]
    # more to run on page load: (function, inputs, outputs)
    on_load: list[tuple[Callable[..., Any], list[gr.components.Component], list[gr.components.Component]]]


class TrainEndpoints:
    """The Train tab's endpoints and page events. Those that act for a caller take ``me`` (``common.Caller``: their
    space, token and address) first; the tab wraps them with ``common.scoped``, which hands it over."""

    def __init__(self, api: Api, zerogpu_ok: bool, zerogpu_why: str, steps_per_call: int | None) -> None:
        self.api, self.zerogpu_ok, self.zerogpu_why, self.steps_per_call = api, zerogpu_ok, zerogpu_why, steps_per_call

    def drive_zerogpu(self, space: service.OwnerSpace, rid: str, progress: gr.Progress,
                      resume: bool = False) -> Iterator[str]:
        """Chain the ZeroGPU calls of a run inside this request, reporting progress after each call."""
        service.check_zerogpu((self.zerogpu_ok, self.zerogpu_why))
        progress((0, None), desc="ZeroGPU: first GPU call (measures the step time)", unit="steps")
        for state in space.train_chunks(rid, chunk=zerogpu.train_chunk, resume=resume,
                                        steps_per_call=self.steps_per_call):
            yield rid
            # after the yield: the progress shown while the next call trains
            step, total = state.get("step") or 0, state.get("max_steps") or None
            progress((step, total), desc=f"ZeroGPU: {state['status_text']} at step {step}", unit="steps")

    # -- the API -------------------------------------------------------------------------------
    def start_training(self, me: Caller, config_yaml: str, data_file: str | None = None, backend: str = "local",
                       flavor: str = hfjobs.DEFAULT_FLAVOR, repo_id: str = "",
                       progress: gr.Progress = gr.Progress()) -> Iterator[str]:
        """Start a training run from a config YAML (and an optional uploaded data file); returns the run id.

        backend: "local" (this machine; waits in the queue while another run trains), "zerogpu" (on a ZeroGPU
        Space: the call lasts until the run ends) or "hf-jobs" (a Hugging Face Job on `flavor`, pushing the
        adapter to `repo_id`; your sign-in or HF_TOKEN pays for it)."""
        rid = me.space.start(config_yaml, backend, data_file, token=me.token, flavor=flavor, repo_id=repo_id,
                             zerogpu=(self.zerogpu_ok, self.zerogpu_why), client=me.client)
        yield rid
        if service.backend_name(backend) == "zerogpu":
            yield from self.drive_zerogpu(me.space, rid, progress)

    def start_from_form(self, me: Caller, config_yaml: str, data_file: str | None, backend: str, flavor: str,
                        repo_id: str, use_sample: bool, progress: gr.Progress = gr.Progress()) -> Iterator[str]:
        """The Start button: as /start_training, once the user has chosen data or confirmed the sample."""
        service.check_data_chosen(config_yaml, data_file, use_sample)
        yield from self.start_training(me, config_yaml, data_file, backend, flavor, repo_id, progress)

    def run_status(self, me: Caller, run_id: str) -> dict[str, Any]:
        """The state of one of your runs: status (status_text: "queued (position N)"), step, max_steps, loss,
        eval_loss, tokens_per_s, eta_s, losses, backend, and metrics (the method's latest: reward margins, KL, rewards)."""
        return me.space.status(run_id, token=me.token)

    def stop_training(self, me: Caller, run_id: str) -> dict[str, Any]:
        """Stop a run: it checkpoints at its next step; a queued run leaves the queue; a Hugging Face job is
        cancelled. Returns its state."""
        return me.space.stop(run_id, token=me.token)

    def resume_training(self, me: Caller, run_id: str, progress: gr.Progress = gr.Progress()) -> Iterator[str]:
        """Resume a stopped, paused or interrupted run from its last checkpoint."""
        rid = me.space.resume(run_id, client=me.client)
        yield rid
        if me.space.backend(rid) == "zerogpu":
            yield from self.drive_zerogpu(me.space, rid, progress, resume=True)

    def quota_for_zerogpu(self, config_yaml: str, data_file: str | None = None) -> zerogpu.QuotaPreview:
        """The daily ZeroGPU quota a run would use: calls, steps_per_call, gpu_seconds, share_of_daily_quota
        (per account tier), per_step_s (an upper bound until measured)."""
        return service.zerogpu_quota_for(config_yaml, data_file)

    def list_runs(self, me: Caller) -> list[dict[str, Any]]:
        """Your runs, newest first, read from the run folders."""
        return me.space.statuses()

    def push(self, me: Caller, run_id: str, repo_id: str, private: bool = True) -> str:
        """Push a finished run's adapter (with its model card) to a Hub model repo; returns the URL."""
        url = me.space.push(run_id, repo_id, token=me.token, private=private)
        return f"Pushed to {url}"

    def delete_run(self, me: Caller, run_id: str) -> str:
        """Delete one of your runs that is not training or waiting (to free disk); returns your disk use after."""
        return me.space.delete(run_id)

    # -- the page ------------------------------------------------------------------------------
    def summary_view(self, backend: str, config_yaml: str, data_file: str | None,
                     flavor: str) -> tuple[str, gr.Checkbox]:
        try:
            s = run_summary(config_yaml, data_file, backend, flavor)
        except UserError as e:  # a config or data problem, with its fix (a bug is not one)
            return (f"**This run cannot start yet:** {app_message(service.as_uploaded(e, data_file))}",
                    gr.Checkbox(visible=False))
        caps = service.run_caps(self.api.workspace) if service.backend_name(backend) == "local" else None
        return summary_markdown(s) + caps_markdown(caps, s["steps"]), gr.Checkbox(visible=s["sample"])

    def view(self, me: Caller, rid: str) -> tuple[str, pd.DataFrame | None, str, gr.Timer, pd.DataFrame,
                                                  dict[str, Any]]:
        """The run's progress line, loss chart (and its style, StepPlot.restyle), event log, timer and the runs."""
        if not rid:
            return progress_html({}), None, "", gr.Timer(active=False), runs_frame(me.space), {}
        try:
            state = me.space.status(rid, token=me.token)
            events = me.space.events(rid)
        except service.ServiceError as e:
            return (f"<div class='ft-progress'>{html.escape(app_message(e))}</div>", None, "", gr.Timer(active=False),
                    runs_frame(me.space), {})
        live = state["status"] in LIVE or (state["status"] == "paused" and state.get("backend") == "zerogpu")
        frame = loss_frame(state)
        return (progress_html(state), frame, events_text(events), gr.Timer(active=live), runs_frame(me.space),
                StepPlot.style(frame, "series"))

    def latest_run(self, me: Caller) -> str:
        """The run a (re)loaded page opens on: the user's newest live run, else their newest run."""
        states = me.space.states()
        live = [s for s in states if s.status in LIVE]
        pick = max(live, key=lambda s: s.run_id) if live else (states[0] if states else None)
        return pick.run_id if pick else ""

    def table(self, me: Caller) -> tuple[pd.DataFrame, gr.Dropdown, gr.Dropdown, str]:
        frame = runs_frame(me.space)
        return (frame, gr.Dropdown(choices=run_choices(frame)), gr.Dropdown(choices=run_choices(frame)),
                me.space.disk_usage())

    def compare_runs(self, me: Caller, run_ids: list[str] | None) -> tuple[pd.DataFrame | None, dict[str, Any]]:
        """The train loss of the chosen runs, one line per run, and its style (StepPlot.restyle: each run in its
        colour, named in the legend as in the run pickers)."""
        rows = me.space.loss_curves(list(run_ids or []))
        if rows:
            names = {r["run_id"]: r.get("name") or "" for r in me.space.statuses()}
            rows = [r | {"run": f"{names[r['run']]} · {r['run']}" if names.get(r["run"]) else r["run"]} for r in rows]
        frame = compare_frame(rows)
        return frame, StepPlot.style(frame, "run")

    def download(self, me: Caller, rid: str) -> str:
        return str(me.space.adapter_zip(rid, self.api.downloads / "adapters"))

    def backend_panels(self, name: str, config_yaml: str, data_file: str | None,
                       flavor: str) -> tuple[gr.Group, str, gr.Group, str, str]:
        zero, jobs = name == "zerogpu", name == "hf-jobs"
        return (gr.Group(visible=zero), self.quota_text(config_yaml, data_file) if zero else "",
                gr.Group(visible=jobs), jobs_text(config_yaml, flavor) if jobs else "",
                BACKEND_INFO.get(name, LOCAL_INFO))

    def quota_text(self, config_yaml: str, data_file: str | None) -> str:
        if not self.zerogpu_ok:
            return f"ZeroGPU is not available: {self.zerogpu_why}."
        try:
            est = service.zerogpu_quota_for(config_yaml, data_file)
        except UserError as e:  # config, data or estimate errors, each with its fix (a bug is not one)
            said = app_message(service.as_uploaded(e, data_file))
            return f"The ZeroGPU quota of this run cannot be estimated yet: {said}"
        return quota_markdown(est)


def runs_frame(space: service.OwnerSpace) -> pd.DataFrame:
    rows = space.statuses()
    for r in rows:
        r["status"] = badge(r)
        if r.get("loss") is not None:
            r["loss"] = round(r["loss"], 4)
    return pd.DataFrame([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows], columns=TABLE_COLUMNS)


def jobs_text(config_yaml: str, flavor: str) -> str:
    lines: list[str] = []
    if not os.environ.get("SPACE_ID"):
        lines.append("A job runs this app's own Space image: it is available when the app runs on a Space.")
    try:
        job = service.job_cost(config_yaml, flavor)
    except UserError as e:  # config or estimate errors, each with its fix (a bug is not one)
        lines.append(f"Time limit and cost: {app_message(e)}")
    else:
        cost = f"at most ${job.max_usd:.2f}" if job.max_usd is not None else "price not listed"
        lines.append(f"Time limit {job.limit_s // 60} min (the time estimate x{hfjobs.TIME_MARGIN:g} plus "
                     f"start-up): {cost}; billed per minute actually used ({memory.prices_source()}).")
    lines.append("Paid with your Hugging Face account: sign in (on a Space) or set HF_TOKEN; the token is sent "
                 "to the job as a secret only.")
    return "\n\n".join(lines)


def _layout(api: Api, zerogpu_ok: bool, zerogpu_why: str, components: dict[str, forms.FormWidget]) -> dict[str, Any]:
    """The tab's widgets, in page order (the evaluation panel under the run's progress), by name; the config fields
    of the run itself (its name) into ``components``."""
    flavors = flavor_choices()
    with gr.Row():
        backend = gr.Radio(backend_choices(zerogpu_ok, zerogpu_why), value="local", label="Where to train",
                           elem_id="backend")
    backend_help = gr.Markdown(LOCAL_INFO, elem_id="backend-help")
    with gr.Group(visible=False) as zerogpu_box:
        zerogpu_quota = gr.Markdown(elem_id="zerogpu-quota")
    with gr.Group(visible=False) as jobs_box:
        with gr.Row():
            flavor = gr.Dropdown(flavors, value=hfjobs.DEFAULT_FLAVOR, label="GPU flavor (Hugging Face Jobs)",
                                 info="Billed per minute while the job runs; bigger GPUs train faster.", elem_id="flavor")
            jobs_repo = gr.Textbox(value="", label="Push the adapter to (Hub repo)", placeholder="you/my-adapter",
                                   info="The job pushes the adapter here when it finishes (its disk is gone after).",
                                   elem_id="jobs-repo")
        jobs_info = gr.Markdown(elem_id="jobs-info")
    summary = gr.Markdown(elem_id="run-summary")
    use_sample = gr.Checkbox(False, label="Train on the bundled sample (no dataset chosen)", visible=False,
                             elem_id="use-sample", info="240 sentences with a city and a year to extract as JSON: "
                             "a quick way to try the app. Untick, and choose your data in 1 · Dataset.")
    with gr.Row():
        for f in forms.RUN_FIELDS:  # the run's name: in its config, the run list and the pickers
            components[f.key] = forms.make_component(f, "")
    with gr.Row():
        start = gr.Button("▶ Start training", variant="primary", elem_id="start-training")
        stop = gr.Button("⏹ Stop", elem_id="stop-training")
        resume = gr.Button("⏵ Resume", elem_id="resume-training")
    run_id = gr.Textbox(value="", label="Run", interactive=False, elem_id="run-id")
    progress = gr.HTML(progress_html({}))
    with gr.Row():
        plot = StepPlot(None, x="step", y="loss", color="series", title="Loss", height=260,
                           elem_id="loss-plot")
    timer = gr.Timer(2.0, active=False)  # ticks while the run is live: progress, loss and test-set curves
    create_evaluation_panel(api, run_id, timer)
    with gr.Accordion("Event log", open=False):
        log_box = gr.Textbox(lines=10, max_lines=20, label="events.jsonl", interactive=False, elem_id="event-log")
    with gr.Row():
        download_btn = gr.Button("⬇ Download adapter (.zip)")
        adapter_file = gr.File(label="Adapter", interactive=False)
    pushing = push_row("adapter", "Push to Hub repo", "you/my-adapter")
    repo, private, push_btn, push_result = pushing.repo, pushing.private, pushing.button, pushing.result
    gr.Markdown("### Past runs")
    with gr.Row():
        runs_pick = gr.Dropdown(label="Open a run", choices=[], allow_custom_value=False, scale=3, elem_id="runs-pick")
        refresh = gr.Button("↻ Refresh list")
        delete_btn = gr.Button("🗑 Delete the open run", elem_id="delete-run")
    disk = gr.Markdown(elem_id="disk-usage")
    runs_table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, elem_id="runs-table")
    with gr.Accordion("Compare runs", open=False):
        compare_pick = gr.Dropdown(label="Runs to compare", choices=[], multiselect=True, elem_id="compare-runs",
                                   info="Their train loss curves, overlaid")
        compare_plot = StepPlot(None, x="step", y="loss", color="run", title="Train loss by run", height=260,
                                   elem_id="compare-plot")
    return dict(backend=backend, backend_help=backend_help, zerogpu_box=zerogpu_box,
                zerogpu_quota=zerogpu_quota, jobs_box=jobs_box, flavor=flavor, jobs_repo=jobs_repo, jobs_info=jobs_info,
                summary=summary, use_sample=use_sample, start=start, stop=stop, resume=resume, run_id=run_id,
                progress=progress, plot=plot, timer=timer, log_box=log_box, download_btn=download_btn,
                adapter_file=adapter_file, repo=repo, private=private, push_btn=push_btn,
                push_result=push_result, runs_pick=runs_pick, refresh=refresh, delete_btn=delete_btn, disk=disk,
                runs_table=runs_table, compare_pick=compare_pick, compare_plot=compare_plot)


def create_train_tab(api: Api, config_code: gr.Code, data_file: gr.File, *, zerogpu_enabled: bool | None = None,
                     zerogpu_steps_per_call: int | None = None,
                     components: dict[str, forms.FormWidget] | None = None) -> TrainTab:
    """``zerogpu_enabled``: offer ZeroGPU (default: detected, zerogpu.available()); ``zerogpu_steps_per_call``
    caps the steps of each GPU call (default: planned from the measured step time); ``components``: the form's
    widgets, where the run's own fields (its name) are added."""
    zerogpu_ok, zerogpu_why = zerogpu.available() if zerogpu_enabled is None else (zerogpu_enabled, "switched off")
    ep = TrainEndpoints(api, zerogpu_ok, zerogpu_why, zerogpu_steps_per_call)
    w = _layout(api, zerogpu_ok, zerogpu_why, {} if components is None else components)
    mine, with_token = scoped(api), scoped(api, token=True)
    run_id = w["run_id"]
    view, table, latest_run = page_errors(with_token(ep.view)), page_errors(mine(ep.table)), mine(ep.latest_run)
    summary_view = page_errors(ep.summary_view)
    table_outputs = [w["runs_table"], w["runs_pick"], w["compare_pick"], w["disk"]]
    loss_style, compare_style = gr.State({}), gr.State({})
    outputs_view = [w["progress"], w["plot"], w["log_box"], w["timer"], w["runs_table"], loss_style]

    def restyled(viewed: Any) -> None:  # the chart drawn anew when its series or axis kind changed (StepPlot)
        viewed.then(StepPlot.restyle, loss_style, w["plot"], api_visibility="private", show_progress="hidden")
    w["start"].click(user_errors(with_token(ep.start_from_form)),
                     [config_code, data_file, w["backend"], w["flavor"], w["jobs_repo"], w["use_sample"]], run_id,
                     api_visibility="private", concurrency_limit=2).then(table, None, table_outputs,
                                                                         api_visibility="private")
    # the API's start: a config with no data.source trains on the bundled sample (as the CLI does)
    gr.Button(visible=False).click(user_errors(with_token(ep.start_training)),
                                   [config_code, data_file, w["backend"], w["flavor"], w["jobs_repo"]], run_id,
                                   api_name="start_training", concurrency_limit=2)
    restyled(run_id.change(view, run_id, outputs_view, api_visibility="private"))
    status_json = gr.JSON(visible=False)
    restyled(w["stop"].click(user_errors(with_token(ep.stop_training)), run_id, status_json,
                             api_name="stop_training").then(view, run_id, outputs_view, api_visibility="private"))
    restyled(w["resume"].click(user_errors(mine(ep.resume_training)), run_id, run_id, api_name="resume_training",
                               concurrency_limit=2).then(view, run_id, outputs_view, api_visibility="private"))
    restyled(w["timer"].tick(view, run_id, outputs_view, api_visibility="private", show_progress="hidden"))
    w["runs_pick"].change(lambda r: r, w["runs_pick"], run_id, api_visibility="private")
    w["refresh"].click(table, None, table_outputs, api_visibility="private")
    deleted = w["delete_btn"].click(user_errors(mine(ep.delete_run)), run_id, w["disk"], api_name="delete_run")
    deleted.then(table, None, table_outputs, api_visibility="private")
    deleted.success(lambda: "", None, run_id, api_visibility="private")  # gone: the page shows no run
    w["compare_pick"].change(page_errors(mine(ep.compare_runs)), w["compare_pick"], [w["compare_plot"], compare_style],
                             api_visibility="private", show_progress="hidden").then(
        StepPlot.restyle, compare_style, w["compare_plot"], api_visibility="private", show_progress="hidden")
    # a refusal (no run open, no adapter yet) is one message and an empty file box, not an error badge that stays
    # on the box after the next download works
    w["download_btn"].click(page_errors(mine(ep.download), lambda _: None), run_id, w["adapter_file"],
                            api_visibility="private")
    w["push_btn"].click(user_errors(with_token(ep.push)), [run_id, w["repo"], w["private"]], w["push_result"],
                        api_name="push_adapter")
    panel_inputs = [w["backend"], config_code, data_file, w["flavor"]]
    panel_outputs = [w["zerogpu_box"], w["zerogpu_quota"], w["jobs_box"], w["jobs_info"], w["backend_help"]]
    backend_panels = page_errors(ep.backend_panels)
    for trigger in (w["backend"].change, config_code.change, data_file.change, w["flavor"].change):
        trigger(backend_panels, panel_inputs, panel_outputs, api_visibility="private", show_progress="hidden")
        trigger(summary_view, panel_inputs, [w["summary"], w["use_sample"]], api_visibility="private",
                show_progress="hidden")
    # API-only endpoints (no button of their own)
    gr.Button(visible=False).click(user_errors(with_token(ep.run_status)), run_id, status_json, api_name="run_status")
    gr.Button(visible=False).click(user_errors(mine(ep.list_runs)), None, status_json, api_name="list_runs")
    gr.Button(visible=False).click(user_errors(ep.quota_for_zerogpu), [config_code, data_file], status_json,
                                   api_name="zerogpu_quota")
    return {"run_id": run_id, "load": (table, table_outputs),
            "on_load": [(summary_view, panel_inputs, [w["summary"], w["use_sample"]]), (latest_run, [], [run_id])]}


def finished_runs(space: service.OwnerSpace, checkpoints: bool = False) -> list[tuple[str, str]]:
    """The owner's runs that have an adapter as picker choices (their name and id, their id); with
    ``checkpoints``, each followed by its usable checkpoints (``ID@step``)."""
    out: list[tuple[str, str]] = []
    for r in space.statuses():
        if r.get("has_adapter"):
            named = f"{r['name']} · " if r.get("name") else ""
            out.append((named + r["run_id"], r["run_id"]))
            if checkpoints:
                out += [(named + c, c) for c in space.checkpoint_choices(r["run_id"])]
    return out


__all__ = ["create_train_tab", "finished_runs", "RunState"]
