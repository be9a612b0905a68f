"""GGUF files for llama.cpp, Ollama and LM Studio, written in Python with the ``gguf`` package.

Two kinds: the merged model (``write_model``: architecture numbers, the tokenizer's vocabulary and merges,
special token ids, and ``tokenizer.chat_template`` = the adapter's trained template), and the LoRA adapter alone
(``write_lora``: llama.cpp's ``--lora`` / Ollama's ``ADAPTER``). Tensors stream: the file's header and tensor
table are written from the shapes, then each tensor is merged, converted and written in turn, so the memory
needed is one tensor, not the model.

Supported architectures: the llama family (Llama-2/3, SmolLM, Mistral: ``llama`` in GGUF) and Qwen2.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..models import ModelError
from .merge import LoraUpdate, MergedWeights, Progress, no_progress

if TYPE_CHECKING:
    import numpy as np
    import torch

QUANTS = ("f16", "bf16", "q8_0", "q4_0")
LORA_QUANTS = ("f16", "bf16", "q8_0")
DEFAULT_QUANT = "q8_0"

# transformers architecture -> (GGUF architecture, q/k rows permuted for llama.cpp's rotary layout)
ARCHITECTURES = {
    "LlamaForCausalLM": ("llama", True),
    "MistralForCausalLM": ("llama", True),
    "Qwen2ForCausalLM": ("qwen2", False),
}


class ExportError(ModelError):
    """A model or adapter this exporter cannot write as asked (architecture, tokenizer, quantisation)."""


@dataclass(frozen=True)
class Arch:
    hf: str  # LlamaForCausalLM
    gguf: str  # llama
    permute_qk: bool
    config: dict[str, Any]

    @property
    def n_head(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def n_head_kv(self) -> int:
        return int(self.config.get("num_key_value_heads") or self.n_head)

    @property
    def head_dim(self) -> int:
        return int(self.config.get("head_dim") or self.config["hidden_size"] // self.n_head)


def architecture(config: dict[str, Any]) -> Arch:
    """The GGUF architecture of a transformers config; ExportError naming it when it is not supported."""
    names = config.get("architectures") or [config.get("model_type", "unknown")]
    name = str(names[0])
    if name not in ARCHITECTURES:
        supported = ", ".join(sorted(ARCHITECTURES))
        said = f"GGUF export does not support the architecture {name}; supported: {supported}. "
        raise ExportError(said + "Export --format merged instead and convert it with llama.cpp's "
                          "convert_hf_to_gguf.py").in_app(said + "Export with Format merged instead and convert it "
                                                          "with llama.cpp's convert_hf_to_gguf.py")
    gguf_name, permute = ARCHITECTURES[name]
    return Arch(name, gguf_name, permute, config)


def _quant_type(quant: str) -> Any:
    from gguf import GGMLQuantizationType as Q

    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0, "f32": Q.F32}[quant]


def _file_type(quant: str) -> Any:
    from gguf import LlamaFileType as F

    return {"f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[quant]


# A 4-bit file keeps these in 8 bits, with the embeddings and the output head: the value and down projections are
# the layers most sensitive to rounding (llama.cpp's mixed 4-bit types give them more bits too). On a 30-step
# SmolLM2-135M run, llama.cpp's greedy answers matched transformers' on 12 of 12 held-out prompts with them in
# 8 bits (+16% file size) and on 10 of 12 with them in 4 bits (bench/export_gguf.py).
KEPT_8BIT = ("attn_v.weight", "ffn_down.weight")


def tensor_type(name: str, shape: tuple[int, ...], quant: str) -> Any:
    """How one tensor is stored: vectors (norms, biases) in float32; matrices in the chosen type, except that a
    4-bit file keeps the embeddings, the output head and :data:`KEPT_8BIT` in 8 bits, and rows that are not a
    whole number of quantisation blocks stay in float16."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q

    if len(shape) < 2:
        return Q.F32
    q = _quant_type(quant)
    if q == Q.Q4_0 and (name in ("token_embd.weight", "output.weight") or name.endswith(KEPT_8BIT)):
        q = Q.Q8_0
    block = GGML_QUANT_SIZES[q][0]
    if shape[-1] % block:
        return Q.F16
    return q


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """q/k rows from transformers' rotate-half layout to llama.cpp's interleaved pairs (per head)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _to_numpy(t: torch.Tensor, qtype: Any) -> np.ndarray[Any, Any]:
    import gguf
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    data = t.detach().to("cpu").float().contiguous().numpy()
    if qtype == Q.F32:
        return data.astype(np.float32)
    if qtype == Q.F16:
        return data.astype(np.float16)
    out: np.ndarray[Any, Any] = gguf.quants.quantize(data, qtype)
    return out


def _nbytes(shape: tuple[int, ...], qtype: Any) -> int:
    from gguf import GGML_QUANT_SIZES

    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(shape[:-1]) * (shape[-1] // block) * size


class _TensorNames:
    def __init__(self, arch: Arch):
        import gguf

        model_arch = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch.gguf]
        self.map = gguf.get_tensor_name_map(model_arch, int(arch.config["num_hidden_layers"]))

    def __call__(self, hf_name: str) -> str:
        name = self.map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ExportError(f"the weight {hf_name} has no GGUF name for this architecture; it cannot be exported")
        return name


def _prepare(arch: Arch, hf_name: str, t: torch.Tensor) -> torch.Tensor:
    if arch.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
        return _permute(t, arch.n_head)
    if arch.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
        return _permute(t, arch.n_head_kv)
    return t


# ---------------------------------------------------------------------------------------------
# model metadata


def _rope(writer: Any, arch: Arch) -> torch.Tensor | None:
    """Rope settings; for Llama-3.1 style scaling the per-frequency factors llama.cpp reads from ``rope_freqs``."""
    import gguf
    import torch

    cfg = arch.config
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    writer.add_rope_freq_base(float(theta))
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    factors = {**scaling, **params}
    if kind == "default":
        return None
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(factors["factor"]))
        return None
    if kind == "llama3":
        from transformers import AutoConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        hf = AutoConfig.for_model(**{k: v for k, v in cfg.items() if k not in ("architectures",)})
        scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
        base = 1.0 / (float(theta) ** (torch.arange(0, arch.head_dim, 2, dtype=torch.float32) / arch.head_dim))
        return (base / scaled.to(torch.float32)).contiguous()
    raise ExportError(f"GGUF export does not support rope scaling '{kind}' of {arch.hf}")


def _model_params(writer: Any, arch: Arch, quant: str) -> torch.Tensor | None:
    cfg = arch.config
    writer.add_context_length(int(cfg.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_block_count(int(cfg["num_hidden_layers"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_head_count(arch.n_head)
    writer.add_head_count_kv(arch.n_head_kv)
    writer.add_layer_norm_rms_eps(float(cfg.get("rms_norm_eps") or 1e-6))
    writer.add_rope_dimension_count(arch.head_dim)
    if arch.head_dim != int(cfg["hidden_size"]) // arch.n_head:
        writer.add_key_length(arch.head_dim)
        writer.add_value_length(arch.head_dim)
    writer.add_vocab_size(int(cfg["vocab_size"]))
    writer.add_file_type(_file_type(quant))
    import gguf

    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return _rope(writer, arch)


# ---------------------------------------------------------------------------------------------
# the tokenizer


_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                 "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
_QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def _steps(pre: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not pre:
        return []
    if pre.get("type") == "Sequence":
        return [s for p in pre.get("pretokenizers", []) for s in _steps(p)]
    return [pre]


def bpe_pre_tokenizer(tokenizer_json: dict[str, Any]) -> str:
    """llama.cpp's name (``tokenizer.ggml.pre``) for the way this BPE tokenizer splits text before merging.

    Read from the tokenizer's own pre-tokenizer steps: byte-level GPT-2 splitting (``gpt-2``), the same with digits
    split one by one (``smollm``), or the Llama-3 and Qwen2 split expressions. Another one is refused: llama.cpp
    would tokenize differently from training.
    """
    steps = _steps(tokenizer_json.get("pre_tokenizer"))
    kinds = [s.get("type") for s in steps]
    split = [s for s in steps if s.get("type") == "Split"]
    pattern = (split[0].get("pattern") or {}).get("Regex") if split else None
    byte_regex = [bool(s.get("use_regex", True)) for s in steps if s.get("type") == "ByteLevel"]
    if kinds == ["ByteLevel"] and byte_regex == [True]:
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and byte_regex == [True] and steps[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and byte_regex == [False]:
        if pattern == _LLAMA3_SPLIT:
            return "llama-bpe"
        if pattern == _QWEN2_SPLIT:
            return "qwen2"
    said = (f"the tokenizer's pre-tokenizer ({json.dumps(tokenizer_json.get('pre_tokenizer'))[:200]}) has no llama.cpp "
            "equivalent known to this exporter; ")
    raise ExportError(said + "export --format merged instead").in_app(said + "export with Format merged instead")


def _special_ids(tok: Any) -> dict[str, int]:
    out = {}
    for key in ("bos", "eos", "unk", "pad"):
        value = getattr(tok, f"{key}_token_id", None)
        if isinstance(value, int):
            out[key] = value
    return out


def write_vocab(writer: Any, tok: Any, tokenizer_dir: Path, vocab_size: int, chat_template: str | None) -> None:
    """Vocabulary, merges (BPE) or scores (SentencePiece-style), special ids and the chat template."""
    import gguf

    tj = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    model = tj.get("model") or {}
    if model.get("type") != "BPE":
        raise ExportError(f"GGUF export supports BPE tokenizers; this one is {model.get('type')}")
    if model.get("byte_fallback"):  # a SentencePiece model converted to tokenizer.json (Llama-2, Mistral)
        vocab = gguf.LlamaHfVocab(tokenizer_dir)
        tokens, scores, types = [], [], []
        for text, score, ttype in vocab.all_tokens():
            tokens.append(text)
            scores.append(score)
            types.append(ttype)
        if len(tokens) > vocab_size:
            raise ExportError(f"the tokenizer has {len(tokens)} tokens, the model's embeddings {vocab_size}")
        for i in range(len(tokens), vocab_size):
            tokens.append(f"[PAD{i}]".encode())
            scores.append(-1000.0)
            types.append(gguf.TokenType.UNUSED)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
    else:
        pieces: list[str | None] = [None] * vocab_size
        types = [gguf.TokenType.NORMAL] * vocab_size
        for text, i in model.get("vocab", {}).items():
            if i >= vocab_size:
                raise ExportError(f"the tokenizer's token {text!r} has id {i}, beyond the model's {vocab_size} embeddings")
            pieces[i] = text
        for added in tj.get("added_tokens", []):
            i = int(added["id"])
            if i >= vocab_size:
                raise ExportError(f"the tokenizer's token {added['content']!r} has id {i}, beyond the model's "
                                  f"{vocab_size} embeddings")
            pieces[i] = added["content"]
            types[i] = gguf.TokenType.CONTROL if added.get("special") else gguf.TokenType.USER_DEFINED
        names: list[str] = []
        for i, p in enumerate(pieces):
            if p is None:
                names.append(f"[PAD{i}]")
                types[i] = gguf.TokenType.UNUSED
            else:
                names.append(p)
        merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(bpe_pre_tokenizer(tj))
        writer.add_token_list(names)
        writer.add_token_types(types)
        writer.add_token_merges(merges)
    ids = _special_ids(tok)
    for key, add in (("bos", writer.add_bos_token_id), ("eos", writer.add_eos_token_id),
                     ("unk", writer.add_unk_token_id), ("pad", writer.add_pad_token_id)):
        if key in ids:
            add(ids[key])
    # Training tokenised the rendered text without adding special tokens (the template writes bos itself): so
    # does llama.cpp with these two off, and the chat template's text gives the same token ids as in training.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)


# ---------------------------------------------------------------------------------------------
# writing


@dataclass
class _Planned:
    gguf_name: str
    hf_name: str
    shape: tuple[int, ...]
    qtype: Any


def _open(out: Path, arch: Arch) -> Any:
    import gguf

    return gguf.GGUFWriter(str(out), arch.gguf)


def _write_planned(writer: Any, planned: list[_Planned], tensors: Iterator[tuple[str, torch.Tensor]],
                   progress: Progress, total: int, label: str) -> None:
    """Header, metadata and tensor table first; then each tensor, computed when its turn comes."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    done = 0
    by_name = {p.hf_name: p for p in planned}
    written = 0
    for hf_name, t in tensors:
        p = by_name.get(hf_name)
        if p is None:
            continue
        data = _to_numpy(t, p.qtype)
        writer.write_tensor_data(data)
        written += 1
        done += t.numel()
        progress(done / max(total, 1), f"{label} {p.gguf_name}")
    if written != len(planned):
        raise AssertionError(f"wrote {written} of {len(planned)} planned tensors")


