"""Playground tab: chat with a base model + adapter (streaming), and compare base and fine-tuned answers."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import gradio as gr

from .. import inference, service
from ..errors import UserError, app_message
from ..templates import MODEL_TEMPLATE, TEMPLATE_NAMES
from .arena_panel import create_arena_panel
from .common import Api, Caller, page_errors, scoped, user_errors
from .train_tab import finished_runs
from .widgets import FreeDropdown

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


def resolve_adapter(space: service.OwnerSpace, adapter: str) -> str | None:
    """A run id of the caller's, a Hub repo id, or nothing (base model): the adapter folder or repo."""
    return space.chat_models("", adapter)[0]


# -- the endpoints and page events: those that act for a caller take ``me`` (common.Caller) first, as
# common.scoped hands it; create_playground_tab wires them
def conversation(message: str | None, history: list[Any] | None) -> list[dict[str, str]]:
    turns = [{"role": m["role"], "content": message_text(m["content"])} for m in (history or [])
             if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    return turns + ([{"role": "user", "content": message}] if (message or "").strip() else [])


def chat(me: Caller, message: str = "", history: list[Any] | None = None, base_model: str = "", adapter: str = "",
         temperature: float = 0.7, max_new_tokens: int = 256, top_p: float = 0.9, repetition_penalty: float = 1.0,
         seed: int = 0, system_prompt: str | None = None,
         template: str | None = None) -> Iterator[list[dict[str, str]]]:
    """Chat with the base model and optional adapter; streams the growing history (messages format).
    ``system_prompt`` and ``template`` default (None or empty) to those the adapter was trained with."""
    if not (message or "").strip():
        raise gr.Error("type a message first")
    path, base_model = me.space.chat_models(base_model, adapter)
    convo = conversation(message, history)
    for partial in inference.stream_chat(convo, adapter=path, model=base_model or None,
                                         system_prompt=system_prompt or None, template=template or None,
                                         temperature=float(temperature if temperature is not None else 0.7),
                                         max_new_tokens=int(max_new_tokens or 256),
                                         top_p=float(top_p or 0.9), repetition_penalty=float(repetition_penalty or 1.0),
                                         seed=int(seed or 0)):
        yield convo + [{"role": "assistant", "content": partial}]


def compare(me: Caller, prompt: str = "", base_model: str = "", adapter: str = "", temperature: float = 0.0,
            max_new_tokens: int = 256, seed: int = 0, system_prompt: str | None = None, template: str | None = None,
            top_p: float = 0.9, repetition_penalty: float = 1.0) -> tuple[str, str]:
    """The same prompt, template, system prompt and seed through the base model and through the adapter:
    (base, fine-tuned). ``system_prompt`` and ``template`` default (None or empty) to the adapter's."""
    if not (prompt or "").strip():
        raise gr.Error("type a prompt first")
    path, base_model = me.space.chat_models(base_model, adapter)
    if path is None:
        raise gr.Error("pick an adapter to compare against")
    # one loaded base, the adapter's template and system prompt for both sides, the same seed
    return inference.compare(prompt, path, model=base_model or None, system_prompt=system_prompt or None,
                             template=template or None, max_new_tokens=int(max_new_tokens or 256),
                             temperature=float(temperature or 0.0), top_p=float(top_p or 0.9),
                             repetition_penalty=float(repetition_penalty or 1.0), seed=int(seed or 0))


def _exact(me: Caller, message: str, history: list[Any] | None, base_model: str, adapter: str,
           system_prompt: str | None, template: str | None) -> inference.Prompt:
    convo = conversation(message, history)
    if not convo:  # nothing to render: say what the view shows, not the template's complaint
        raise gr.Error("type a message first: the exact prompt is the conversation so far plus your message, "
                       "as the model receives it before it answers")
    path, base_model = me.space.chat_models(base_model, adapter)
    return inference.prompt_for(convo, adapter=path, model=base_model or None, system_prompt=system_prompt or None,
                                template=template or None)


def exact_prompt(me: Caller, message: str = "", history: list[Any] | None = None, base_model: str = "",
                 adapter: str = "", system_prompt: str | None = None,
                 template: str | None = None) -> tuple[str, int, dict[str, str]]:
    """The exact text the model receives for this conversation (history + message, with the generation
    prompt), its number of tokens, and what rendered it: {template, system_prompt ("" = none), warning ("" unless
    the template is not the one the adapter was trained with)}."""
    p = _exact(me, message, history, base_model, adapter, system_prompt, template)
    return p.text, p.token_count, {"template": p.template, "system_prompt": p.system_prompt, "warning": p.warning}


def exact_prompt_on_page(me: Caller, message: str, history: list[Any] | None, base_model: str, adapter: str,
                         system_prompt: str | None, template: str | None) -> tuple[str, str]:
    """The page's view of the exact prompt: the text, and a line with its token count, template and system
    prompt (and a warning when the template is not the trained one)."""
    p = _exact(me, message, history, base_model, adapter, system_prompt, template)
    line = (f"**{p.token_count} tokens** · template `{p.template}` · system prompt: "
            + (f"“{p.system_prompt}”" if p.system_prompt else "none"))
    if p.warning:
        line += f"\n\n⚠️ {p.warning[0].upper()}{p.warning[1:]}."
    return p.text, line


def defaults(me: Caller, adapter: str) -> tuple[str, str, str]:
    """The adapter's trained system prompt and template, to prefill the fields (no warning then)."""
    try:
        path = resolve_adapter(me.space, adapter)
        trained, system = inference.trained_defaults(path)
    except UserError:  # the chat call reports the real error
        return "", MODEL_TEMPLATE, ""
    return system, trained, ""


def template_notice(me: Caller, adapter: str, template: str) -> str:
    try:
        path = resolve_adapter(me.space, adapter)
        trained = inference.trained_defaults(path)[0]
    except UserError:
        return ""
    if template and template != trained:
        return (f"⚠️ This adapter was trained with the `{trained}` template; prompting it with `{template}` "
                "may give poor answers.")
    return ""


def check(me: Caller, base_model: str, adapter: str) -> str:
    try:
        path = resolve_adapter(me.space, adapter)
        if path and base_model:
            want = inference.adapter_base(path)
            if want and want != base_model:
                return f"⚠️ This adapter was trained on `{want}`, not `{base_model}`: answers may be poor."
    except UserError as e:  # a hint only; the chat call reports the real error
        return f"⚠️ {app_message(e)}"
    return ""


def choices(me: Caller) -> gr.Dropdown:
    return gr.Dropdown(choices=[("", ""), *finished_runs(me.space, checkpoints=True)])


def create_playground_tab(api: Api) -> dict[str, LoadHook]:
    with gr.Row():
        base_model = gr.Textbox(label="Base model", value="", placeholder="empty = the adapter's base (or the embedded SmolLM2)",
                                info="Hub id or local folder; leave empty to use the base the adapter was trained on")
        adapter = FreeDropdown(label="Adapter", choices=[""], value="", allow_custom_value=True, elem_id="adapter-pick",
                              info="One of your finished runs (ID@step: one of its checkpoints), or a Hub repo id such as "
                                   "you/my-adapter; empty = base model only")
        refresh = gr.Button("↻", scale=0)
    with gr.Accordion("Generation settings", open=False):
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", info="0 = greedy (deterministic)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(8, 2048, value=256, step=8, label="Max new tokens")
            rep = gr.Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            seed = gr.Number(value=0, precision=0, label="Seed")
    with gr.Row():
        system_prompt = gr.Textbox(label="System prompt", value="", lines=2, scale=3, elem_id="system-prompt",
                                   info="Prefilled with the one the adapter was trained with; empty = the adapter's")
        template = gr.Dropdown(label="Template", choices=[("the adapter's", "")] + [(n, n) for n in TEMPLATE_NAMES],
                               value="", scale=1,
                               elem_id="template-pick", info="Defaults to the template the adapter was trained with")
    warning = gr.Markdown()
    template_warning = gr.Markdown(elem_id="template-warning")
    chatbot = gr.Chatbot(label="Chat", height=360, elem_id="chatbot")
    with gr.Row():
        msg = gr.Textbox(value="", label="Message", placeholder="Ask something…", scale=4, elem_id="chat-input")
        send = gr.Button("Send", variant="primary", scale=1, elem_id="chat-send")
        clear = gr.Button("Clear", scale=0)
    with gr.Accordion("Show exact prompt", open=False, elem_id="exact-prompt-view"):
        show = gr.Button("Show exact prompt", elem_id="exact-prompt-btn")
        exact_count = gr.Markdown(elem_id="exact-prompt-count")
        exact_text = gr.Textbox(label="Exact prompt (the text the model receives, before its answer)", lines=8,
                                elem_id="exact-prompt", buttons=["copy"])
    gr.Markdown("### Compare base and fine-tuned")
    with gr.Row():
        cprompt = gr.Textbox(value="", label="Prompt", scale=4, elem_id="compare-input")
        cbtn = gr.Button("Compare", scale=1, elem_id="compare-btn")
    with gr.Row():
        base_out = gr.Textbox(label="Base model", lines=6, elem_id="compare-base")
        tuned_out = gr.Textbox(label="With adapter", lines=6, elem_id="compare-tuned")

    create_arena_panel(api, base_model, temperature, max_new, top_p, rep, seed)

    mine = scoped(api)
    compare_as, exact_as, exact_on_page = mine(compare), mine(exact_prompt), mine(exact_prompt_on_page)
    send_event: dict[str, Any] = dict(fn=user_errors(mine(chat)), inputs=[msg, chatbot, base_model, adapter, temperature, max_new, top_p, rep, seed,
                                                    system_prompt, template],
                      outputs=chatbot, concurrency_limit=2)
    send.click(**send_event, api_name="chat").then(lambda: "", None, msg, api_visibility="private")
    msg.submit(**send_event, api_visibility="private").then(lambda: "", None, msg, api_visibility="private")
    clear.click(lambda: [], None, chatbot, api_visibility="private")
    # the page's events leave no error badge on both outputs; the API's (hidden buttons) raise for the caller
    compare_inputs = [cprompt, base_model, adapter, temperature, max_new, seed, system_prompt, template, top_p, rep]
    gr.Button(visible=False).click(user_errors(compare_as), compare_inputs, [base_out, tuned_out], api_name="compare",
                                   concurrency_id="compare", concurrency_limit=2)  # first: it takes the name
    cbtn.click(page_errors(compare_as, lambda _: ("", "")), compare_inputs, [base_out, tuned_out],
               api_visibility="private", concurrency_id="compare", concurrency_limit=2)
    exact_inputs = [msg, chatbot, base_model, adapter, system_prompt, template]
    # the API returns data (the text, the token count as a number, the settings used); the page formats it
    gr.Button(visible=False).click(user_errors(exact_as), exact_inputs,
                                   [gr.Textbox(visible=False), gr.Number(visible=False, precision=0),
                                    gr.JSON(visible=False)],
                                   api_name="exact_prompt", concurrency_id="exact_prompt", concurrency_limit=2)
    show.click(page_errors(exact_on_page, lambda m: ("", f"⚠️ {m}")), exact_inputs, [exact_text, exact_count],
               api_visibility="private", concurrency_id="exact_prompt", concurrency_limit=2)
    adapter.change(page_errors(mine(defaults)), [adapter], [system_prompt, template, template_warning], api_visibility="private")
    template.change(mine(template_notice), [adapter, template], template_warning, api_visibility="private")
    check_as, choices_as = mine(check), mine(choices)
    adapter.change(check_as, [base_model, adapter], warning, api_visibility="private")
    base_model.blur(check_as, [base_model, adapter], warning, api_visibility="private")
    refresh.click(choices_as, None, adapter, api_visibility="private")
    return {"load": (choices_as, [adapter])}
