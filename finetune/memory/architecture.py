"""The architecture numbers of a decoder-only model that decide its memory and speed (:class:`ModelSpec`).

Read from a local folder's ``config.json``, a ``.gguf`` header, the bundled table (:mod:`finetune.model_table`)
or, when reachable, the ``config.json`` on the Hub: no weights are downloaded, no torch is imported.

>>> load_model_spec("tiiuae/falcon-7b").num_kv_heads
1
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import model_table
from ..errors import is_programming_error
from ..refs import classify
from .hardware import EstimateError

if TYPE_CHECKING:  # imported for annotations only: the config module is light, torch is never needed
    from ..config import RunConfig

@dataclass(frozen=True)
class ModelSpec:
    """The numbers of a decoder-only transformer that decide its memory."""

    name: str
    model_type: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    max_positions: int
    tie_embeddings: bool
    gated_mlp: bool = True  # SwiGLU (gate, up, down) vs a 2-matrix GELU MLP (Falcon, GPT-2)
    parallel_attn: bool = False  # attention and MLP read one norm (Falcon-7B): one norm per layer
    num_experts: int = 1  # mixture of experts: every expert's weights are resident
    experts_per_token: int = 1  # ... but each token's activations go through this many
    source: str = ""  # where the numbers came from: table, a config.json path, the Hub

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def num_params(self) -> int:
        return count_params(self)


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder block: name as PEFT sees it, shape, copies (experts) and input group."""

    name: str
    d_in: int
    d_out: int
    copies: int = 1  # experts hold `copies` of it; a token runs through `active` of them
    active: int = 1
    group: str = ""  # layers reading the same input tensor share a group (q/k/v, gate/up)


# model types whose MLP is two matrices with a GELU (no gate)
_PLAIN_MLP = {"falcon", "gpt2", "gpt_neox", "gptj", "phi", "opt", "bloom", "starcoder2", "mpt", "gpt_bigcode"}


def linear_layers(spec: ModelSpec) -> list[Linear]:
    """The linear layers of one decoder block (what `all-linear` LoRA targets), by PEFT module name."""
    h, q, kv, i = spec.hidden_size, spec.q_dim, spec.kv_dim, spec.intermediate_size
    if spec.model_type == "falcon":
        return [
            Linear("query_key_value", h, q + 2 * kv, group="attn_in"),
            Linear("dense", q, h, group="attn_out"),
            Linear("dense_h_to_4h", h, i, group="mlp_in"),
            Linear("dense_4h_to_h", i, h, group="mlp_out"),
        ]
    attn = [
        Linear("q_proj", h, q, group="attn_in"),
        Linear("k_proj", h, kv, group="attn_in"),
        Linear("v_proj", h, kv, group="attn_in"),
        Linear("o_proj", q, h, group="attn_out"),
    ]
    if spec.num_experts > 1:  # Mixtral naming: router `gate`, experts w1/w3 (in) and w2 (out)
        e, k = spec.num_experts, spec.experts_per_token
        return attn + [
            Linear("gate", h, e, group="mlp_in"),
            Linear("w1", h, i, copies=e, active=k, group="expert_in"),
            Linear("w3", h, i, copies=e, active=k, group="expert_in"),
            Linear("w2", i, h, copies=e, active=k, group="expert_out"),
        ]
    if not spec.gated_mlp:
        return attn + [Linear("fc1", h, i, group="mlp_in"), Linear("fc2", i, h, group="mlp_out")]
    return attn + [
        Linear("gate_proj", h, i, group="mlp_in"),
        Linear("up_proj", h, i, group="mlp_in"),
        Linear("down_proj", i, h, group="mlp_out"),
    ]


def embedding_params(spec: ModelSpec) -> int:
    """Input embeddings plus the LM head (once when tied)."""
    return spec.vocab_size * spec.hidden_size * (1 if spec.tie_embeddings else 2)


def count_params(spec: ModelSpec) -> int:
    per_layer = sum(ln.d_in * ln.d_out * ln.copies for ln in linear_layers(spec))
    norms = spec.num_layers * 2 * spec.hidden_size + spec.hidden_size
    return embedding_params(spec) + spec.num_layers * per_layer + norms


