"""Generation with a base model and optional LoRA adapter(s), formatted with the adapter's own template.

>>> answers = generate_batch(["What is the capital of France?"], max_new_tokens=16, temperature=0)  # doctest: +SKIP
>>> answers  # doctest: +SKIP
['The capital of France is Paris.']

The base model stays loaded across calls (a small cache keyed by model + quantization); an adapter is
attached to it by name, and the base answer comes from the same weights with the adapter disabled.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Sequence

from .adapter import pick_device
from .adapter_lookup import TemplateInfo as TemplateInfo
from .adapter_lookup import adapter_base as adapter_base
from .adapter_lookup import adapter_dir as adapter_dir
from .adapter_lookup import adapter_template as adapter_template
from .adapter_lookup import base_config as base_config
from .config import QuantizationConfig
from .errors import UserError
from .models import Model, ModelError, Tokenizer
from .prompting import Prompt as Prompt
from .prompting import build_prompt as build_prompt
from .prompting import prompt_settings as prompt_settings
from .prompting import reference_tokens as reference_tokens
from .prompting import trained_defaults as trained_defaults
from .templates import Message

if TYPE_CHECKING:
    from peft.tuners.tuners_utils import BaseTunerLayer


_CACHE_SIZE = 2
# The cached bases together may use at most this share of the device's memory (GPU memory, or RAM on the
# CPU); older bases are dropped first. A 7B base in 4-bit is ~4 GB, in bf16 ~14 GB.
CACHE_MEMORY_SHARE = 0.6
_lock = threading.RLock()
# Set at interpreter exit: every running generation stops at its next token (see _finish_at_exit).
_exiting = threading.Event()


def _finish_at_exit() -> None:
    """Stop the running generations and wait until no thread is inside the model, before the interpreter
    finalizes. Generations run in daemon threads (a chat's generation thread, the app's workers); one still
    inside torch when torch's C++ state is torn down aborts the process ("terminate called without an active
    exception", exit code 134) after a clean run. The lock stays held: a thread that waits for it now never
    starts another generation."""
    _exiting.set()
    _lock.acquire(timeout=120)


_exit_handler: list[bool] = []  # registered once, by the first generation


def _stopping_criteria(*stops: threading.Event) -> Any:
    """Criteria for ``generate``: stop at the next token once the interpreter exits or one of ``stops`` is set."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    with _lock:
        if not _exit_handler:
            # Registered here, after torch and transformers are imported: exit handlers run last-registered
            # first, so the generations stop before any handler of those libraries tears their state down.
            atexit.register(_finish_at_exit)
            _exit_handler.append(True)

    events = (_exiting, *stops)

    class Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
            stop = any(e.is_set() for e in events)
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([Stop()])
# How many CPU threads a generation may use right now (None: torch's setting stands). The app sets it: a
# training process on the same CPU holds some cores, and torch threads that find their core taken make every
# operation wait (8-token answers took 40 s beside a training on 2 cores, 0.3 s alone).
_cpu_threads: Callable[[], int | None] | None = None


def set_cpu_threads(policy: Callable[[], int | None] | None) -> None:
    """Install ``policy``: called before each generation on the CPU, it says how many threads to use."""
    global _cpu_threads
    _cpu_threads = policy


def _fit_threads(loaded: "LoadedModel") -> None:
    """Apply the thread policy in the calling thread (torch's thread count is kept per thread)."""
    if _cpu_threads is None or loaded.model.device.type != "cpu":
        return
    n = _cpu_threads()
    if n:
        import torch

        torch.set_num_threads(n)


_cache: OrderedDict[tuple[str, str, str, bool], LoadedModel] = OrderedDict()  # (model, load_in, quant_type, double_quant)


@dataclass
class LoadedModel:
    model: Model  # a transformers model, or a peft PeftModel once an adapter is attached
    tokenizer: Tokenizer
    base_name: str
    adapters: dict[str, Path]  # adapter name -> folder
    active: str | None = None  # the adapter the LoRA layers use now
    lora_layers: list[BaseTunerLayer] = field(default_factory=list)  # collected once per newly attached adapter (see _switch)



