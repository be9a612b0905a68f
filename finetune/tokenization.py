"""Training data as token ids and labels: the configured data formatted with the template, then tokenized with
the character spans it trains on (SFT; the other methods' data is ``methods.datasets``')."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from .config import SAMPLE_DATA, RunConfig
from .dialogs import TrainedDialogs, sample_dialogs
from .errors import TrainingError
from .templates import token_labels

if TYPE_CHECKING:
    from datasets import Dataset

    from .data import Example
    from .models import Tokenizer

Encoding = tuple[list[int], list[tuple[int, int]]]  # one text's token ids and their (start, end) characters


def tokenize_examples(examples: Sequence[Example], tokenizer: Tokenizer, max_length: int) -> dict[str, list[list[int]]]:
    """Token ids and labels (-100 outside the trained character spans), truncated to ``max_length``.

    The text already contains the template's bos/eos strings, so no special tokens are added.
    A token is trained on when its characters overlap a trained span (``templates.token_labels``). Each distinct
    text is tokenized once.
    """
    texts = [ex.text for ex in examples]
    distinct = list(dict.fromkeys(texts))
    enc = tokenizer(distinct, add_special_tokens=False, return_offsets_mapping=True, truncation=False) if distinct else {}
    encoded: dict[str, Encoding] = {t: (ids, offsets) for t, ids, offsets
                                    in zip(distinct, enc.get("input_ids", []), enc.get("offset_mapping", []))}
    input_ids: list[list[int]] = []
    labels: list[list[int]] = []
    for ex, text in zip(examples, texts):
        ids, offsets = encoded[text]
        lab = token_labels(ids, offsets, ex.spans)
        input_ids.append(list(ids[:max_length]))
        labels.append(lab[:max_length])
    return {"input_ids": input_ids, "labels": labels}


def sft_datasets(config: RunConfig, tokenizer: Tokenizer
              ) -> tuple[Dataset, Dataset | None, dict[str, Any], TrainedDialogs, list[Example]]:
    """Format the configured data with the template and tokenize it: (train, eval or None, summary, dialogs, the
    examples ``data.test_split`` held out)."""
    from datasets import Dataset

    from . import data

    d, t = config.data, config.training
    source = d.source or str(SAMPLE_DATA)
    result = data.format_dataset(
        source,
        d,
        tokenizer=tokenizer,
        measure_tokens=False,  # tokenize_examples below tokenizes each example once, with the offsets labels need
        max_length=t.max_length,
    )
    train_tok = tokenize_examples(result.examples, tokenizer, t.max_length)
    keep = [i for i, lab in enumerate(train_tok["labels"]) if any(x != -100 for x in lab)]
    if not keep:
        raise TrainingError(
            f"{source}: no example has trained-on tokens within training.max_length={t.max_length}; "
            "raise max_length or shorten the prompts"
        )
    train_ds = Dataset.from_dict({k: [v[i] for i in keep] for k, v in train_tok.items()})
    eval_ds = None
    if result.val_examples:
        ev = tokenize_examples(result.val_examples, tokenizer, t.max_length)
        eval_ds = Dataset.from_dict(ev)
    summary = {
        "source": source,
        "shape": str(result.shape),
        "rows_in": result.rows_in,
        "train_examples": len(train_ds),
        "eval_examples": len(eval_ds) if eval_ds is not None else 0,
        **({"test_examples": len(result.test_examples)} if d.test_split > 0 else {}),
        "skipped": dict(result.skipped),
        "dropped_no_trained_tokens": len(result.examples) - len(keep),
        "train_tokens": sum(len(x) for x in train_ds["input_ids"]),
    }
    # the default system prompt the Dataset tab announces: the rows' shared one, else the one set
    dialogs = TrainedDialogs(result.default_system_prompt, sample_dialogs(result.val_examples, result.examples))
    return train_ds, eval_ds, summary, dialogs, result.test_examples