def spec_from_config(cfg: dict[str, Any], name: str, source: str) -> ModelSpec:
    """A ModelSpec from ``config.json`` contents (multimodal configs: their ``text_config``)."""
    if isinstance(cfg.get("text_config"), dict):
        cfg = {**cfg["text_config"], "model_type": cfg["text_config"].get("model_type", cfg.get("model_type", ""))}

    def first(*keys: str, default: Any = None) -> Any:  # a JSON value
        for k in keys:
            if cfg.get(k) is not None:
                return cfg[k]
        return default

    model_type = str(first("model_type", default="") or "")
    h = first("hidden_size", "n_embd", "d_model")
    layers = first("num_hidden_layers", "n_layer", "num_layers")
    heads = first("num_attention_heads", "n_head", "num_heads")
    vocab = first("vocab_size")
    missing = [k for k, v in (("hidden_size", h), ("num_hidden_layers", layers), ("num_attention_heads", heads),
                              ("vocab_size", vocab)) if not v]
    if missing:
        raise EstimateError(f"{source}: config has no {', '.join(missing)}; is it a decoder-only language model?")
    h, layers, heads, vocab = int(h), int(layers), int(heads), int(vocab)
    if cfg.get("multi_query") and not cfg.get("new_decoder_architecture"):
        kv_heads = 1  # Falcon-7B: one key/value head shared by all query heads
    else:
        kv_heads = int(first("num_key_value_heads", "num_kv_heads", "n_head_kv", default=heads) or heads)
    head_dim = int(first("head_dim", default=h // heads) or h // heads)
    gated = model_type not in _PLAIN_MLP
    inter = first("intermediate_size", "ffn_hidden_size", "n_inner", "ffn_dim")
    inter = int(inter) if inter else 4 * h
    # transformers' own defaults when the key is absent: Llama-family configs default to untied,
    # GPT-2/Falcon-style configs to tied embeddings
    tie = first("tie_word_embeddings", default=not gated)
    return ModelSpec(
        name=name,
        model_type=model_type,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=inter,
        vocab_size=vocab,
        max_positions=int(first("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", default=2048)),
        tie_embeddings=bool(tie),
        gated_mlp=gated,
        parallel_attn=bool(cfg.get("parallel_attn", False)) and not cfg.get("new_decoder_architecture"),
        num_experts=int(first("num_local_experts", "num_experts", "n_routed_experts", default=1) or 1),
        experts_per_token=int(first("num_experts_per_tok", "moe_topk", default=1) or 1),
        source=source,
    )


def spec_from_gguf(path: Path, name: str | None = None) -> ModelSpec:
    """A ModelSpec from a GGUF file's header (reads metadata only, not the weights)."""
    try:
        import gguf  # heavy-ish (numpy); only for .gguf models
    except ImportError as e:
        raise EstimateError(f"{path}: reading a GGUF header needs the `gguf` package ({e}); pip install gguf") from e
    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError) as e:
        raise EstimateError(f"{path}: not a readable GGUF file ({e.__class__.__name__}: {e})") from e

    def value(key: str, default: Any = None) -> Any:  # a header field's contents
        f = reader.fields.get(key)
        if f is None:
            return default
        try:
            return f.contents()
        except (ValueError, IndexError, TypeError):
            return default

    arch = value("general.architecture", "llama")
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    cfg = {
        "model_type": arch,
        "hidden_size": value(f"{arch}.embedding_length"),
        "num_hidden_layers": value(f"{arch}.block_count"),
        "num_attention_heads": value(f"{arch}.attention.head_count"),
        "num_key_value_heads": value(f"{arch}.attention.head_count_kv"),
        "intermediate_size": value(f"{arch}.feed_forward_length"),
        "vocab_size": value(f"{arch}.vocab_size") or (len(tokens.data) if tokens is not None else None),
        "max_position_embeddings": value(f"{arch}.context_length"),
        "num_local_experts": value(f"{arch}.expert_count"),
        "num_experts_per_tok": value(f"{arch}.expert_used_count"),
        # no separate output matrix in the file: the LM head reuses the embeddings
        "tie_word_embeddings": not any(t.name == "output.weight" for t in reader.tensors),
    }
    return spec_from_config(cfg, name or path.name, f"GGUF header of {path}")


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _hub_config(repo_id: str, revision: str | None, allow_download: bool) -> tuple[dict[str, Any], str] | None:
    """config.json of a Hub repo: from the local HF cache, else downloaded when allowed. None if neither."""
    try:
        from huggingface_hub import hf_hub_download, try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except ValueError:  # not a valid repo id
        return None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text(encoding="utf-8")), f"cached config.json of {repo_id}"
    if not allow_download or _hub_offline():
        return None
    try:
        path = hf_hub_download(repo_id, "config.json", revision=revision, etag_timeout=5)
    except Exception as e:  # noqa: BLE001 - any network/auth/missing-repo error means "not from the Hub"
        if is_programming_error(e):  # a mistake in our call, not the Hub's answer: a bug, not a message
            raise
        raise EstimateError(
            f"{repo_id}: cannot read config.json from the Hub ({e.__class__.__name__}); check the id and your "
            "network, sign in for gated models, or pass a local folder with a config.json"
        ) from e
    return json.loads(Path(path).read_text(encoding="utf-8")), f"config.json of {repo_id} on the Hub"