def load(model: str = "", quantization: QuantizationConfig | None = None) -> LoadedModel:
    """The base model (cached), on the GPU when there is one."""
    from . import models

    q = quantization or QuantizationConfig(load_in="none")
    key = (model, q.load_in, q.quant_type, q.double_quant)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        cfg = base_config(model)
        device = pick_device()
        m, resolved = models.load_model(cfg, q, device)
        m.eval()
        tok = models.load_tokenizer(cfg)
        loaded = LoadedModel(m, tok, resolved.name if model == "" else model, {})
        _cache[key] = loaded
        budget = CACHE_MEMORY_SHARE * device_memory(device)
        while len(_cache) > 1 and (len(_cache) > _CACHE_SIZE or
                                   sum(_footprint(v.model) for v in _cache.values()) > budget):
            _cache.popitem(last=False)  # the least recently used base
        return loaded


def device_memory(device: str) -> int:
    """Bytes of memory on the device the models live on: the GPU's, else the machine's RAM."""
    if device == "cuda":
        import torch

        memory: int = torch.cuda.get_device_properties(0).total_memory
        return memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _footprint(model: Model) -> int:
    """Bytes of a model's weights and buffers (LoRA layers included)."""
    return sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))


def attach(loaded: LoadedModel, adapter: str | Path) -> str:
    """Attach an adapter by name (no base reload) and make it active. Returns the adapter name."""
    from peft import PeftModel

    folder = adapter_dir(adapter)
    name = "a" + str(abs(hash(str(folder.resolve()))))[:12]
    with _lock:
        if name not in loaded.adapters:
            try:
                if isinstance(loaded.model, PeftModel):
                    loaded.model.load_adapter(str(folder), adapter_name=name)
                else:
                    loaded.model = PeftModel.from_pretrained(loaded.model, str(folder), adapter_name=name)
            except (RuntimeError, ValueError, KeyError) as e:
                # Weight shapes or module names that do not exist in this base: another architecture or size.
                # peft has already injected LoRA layers into the base by then: drop it so the next call reloads.
                _evict(loaded)
                said = (f"the adapter {adapter} does not fit the loaded base {loaded.base_name}: it was trained on "
                        f"{adapter_base(folder) or 'another model'} ({str(e).strip().splitlines()[0][:200]}); "
                        "load its own base (leave ")
                raise ModelError(said + "the model empty, or --model with that name)").in_app(
                    said + "Base model empty, or type that name there)") from None
            loaded.model.eval()
            loaded.adapters[name] = folder
            loaded.model.set_adapter(name, inference_mode=True)  # peft's full walk, once per new adapter
            loaded.lora_layers = _switchable_layers(loaded.model)
            loaded.active = name
        elif loaded.active != name:
            _switch(loaded, name)
    return name


