"""Train tab: start and stop runs, live progress and loss curve, the event log, past runs, download, push."""

from __future__ import annotations

import json
import time

import gradio as gr
import pandas as pd

from .. import service
from ..hub import push_adapter
from ..runs import RunState
from .common import Api, owner, user_errors

BACKENDS = [
    ("This machine", "local"),
    ("ZeroGPU (inside a ZeroGPU Space; not available here)", "zerogpu"),
    ("Hugging Face Jobs (rented GPU; not available here)", "hfjobs"),
]
TABLE_COLUMNS = ["run_id", "status", "step", "max_steps", "loss", "model"]
STATUS_BADGE = {
    "running": "🟢 running", "finished": "✅ finished", "failed": "❌ failed", "stopped": "⏹ stopped",
    "paused": "⏸ paused", "interrupted": "⚠️ interrupted (resumable)", "new": "… starting",
}


def _fmt_seconds(s) -> str:
    if s is None:
        return "–"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_html(state: dict) -> str:
    if not state:
        return "<div class='ft-progress'>No run selected. Start one, or pick a past run.</div>"
    step, total = state.get("step") or 0, state.get("max_steps") or 0
    pct = min(100, round(100 * step / total)) if total else 0
    loss = state.get("loss")
    tps = state.get("tokens_per_s")
    msg = f"<div class='ft-msg'>{state['message']}</div>" if state.get("message") else ""
    return (
        f"<div class='ft-progress' id='ft-progress'><b>{state['run_id']}</b> · {STATUS_BADGE.get(state['status'], state['status'])}"
        f"<div style='background:#eee;border-radius:6px;height:14px;margin:6px 0'>"
        f"<div style='background:#4f46e5;width:{pct}%;height:14px;border-radius:6px'></div></div>"
        f"step <b>{step}</b> / {total or '?'} · loss <b>{'–' if loss is None else f'{loss:.4f}'}</b>"
        f" · {'–' if tps is None else f'{tps:,.0f}'} tokens/s · elapsed {_fmt_seconds(state.get('elapsed_s'))}"
        f" · ETA {_fmt_seconds(state.get('eta_s'))}{msg}</div>"
    )


def loss_frame(state: dict) -> pd.DataFrame | None:
    """Train and eval loss by step; None before the first step (an empty frame would fix the plot's
    column types wrongly and no line would ever show)."""
    rows = [{"step": s, "loss": v, "series": "train"} for s, v in state.get("losses", [])]
    rows += [{"step": s, "loss": v, "series": "eval"} for s, v in state.get("eval_losses", [])]
    if not rows:
        return None
    # explicit dtypes: an empty or object column would make the plot treat steps and losses as categories
    return pd.DataFrame(rows, columns=["step", "loss", "series"]).astype({"step": "int64", "loss": "float64"})


def events_text(events: list[dict], limit: int = 40) -> str:
    lines = []
    for e in events[-limit:]:
        t = time.strftime("%H:%M:%S", time.localtime(e.get("time", 0)))
        detail = {k: v for k, v in e.items() if k not in ("type", "time", "data", "pid")}
        lines.append(f"{t}  {e.get('type', '?'):<10} {json.dumps(detail, ensure_ascii=False)}")
    return "\n".join(lines)