def load_model_spec(model: str | None, revision: str | None = None, *, allow_hub: bool = True) -> ModelSpec:
    """The architecture of ``model``: a local folder (its config.json), a .gguf file, a Hub id (bundled
    table, then the HF cache, then the Hub if ``allow_hub`` and online), or empty for the embedded default.

    >>> load_model_spec("tiiuae/falcon-7b").num_kv_heads
    1
    """
    ident = (model or "").strip()
    if not ident:
        from ..models import EMBEDDED_REPO_ID

        ident = EMBEDDED_REPO_ID
    path = Path(ident).expanduser()
    if path.suffix.lower() == ".gguf" and path.is_file():
        return spec_from_gguf(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as e:
                raise EstimateError(f"{cfg_file}: not readable JSON ({e.__class__.__name__}); re-save the model") from e
            return spec_from_config(cfg, ident, str(cfg_file))
        ggufs = sorted(path.glob("*.gguf"))
        if ggufs:
            return spec_from_gguf(ggufs[0], ident)
        raise EstimateError(f"{path}: no config.json (or .gguf) in this folder; point at a Hugging Face model folder")
    known = model_table.lookup(ident)
    if known is not None:
        return spec_from_config(known, model_table.canonical_id(ident) or ident, "bundled table")
    ref = classify(ident, strict=False, local_first=False)  # local folders and files were looked at above
    if ref.kind == "hub" and ref.has_namespace:
        found = _hub_config(ident, revision, allow_hub)
        if found is not None:
            return spec_from_config(found[0], ident, found[1])
        raise EstimateError(
            f"{ident}: no such local folder, not in the bundled table or the local Hub cache, and the Hub is not "
            "reachable (offline); pass a local model folder with a config.json"
        )
    raise EstimateError(f"{ident}: no such folder or file, and not a Hub id like org/name")



def spec_for_config(config: RunConfig | None, model: str | None = None, *, allow_hub: bool = True) -> ModelSpec:
    """The architecture of the config's base model (``model`` overrides ``model.id``); a local GGUF file named by
    ``model.gguf_file`` is read from its header, a Hub repo's GGUF by the repo's table entry or config.json."""
    if model is not None or config is None:
        return load_model_spec(model, allow_hub=allow_hub)
    mc = config.model
    if mc.gguf_file:
        local = Path(mc.id).expanduser() / mc.gguf_file if mc.id else Path(mc.gguf_file).expanduser()
        if local.is_file():
            return spec_from_gguf(local, mc.id or mc.gguf_file)
    return load_model_spec(mc.id, mc.revision, allow_hub=allow_hub)

