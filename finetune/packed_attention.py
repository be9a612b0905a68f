"""Attention over each sequence of a padding-free row on its own (``settings.attention`` ``per_sequence_sdpa``), and
over the shared-prompt rows of preference batches (``pair_packing.py``: ``prefix_spans``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .models import Model

PACKED_SDPA = "finetune_packed_sdpa"


def packed_sdpa_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attention_mask: torch.Tensor | None, cu_seq_lens_q: torch.Tensor | None = None,
                          cu_seq_lens_k: torch.Tensor | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """SDPA over each sequence of a padding-free row separately (causal, no mask).

    A padding-free batch is one row holding every example; plain SDPA attends over the whole row with a
    block-diagonal [row, row] mask, so its cost grows with the square of the batch's total length (4 x 1024 tokens:
    16.8M scores per head instead of 4 x 1.05M) and nothing skips the masked blocks on CPU. Here each example only
    attends to itself: the cost of padded batches without their padding. The same result as the masked row
    (tests/test_train_bench.py). Anything but a single padding-free row goes to transformers' SDPA unchanged.
    """
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    spans = kwargs.pop("prefix_spans", None)
    if spans is not None and query.shape[0] == 1 and query.shape[2] == key.shape[2]:
        return prefix_shared_attention(module, query, key, value, spans, **kwargs)
    if cu_seq_lens_q is None or query.shape[0] != 1 or query.shape[2] != key.shape[2] or cu_seq_lens_q.numel() <= 2:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bounds = cu_seq_lens_q.tolist()
    outs = [sdpa_attention_forward(module, query[:, :, a:b], key[:, :, a:b], value[:, :, a:b], None, is_causal=True,
                                   **{k: v for k, v in kwargs.items() if k != "is_causal"})[0]
            for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    return torch.cat(outs, dim=1), None  # [1, row, heads, head_dim], as sdpa_attention_forward returns


def prefix_shared_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            spans: list[tuple[int, int, int, int]], **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA over a row of ``pair_packing.pack_pairs`` segments: per segment (start, shared, a, b) the shared
    prefix and the first sequence's rest attend causally to themselves; the second rest attends to the prefix and
    causally to itself (the first's rest is invisible to it). Each query sees exactly the keys it would see in its
    own sequence, so the output equals running both sequences alone (tests/test_pair_packing.py)."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    rest = {k: v for k, v in kwargs.items() if k not in ("is_causal", "cu_seq_lens_q", "cu_seq_lens_k",
                                                          "max_length_q", "max_length_k")}
    outs = []
    for s, k, a, b in spans:
        first = slice(s, s + k + a)
        outs.append(sdpa_attention_forward(module, query[:, :, first], key[:, :, first], value[:, :, first], None,
                                           is_causal=True, **rest)[0])
        if b:
            own = slice(s + k + a, s + k + a + b)
            keys = torch.cat([key[:, :, s:s + k], key[:, :, own]], dim=2)
            values = torch.cat([value[:, :, s:s + k], value[:, :, own]], dim=2)
            mask = torch.ones(b, k + b, dtype=torch.bool, device=query.device)
            mask[:, k:] = torch.ones(b, b, dtype=torch.bool, device=query.device).tril()
            outs.append(sdpa_attention_forward(module, query[:, :, own], keys, values, mask[None, None],
                                               is_causal=False, **rest)[0])
    return torch.cat(outs, dim=1), None  # [1, row, heads, head_dim]


def use_packed_attention(model: Model) -> None:
    """Switch a loaded model's SDPA attention to ``packed_sdpa_attention`` (same masks for everything else)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_attention)
    AttentionMaskInterface.register(PACKED_SDPA, sdpa_mask)
    model.set_attn_implementation(PACKED_SDPA)
