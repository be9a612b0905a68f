"""Two answers to one prompt in one padding-free row, the prompt once; the log-probabilities of the scored tokens
without full-vocabulary logits anywhere else.

A preference method scores two sequences per example that start alike (DPO and ORPO: the prompt with the chosen and
with the rejected answer; KTO: the prompt with its answer and with a mismatched one for its KL estimate). trl pads
the 2 x batch sequences to the longest and runs the prompt twice, and its LM head scores every position over the
whole vocabulary. Here every example of the batch is one segment of a single row: the two sequences' common prefix
once, then the rest of the first, then the rest of the second, whose positions continue from the prefix
(``position_ids``); attention (``packed_attention.packed_sdpa_attention`` given ``prefix_spans``) lets the second
rest see the prefix and itself only, so every hidden state equals the one of the sequence run alone. Only the
hidden states that predict a scored token reach the LM head, a chunk of rows at a time.

>>> p = pack_pairs([([5, 6, 7, 8], [0, 0, 1, 1], [5, 6, 9], [0, 0, 1])])
>>> p["input_ids"].tolist(), p["position_ids"].tolist(), p["spans"].tolist()
([[5, 6, 7, 8, 9]], [[0, 1, 2, 3, 2]], [[0, 2, 2, 1]])
>>> p["index"].tolist(), p["targets"].tolist(), p["seq"].tolist()
([1, 2, 1], [7, 8, 9], [0, 0, 1])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    import torch

CHUNK_ROWS = 1024  # scored positions per LM-head chunk: 1024 x 128k vocab x 4 B = 512 MiB of fp32 logits at most

# One example: the first sequence's token ids and its scored mask, the second's (mask values > 0 are scored; the
# value is the token's kind, e.g. ORPO's prompt tokens scored for its NLL term only).
Pair = tuple[Sequence[int], Sequence[int], Sequence[int], Sequence[int]]


def _shared(a: Sequence[int], b: Sequence[int]) -> int:
    """The common prefix of ``a`` and ``b`` the row holds once; each keeps at least one token of its own."""
    cap = max(0, min(len(a), len(b)) - 1)
    k = 0
    while k < cap and a[k] == b[k]:
        k += 1
    return k


def pack_pairs(pairs: Sequence[Pair]) -> dict[str, Any]:
    """The batch as one row: ``input_ids`` and ``position_ids`` [1, tokens], ``spans`` [n, 4] (start, shared
    prefix, the first's own tokens, the second's), and per scored token: ``index`` (the row position whose hidden
    state predicts it), ``targets`` (the token), ``seq`` (0..n-1 the first sequences, n..2n-1 the second ones, as
    trl orders chosen and rejected), ``kind`` (its mask value); ``tokens``: the tokens of the 2n sequences as trl
    runs them (the prompt twice), for the token counts."""
    import torch

    n = len(pairs)
    ids: list[int] = []
    pos: list[int] = []
    spans: list[list[int]] = []
    index: list[int] = []
    targets: list[int] = []
    seq: list[int] = []
    kind: list[int] = []
    tokens = 0
    for i, (a, am, b, bm) in enumerate(pairs):
        if len(a) != len(am) or len(b) != len(bm) or not a or not b:
            raise ValueError(f"pair {i}: token ids and masks differ in length, or a sequence is empty")
        s, k = len(ids), _shared(a, b)
        ids += list(a) + list(b[k:])
        pos += list(range(len(a))) + list(range(k, len(b)))
        spans.append([s, k, len(a) - k, len(b) - k])
        tokens += len(a) + len(b)
        for j in range(1, len(a)):
            if am[j]:
                index.append(s + j - 1)
                targets.append(a[j])
                seq.append(i)
                kind.append(am[j])
        for j in range(1, len(b)):
            if bm[j]:
                index.append(s + j - 1 if j - 1 < k else s + len(a) + (j - 1 - k))
                targets.append(b[j])
                seq.append(n + i)
                kind.append(bm[j])
    long = torch.long
    return {"input_ids": torch.tensor([ids], dtype=long), "position_ids": torch.tensor([pos], dtype=long),
            "spans": torch.tensor(spans, dtype=long).reshape(-1, 4), "index": torch.tensor(index, dtype=long),
            "targets": torch.tensor(targets, dtype=long), "seq": torch.tensor(seq, dtype=long),
            "kind": torch.tensor(kind, dtype=long), "tokens": torch.tensor(tokens, dtype=long)}


def _chunk_logps(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor) -> torch.Tensor:
    import torch

    logits = head(hidden).float()  # [rows, vocab], the only vocabulary-wide tensor
    picked = logits.gather(1, targets[:, None])[:, 0]
    out: torch.Tensor = picked - torch.logsumexp(logits, dim=-1)
    return out


def token_logps(model: Any, batch: dict[str, Any], *, chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """The log-probability of every scored token of a :func:`pack_pairs` batch under ``model`` (a causal LM or a PEFT
    model around one, its attention ``packed_sdpa_attention``), fp32 [scored tokens].

    The decoder runs once over the row; the hidden states that predict a scored token go through the LM head one
    chunk of ``chunk_rows`` at a time; with autograd on and more than one chunk, each chunk's logits are recomputed
    in backward (checkpointed) instead of kept, so one chunk's [rows, vocab] logits exist at a time.
    """
    import torch
    from torch.utils.checkpoint import checkpoint

    from .packed_attention import PACKED_SDPA

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if base.config._attn_implementation != PACKED_SDPA:  # plain SDPA would let each answer see the other
        raise ValueError(f"token_logps: the model's attention is {base.config._attn_implementation!r}, not "
                         f"{PACKED_SDPA!r} (packed_attention.use_packed_attention)")
    spans = [tuple(s) for s in batch["spans"].tolist()]  # python ints once, not a device sync in every layer
    hidden = base.base_model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False,
                             prefix_spans=spans).last_hidden_state[0]
    picked = hidden.index_select(0, batch["index"])  # [scored tokens, h]
    head = base.get_output_embeddings()
    rows, targets = picked.shape[0], batch["targets"]
    if rows <= chunk_rows:
        return _chunk_logps(picked, head, targets)
    parts = []
    for a in range(0, rows, chunk_rows):
        h, y = picked[a:a + chunk_rows], targets[a:a + chunk_rows]
        parts.append(checkpoint(_chunk_logps, h, head, y, use_reentrant=False) if torch.is_grad_enabled()
                     else _chunk_logps(h, head, y))
    return torch.cat(parts)


def per_sequence(values: torch.Tensor, batch: dict[str, Any], sequences: int,
                 kinds: tuple[int, ...] | None = None) -> torch.Tensor:
    """The sum of ``values`` (one per scored token) for each of ``sequences`` sequences, over the tokens whose kind
    is in ``kinds`` (None: all)."""
    import torch

    v = values if kinds is None else values * _of_kind(batch, kinds).to(values.dtype)
    return torch.zeros(sequences, dtype=values.dtype, device=values.device).index_add(0, batch["seq"], v)


def counts(batch: dict[str, Any], sequences: int, kinds: tuple[int, ...] | None = None) -> torch.Tensor:
    """The scored tokens of each sequence (of ``kinds``), as floats."""
    import torch

    ones = torch.ones(batch["seq"].shape[0], device=batch["seq"].device)
    return per_sequence(ones, batch, sequences, kinds)


def _of_kind(batch: dict[str, Any], kinds: tuple[int, ...]) -> torch.Tensor:
    import torch

    k = batch["kind"]
    mask = torch.zeros_like(k, dtype=torch.bool)
    for x in kinds:
        mask |= k == x
    return mask
