"""Is the adapter's chat template the template it trained with? Render the same dialogs both ways and compare.

(a) the training formatter (``templates.render`` with the template, bos/eos and default system prompt the run
recorded) and (b) the saved tokenizer's ``apply_chat_template`` (plain transformers on the adapter folder) must
give the same text and, tokenised the way training tokenised (``add_special_tokens=False`` on the rendered
text), the same token ids. Dialogs: the run's own validation dialogs (else a sample of its training data) when
readable, plus built-in probes (system / no system, one and three turns, unicode, an empty answer).

>>> check_template("runs/20261123-101500-3f9c2a7d1b").ok  # doctest: +SKIP
True
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .adapter import has_tokenizer, read_base_model, read_run_config, read_template_info
from .dialogs import sample_dialogs
from .errors import UserError
from .templates import MODEL_TEMPLATE, Message, SpecialTokens, TemplateError, render, with_default_system

CONTEXT = 30  # characters shown on each side of the first difference

PROBES: list[tuple[str, list[Message]]] = [
    ("system, one turn", [{"role": "system", "content": "You are a helpful assistant."},
                          {"role": "user", "content": "What is the capital of France?"},
                          {"role": "assistant", "content": "Paris."}]),
    ("no system, one turn", [{"role": "user", "content": "What is the capital of France?"},
                             {"role": "assistant", "content": "Paris."}]),
    ("system, three turns", [{"role": "system", "content": "Answer briefly."},
                             {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
                             {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"},
                             {"role": "user", "content": " And 3 + 3? \n"}, {"role": "assistant", "content": "6\n"}]),
    ("no system, three turns", [{"role": "user", "content": "One"}, {"role": "assistant", "content": "1"},
                                {"role": "user", "content": "Two"}, {"role": "assistant", "content": "2"},
                                {"role": "user", "content": "Three"}, {"role": "assistant", "content": "3"}]),
    ("unicode", [{"role": "user", "content": "Übersetze: 日本語 — ça va? 🙂"},
                 {"role": "assistant", "content": "Ça va bien ✓ «merci»"}]),
    ("empty assistant turn", [{"role": "user", "content": "Say nothing."}, {"role": "assistant", "content": ""},
                              {"role": "user", "content": "Now say ok."}, {"role": "assistant", "content": "ok"}]),
]


class TemplateMismatch(UserError):
    """The adapter's chat template does not render what training rendered (pushing or merging it is refused)."""


@dataclass(frozen=True)
class Difference:
    """Where the two renderings of one dialog first differ."""

    dialog: str
    add_generation_prompt: bool
    index: int  # first differing character (-1: the texts agree and only the token ids differ)
    training: str  # the training text around it
    saved: str  # the chat template's text around it
    token_index: int | None = None
    training_token: str | None = None
    saved_token: str | None = None

    def describe(self) -> str:
        where = f"{self.dialog}{' (generation prompt)' if self.add_generation_prompt else ''}"
        parts = [f"the adapter's chat template differs from training on {where}"]
        if self.index >= 0:
            parts.append(f"first differing character at index {self.index}: training {self.training!r}, "
                         f"chat template {self.saved!r}")
        if self.token_index is not None:
            parts.append(f"first differing token #{self.token_index}: training {self.training_token}, "
                         f"chat template {self.saved_token}")
        return "; ".join(parts)


@dataclass(frozen=True)
class TemplateCheck:
    ok: bool
    checked: int  # renderings compared (dialogs x {complete, generation prompt})
    template: str
    difference: Difference | None = None
    note: str = ""  # e.g. why the run's own dialogs were not checked

    def message(self) -> str:
        if self.difference is not None:
            return self.difference.describe()
        text = (f"template check passed: the adapter's chat template renders what training rendered "
                f"(template {self.template}, {self.checked} renderings, text and token ids)")
        return text + (f"; {self.note}" if self.note else "")

    def to_event(self) -> dict[str, Any]:
        """The fields of a ``template_check`` event."""
        d = self.difference
        return {"ok": self.ok, "checked": self.checked, "template": self.template, "message": self.message(),
                "first_difference": None if d is None else {
                    "dialog": d.dialog, "add_generation_prompt": d.add_generation_prompt, "index": d.index,
                    "training": d.training, "saved": d.saved, "token_index": d.token_index,
                    "training_token": d.training_token, "saved_token": d.saved_token}}