def _plan(writer: Any, arch: Arch, shapes: dict[str, tuple[int, ...]], quant: str) -> list[_Planned]:
    names = _TensorNames(arch)
    planned = []
    for hf_name, shape in shapes.items():
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        g = names(hf_name)
        qtype = tensor_type(g, shape, quant)
        planned.append(_Planned(g, hf_name, shape, qtype))
        _add_info(writer, g, shape, qtype)
    return planned


def _add_info(writer: Any, name: str, shape: tuple[int, ...], qtype: Any) -> None:
    """One tensor's entry in the file's tensor table (its data is written later, in the same order)."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q

    if qtype == Q.F32:
        writer.add_tensor_info(name, shape, np.dtype(np.float32), 4 * math.prod(shape))
    elif qtype == Q.F16:
        writer.add_tensor_info(name, shape, np.dtype(np.float16), 2 * math.prod(shape))
    else:
        from gguf.quants import quant_shape_to_byte_shape

        writer.add_tensor_info(name, quant_shape_to_byte_shape(shape, qtype), np.dtype(np.uint8),
                               _nbytes(shape, qtype), raw_dtype=qtype)


def write_model(weights: MergedWeights, tok: Any, tokenizer_dir: Path, out: Path, *, quant: str = DEFAULT_QUANT,
                chat_template: str | None = None, name: str = "", progress: Progress = no_progress) -> Path:
    """The (merged) model as one GGUF file at ``out``, tensors in ``quant`` (see :func:`tensor_type`)."""
    import numpy as np

    if quant not in QUANTS:
        raise ExportError(f"--quant {quant} is not one of {', '.join(QUANTS)}")
    arch = architecture(weights.config)
    writer = _open(out, arch)
    try:
        writer.add_type("model")
        if name:
            writer.add_name(name)
        rope_freqs = _model_params(writer, arch, quant)
        write_vocab(writer, tok, tokenizer_dir, int(arch.config["vocab_size"]), chat_template)
        shapes = {k: v for k, v in weights.shapes.items()}
        planned = _plan(writer, arch, shapes, quant)
        if rope_freqs is not None:
            writer.add_tensor_info("rope_freqs.weight", tuple(rope_freqs.shape), np.dtype(np.float32),
                                   4 * rope_freqs.numel())

        def tensors() -> Iterator[tuple[str, torch.Tensor]]:
            for hf_name, t in weights.tensors():
                yield hf_name, _prepare(arch, hf_name, t)

        _write_planned(writer, planned, tensors(), progress, weights.numel(), "writing")
        if rope_freqs is not None:
            writer.write_tensor_data(rope_freqs.numpy().astype(np.float32))
    finally:
        writer.close()
    return out


def write_lora(updates: dict[str, LoraUpdate], config: dict[str, Any], alpha: float, out: Path, *,
               quant: str = "f16", progress: Progress = no_progress) -> Path:
    """The LoRA adapter as a GGUF adapter file (``general.type = adapter``) for llama.cpp ``--lora``.

    llama.cpp scales each pair by ``alpha / rank``; an update whose own scale differs (rsLoRA, per-module
    alpha) has the difference folded into its B matrix, so every pair applies exactly its trained update.
    """
    import torch

    if quant not in LORA_QUANTS:
        raise ExportError(f"a LoRA GGUF is written in {', '.join(LORA_QUANTS)}; --quant {quant} is for model files")
    arch = architecture(config)
    names = _TensorNames(arch)
    writer = _open(out, arch)
    pairs: list[tuple[str, torch.Tensor]] = []
    for hf_name, up in updates.items():
        g = names(hf_name)
        r = up.a.shape[0]
        b = up.b.to(torch.float32) * (up.scale / (alpha / r))
        b = _prepare(arch, hf_name, b)
        pairs += [(g + ".lora_a", up.a.to(torch.float32)), (g + ".lora_b", b)]
    try:
        import gguf

        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
        planned = []
        for g, t in pairs:
            shape = tuple(t.shape)
            qtype = tensor_type(g, shape, quant)
            planned.append(_Planned(g, g, shape, qtype))
            _add_info(writer, g, shape, qtype)
        _write_planned(writer, planned, iter(pairs), progress, sum(t.numel() for _, t in pairs), "writing")
    finally:
        writer.close()
    return out
