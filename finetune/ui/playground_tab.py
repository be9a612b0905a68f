"""Playground tab: chat with a base model + adapter (streaming), and compare base and fine-tuned answers."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from .. import inference, refs, service
from ..errors import UserError
from .common import Api, owner, user_errors

# What the page runs when it opens: a function and the components it fills.
LoadHook = tuple[Callable[..., gr.Dropdown], list[gr.Dropdown]]


def message_text(content: object) -> str:
    """Chatbot message content: a string, or a list of parts ``[{"type": "text", "text": ...}]``."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    if isinstance(content, dict):
        text: str = content.get("text", "")  # a text part's text
        return text
    return str(content or "")


def resolve_adapter(ws: service.Workspace, who: str, adapter: str) -> str | None:
    """A run id of the caller's, a Hub repo id, or nothing (base model)."""
    adapter = (adapter or "").strip()
    if not adapter:
        return None
    try:
        return str(service.adapter_path(ws, who, adapter))
    except service.ServiceError:
        ref = refs.classify(adapter, strict=False, local_first=False)
        if ref.kind == "hub" and ref.has_namespace:
            return service.check_model_ref(ws, adapter, "adapter")  # a Hub repo id
        raise


def create_playground_tab(api: Api) -> dict[str, LoadHook]:
    ws = api.workspace
    with gr.Row():
        base_model = gr.Textbox(label="Base model", value="", placeholder="empty = the adapter's base (or the embedded SmolLM2)",
                                info="Hub id or local folder; leave empty to use the base the adapter was trained on")
        adapter = gr.Dropdown(label="Adapter", choices=[""], value="", allow_custom_value=True, elem_id="adapter-pick",
                              info="One of your finished runs, or a Hub repo id such as you/my-adapter; empty = base model only")
        refresh = gr.Button("↻", scale=0)
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", info="0 = greedy (deterministic)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(8, 2048, value=256, step=8, label="Max new tokens")
            rep = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=0, precision=0, label="Seed")
    warning = gr.Markdown()
    chatbot = gr.Chatbot(label="Chat", height=360, elem_id="chatbot")
    with gr.Row():
        msg = gr.Textbox(value="", label="Message", placeholder="Ask something…", scale=4, elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0)
    gr.Markdown("### Compare base and fine-tuned")
    with gr.Row():
        cprompt = gr.Textbox(value="", label="Prompt", scale=4, elem_id="compare-input")
        cbtn = gr.Button("Compare", scale=1, elem_id="compare-btn")
    with gr.Row():
        base_out = gr.Textbox(label="Base model", lines=6, elem_id="compare-base")
        tuned_out = gr.Textbox(label="With adapter", lines=6, elem_id="compare-tuned")

    @user_errors
    def chat(message: str, history: list[Any] | None, base_model: str = "", adapter: str = "", temperature: float = 0.7,
             max_new_tokens: int = 256, top_p: float = 0.9, repetition_penalty: float = 1.0, seed: int = 0,
             request: gr.Request | None = None,
             profile: gr.OAuthProfile | None = None) -> Iterator[list[dict[str, str]]]:
        """Chat with the base model and optional adapter; streams the growing history (messages format)."""
        if not (message or "").strip():
            raise gr.Error("type a message first")
        who = owner(request, profile)
        path = resolve_adapter(ws, who, adapter)
        history = [{"role": m["role"], "content": message_text(m["content"])} for m in (history or [])
                   if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
        convo = history + [{"role": "user", "content": message}]
        base_model = service.check_model_ref(ws, base_model)
        for partial in inference.stream_chat(convo, adapter=path, model=base_model or None,
                                             temperature=temperature, max_new_tokens=int(max_new_tokens),
                                             top_p=top_p, repetition_penalty=repetition_penalty, seed=int(seed or 0)):
            yield convo + [{"role": "assistant", "content": partial}]

    @user_errors
    def compare(prompt: str, base_model: str = "", adapter: str = "", temperature: float = 0.0,
                max_new_tokens: int = 256, seed: int = 0, request: gr.Request | None = None,
                profile: gr.OAuthProfile | None = None) -> tuple[str, str]:
        """The same prompt and seed through the base model and through the adapter: (base, fine-tuned)."""
        if not (prompt or "").strip():
            raise gr.Error("type a prompt first")
        path = resolve_adapter(ws, owner(request, profile), adapter)
        if path is None:
            raise gr.Error("pick an adapter to compare against")
        # one loaded base, the adapter's template and system prompt for both sides, the same seed
        base_model = service.check_model_ref(ws, base_model)
        return inference.compare(prompt, path, model=base_model or None, max_new_tokens=int(max_new_tokens),
                                 temperature=temperature, seed=int(seed or 0))

    def check(base_model: str, adapter: str, request: gr.Request, profile: gr.OAuthProfile | None = None) -> str:
        try:
            path = resolve_adapter(ws, owner(request, profile), adapter)
            if path and base_model:
                want = inference.adapter_base(path)
                if want and want != base_model:
                    return f"⚠️ This adapter was trained on `{want}`, not `{base_model}`: answers may be poor."
        except UserError as e:  # a hint only; the chat call reports the real error
            return f"⚠️ {e}"
        return ""

    def choices(request: gr.Request, profile: gr.OAuthProfile | None = None) -> gr.Dropdown:
        from .train_tab import finished_runs

        return gr.Dropdown(choices=[""] + finished_runs(ws, owner(request, profile)))

    send_event: dict[str, Any] = dict(fn=chat, inputs=[msg, chatbot, base_model, adapter, temperature, max_new, top_p, rep, seed],
                      outputs=chatbot, concurrency_limit=2)
    send.click(**send_event, api_name="chat").then(lambda: "", None, msg, api_visibility="private")
    msg.submit(**send_event, api_visibility="private").then(lambda: "", None, msg, api_visibility="private")
    clear.click(lambda: [], None, chatbot, api_visibility="private")
    cbtn.click(compare, [cprompt, base_model, adapter, temperature, max_new, seed], [base_out, tuned_out],
               api_name="compare", concurrency_limit=2)
    adapter.change(check, [base_model, adapter], warning, api_visibility="private")
    base_model.blur(check, [base_model, adapter], warning, api_visibility="private")
    refresh.click(choices, None, adapter, api_visibility="private")
    return {"load": (choices, [adapter])}