def first_difference(a: Sequence[Any], b: Sequence[Any]) -> int | None:
    """The first index where two sequences differ (one ending early counts), or None when equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(label: str, gen: bool, training_text: str, saved_text: str, training_ids: Sequence[int],
            saved_ids: Sequence[int], tokenizer: Any) -> Difference | None:
    """The first difference between the two renderings of one dialog, or None when text and ids agree."""
    i = first_difference(training_text, saved_text)
    j = first_difference(training_ids, saved_ids)
    if i is None and j is None:
        return None

    def around(text: str, k: int) -> str:
        return text[max(0, k - CONTEXT): k + CONTEXT]

    def token(ids: Sequence[int], k: int) -> str:
        if k >= len(ids):
            return "(none: the text ends)"
        return f"{ids[k]} {tokenizer.convert_ids_to_tokens(ids[k])!r}"

    return Difference(label, gen, -1 if i is None else i,
                      "" if i is None else around(training_text, i), "" if i is None else around(saved_text, i),
                      j, None if j is None else token(training_ids, j), None if j is None else token(saved_ids, j))


def check_template(path: str | Path, *, dialogs: Sequence[Sequence[Message]] | None = None,
                   base_tokenizer: Any = None, revision: str | None = None) -> TemplateCheck:
    """Compare the adapter's chat template with the training formatter (see the module docstring).

    ``path``: a run folder, an adapter folder or a Hub repo id. ``dialogs``: the run's own dialogs (default:
    read from the data the run's config names, when readable). ``base_tokenizer``: the tokenizer training
    used (default: loaded from the run's config or the adapter's base model).
    """
    from transformers import AutoTokenizer

    from . import inference

    folder = inference.adapter_dir(path, revision)
    info = read_template_info(folder)
    if info is None:
        return TemplateCheck(True, 0, MODEL_TEMPLATE, note="the adapter records no trained template; nothing to check")
    name = str(info.get("template") or MODEL_TEMPLATE)
    if not has_tokenizer(folder):
        return TemplateCheck(True, 0, name, note="the adapter has no tokenizer files (tools use the base's); nothing to check")
    system = str(info.get("system_prompt") or "")
    tokens = SpecialTokens(str(info.get("bos") or ""), str(info.get("eos") or ""))
    saved = AutoTokenizer.from_pretrained(str(folder))
    note = ""
    base = base_tokenizer
    if base is None and name == MODEL_TEMPLATE:  # the base's own chat template is the training formatter
        try:
            base = _base_tokenizer(folder)
        except UserError as e:
            note = f"the base tokenizer is not available here ({str(e)[:120]}); compared with the saved one"
    if base is None:
        base = saved  # the training tokenizer as saved (bos/eos declared only when already one of its tokens)
    if dialogs is None:
        dialogs, why = run_dialogs(folder, base)
        note = "; ".join(n for n in (note, why) if n)
    named = [(f"dialog {i + 1} of the run's data", list(d)) for i, d in enumerate(dialogs)] + \
        [(f"probe '{label}'", d) for label, d in PROBES]
    checked = 0
    for label, msgs in named:
        for gen in (False, True):
            conv = msgs[:-1] if gen else msgs
            if not conv:
                continue
            try:
                training_text = render(with_default_system(conv, system), name, base, tokens=tokens,
                                       add_generation_prompt=gen).text
            except TemplateError:
                continue  # a dialog the template itself refuses (e.g. a base template's own role rules)
            saved_text = str(saved.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen))
            diff = compare(label, gen, training_text, saved_text,
                           base.encode(training_text, add_special_tokens=False),
                           saved.encode(saved_text, add_special_tokens=False), saved)
            checked += 1
            if diff is not None:
                return TemplateCheck(False, checked, name, diff, note)
    return TemplateCheck(True, checked, name, note=note)


def _base_tokenizer(folder: Path) -> Any:
    from . import inference, models

    config = read_run_config(folder)
    if config is not None:
        return models.load_tokenizer(config.model)
    return models.load_tokenizer(inference.base_config(read_base_model(folder)))


def run_dialogs(folder: Path, tokenizer: Any) -> tuple[list[list[Message]], str]:
    """The run's validation dialogs (else a sample of its training rows), read again as its config says;
    ([], why) when the adapter has no run config or its data is not readable here."""
    from . import data
    from .config import sample_data

    config = read_run_config(folder)
    if config is None:
        return [], "the adapter has no run config: checked the built-in probes only"
    d = config.data
    source = d.source or str(sample_data(config.training.method))
    from . import methods

    if methods.get(config.training.method).text_rows:  # preference pairs, feedback or prompts: their own shapes
        try:
            found = methods.load_data(config, tokenizer)
        except UserError as e:
            return [], f"the run's data is not readable here ({str(e)[:120]}): checked the built-in probes only"
        return sample_dialogs(found.val_examples, found.examples), ""
    try:
        result = data.format_dataset(source, d, tokenizer=tokenizer, measure_tokens=False)
    except UserError as e:
        return [], f"the run's data is not readable here ({str(e)[:120]}): checked the built-in probes only"
    return sample_dialogs(result.val_examples, result.examples), ""


def require_consistent(path: str | Path, *, action: str, ignore_mismatch: bool = False,
                       revision: str | None = None) -> TemplateCheck | None:
    """Refuse ``action`` (e.g. "push", "merge") with :class:`TemplateMismatch` when the check fails.

    ``ignore_mismatch``: the user's explicit override; nothing is checked."""
    if ignore_mismatch:
        return None
    result = check_template(path, revision=revision)
    if not result.ok:
        said = (f"{result.message()}; refusing to {action} an adapter that other tools would prompt differently from "
                "training. Run `python -m finetune verify-template` for details, or ")
        raise TemplateMismatch(said + "override with --ignore-template-mismatch (ignore_template_mismatch=True)").in_app(
            said + "retrain it (the app has no override; the command line's --ignore-template-mismatch is one)")
    return result
