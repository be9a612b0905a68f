"""The checks a made row passes before it is kept: length and empty answers, exact and near-duplicate prompts
(MinHash LSH from datasketch over character 4-grams: on short prompts, word n-grams miss a changed word,
e.g. "capital of France" vs "capital city of France" share 29% of word 3-grams but 73% of character 4-grams), prompts that overlap the test set, and the judge's threshold.
Each dropped row is counted under its reason.

>>> d = Dedup("near", 0.8)
>>> d.check("What is the capital of France?"), d.add("What is the capital of France?")
(None, None)
>>> d.check("what is the capital of France"), d.check("Which river flows through Paris?")
('duplicate', None)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from ..evaluate import normalize
from .recipe import Filters
from .tasks import row_texts

if TYPE_CHECKING:
    from datasketch import MinHash, MinHashLSH

NUM_PERM = 128  # MinHash permutations: Jaccard estimated within ~0.09 (1/sqrt(128))
SHINGLE = 4  # characters per shingle of the normalized text

# Reasons a row is dropped, as counted in the summary and the dataset card.
REASONS = {
    "empty": "empty prompt or answer",
    "not_a_question": "the question is not one (no question mark)",
    "too_short": "shorter than filters.min_chars",
    "too_long": "longer than filters.max_chars",
    "same_answers": "chosen and rejected answers are the same",
    "duplicate": "the same prompt as an earlier row",
    "near_duplicate": "nearly the same prompt as an earlier row",
    "test_overlap": "the prompt overlaps the test set",
    "judge_no_score": "the judge gave no score",
    "judge_low": "judged below the threshold",
}


def shingles(text: str) -> set[str]:
    t = normalize(text)
    return {t[i: i + SHINGLE] for i in range(max(len(t) - SHINGLE + 1, 1))} if t else set()


def minhash(text: str) -> MinHash:
    from datasketch import MinHash

    m = MinHash(num_perm=NUM_PERM, seed=1)
    m.update_batch([s.encode() for s in shingles(text)])
    return m


def _exact(text: str) -> str:
    return hashlib.sha256(normalize(text).encode()).hexdigest()


@dataclass
class Dedup:
    """Prompts seen so far: ``check`` says whether a new one repeats one (exactly, or nearly), ``add`` keeps it."""

    mode: str = "near"  # near | exact | none
    threshold: float = 0.7
    exact: set[str] = field(default_factory=set)
    lsh: MinHashLSH | None = None
    hashes: dict[str, MinHash] = field(default_factory=dict)  # key in the LSH index -> its MinHash

    def __post_init__(self) -> None:
        if self.mode == "near":
            from datasketch import MinHashLSH

            self.lsh = MinHashLSH(threshold=self.threshold, num_perm=NUM_PERM)

    def check(self, text: str) -> str | None:
        """``duplicate`` | ``near_duplicate`` | None."""
        if self.mode == "none":
            return None
        if _exact(text) in self.exact:
            return "duplicate"
        if self.lsh is not None and shingles(text):
            m = minhash(text)
            if any(m.jaccard(other) >= self.threshold for other in self._others(m)):
                return "near_duplicate"
        return None

    def _others(self, m: MinHash) -> list[MinHash]:
        assert self.lsh is not None
        return [self.hashes[k] for k in self.lsh.query(m)]

    def add(self, text: str) -> None:
        self.exact.add(_exact(text))
        if self.lsh is not None and shingles(text):
            m = minhash(text)
            key = str(len(self.hashes))
            self.hashes[key] = m
            self.lsh.insert(key, m)


def test_prompts(source: str) -> list[str]:
    """The prompt texts of a test file (what ``finetune eval`` asks), as one string each."""
    from ..evaluate import read_test_set

    out = []
    for ex in read_test_set(source):
        if isinstance(ex.prompt, str):
            out.append(ex.prompt)
        else:
            out.append(next((m["content"] for m in reversed(ex.prompt) if m["role"] == "user"), ""))
    return out


def test_index(prompts: Iterable[str], threshold: float) -> Dedup:
    """The test set's prompts as a near-duplicate index: a made prompt found in it overlaps the test set."""
    index = Dedup("near", threshold)
    for p in prompts:
        index.add(p)
    return index


def row_problem(row: dict[str, Any], f: Filters, question: bool = False) -> str | None:
    """Why a row is dropped by its own text alone, or None; ``question``: its prompt must be a question."""
    prompt, answer = row_texts(row)
    texts = [prompt, answer] + ([str(row.get("rejected", ""))] if "rejected" in row else [])
    if any(not t.strip() for t in texts):
        return "empty"
    if question and "?" not in prompt:
        return "not_a_question"
    if any(len(t.strip()) < f.min_chars for t in texts):
        return "too_short"
    if any(len(t) > f.max_chars for t in texts):
        return "too_long"
    if "rejected" in row and normalize(answer) == normalize(str(row["rejected"])):
        return "same_answers"
    return None


def judge_problem(score: float | None, threshold: float) -> str | None:
    if score is None:
        return "judge_no_score"
    return "judge_low" if score < threshold else None


@dataclass
class Gate:
    """Every check but the judge's, with the kept rows' prompts remembered (a continued run refills it)."""

    filters: Filters
    seen: Dedup
    test: Dedup | None = None
    questions: bool = False  # prompts must be questions (the qa and preference tasks)

    @classmethod
    def of(cls, f: Filters, test_prompts: Iterable[str] = (), questions: bool = False) -> Gate:
        prompts = list(test_prompts)
        return cls(f, Dedup(f.dedup, f.near_threshold), test_index(prompts, f.near_threshold) if prompts else None,
                   questions)

    def problem(self, row: dict[str, Any]) -> str | None:
        reason = row_problem(row, self.filters, self.questions)
        if reason:
            return reason
        prompt = row_texts(row)[0]
        if self.test is not None and self.test.check(prompt):
            return "test_overlap"
        return self.seen.check(prompt)

    def keep(self, row: dict[str, Any]) -> None:
        self.seen.add(row_texts(row)[0])
