"""Signs that a model's answers have degenerated while its training metrics look perfect.

A preference run (dpo, orpo, kto, grpo) can reach loss 0 and reward accuracy 1.0 by pushing the rejected answers'
probability down without keeping the chosen ones likely: the model then answers "negative negative negative ..."
to every prompt. The preference metrics cannot show it; its answers do. So at each checkpoint save a preference
run answers a few fixed prompts of its data (greedy, :class:`SaveSamples`), :func:`judge` reads those answers and
the run writes a ``samples`` event with them and its warnings, which the Train tab shows. :func:`margin_warning`
reads the reward margin a dpo or kto step logs.

>>> loop = "negative " * 8
>>> judge([Sample("Review 1", loop, ended=False), Sample("Review 2", loop, ended=False),
...        Sample("Review 3", loop, ended=False)])[0]
'3 of 3 sample answers repeat themselves (e.g. "negative negative negative negative negative negative negat…")'
>>> judge([Sample("Review 1", loop, ended=False)], baseline=[Sample("Review 1", loop, ended=False)])  # as it began
[]
>>> judge([Sample("Capital of France?", "Paris", ended=True), Sample("Capital of Peru?", "Lima", ended=True)])
[]
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from .config import QuantizationConfig
    from .data.preference import MethodExample
    from .templates import Message

# An answer repeats itself when at least this share of its word 3-grams (punctuation marks count as words) occurred
# earlier in it: "negative negative ..." scores ~0.9, a JSON object or a sentence 0, a long list with a repeated
# phrase ~0.1-0.2.
REPEAT_N, REPEAT_SHARE = 3, 0.5
REPEAT_MIN_WORDS = 8  # shorter answers have too few 3-grams to judge
# Answers that ran into max_new_tokens without the end token, as a share of the samples: one long answer is
# normal, half of them is a model that no longer stops (the sample's token limit is twice its references').
UNENDED_SHARE = 0.5
# The samples are "one answer" when each is this similar (difflib ratio, 1 = equal) to the first, and there are at
# least this many: three different prompts answered alike is a collapse, two may be chance.
SAME_RATIO, SAME_MIN = 0.9, 3
# The reward margin (beta x the log-probability ratio gap between chosen and rejected, summed over the answer) past
# which dpo's loss -log(sigmoid(margin)) is below 5e-5: it teaches nothing more, and the margin grows only by moving
# the model further from the reference. A healthy run on our samples ends near 1-3 (see presets/smollm2-135m-dpo.yaml).
MARGIN_LIMIT = 10.0
MARGIN_METHODS = ("dpo", "kto")  # the methods whose margin is beta x a log ratio to the reference

SAMPLE_PROMPTS = 4  # prompts answered at each save: a few seconds of generation for a small model
SAMPLE_TOKENS_MIN, SAMPLE_TOKENS_MAX = 16, 256  # bounds of the token limit planned from the references


@dataclass(frozen=True)
class Sample:
    """One greedy answer to a fixed prompt; ``ended``: it stopped at the end token (False: it ran into the token
    limit); ``reference``: the answer the data wants (the chosen one), when it has one."""

    prompt: str
    answer: str
    ended: bool
    reference: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answer": self.answer, "ended": self.ended}


_WORD = re.compile(r"\w+|[^\w\s]")


def repetition(text: str, n: int = REPEAT_N) -> float:
    """The share of the text's word n-grams that occurred earlier in it (0: none repeats; punctuation marks are
    words, so "}}}}}}" repeats too).

    >>> repetition("negative negative negative negative negative"), repetition('{"city": "Oslo", "year": 1972}')
    (0.6666666666666667, 0.0)
    """
    words = _WORD.findall(text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _repeating(samples: Sequence[Sample]) -> list[Sample]:
    return [s for s in samples if len(_WORD.findall(s.answer)) >= REPEAT_MIN_WORDS and repetition(s.answer) >= REPEAT_SHARE]


def _alike(samples: Sequence[Sample]) -> bool:
    """Every answer nearly equal to the first (three prompts or more)."""
    if len({s.prompt for s in samples}) < SAME_MIN:
        return False
    first = " ".join(samples[0].answer.lower().split())
    return all(difflib.SequenceMatcher(None, first, " ".join(s.answer.lower().split())).ratio() >= SAME_RATIO
               for s in samples[1:])


def judge(samples: Sequence[Sample], baseline: Sequence[Sample] = ()) -> list[str]:
    """Warnings about a set of sample answers (none: they look like answers): answers that repeat themselves,
    answers that no longer end, and one answer given to different prompts. ``baseline``: the starting model's
    answers to the same prompts; a problem it had as much of is not the training's doing and is not reported (a
    small base that rambles past the token limit before training is no collapse).

    >>> loop = Sample("p", "go " * 30, False)
    >>> len(judge([loop, loop])), judge([loop, loop], baseline=[loop, loop])
    (2, [])
    """
    out: list[str] = []
    if not samples:
        return out
    n, base = len(samples), list(baseline)
    before = f" (the starting model: {{}} of {len(base)})" if base else "{}"

    def said(count: int) -> str:
        return before.format(count) if base else ""

    repeating, base_repeating = _repeating(samples), _repeating(base)
    if repeating and len(repeating) > len(base_repeating):
        out.append(f"{len(repeating)} of {n} sample answers repeat themselves (e.g. \"{_short(repeating[0].answer)}\")"
                   + said(len(base_repeating)))
    unended, base_unended = [s for s in samples if not s.ended], [s for s in base if not s.ended]
    if len(unended) >= max(1, math.ceil(UNENDED_SHARE * n)) and len(unended) > len(base_unended):
        out.append(f"{len(unended)} of {n} sample answers ran to the token limit without the end token"
                   + said(len(base_unended)))
    references = {s.reference for s in samples if s.reference is not None}
    differ = len(references) != 1  # the data wants different answers (or says nothing about them)
    if differ and _alike(samples) and not (base and _alike(base)):
        out.append(f"all {n} sample prompts got the same answer (\"{_short(samples[0].answer)}\")")
    return out


def margin_warning(method: str, metrics: dict[str, float], beta: float) -> str | None:
    """A warning when a dpo or kto step's reward margin has run past :data:`MARGIN_LIMIT` (None otherwise).

    >>> margin_warning("dpo", {"rewards/margins": 19.8}, 0.1)[:37]
    'reward margin 19.8 (a log-probability'
    >>> margin_warning("dpo", {"rewards/margins": 2.1}, 0.1) is None
    True
    """
    margin = metrics.get("rewards/margins")
    if method not in MARGIN_METHODS or margin is None or margin <= MARGIN_LIMIT:
        return None
    gap = f" (a log-probability gap of {margin / beta:.0f} nats between chosen and rejected)" if beta > 0 else ""
    return (f"reward margin {margin:.3g}{gap}: far past what the loss needs ({MARGIN_LIMIT:g}), the model is "
            "moving away from the reference; its answers may have degenerated (see the samples). Lower the learning "
            "rate or the steps, raise beta, or start from an SFT adapter (training.init_adapter)")


def sample_tokens(references: Sequence[str | None], tokenizer: Any) -> int:
    """The token limit of the sample answers: twice the longest reference plus room for the end token (a model
    that answers like its data ends well before it), within SAMPLE_TOKENS_MIN..MAX; MAX without references."""
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in references if r]
    if not lengths:
        return SAMPLE_TOKENS_MAX
    return max(SAMPLE_TOKENS_MIN, min(SAMPLE_TOKENS_MAX, 2 * max(lengths) + 8))


def sample_prompts(examples: Sequence[MethodExample], count: int = SAMPLE_PROMPTS
                   ) -> list[tuple[list[Message], str | None]]:
    """``count`` prompts spread evenly over the examples (the same ones at every save), each as its conversation
    and the answer the data wants (a pair's chosen answer, a thumbs-up answer, a prompt's reference)."""
    from .data.preference import FeedbackExample, PairExample, PromptExample

    if not examples:
        return []
    stride = max(1, len(examples) // count)
    out: list[tuple[list[Message], str | None]] = []
    for ex in list(examples)[::stride][:count]:
        reference: str | None = None
        if isinstance(ex, PairExample):
            reference = ex.chosen_content
        elif isinstance(ex, FeedbackExample):
            reference = ex.completion_content if ex.label else None
        elif isinstance(ex, PromptExample):
            reference = ex.answer
        out.append((list(ex.messages), reference))
    return out


class SaveSamples:
    """A few fixed prompts answered with each checkpoint as it is saved, and judged.

    The answers come from the base loaded beside training (``inference.load``: cached, the run's quantization) with
    the checkpoint's adapter attached, as the Playground would answer: the training model itself never generates
    (a 4-bit model used for inference on some CPUs must not train afterwards; see STACK.md).
    """

    def __init__(self, prompts: Sequence[tuple[list[Message], str | None]], *, base_model: str,
                 quantization: QuantizationConfig, max_new_tokens: int) -> None:
        self.prompts, self.base_model = list(prompts), base_model
        self.quantization, self.max_new_tokens = quantization, max_new_tokens
        self.baseline: list[Sample] | None = None  # the starting model's answers, taken once at the first save

    def answers(self, adapter: Path | None, template_of: Path) -> list[Sample]:
        """The prompts answered with ``adapter`` (None: the base alone), prompted with the template of the adapter
        folder ``template_of``."""
        from .evaluate import own_random_state
        from .inference import answer_batch

        with own_random_state():
            answers = answer_batch([m for m, _ in self.prompts], adapter=str(adapter) if adapter else None,
                                   model=self.base_model, quantization=self.quantization,
                                   max_new_tokens=self.max_new_tokens, template_of=str(template_of))
        return [Sample(_last_user(m), a.text, a.ended, ref) for (m, ref), a in zip(self.prompts, answers)]

    def at_save(self, adapter: Path) -> tuple[list[Sample], list[str]]:
        """The samples of the checkpoint whose adapter folder is ``adapter``, and their warnings: what its answers
        have that the starting model's did not (``judge``)."""
        if self.baseline is None:
            self.baseline = self.answers(None, adapter)
        samples = self.answers(adapter, adapter)
        return samples, judge(samples, self.baseline)


def _last_user(messages: Sequence[Message]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