def create_train_tab(api: Api, config_code: gr.Code, data_file: gr.File):
    ws = api.workspace
    with gr.Row():
        backend = gr.Radio(BACKENDS, value="local", label="Where to train",
                           info="This machine runs the training in its own process; the page can be closed meanwhile.")
    with gr.Row():
        start = gr.Button("▶ Start training", variant="primary", elem_id="start-training")
        stop = gr.Button("⏹ Stop", elem_id="stop-training")
        resume = gr.Button("⏵ Resume", elem_id="resume-training")
    run_id = gr.Textbox(value="", label="Run", interactive=False, elem_id="run-id")
    progress = gr.HTML(progress_html({}))
    with gr.Row():
        plot = gr.LinePlot(None, x="step", y="loss", color="series", title="Loss", height=260,
                           elem_id="loss-plot")
    with gr.Accordion("Event log", open=False):
        log_box = gr.Textbox(lines=10, max_lines=20, label="events.jsonl", interactive=False, elem_id="event-log")
    with gr.Row():
        download_btn = gr.Button("⬇ Download adapter (.zip)")
        adapter_file = gr.File(label="Adapter", interactive=False)
    with gr.Row():
        repo = gr.Textbox(value="", label="Push to Hub repo", placeholder="you/my-adapter", scale=3)
        private = gr.Checkbox(value=True, label="Private")
        push_btn = gr.Button("⇪ Push adapter")
    push_result = gr.Markdown()
    gr.Markdown("### Past runs")
    with gr.Row():
        runs_pick = gr.Dropdown(label="Open a run", choices=[], allow_custom_value=False, scale=3, elem_id="runs-pick")
        refresh = gr.Button("↻ Refresh list")
    runs_table = gr.Dataframe(headers=["run_id", "status", "step", "max_steps", "loss", "model"], interactive=False)
    timer = gr.Timer(2.0, active=False)

    # -- the API -------------------------------------------------------------------------------
    @user_errors
    def start_training(config_yaml: str, data_file: str | None = None, backend: str = "local",
                       request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
        """Start a training run from a config YAML (and an optional uploaded data file); returns the run id."""
        if backend not in ("local", None, ""):
            raise gr.Error(f"the '{backend}' backend is not available on this machine; choose 'This machine'")
        cfg = service.parse_config(config_yaml)
        return service.start_training(ws, owner(request, profile), cfg, data_file=data_file)

    @user_errors
    def run_status(run_id: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """The state of one of your runs: status, step, max_steps, loss, eval_loss, tokens_per_s, eta_s, losses."""
        return service.run_status(ws, owner(request, profile), run_id)

    @user_errors
    def stop_training(run_id: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Ask a run to stop at the next step (it checkpoints first); returns its state."""
        return service.stop_training(ws, owner(request, profile), run_id)

    @user_errors
    def resume_training(run_id: str, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> str:
        """Resume a stopped, paused or interrupted run from its last checkpoint."""
        return service.resume_training(ws, owner(request, profile), run_id)

    @user_errors
    def list_runs(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> list[dict]:
        """Your runs, newest first, read from the run folders."""
        return service.list_runs(ws, owner(request, profile))

    @user_errors
    def push(run_id: str, repo_id: str, private: bool = True, request: gr.Request = None,
             profile: gr.OAuthProfile | None = None, oauth: gr.OAuthToken | None = None) -> str:
        """Push a finished run's adapter (with its model card) to a Hub model repo; returns the URL."""
        folder = service.adapter_path(ws, owner(request, profile), run_id)
        url = push_adapter(folder, repo_id, token=oauth.token if oauth else None, private=private)
        return f"Pushed to {url}"

    # -- UI wiring -----------------------------------------------------------------------------
    def runs_frame(who: str) -> pd.DataFrame:
        rows = service.list_runs(ws, who)
        return pd.DataFrame([{k: r.get(k) for k in TABLE_COLUMNS} for r in rows], columns=TABLE_COLUMNS)

    def view(rid: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        who = owner(request, profile)
        if not rid:
            return progress_html({}), loss_frame({}), "", gr.Timer(active=False), runs_frame(who)
        try:
            state = service.run_status(ws, who, rid)
            events = service.run_events(ws, who, rid)
        except service.ServiceError as e:
            return f"<div class='ft-progress'>{e}</div>", loss_frame({}), "", gr.Timer(active=False), runs_frame(who)
        live = state["status"] in ("running", "new")
        return progress_html(state), loss_frame(state), events_text(events), gr.Timer(active=live), runs_frame(who)

    def table(request: gr.Request, profile: gr.OAuthProfile | None = None):
        frame = runs_frame(owner(request, profile))
        return frame, gr.Dropdown(choices=list(frame["run_id"]))

    @user_errors
    def download(rid: str, request: gr.Request, profile: gr.OAuthProfile | None = None):
        return str(service.adapter_zip(ws, owner(request, profile), rid, api.downloads / "adapters"))

    outputs_view = [progress, plot, log_box, timer, runs_table]
    start.click(start_training, [config_code, data_file, backend], run_id, api_name="start_training",
                concurrency_limit=2).then(view, run_id, outputs_view, api_visibility="private").then(
        table, None, [runs_table, runs_pick], api_visibility="private")
    stop.click(stop_training, run_id, None, api_name="stop_training").then(view, run_id, outputs_view,
                                                                          api_visibility="private")
    resume.click(resume_training, run_id, run_id, api_name="resume_training").then(
        view, run_id, outputs_view, api_visibility="private")
    timer.tick(view, run_id, outputs_view, api_visibility="private", show_progress="hidden")
    runs_pick.change(lambda r: r, runs_pick, run_id, api_visibility="private").then(
        view, run_id, outputs_view, api_visibility="private")
    refresh.click(table, None, [runs_table, runs_pick], api_visibility="private")
    download_btn.click(download, run_id, adapter_file, api_visibility="private")
    push_btn.click(push, [run_id, repo, private], push_result, api_name="push_adapter")
    # API-only endpoints (no button of their own)
    status_json = gr.JSON(visible=False)
    gr.Button(visible=False).click(run_status, run_id, status_json, api_name="run_status")
    gr.Button(visible=False).click(list_runs, None, status_json, api_name="list_runs")
    return {"run_id": run_id, "load": (table, [runs_table, runs_pick])}


def finished_runs(ws, who: str) -> list[str]:
    return [r["run_id"] for r in service.list_runs(ws, who) if r.get("has_adapter")]


__all__ = ["create_train_tab", "finished_runs", "RunState"]
