"""What each task asks the generator, and how its answers become a row: the plan of work items (each with a stable
key, so a continued run never makes one twice), the prompts, the parsing of short model replies and the judge.

Each step asks for one short thing (a question; an answer), so that a small model can follow it: no JSON to emit.

>>> clean_question("Question: What is QLoRA?\\nIt is ...")
'What is QLoRA?'
>>> parse_score("I would rate it 4/5."), parse_score("no idea")
(4.0, None)
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any, Sequence

from ..templates import Message
from .generators import Generator, parse_score
from .recipe import Recipe
from .sources import Chunk, Pair

SEEDS_SHOWN = 3  # seed examples shown per new instruction
REJECTED_TEMPERATURE = 1.0  # the rejected answer of a preference pair: sampled freely, without the text


@dataclass(frozen=True)
class Item:
    """One row to make: ``key`` is stable across runs (the chunk's or example's hash and its round)."""

    index: int
    key: str
    source: str
    context: str = ""  # the chunk a question is grounded in
    focus: str = ""  # the sentence of the chunk the question is about (each round of a chunk takes the next one)
    examples: tuple[Pair, ...] = ()  # the seeds shown (instructions) or the row to rewrite (rewrite)


MIN_FOCUS_WORDS = 5  # shorter lines (headings) are no facts to ask about


def sentences(text: str) -> list[str]:
    """A chunk's sentences of at least a few words, in order (headings left out).

    >>> sentences("# Hours\\n\\nIt opens at 9 every day. It closes at 6 on Sundays!")
    ['It opens at 9 every day.', 'It closes at 6 on Sundays!']
    """
    out = []
    for line in text.splitlines():
        for part in re.split(r"(?<=[.!?])\s+", line.strip()):
            if len(part.split()) >= MIN_FOCUS_WORDS:
                out.append(part.strip())
    return out


def _hash(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def plan(recipe: Recipe, chunks: Sequence[Chunk], pairs: Sequence[Pair], count: int) -> list[Item]:
    """The first ``count`` work items of a recipe: its units (chunks, seed samples, rows) in turn, round after round."""
    kind = recipe.task.kind
    units: list[tuple[str, str, str, tuple[Pair, ...]]] = []  # (id, source, context, examples)
    facts: dict[str, list[str]] = {}
    if kind in ("qa", "preference"):
        units = [(c.id, c.source, c.text, ()) for c in chunks]
        facts = {c.id: sentences(c.text) or [c.text] for c in chunks}
    elif kind == "rewrite":
        units = [(_hash(p.prompt, p.answer), "rows", "", (p,)) for p in pairs]
    else:  # instructions: a different window of seeds for each unit
        n = len(pairs)
        for start in range(n):
            shown = tuple(pairs[(start + j) % n] for j in range(min(SEEDS_SHOWN, n)))
            units.append((_hash(*(p.prompt for p in shown)), "seeds", "", shown))
    if not units:
        return []
    ids: dict[str, int] = {}
    for n, (uid, source, context, examples) in enumerate(units):  # a repeated row (the same seed twice) is its own
        ids[uid] = ids.get(uid, 0) + 1                                # unit, keyed apart
        if ids[uid] > 1:
            units[n] = (f"{uid}.{ids[uid]}", source, context, examples)
    items = []
    for i in range(count):
        uid, source, context, examples = units[i % len(units)]
        round_ = i // len(units)
        focus = facts[uid][round_ % len(facts[uid])] if context else ""
        items.append(Item(i, f"{uid}:{round_}", source, context, focus, examples))
    return items


def _guidance(recipe: Recipe) -> str:
    return f" {recipe.task.guidance.strip()}" if recipe.task.guidance.strip() else ""


def question_prompt(recipe: Recipe, item: Item) -> list[Message] | None:
    """What asks for the row's prompt (None: the rewrite task keeps the row's own)."""
    kind = recipe.task.kind
    if kind in ("qa", "preference"):
        # one worked example first: a small model copies a pattern more readily than it follows an instruction
        text = (f"Write the question that the sentence answers.{_guidance(recipe)}\n\n"
                "Sentence: The Eiffel Tower was finished in 1889.\nQuestion: When was the Eiffel Tower finished?\n\n"
                f"Sentence: {item.focus}\nQuestion:")
    elif kind == "instructions":
        shown = "\n".join(f"{i}. {p.prompt}" for i, p in enumerate(item.examples, 1))
        text = (f"Here are example requests:\n{shown}\n\nWrite one new request in the same style, on a different "
                f"subject.{_guidance(recipe)} Reply with the request only.")
    else:
        return None
    return [{"role": "user", "content": text}]


_LEAD = re.compile(r"^\s*(?:\d+[.)]\s*|[-*•]\s*|(?:new\s+)?(?:question|request|instruction|q)\s*[:：]\s*)+", re.I)


def clean_question(reply: str) -> str:
    """The question or request in a short reply: its first non-empty line, without a label, numbering or quotes."""
    for line in reply.strip().splitlines():
        line = _LEAD.sub("", line).strip().strip('"“”\'').strip()
        if line:
            return line
    return ""


def answer_prompt(recipe: Recipe, item: Item, prompt: str, grounded: bool = True) -> list[Message]:
    """What asks for the row's answer to ``prompt``."""
    kind = recipe.task.kind
    if kind in ("qa", "preference") and grounded:
        text = (f"{item.context}\n\nAnswer this question about the text above in one or two sentences."
                f"{_guidance(recipe)}\n\nQuestion: {prompt}")
    elif kind == "rewrite":
        old = item.examples[0]
        text = (f"{recipe.task.rewrite_style.strip()}{_guidance(recipe)}\n\nQuestion: {old.prompt}\n\n"
                f"Answer: {old.answer}\n\nReply with the new answer only.")
    else:
        text = prompt
    return [{"role": "user", "content": text}]


