"""The evaluation's held-out loss is the training loss: for every template, the reference loss of a training row
(``inference.reference_losses_with`` on the row read back as a test example) equals the loss the trainer computes
on that row from the tokens and labels its own collator builds. A template that puts spaces around the answer
(llama2's ``" answer </s>"``) or a system prompt before it must be scored as training rendered it, not as
``prompt + answer + eos`` glued by hand."""

from __future__ import annotations

import json

import pytest
import torch

from finetune.templates import TEMPLATE_NAMES

ROWS = [
    {"prompt": "Is this review positive or negative? The soup was cold.", "completion": "negative"},
    {"prompt": "Is this review positive or negative? Lovely staff, quick service.", "completion": "positive"},
    {"prompt": "Name the city and the year: Ivan moved to Oslo in 1972.",
     "completion": '{"city": "Oslo", "year": 1972}'},
]
SYSTEM = "Answer in as few words as you can."


def _trainer(config, tokenizer, tmp_path):
    """The SFT trainer as train.py builds it (the CPU loss subclass, LoRA), on the run's own training dataset."""
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig

    from finetune.tokenization import sft_datasets
    from finetune.trainer import trained_positions_trainer

    train_ds, eval_ds, _, _, _ = sft_datasets(config, tokenizer)
    assert eval_ds is None and len(train_ds) == len(ROWS)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(config.model.id, dtype=torch.float32)
    args = SFTConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=1, report_to="none", use_cpu=True,
                     bf16=False, max_length=config.training.max_length, gradient_checkpointing=False, disable_tqdm=True)
    trainer = trained_positions_trainer()(model=model, args=args, train_dataset=train_ds, processing_class=tokenizer,
                               peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear",
                                                      task_type="CAUSAL_LM"))
    for name, p in trainer.model.named_parameters():  # non-zero B: the adapter changes the scores
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(len(name)))
    return trainer


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_the_reference_loss_of_a_training_row_is_the_trainers_loss_on_it(template, tiny_model_dir, tmp_path):
    from finetune.config import RunConfig
    from finetune.evaluate import read_test_set, scores
    from finetune.inference import LoadedModel, prompt_settings, reference_losses_with
    from finetune.models import load_tokenizer

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    config = RunConfig()
    config.model.id, config.quantization.load_in = str(tiny_model_dir), "none"
    config.data.source, config.data.template, config.data.system_prompt = str(data), template, SYSTEM
    config.training.max_length = 256  # nothing is truncated
    tokenizer = load_tokenizer(str(tiny_model_dir))
    trainer = _trainer(config, tokenizer, tmp_path)
    model = trainer.model.train()

    # the trainer's side: its collator's batch of one row and its compute_loss (mean NLL of the trained tokens)
    trained: list[tuple[float, int]] = []
    for i in range(len(ROWS)):
        batch = trainer.data_collator([trainer.train_dataset[i]])
        count = int((batch["labels"][:, 1:] != -100).sum())  # position t predicts token t + 1
        with torch.no_grad():
            mean = float(trainer.compute_loss(model, batch))
        trained.append((mean * count, count))

    # the evaluation's side: the same rows read as a test set, prompted with the run's template and system prompt
    examples = read_test_set(data)
    assert [e.reference for e in examples] == [r["completion"] for r in ROWS]
    tpl = prompt_settings(None, tokenizer, template=template, system_prompt=SYSTEM)
    loaded = LoadedModel(model, tokenizer, str(tiny_model_dir), {})
    reference = reference_losses_with(loaded, [e.prompt for e in examples], [e.reference or "" for e in examples], tpl)

    for (ref_nll, ref_n), (nll, n) in zip(reference, trained):
        assert ref_n == n, (template, reference, trained)  # the same tokens scored
        assert ref_nll == pytest.approx(nll, rel=1e-4), (template, reference, trained)
    answers = [r["completion"] for r in ROWS]
    assert scores(answers, answers, reference)["loss"] == pytest.approx(
        sum(v for v, _ in trained) / sum(c for _, c in trained), rel=1e-4)


@pytest.mark.parametrize("template,answer", [("llama2", " Fine, thanks. {eos}"), ("chatml", "Fine, thanks.{eos}"),
                                             ("falcon", " Fine, thanks.{eos}")])
def test_only_the_last_answer_of_a_conversation_is_scored(template, answer, smollm2_tokenizer):
    """A test conversation's earlier answers are prompt: the scored tokens are the reference's, as trained."""
    from finetune.inference import prompt_settings, reference_tokens

    tpl = prompt_settings(None, smollm2_tokenizer, template=template)
    prompt = [{"role": "user", "content": "Hello there"}, {"role": "assistant", "content": "Hi! How can I help?"},
              {"role": "user", "content": "How are you?"}]
    ids, labels = reference_tokens(prompt, "Fine, thanks.", tpl, smollm2_tokenizer)
    assert len(ids) == len(labels) and all(x in (-100, i) for x, i in zip(labels, ids))
    scored = [i for i in labels if i != -100]
    first = labels.index(scored[0])
    assert labels[first:] == ids[first:]  # one run of tokens up to the end of the text
    assert smollm2_tokenizer.decode(scored, clean_up_tokenization_spaces=False) == answer.format(eos=tpl["eos"])
