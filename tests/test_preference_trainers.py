"""The packed preference trainers (finetune/preference_trainers.py) compute trl's losses: the same batch through
trl's DPO, ORPO and KTO trainer and through ours gives the same loss and the same LoRA gradients; the shared-prompt
row gives each sequence the log-probabilities it has alone."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _model(tiny_model_dir, seed=0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)


def test_the_shared_prompt_row_scores_each_sequence_as_alone(tiny_model_dir):
    from finetune.pair_packing import pack_pairs, per_sequence, token_logps
    from finetune.packed_attention import use_packed_attention

    model = _model(tiny_model_dir).eval()
    g = torch.Generator().manual_seed(1)
    seqs = []
    for p_len, a_len, b_len in [(7, 3, 5), (4, 6, 1), (9, 2, 2)]:
        prompt = torch.randint(5, 500, (p_len,), generator=g).tolist()
        a = prompt + torch.randint(5, 500, (a_len,), generator=g).tolist()
        b = prompt + torch.randint(5, 500, (b_len,), generator=g).tolist()
        seqs.append((a, [0] * p_len + [1] * a_len, b, [0] * p_len + [1] * b_len))
    plain = []
    with torch.no_grad():
        for i in (0, 2):  # the firsts, then the seconds: the packed order
            for s in seqs:
                ids, mask = torch.tensor([s[i]]), torch.tensor(s[i + 1])
                lp = model(ids).logits[0, :-1].log_softmax(-1).gather(1, ids[0, 1:, None])[:, 0]
                plain.append(float((lp * mask[1:]).sum()))
        use_packed_attention(model)
        batch = pack_pairs(seqs)
        packed = per_sequence(token_logps(model, batch), batch, 6)
    assert batch["input_ids"].shape[1] == sum(len(a) + len(b) for a, _, b, _ in seqs) - (7 + 4 + 9)  # prompts once
    assert packed.tolist() == pytest.approx(plain, abs=1e-4)


PAIRS = [{"prompt": f"Question {i}: what is {i} plus {i}?", "chosen": f" It is {2 * i}.",
          "rejected": f" Maybe {i + 7}, or not{'!' * (i % 3)}"} for i in range(8)]
FEEDBACK = [{"prompt": r["prompt"], "completion": r["chosen"] if i % 2 else r["rejected"], "label": bool(i % 2)}
            for i, r in enumerate(PAIRS)]


def _trainer(method, cls, tiny_model_dir, tmp_path, **extra):
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    common = dict(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, report_to="none",
                  use_cpu=True, bf16=False, gradient_checkpointing=False, max_length=24, seed=3, **extra)
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
    if method == "dpo":
        from trl import DPOConfig as Config
    elif method == "orpo":
        from trl.experimental.orpo import ORPOConfig as Config
    else:
        from trl import KTOConfig as Config
    data = Dataset.from_list(FEEDBACK if method == "kto" else PAIRS)
    trainer = cls(model=_model(tiny_model_dir), args=Config(**common), train_dataset=data, processing_class=tok,
                  peft_config=lora)
    torch.manual_seed(5)
    for name, p in trainer.model.named_parameters():
        if "lora_B" in name:  # a trained adapter: the policy differs from the reference
            p.data.normal_(0, 0.05)
    return trainer


def _loss_and_grads(trainer):
    trainer.model.train()
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return float(loss), grads, trainer


@pytest.mark.parametrize("method,extra", [("dpo", {"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, 0.5],
                                                   "beta": 0.5}),
                                          ("orpo", {"beta": 0.5}), ("kto", {"beta": 0.5})])
def test_packed_trainers_compute_trls_loss_and_gradients(method, extra, tiny_model_dir, tmp_path):
    from finetune import preference_trainers as pt

    if method == "dpo":
        from trl import DPOTrainer as Plain
        ours = pt.packed_dpo_trainer()
    elif method == "orpo":
        from trl.experimental.orpo import ORPOTrainer as Plain
        ours = pt.packed_orpo_trainer()
    else:
        from trl import KTOTrainer as Plain
        ours = pt.packed_kto_trainer()
    l_trl, g_trl, t_trl = _loss_and_grads(_trainer(method, Plain, tiny_model_dir, tmp_path / "trl", **extra))
    l_ours, g_ours, t_ours = _loss_and_grads(_trainer(method, ours, tiny_model_dir, tmp_path / "ours", **extra))
    assert l_ours == pytest.approx(l_trl, rel=1e-4, abs=1e-5)
    assert g_ours.keys() == g_trl.keys() and g_ours
    for name in g_trl:
        assert torch.allclose(g_ours[name], g_trl[name], rtol=1e-3, atol=1e-6), name
    if method != "orpo":  # the logged rewards agree too
        key = "rewards/chosen"
        assert t_ours._metrics["train"][key][-1] == pytest.approx(t_trl._metrics["train"][key][-1], rel=1e-3, abs=1e-5)