def _switchable_layers(model: Model) -> list[BaseTunerLayer]:
    """The LoRA layers of a PeftModel, or [] when it also has auxiliary modules (modules_to_save, trainable
    tokens): those switch through peft's own ``set_adapter``."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    modules = list(model.modules())
    if any(isinstance(m, AuxiliaryTrainingWrapper) for m in modules):
        return []
    return [m for m in modules if isinstance(m, BaseTunerLayer)]


def _switch(loaded: LoadedModel, name: str) -> None:
    """Make an attached adapter the active one, without touching the base weights.

    peft's ``PeftModel.set_adapter`` walks every module of the model and resets ``requires_grad`` on every
    adapter (~16 ms on the 135M model on CPU); the LoRA layers collected at attach time switch through their
    own public ``set_adapter`` (~6 ms), frozen (inference only).
    """
    if not loaded.lora_layers:
        loaded.model.set_adapter(name, inference_mode=True)
    else:
        for layer in loaded.lora_layers:
            layer.set_adapter(name, inference_mode=True)
        loaded.model.active_adapter = name  # what PeftModel.set_adapter records, on the wrapper and the tuner
        loaded.model.base_model.active_adapter = name
    loaded.active = name


def _evict(loaded: LoadedModel) -> None:
    with _lock:
        for key in [k for k, v in _cache.items() if v is loaded]:
            del _cache[key]


def base_mismatch(loaded: LoadedModel, adapter: str | Path) -> str | None:
    """A warning when the adapter was trained on another base than the loaded one."""
    want = adapter_base(adapter)
    if want and want != loaded.base_name and Path(want).name != Path(loaded.base_name).name:
        return (f"this adapter was trained on {want} but the loaded base is {loaded.base_name}; answers may be "
                f"poor: load {want} as the base instead")
    return None


def named_base_mismatch(model: str | None, adapter: str | Path | None,
                        quantization: QuantizationConfig | None = None) -> str | None:
    """``base_mismatch`` for a base named by the user (loaded once and kept in the cache for the answers)."""
    if not (model and adapter):
        return None
    return base_mismatch(load(model, quantization), adapter)


def prompt_for(
    messages: str | Sequence[Message],
    *,
    adapter: str | Path | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
    template: str | None = None,
    quantization: QuantizationConfig | None = None,
    tokenizer: Tokenizer | None = None,
) -> Prompt:
    """The exact prompt a conversation (or one user message) is sent as: the adapter's trained template and
    system prompt unless ``template`` / ``system_prompt`` are given (None or empty: the adapter's), rendered
    with a generation prompt, and its token count. The Playground, the API and the CLI all prompt through this.

    >>> p = prompt_for("Ivan moved to Oslo in 1972.", adapter="runs/20261123-101500-3f9c2a7d1b")  # doctest: +SKIP
    >>> p.template, p.system_prompt, p.token_count  # doctest: +SKIP
    ('chatml', 'Extract the city and the year as JSON.', 31)
    """
    if tokenizer is None:
        base = model if model else (adapter_base(adapter) if adapter else "")
        tokenizer = load(base, quantization).tokenizer
    info = prompt_settings(adapter, tokenizer, template=template, system_prompt=system_prompt)
    msgs = [{"role": "user", "content": messages}] if isinstance(messages, str) else list(messages)
    text = build_prompt(msgs, info, tokenizer)
    own = msgs[0].get("content", "") if msgs and msgs[0].get("role") == "system" else None
    count = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return Prompt(text=text, token_count=count, template=info["template"],
                  system_prompt=str(own if own is not None else info["system_prompt"]),
                  trained_template=info["trained_template"], trained_system_prompt=info["trained_system_prompt"],
                  eos=info["eos"], stop_strings=tuple(info["stop_strings"]))



def _gen_kwargs(tokenizer: Tokenizer, template: TemplateInfo, max_new_tokens: int, temperature: float, top_p: float,
                repetition_penalty: float) -> dict[str, Any]:
    eos_ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    for s in [template.get("eos")] + list(template.get("stop_strings") or []):
        if s:
            ids = tokenizer.convert_tokens_to_ids(s) if s in tokenizer.get_vocab() else None
            if isinstance(ids, int):
                eos_ids.add(ids)
    kw: dict[str, Any] = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(eos_ids) or None,
              pad_token_id=tokenizer.pad_token_id, repetition_penalty=repetition_penalty,
              stopping_criteria=_stopping_criteria())
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p)
    else:
        kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return kw


def _clean_answer(text: str, template: TemplateInfo) -> str:
    for s in list(template.get("stop_strings") or []) + ([template["eos"]] if template.get("eos") else []):
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()


def _prepare(model: str | None, adapter: str | None, template: str | None,
             quantization: QuantizationConfig | None, system_prompt: str | None = None) -> tuple[LoadedModel, TemplateInfo]:
    base = model if model is not None else (adapter_base(adapter) if adapter else "")
    loaded = load(base, quantization)
    tpl = prompt_settings(adapter, loaded.tokenizer, template=template, system_prompt=system_prompt)
    if adapter:
        attach(loaded, adapter)
    return loaded, tpl


def _adapter_context(loaded: LoadedModel, adapter: str | None) -> ContextManager[object]:
    """Run with the adapter enabled when one is asked for, else with every adapter disabled."""
    import contextlib

    from peft import PeftModel

    if adapter is None and isinstance(loaded.model, PeftModel):
        return loaded.model.disable_adapter()
    return contextlib.nullcontext()


def generate_batch(
    prompts: Sequence[str | Sequence[Message]],
    *,
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    quantization: QuantizationConfig | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.0,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    seed: int = 0,
    batch_size: int = 8,
) -> list[str]:
    """Answer each prompt (a string = one user turn, or a list of messages). Temperature 0 is greedy.
    The template and system prompt default to the adapter's trained ones (see ``prompt_for``)."""
    loaded, tpl = _prepare(model, adapter, template, quantization, system_prompt)
    return _generate(loaded, prompts, tpl, adapter, max_new_tokens=max_new_tokens, temperature=temperature,
                     top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size)


def _generate(loaded: LoadedModel, prompts: Sequence[str | Sequence[Message]], tpl: TemplateInfo, adapter: str | None, *,
              max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.9, repetition_penalty: float = 1.0,
              seed: int = 0, batch_size: int = 8) -> list[str]:
    with _lock, _adapter_context(loaded, adapter):
        if adapter:
            attach(loaded, adapter)
        _fit_threads(loaded)
        return generate_with(loaded, prompts, tpl, max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=top_p, repetition_penalty=repetition_penalty, seed=seed, batch_size=batch_size)


# torch.manual_seed takes a 64-bit seed: anything beyond raises RuntimeError deep in the generation
SEED_RANGE = (-(2 ** 63), 2 ** 64 - 1)


class GenerationError(ValueError, UserError):
    """A generation setting out of its range; the message says what is allowed."""


def check_seed(seed: int) -> int:
    """``seed`` when torch can take it, else a :class:`GenerationError` saying the range."""
    if not SEED_RANGE[0] <= int(seed) <= SEED_RANGE[1]:
        raise GenerationError(f"seed {seed} is out of range: use a whole number from 0 to {SEED_RANGE[1]}")
    return int(seed)


@dataclass(frozen=True)
class Answer:
    """One generated answer; ``ended``: generation stopped at an end token or stop string (False: it ran into
    ``max_new_tokens``, or was cut off)."""

    text: str
    ended: bool


def answer_batch(prompts: Sequence[str | Sequence[Message]], *, adapter: str | None = None, model: str | None = None,
                 quantization: QuantizationConfig | None = None, max_new_tokens: int = 256,
                 batch_size: int = 8, template_of: str | None = None) -> list[Answer]:
    """Greedy answers as ``generate_batch`` gives them (the adapter's trained template and system prompt), each with
    whether it ended by itself (the samples a training run judges at each save, finetune/degeneration.py).
    ``template_of``: the adapter folder whose template and system prompt to prompt with (default: ``adapter``'s), so
    that the base alone (``adapter`` None) answers the prompts exactly as that adapter is asked them."""
    loaded, tpl = _prepare(model, adapter, None, quantization)
    if template_of and template_of != adapter:
        tpl = prompt_settings(template_of, loaded.tokenizer)
    with _lock, _adapter_context(loaded, adapter):
        if adapter:
            attach(loaded, adapter)
        _fit_threads(loaded)
        return answers_with(loaded, prompts, tpl, max_new_tokens=max_new_tokens, temperature=0.0,
                            batch_size=batch_size)


def generate_with(loaded: LoadedModel, prompts: Sequence[str | Sequence[Message]], tpl: TemplateInfo, *,
                  max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.9,
                  repetition_penalty: float = 1.0, seed: int = 0, batch_size: int = 8) -> list[str]:
    """Answer each prompt with ``loaded.model`` as it is (its active adapter, in its mode): the generation of
    ``generate_batch``, for a caller that holds the model itself (the evaluation at each save of a training run).
    Reseeds torch's generator before each batch."""
    return [a.text for a in answers_with(loaded, prompts, tpl, max_new_tokens=max_new_tokens, temperature=temperature,
                                         top_p=top_p, repetition_penalty=repetition_penalty, seed=seed,
                                         batch_size=batch_size)]


def answers_with(loaded: LoadedModel, prompts: Sequence[str | Sequence[Message]], tpl: TemplateInfo, *,
                 max_new_tokens: int = 256, temperature: float = 0.0, top_p: float = 0.9,
                 repetition_penalty: float = 1.0, seed: int = 0, batch_size: int = 8) -> list[Answer]:
    """``generate_with``'s answers, each with whether it ended by itself."""
    import torch

    seed = check_seed(seed)
    tok = loaded.tokenizer
    texts = [build_prompt([{"role": "user", "content": p}] if isinstance(p, str) else p, tpl, tok) for p in prompts]
    # use_cache: a training model's config turns the cache off (gradient checkpointing); the answers are the same
    kw = _gen_kwargs(tok, tpl, max_new_tokens, temperature, top_p, repetition_penalty) | {"use_cache": True}
    ends = set(kw["eos_token_id"] or [])
    stops = [s for s in list(tpl.get("stop_strings") or []) + [tpl.get("eos") or ""] if s]
    out: list[Answer] = []
    side = tok.padding_side
    tok.padding_side = "left"  # generation continues from the right edge
    try:
        with torch.no_grad():
            for i in range(0, len(texts), batch_size):
                torch.manual_seed(seed)
                enc = tok(texts[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                enc = {k: v.to(loaded.model.device) for k, v in enc.items()}
                gen = loaded.model.generate(**enc, **kw)
                for row in gen[:, enc["input_ids"].shape[1]:]:
                    raw = tok.decode(row, skip_special_tokens=False)
                    ended = bool(ends & set(row.tolist())) or any(s in raw for s in stops)
                    out.append(Answer(_clean_answer(tok.decode(row, skip_special_tokens=True), tpl), ended))
    finally:
        tok.padding_side = side
    return out


def choice_probabilities(prompts: Sequence[str | Sequence[Message]], choices: Sequence[str], *, model: str = "",
                         batch_size: int = 8) -> list[list[float]]:
    """For each prompt, the probability that the model's answer starts with each of ``choices`` (single tokens, e.g.
    the digits of a 1-5 rating): the next-token distribution after the prompt, as the model's own chat template
    renders it. A judge reads its score from these (the expected rating), not from a reply a small model may word
    any way it likes.

    >>> choice_probabilities(["Rate 1 to 5: ..."], ["1", "2", "3", "4", "5"])  # doctest: +SKIP
    [[0.02, 0.05, 0.21, 0.48, 0.24]]
    """
    import torch

    loaded, tpl = _prepare(model, None, None, None)
    tok = loaded.tokenizer
    ids = [tok.convert_tokens_to_ids(c) if c in tok.get_vocab() else None for c in choices]
    texts = [build_prompt([{"role": "user", "content": p}] if isinstance(p, str) else p, tpl, tok) for p in prompts]
    out: list[list[float]] = []
    side = tok.padding_side
    with _lock, _adapter_context(loaded, None):
        _fit_threads(loaded)
        tok.padding_side = "left"  # the next token follows the right edge of every row
        try:
            with torch.no_grad():
                for i in range(0, len(texts), batch_size):
                    enc = tok(texts[i: i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                    enc = {k: v.to(loaded.model.device) for k, v in enc.items()}
                    probs = torch.softmax(loaded.model(**enc).logits[:, -1, :].float(), dim=-1)
                    out += [[float(row[t]) if isinstance(t, int) else 0.0 for t in ids] for row in probs]
        finally:
            tok.padding_side = side
    return out


def compare(
    prompt: str | Sequence[Message],
    adapter: str | Path,
    *,
    model: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    quantization: QuantizationConfig | None = None,
    **generation: Any,
) -> tuple[str, str]:
    """The same prompt (the adapter's template and system prompt unless given), stop tokens and seed through
    the base (adapter disabled) and through the adapter, on one loaded copy of the base:
    ``(base_answer, adapter_answer)``.

    >>> compare("Ivan moved to Oslo in 1972.", "runs/20261123-101500-3f9c2a7d1b", temperature=0)  # doctest: +SKIP
    ('Ivan moved to Oslo in 1972.', '{"city": "Oslo", "year": 1972}')
    """
    adapter = str(adapter)
    base_name = model if model is not None else adapter_base(adapter)
    loaded, tpl = _prepare(base_name, adapter, template, quantization, system_prompt)
    [tuned] = _generate(loaded, [prompt], tpl, adapter, **generation)
    [base] = _generate(loaded, [prompt], tpl, None, **generation)
    return base, tuned


def stream_chat(
    messages: Sequence[Message],
    *,
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    quantization: QuantizationConfig | None = None,
    max_new_tokens: int = 256,
    temperature: float = 0.7,
    top_p: float = 0.9,
    repetition_penalty: float = 1.0,
    seed: int = 0,
) -> Iterator[str]:
    """Yield the growing answer text as tokens arrive. The template and system prompt default to the adapter's
    trained ones (see ``prompt_for``)."""
    from .models import ml_imports

    seed = check_seed(seed)  # before a model loads: the user's error, said at once
    ml_imports()
    import torch
    from transformers import TextIteratorStreamer

    loaded, tpl = _prepare(model, adapter, template, quantization, system_prompt)
    tok = loaded.tokenizer
    prompt = build_prompt(messages, tpl, tok)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False).to(loaded.model.device)
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    # Set when the caller stops reading (the generator is closed: a chat cancelled, its client gone): the
    # generation stops at its next token instead of running on, unread, to max_new_tokens.
    stop = threading.Event()
    kw = _gen_kwargs(tok, tpl, max_new_tokens, temperature, top_p, repetition_penalty)
    kw["stopping_criteria"] = _stopping_criteria(stop)
    error: list[BaseException] = []

    def run() -> None:
        try:
            while not _lock.acquire(timeout=0.1):  # another generation runs; give up if the reader leaves
                if stop.is_set():
                    return
            try:
                if stop.is_set():
                    return
                with _adapter_context(loaded, adapter), torch.no_grad():
                    if adapter:
                        attach(loaded, adapter)
                    _fit_threads(loaded)
                    torch.manual_seed(seed)
                    loaded.model.generate(**enc, streamer=streamer, **kw)
            finally:
                _lock.release()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            error.append(e)
            streamer.end()  # type: ignore[no-untyped-call]  # transformers leaves TextIteratorStreamer.end unannotated

    thread = threading.Thread(target=run, name="stream-chat", daemon=True)
    thread.start()
    text = ""
    try:
        for piece in streamer:
            text += piece
            yield _clean_answer(text, tpl)
    finally:
        # whether the answer is complete or the caller closed the generator: no thread is left generating
        stop.set()
        thread.join()
    if error:
        raise error[0]


def reference_losses(
    prompts: Sequence[str | Sequence[Message]],
    references: Sequence[str],
    *,
    adapter: str | None = None,
    model: str | None = None,
    template: str | None = None,
    system_prompt: str | None = None,
    quantization: QuantizationConfig | None = None,
) -> list[tuple[float, int]]:
    """Per example, ``(summed negative log-likelihood in nats, token count)`` of the reference answer's trained
    tokens, rendered and tokenized as training renders a row (``reference_tokens``: the adapter's template and
    system prompt unless given, the template's spacing and end token): the loss training minimises, measured on
    held-out answers. ``adapter=None`` with a ``model`` measures the base (every adapter disabled)."""
    loaded, tpl = _prepare(model, adapter, template, quantization, system_prompt)
    with _lock, _adapter_context(loaded, adapter):
        if adapter:
            attach(loaded, adapter)
        _fit_threads(loaded)
        return reference_losses_with(loaded, prompts, references, tpl)


def reference_losses_with(loaded: LoadedModel, prompts: Sequence[str | Sequence[Message]], references: Sequence[str],
                          tpl: TemplateInfo) -> list[tuple[float, int]]:
    """``reference_losses`` with ``loaded.model`` as it is (its active adapter, in its mode)."""
    import torch

    out: list[tuple[float, int]] = []
    with torch.no_grad():
        for p, ref in zip(prompts, references):
            ids, labels = reference_tokens(p, ref, tpl, loaded.tokenizer)
            # position t predicts token t + 1, as in training's loss; the first token is never a target
            targets = torch.tensor(labels[1:], device=loaded.model.device)
            keep = targets != -100
            logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.model.device)).logits[0, :-1]
            nll = torch.nn.functional.cross_entropy(logits[keep].float(), targets[keep], reduction="sum")
            out.append((float(nll), int(keep.sum())))
    return out
