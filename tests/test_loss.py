"""The chunked loss on trained positions (finetune/loss.py) equals the plain full-vocabulary loss: the value and
the gradients of the hidden states, of the LM head and of the LoRA weights; the trainer's CUDA loss path runs the
same code on CPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from finetune.loss import CHUNK_ROWS, chunked_linear_cross_entropy, supports, trained_positions_loss


@pytest.mark.parametrize("rows,chunk", [(37, 8), (37, 37), (37, 1024), (5, 1)])
def test_chunked_linear_cross_entropy_equals_the_plain_loss_and_its_gradients(rows, chunk):
    g = torch.Generator().manual_seed(rows + chunk)
    h = torch.randn(rows, 16, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(101, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 101, (rows,), generator=g)
    y[::3] = -100  # ignored positions carry no loss and no gradient
    plain = F.cross_entropy(h @ w.T, y, reduction="sum", ignore_index=-100)
    gh, gw = torch.autograd.grad(plain * 0.7, (h, w))
    ours = chunked_linear_cross_entropy(h, w, y, chunk_rows=chunk)
    oh, ow = torch.autograd.grad(ours * 0.7, (h, w))  # a scale after the loss reaches both gradients
    assert torch.allclose(ours.double(), plain, rtol=1e-6), (float(ours), float(plain))
    assert torch.allclose(oh, gh, atol=1e-10) and torch.allclose(ow, gw, atol=1e-10)
    assert oh[::3].abs().max() == 0  # the ignored rows


def test_a_frozen_head_gets_no_gradient_and_bf16_stays_close():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(64, 32, generator=g).bfloat16().requires_grad_()
    w = torch.randn(500, 32, generator=g).bfloat16()  # frozen, as under LoRA
    y = torch.randint(0, 500, (64,), generator=g)
    ours = chunked_linear_cross_entropy(h, w, y, chunk_rows=16)
    (oh,) = torch.autograd.grad(ours, (h,))
    plain = F.cross_entropy((h @ w.T).float(), y, reduction="sum")
    (ph,) = torch.autograd.grad(plain, (h,))
    assert ours.dtype == torch.float32 and oh.dtype == torch.bfloat16
    assert abs(float(ours) - float(plain)) / float(plain) < 1e-3
    assert torch.allclose(oh.float(), ph.float(), atol=2e-2)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected hidden"):
        chunked_linear_cross_entropy(torch.zeros(2, 3, 4), torch.zeros(5, 4), torch.zeros(2, dtype=torch.long))


def _tiny_peft_model():
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                             init_lora_weights=False, task_type="CAUSAL_LM"))
    model.train()
    return model


def test_trained_positions_loss_equals_the_models_own_loss_and_lora_gradients():
    model = _tiny_peft_model()
    assert supports(model)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 300, (2, 23), generator=g)
    labels = ids.clone()
    labels[:, :9] = -100  # a prompt that carries no loss
    labels[1, 20:] = -100
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    own = model(input_ids=ids, labels=labels, use_cache=False).loss  # transformers' full-vocabulary loss (mean)
    own_grads = torch.autograd.grad(own, lora)
    ours = trained_positions_loss(model, {"input_ids": ids, "labels": labels}, chunk_rows=5)
    our_grads = torch.autograd.grad(ours, lora)
    assert torch.allclose(ours, own, atol=1e-5), (float(ours), float(own))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(our_grads, own_grads))
    assert max(float(a.abs().max()) for a in our_grads) > 0
    # num_items_in_batch (tokens over accumulated micro-batches) divides the sum instead of the count
    n = int((labels[:, 1:] != -100).sum())
    half = trained_positions_loss(model, {"input_ids": ids, "labels": labels}, num_items_in_batch=2 * n)
    assert torch.allclose(half * 2, own, atol=1e-5)


def test_the_trainer_loss_on_cuda_is_the_same_code_and_value_as_on_cpu(tmp_path, smollm2_tokenizer):
    """The SFTTrainer subclass training uses on CUDA with chunked_loss_on_cuda (loss "chunked") gives the loss of
    the CPU subclass (loss "trained_positions") on the same batch; here both run on CPU."""
    from datasets import Dataset
    from trl import SFTConfig

    from finetune.trainer import trained_positions_trainer

    model = _tiny_peft_model()
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 300, (1, 30), generator=g)
    labels = ids.clone()
    labels[:, :12] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": torch.arange(30)[None]}
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", max_steps=1, bf16=False)
    ds = Dataset.from_dict({"input_ids": [ids[0].tolist()]})
    values = {}
    for loss in ("trained_positions", "chunked"):
        trainer = trained_positions_trainer(loss)(model=model, args=args, train_dataset=ds, processing_class=smollm2_tokenizer)
        values[loss] = trainer.compute_loss(trainer.model, dict(batch))
    assert torch.allclose(values["chunked"], values["trained_positions"], atol=1e-5), values
    assert CHUNK_ROWS >= 256  # a chunk of rows keeps the GPU's matmuls large
