"""What a run keeps of its data for the template check: the default system prompt and a sample of dialogs
(every method's, the adapter bundle's and ``verify.check_template``'s)."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Sequence

from .templates import Message

RUN_DIALOGS = 16  # the run's own dialogs checked (validation first): enough to meet its shapes, seconds at most


@dataclass(frozen=True)
class TrainedDialogs:
    """What the adapter keeps of the data: the default system prompt and dialogs to check its template on."""

    system_prompt: str  # every training row's shared system prompt, else the configured one
    dialogs: list[list[Message]]  # a sample of the validation (else training) conversations


def sample_dialogs(val_examples: Sequence[Any], train_examples: Sequence[Any]) -> list[list[Message]]:
    """Up to RUN_DIALOGS conversations: the validation split's, else a fixed sample of the training rows."""
    # a method's example (finetune/data/preference.py) has its prompt as messages and its whole dialog apart
    pool = [d for ex in (val_examples or train_examples) if (d := getattr(ex, "dialog", None) or ex.messages)]
    if len(pool) > RUN_DIALOGS:
        pool = random.Random(0).sample(pool, RUN_DIALOGS)
    return pool
