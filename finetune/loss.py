"""The training loss on trained positions only, without the [tokens, vocabulary] logits.

:func:`chunked_linear_cross_entropy` projects ``chunk_rows`` hidden states at a time through the LM head, takes
their cross-entropy and its gradients at once, and keeps only the gradients (hidden states and, when it trains,
the head): the logits of one chunk exist at a time. Peak memory of the loss: ``chunk_rows x vocab`` fp32 logits
and their softmax (2 x 1024 x 32k x 4 B = 256 MiB for Llama-2) plus one gradient per hidden state, instead of the
``tokens x vocab`` logits, their fp32 copy, log-softmax and gradient (12 bytes per vocabulary entry per token:
1.5 GiB for 4 x 2048 tokens of Llama-2, 6 GiB with Llama-3's 128k vocabulary).

:func:`trained_positions_loss` is the training loss of a causal LM on a batch with ``labels``: only the positions
whose next token is trained on (``labels != -100``) reach the LM head.

Pure torch: the same code runs on CPU and CUDA (tests compare it with the plain loss on CPU).

>>> import torch
>>> h, w, y = torch.randn(5, 8), torch.randn(11, 8), torch.tensor([1, 2, -100, 4, 10])
>>> plain = torch.nn.functional.cross_entropy(h @ w.T, y, reduction="sum")
>>> bool(torch.allclose(chunked_linear_cross_entropy(h, w, y, chunk_rows=2), plain, atol=1e-5))
True
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

IGNORE = -100  # the label of a position that carries no loss (transformers' and trl's convention)
CHUNK_ROWS = 1024  # hidden states per LM-head chunk: 1024 x 32k (Llama-2) x 4 B = 128 MiB of fp32 logits


def _function() -> Any:
    """The autograd Function, built on first use (torch is imported lazily, like everywhere in the library)."""
    global _FN
    if _FN is not None:
        return _FN
    import torch

    class ChunkedLinearCrossEntropy(torch.autograd.Function):
        """Sum of the cross-entropy of ``hidden @ weight.T`` against ``targets``; gradients computed in forward."""

        @staticmethod
        def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                    chunk_rows: int) -> torch.Tensor:
            want_w = weight.requires_grad
            acc = torch.promote_types(hidden.dtype, torch.float32)  # logits, softmax and sums: fp32 at least
            grad_h = torch.empty_like(hidden)
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if want_w else None
            w = weight.to(hidden.dtype)
            total = torch.zeros((), dtype=acc, device=hidden.device)
            for a in range(0, hidden.shape[0], chunk_rows):
                h = hidden[a:a + chunk_rows]
                y = targets[a:a + chunk_rows]
                logits = (h @ w.T).to(acc)  # [rows, vocab], the only vocabulary-wide tensors of the loss
                valid = y != IGNORE
                safe = torch.where(valid, y, 0)
                lse = torch.logsumexp(logits, dim=-1)
                picked = logits.gather(1, safe[:, None])[:, 0]
                total += ((lse - picked) * valid).sum()
                # d(lse - logit[y]) / d logits = softmax - onehot(y), zero on ignored rows
                grad = torch.exp(logits.sub_(lse[:, None]))
                grad[torch.arange(grad.shape[0], device=grad.device), safe] -= 1.0
                grad *= valid[:, None]
                g = grad.to(hidden.dtype)
                grad_h[a:a + chunk_rows] = g @ w
                if grad_w is not None:
                    grad_w += grad.T @ h.to(acc)
            ctx.save_for_backward(grad_h, *([grad_w] if grad_w is not None else []))
            ctx.want_w, ctx.weight_dtype = want_w, weight.dtype
            return total

        @staticmethod
        def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
            saved = ctx.saved_tensors
            grad_h = saved[0] * grad_out.to(saved[0].dtype)
            grad_w = (saved[1] * grad_out).to(ctx.weight_dtype) if ctx.want_w else None
            return grad_h, grad_w, None, None

    _FN = ChunkedLinearCrossEntropy
    return _FN


_FN: Any = None


def chunked_linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                                 chunk_rows: int = CHUNK_ROWS) -> torch.Tensor:
    """``F.cross_entropy(hidden @ weight.T, targets, reduction="sum", ignore_index=-100)`` and its gradients for
    ``hidden`` [rows, h] and ``weight`` [vocab, h], one chunk of rows at a time (a 0-d fp32 tensor)."""
    if hidden.ndim != 2 or targets.shape != hidden.shape[:1] or weight.ndim != 2 or weight.shape[1] != hidden.shape[1]:
        raise ValueError(f"expected hidden [rows, h], weight [vocab, h], targets [rows]; got {tuple(hidden.shape)}, "
                         f"{tuple(weight.shape)}, {tuple(targets.shape)}")
    out: torch.Tensor = _function().apply(hidden, weight, targets, max(1, int(chunk_rows)))
    return out


def trained_positions_loss(model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None, *,
                           chunk_rows: int = CHUNK_ROWS, impl: str = "chunked") -> torch.Tensor:
    """The mean next-token NLL of a causal LM over the trained tokens of ``inputs`` (``labels`` -100 elsewhere),
    divided by ``num_items_in_batch`` when given (the trainer's count over accumulated micro-batches).

    The decoder runs as usual; the final hidden states of the positions whose next token is trained on go through
    the LM head in chunks (:func:`chunked_linear_cross_entropy`). ``model`` is a causal LM or a PEFT model around
    one. Models whose logits are scaled or soft-capped after the head are not handled here: the caller uses
    the model's own loss for them (:func:`supports`). ``impl="liger"``: Liger's fused linear cross-entropy (Triton,
    CUDA) takes the place of :func:`chunked_linear_cross_entropy`.
    """
    import torch

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    labels = inputs["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # position i predicts token i + 1
    targets = labels[:, 1:][keep[:, :-1]]
    forward = {k: v for k, v in inputs.items() if k != "labels"}
    forward["use_cache"] = False
    head = base.get_output_embeddings()
    if getattr(head, "bias", None) is not None:  # no Llama-family head has one; callers check supports() first
        raise ValueError("trained_positions_loss: an LM head with a bias is not supported; use the model's own loss")
    hidden = base.base_model(**forward).last_hidden_state[keep]  # [trained tokens, h]
    if impl == "liger":
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss  # optional: CUDA machines only

        nll = LigerFusedLinearCrossEntropyLoss(reduction="sum", ignore_index=IGNORE)(head.weight, hidden, targets)
    else:
        nll = chunked_linear_cross_entropy(hidden, head.weight, targets, chunk_rows=chunk_rows)
    count = targets.numel() if num_items_in_batch is None else num_items_in_batch
    loss: torch.Tensor = nll / torch.as_tensor(count, device=nll.device).clamp(min=1)
    return loss


def supports(model: Any) -> bool:
    """Whether :func:`trained_positions_loss` computes this model's loss exactly: a plain linear LM head without a
    bias, no logit scaling or soft-capping (Gemma 2, Cohere, Granite and others scale their logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    cfg = base.config.get_text_config() if hasattr(base.config, "get_text_config") else base.config
    head = base.get_output_embeddings()
    scaled = any(getattr(cfg, name, None) not in (None, 1, 1.0) for name in
                 ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"))
    return head is not None and getattr(head, "bias", None) is None and not scaled and hasattr(base, "base_model")