def judge_prompt(recipe: Recipe, item: Item, prompt: str, answer: str) -> list[Message]:
    context = f"Text the answer should rest on:\n{item.context}\n\n" if item.context else ""
    return [{"role": "user", "content": (
        f"Rate the answer from 1 (bad) to 5 (excellent).\nRubric: {recipe.judge.rubric.strip()}\n\n{context}"
        f"Question: {prompt}\n\nAnswer: {answer}\n\nReply with one number from 1 to 5.")}]


def output_row(recipe: Recipe, prompt: str, answer: str, rejected: str | None) -> dict[str, Any]:
    """The written row in the recipe's output shape (the judge's score is added by the caller)."""
    shape = recipe.output.shape
    if shape == "preference":
        return {"prompt": prompt, "chosen": answer, "rejected": rejected or ""}
    if shape == "prompt_completion":
        return {"prompt": prompt, "completion": answer}
    messages: list[dict[str, str]] = []
    if recipe.output.system_prompt.strip():
        messages.append({"role": "system", "content": recipe.output.system_prompt.strip()})
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def row_texts(row: dict[str, Any]) -> tuple[str, str]:
    """A written row's prompt and (chosen) answer, in any output shape."""
    if "messages" in row:
        msgs = row["messages"]
        user = next((m["content"] for m in msgs if m.get("role") == "user"), "")
        answer = next((m["content"] for m in reversed(msgs) if m.get("role") == "assistant"), "")
        return str(user), str(answer)
    return str(row.get("prompt", "")), str(row.get("chosen", row.get("completion", "")))


def make_rows(recipe: Recipe, items: Sequence[Item], gen: Generator) -> list[dict[str, Any]]:
    """One row per item (not yet filtered or judged), each made in one to three short generations."""
    g = recipe.generator
    seed = g.seed + (items[0].index if items else 0)
    asks = [question_prompt(recipe, it) for it in items]
    prompts = [it.examples[0].prompt if it.examples else "" for it in items]  # the rewrite task's own
    need = [i for i, a in enumerate(asks) if a is not None]
    if need:
        replies = gen.chat([asks[i] or [] for i in need], max_new_tokens=min(g.max_new_tokens, 96),
                           temperature=g.temperature, seed=seed)
        for i, reply in zip(need, replies):
            prompts[i] = clean_question(reply)
    answers = gen.chat([answer_prompt(recipe, it, p) for it, p in zip(items, prompts)],
                       max_new_tokens=g.max_new_tokens, temperature=g.temperature, seed=seed)
    rejected: list[str | None] = [None] * len(items)
    if recipe.task.kind == "preference":
        rejected = list(gen.chat([answer_prompt(recipe, it, p, grounded=False) for it, p in zip(items, prompts)],
                                 max_new_tokens=g.max_new_tokens, temperature=max(g.temperature, REJECTED_TEMPERATURE),
                                 seed=seed + 7919))
    return [output_row(recipe, p, a.strip(), r.strip() if r is not None else None)
            for p, a, r in zip(prompts, answers, rejected)]


def judge_rows(recipe: Recipe, items: Sequence[Item], rows: Sequence[dict[str, Any]], judge: Generator) -> list[float | None]:
    """The judge's score (1 to 5, or None when its reply held none) of each row."""
    asks = [judge_prompt(recipe, it, *row_texts(row)) for it, row in zip(items, rows)]
    return judge.rate(asks)
