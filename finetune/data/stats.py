"""Token-length statistics of formatted examples: tokens per example with the model's tokenizer, and the
min/median/p95/max that the summary shows (and how many examples training will truncate).

>>> token_stats([3, 1, 2, 10], max_length=5)
{'min': 1, 'median': 3, 'p95': 10, 'max': 10, 'total': 16, 'over_max_length': 1}
"""

from __future__ import annotations

from typing import Any, Sequence


def token_lengths(texts: list[str], tokenizer: Any, batch: int = 2048) -> list[int]:
    """Tokens per text with the model's tokenizer (batched: the fast tokenizer works in parallel)."""
    out: list[int] = []
    for i in range(0, len(texts), batch):
        enc = tokenizer(texts[i: i + batch], add_special_tokens=False)["input_ids"]
        out.extend(len(x) for x in enc)
    return out


def token_stats(lengths: Sequence[int], max_length: int | None = None) -> dict[str, int] | None:
    """min, median, p95 (nearest rank), max and total of ``lengths``, and ``over_max_length`` when a
    ``max_length`` is given; None without lengths (no tokenizer was given)."""
    if not lengths:
        return None
    s = sorted(lengths)

    def pick(q: float) -> int:
        return s[min(len(s) - 1, int(q * (len(s) - 1) + 0.5))]

    stats = {"min": s[0], "median": pick(0.5), "p95": pick(0.95), "max": s[-1], "total": sum(s)}
    if max_length:
        stats["over_max_length"] = sum(1 for x in s if x > max_length)
    return stats
