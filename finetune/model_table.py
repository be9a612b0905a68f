"""Architecture numbers of the models the memory estimator knows without a network.

Each entry holds the published ``config.json`` values (same keys, so one parser reads both this table and
a real config file): hidden size, layers, attention and key/value heads, MLP width, vocabulary, maximum
positions, tied embeddings, experts. Only the fields that change memory are kept.

>>> lookup("mistralai/Mistral-7B-Instruct-v0.2")["num_key_value_heads"]
8
>>> lookup("nousresearch/llama-2-7b-chat-hf")["intermediate_size"]
11008
"""

from __future__ import annotations

from typing import Any

_LLAMA2_7B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 32, "intermediate_size": 11008, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}
_LLAMA2_13B = {
    "model_type": "llama", "hidden_size": 5120, "num_hidden_layers": 40, "num_attention_heads": 40,
    "num_key_value_heads": 40, "intermediate_size": 13824, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}
_LLAMA2_70B = {
    "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 32000,
    "max_position_embeddings": 4096, "tie_word_embeddings": False,
}
_LLAMA31_8B = {
    "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
    "max_position_embeddings": 131072, "tie_word_embeddings": False,
}
_LLAMA31_70B = {
    "model_type": "llama", "hidden_size": 8192, "num_hidden_layers": 80, "num_attention_heads": 64,
    "num_key_value_heads": 8, "intermediate_size": 28672, "vocab_size": 128256,
    "max_position_embeddings": 131072, "tie_word_embeddings": False,
}
_MISTRAL_7B = {
    "model_type": "mistral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
_MIXTRAL_8X7B = {
    "model_type": "mixtral", "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32,
    "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 32000,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
    "num_local_experts": 8, "num_experts_per_tok": 2,
}
_QWEN25_7B = {
    "model_type": "qwen2", "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28,
    "num_key_value_heads": 4, "intermediate_size": 18944, "vocab_size": 152064,
    "max_position_embeddings": 32768, "tie_word_embeddings": False,
}
# Falcon-7B: multi-query attention (one key/value head), a GELU MLP of 4 x hidden, attention and MLP in
# parallel off one LayerNorm, word embeddings tied to the LM head (FalconConfig defaults).
_FALCON_7B = {
    "model_type": "falcon", "hidden_size": 4544, "num_hidden_layers": 32, "num_attention_heads": 71,
    "multi_query": True, "parallel_attn": True, "new_decoder_architecture": False, "vocab_size": 65024,
    "max_position_embeddings": 2048, "tie_word_embeddings": True,
}
# Llama-3.2-3B: only a throughput anchor (memory.THROUGHPUT_ANCHORS) uses it
_LLAMA32_3B = {
    "model_type": "llama", "hidden_size": 3072, "num_hidden_layers": 28, "num_attention_heads": 24,
    "num_key_value_heads": 8, "intermediate_size": 8192, "vocab_size": 128256,
    "max_position_embeddings": 131072, "tie_word_embeddings": True,
}
_SMOLLM2_135M = {
    "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
    "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152,
    "max_position_embeddings": 8192, "tie_word_embeddings": True,
}

MODEL_CONFIGS: dict[str, dict[str, Any]] = {
    "HuggingFaceTB/SmolLM2-135M-Instruct": _SMOLLM2_135M,
    "HuggingFaceTB/SmolLM2-135M": _SMOLLM2_135M,
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-7b-chat-hf": _LLAMA2_7B,
    "NousResearch/Llama-2-7b-hf": _LLAMA2_7B,
    "NousResearch/Llama-2-7b-chat-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-13b-hf": _LLAMA2_13B,
    "meta-llama/Llama-2-13b-chat-hf": _LLAMA2_13B,
    "NousResearch/Llama-2-13b-hf": _LLAMA2_13B,
    "NousResearch/Llama-2-13b-chat-hf": _LLAMA2_13B,
    "meta-llama/Llama-2-70b-hf": _LLAMA2_70B,
    "meta-llama/Llama-2-70b-chat-hf": _LLAMA2_70B,
    "NousResearch/Llama-2-70b-hf": _LLAMA2_70B,
    "NousResearch/Llama-2-70b-chat-hf": _LLAMA2_70B,
    "tiiuae/falcon-7b": _FALCON_7B,
    "tiiuae/falcon-7b-instruct": _FALCON_7B,
    "mistralai/Mistral-7B-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.1": _MISTRAL_7B,
    "mistralai/Mistral-7B-Instruct-v0.2": _MISTRAL_7B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B": _LLAMA31_8B,
    "meta-llama/Meta-Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.2-3B": _LLAMA32_3B,
    "meta-llama/Llama-3.1-70B": _LLAMA31_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA31_70B,
    "meta-llama/Llama-3.3-70B-Instruct": _LLAMA31_70B,
    "Qwen/Qwen2.5-7B": _QWEN25_7B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
    "mistralai/Mixtral-8x7B-v0.1": _MIXTRAL_8X7B,
    "mistralai/Mixtral-8x7B-Instruct-v0.1": _MIXTRAL_8X7B,
}

_BY_LOWER = {k.lower(): k for k in MODEL_CONFIGS}


def canonical_id(model_id: str) -> str | None:
    """The table's spelling of a Hub id (ids are case-insensitive on the Hub), or None if unknown."""
    return _BY_LOWER.get(model_id.strip().lower())


def lookup(model_id: str) -> dict[str, Any] | None:
    """A copy of the table entry for ``model_id`` (any letter case), or None."""
    key = canonical_id(model_id)
    return dict(MODEL_CONFIGS[key]) if key else None
