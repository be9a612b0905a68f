"""Merging a LoRA adapter into its base, one tensor at a time.

:class:`MergedWeights` reads the base's safetensors shards lazily and adds each LoRA update
(``scale * B @ A``, computed in float32) to the one weight it belongs to, so a merge never holds more than one
shard of the base in memory: a 7B model merges in the memory of one of its shards, not of the model. The GGUF
writer reads the same tensors, so every export format sees the same merged weights.

>>> merge_adapter("runs/20261123-101500-3f9c2a7d1b", "merged", dtype="bfloat16")  # doctest: +SKIP
PosixPath('merged')
>>> AutoModelForCausalLM.from_pretrained("merged")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import CONFIG_FILE, copy_template_info, has_tokenizer, lora_weights_path, read_base_model, read_lora_config
from ..models import ModelError

if TYPE_CHECKING:
    import torch
    from huggingface_hub import HfApi

    from ..models import Tokenizer

DTYPES = ("bfloat16", "float16")
MERGED_CARD = "README.md"
INDEX_FILE = "model.safetensors.index.json"
# Progress callback: (fraction done in [0, 1], what is being done)
Progress = Callable[[float, str], None]
LORA_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<side>[AB])(?:\.[^.]+)?\.weight$")


def no_progress(fraction: float, message: str) -> None:
    """A progress callback that shows nothing."""


@dataclass(frozen=True)
class LoraUpdate:
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    scale: float  # alpha / r (alpha / sqrt(r) with rsLoRA)


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: the first pattern matching the module's name (or its end)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            return value
    return default


def read_lora(folder: Path) -> dict[str, LoraUpdate]:
    """The adapter's LoRA updates by the base weight they change (``model.layers.0.self_attn.q_proj.weight``).

    Refused with a message: adapter kinds a plain ``W + scale * B @ A`` does not describe (DoRA, fully trained
    modules, embeddings).
    """
    from safetensors.torch import load_file

    cfg = read_lora_config(folder)
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{folder} is a {cfg.get('peft_type')} adapter; only LoRA adapters can be exported")
    if cfg.get("use_dora"):
        raise ModelError(f"{folder} is a DoRA adapter; export merges plain LoRA adapters only")
    if cfg.get("fan_in_fan_out"):
        raise ModelError(f"{folder} was trained with fan_in_fan_out (Conv1D layers); export supports Linear layers")
    tensors = load_file(str(lora_weights_path(folder)))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        m = LORA_KEY.match(key)
        if not m:
            raise ModelError(
                f"{folder} holds the weight {key}, which is not a LoRA A/B matrix (a fully trained module or a "
                "new embedding); export supports adapters of LoRA matrices only")
        pairs.setdefault(m["module"], {})[m["side"]] = value
    alpha_default = float(cfg.get("lora_alpha") or cfg.get("r") or 8)
    out: dict[str, LoraUpdate] = {}
    for module, sides in pairs.items():
        if set(sides) != {"A", "B"}:
            raise ModelError(f"{folder}: the LoRA weights of {module} lack lora_{'B' if 'A' in sides else 'A'}")
        a, b = sides["A"], sides["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise ModelError(f"{folder}: the LoRA weights of {module} are not Linear LoRA matrices "
                             f"(A {tuple(a.shape)}, B {tuple(b.shape)})")
        r = a.shape[0]
        alpha = float(_pattern_value(cfg.get("alpha_pattern") or {}, module, alpha_default))
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[f"{module}.weight"] = LoraUpdate(a, b, scale)
    return out


# ---------------------------------------------------------------------------------------------
# the base's weights, where they are


def base_folder(base_name: str) -> Path:
    """A local folder holding the base's ``config.json`` and safetensors weights (from the Hub cache for a repo id).

    The embedded default model and local folders are used as they are; a Hub model is downloaded once
    (config, tokenizer and safetensors only) and read from the cache afterwards, also offline.
    """
    from .. import inference, models
    from ..errors import is_programming_error

    res = models.resolve(inference.base_config(base_name))
    if res.local:
        folder = Path(res.path)
    else:
        from huggingface_hub import snapshot_download

        from ..hub import describe_error

        patterns = ["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"]
        try:
            try:  # downloaded before: read from the cache without asking the Hub
                folder = Path(snapshot_download(res.path, revision=res.revision, allow_patterns=patterns,
                                                local_files_only=True))
            except Exception as e:  # noqa: BLE001 - not (completely) in the cache: download
                if is_programming_error(e):
                    raise
                folder = Path(snapshot_download(res.path, revision=res.revision, allow_patterns=patterns))
        except Exception as e:  # noqa: BLE001 - network/auth/cache errors become one message
            if is_programming_error(e):
                raise
            raise ModelError(describe_error(e, res.path, action="download the base model")) from None
    if not any(folder.glob("*.safetensors")):
        raise ModelError(f"{base_name} has no safetensors weights in {folder}; finetune reads weights from "
                         "safetensors only (convert the model with save_pretrained(safe_serialization=True))")
    return folder


def shard_files(folder: Path) -> list[Path]:
    """The base's safetensors files in order (the index's order for a sharded model)."""
    index = folder / INDEX_FILE
    if index.exists():
        files = dict.fromkeys(json.loads(index.read_text())["weight_map"].values())
        return [folder / f for f in files]
    single = folder / "model.safetensors"
    if single.exists():
        return [single]
    return sorted(folder.glob("*.safetensors"))


class MergedWeights:
    """The base's weights with the adapter's LoRA updates added, read one shard at a time.

    ``adapter=None`` gives the base's own weights (exported as they are).
    """

    def __init__(self, base: Path, adapter: Path | None):
        from safetensors import safe_open

        self.base = base
        self.config: dict[str, Any] = json.loads((base / "config.json").read_text())
        self.updates = read_lora(adapter) if adapter is not None else {}
        self.shards = shard_files(base)
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.where: dict[str, Path] = {}
        for shard in self.shards:
            with safe_open(str(shard), framework="pt") as f:
                for key in f.keys():
                    self.shapes[key] = tuple(f.get_slice(key).get_shape())
                    self.where[key] = shard
        missing = sorted(set(self.updates) - set(self.shapes))
        if missing:
            trained = read_base_model(adapter) if adapter is not None else ""
            raise ModelError(f"the adapter {adapter} does not fit the base in {base} (trained on {trained}): "
                             f"the base has no weight {missing[0]}")
        for key, up in self.updates.items():
            out, inp = self.shapes[key][0], self.shapes[key][-1]
            if (up.b.shape[0], up.a.shape[1]) != (out, inp):
                raise ModelError(f"the adapter {adapter} does not fit the base in {base}: {key} is {out}x{inp}, "
                                 f"the LoRA update {up.b.shape[0]}x{up.a.shape[1]}")

    @property
    def keys(self) -> list[str]:
        return list(self.shapes)

    def numel(self) -> int:
        return sum(math.prod(s) for s in self.shapes.values())

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """(name, tensor) for every weight, in file order, one shard open at a time: a weight with a LoRA update
        in float32 (``W + scale * B @ A``, computed in float32), any other as stored (no float32 copy of, say, the
        embeddings)."""
        import torch
        from safetensors import safe_open

        with torch.no_grad():
            for shard in self.shards:
                with safe_open(str(shard), framework="pt") as f:
                    for key in f.keys():
                        t = f.get_tensor(key)
                        up = self.updates.get(key)
                        if up is not None:
                            t = t.to(torch.float32) + up.scale * (up.b.to(torch.float32) @ up.a.to(torch.float32))
                        yield key, t


# ---------------------------------------------------------------------------------------------
# merged safetensors


def merge_adapter(adapter: str | Path, out: str | Path, *, model: str | None = None, dtype: str = "bfloat16",
                  ignore_template_mismatch: bool = False, progress: Progress = no_progress) -> Path:
    """Write the base with the adapter merged in as a plain ``dtype`` transformers model (no peft needed).

    The merged model keeps the adapter's tokenizer and so its chat template: an adapter whose chat template does
    not render what training rendered (:func:`verify.require_consistent`) is refused unless
    ``ignore_template_mismatch``.

    A QLoRA adapter is merged into the 16-bit base, not the 4-bit one it trained against: rounding the merged
    weights back to 4 bits would lose the update. The merge streams: each output shard (the base's own sharding)
    is assembled from the base's tensors one at a time and written before the next begins, so the working
    memory is one shard of the merged model, never the whole model.
    """
    import torch
    from safetensors.torch import save_file

    from ..verify import require_consistent

    if dtype not in DTYPES:
        raise ModelError(f"dtype '{dtype}' is not a 16-bit type; use one of {', '.join(DTYPES)}")
    folder = adapter_folder(adapter)
    require_consistent(folder, action="merge", ignore_mismatch=ignore_template_mismatch)
    base_name = model or read_base_model(folder)
    if not base_name:
        raise ModelError(f"{folder / CONFIG_FILE} names no base model; pass the base with --model")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise ModelError(f"{out} is not empty; choose a new folder for the merged model")
    base = base_folder(base_name)
    weights = MergedWeights(base, folder)
    torch_dtype = getattr(torch, dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        total, done = weights.numel(), 0
        names = [f"model-{i + 1:05d}-of-{len(weights.shards):05d}.safetensors" for i in range(len(weights.shards))]
        if len(names) == 1:
            names = ["model.safetensors"]
        weight_map: dict[str, str] = {}
        size = 0
        current: dict[str, torch.Tensor] = {}
        shard_of = {s: i for i, s in enumerate(weights.shards)}
        index = -1
        for key, t in weights.tensors():
            i = shard_of[weights.where[key]]
            if i != index and current:
                save_file(current, str(tmp / names[index]), metadata={"format": "pt"})
                current = {}
            index = i
            current[key] = t.to(torch_dtype).contiguous()
            weight_map[key] = names[i]
            size += current[key].numel() * current[key].element_size()
            done += t.numel()
            progress(done / total, f"merging {key}")
        if current:
            save_file(current, str(tmp / names[index]), metadata={"format": "pt"})
        if len(names) > 1:
            (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map},
                                                     indent=2))
        config = dict(weights.config)
        config["dtype"] = dtype
        config.pop("torch_dtype", None)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if (base / "generation_config.json").exists():
            shutil.copy(base / "generation_config.json", tmp / "generation_config.json")
        tok = tokenizer_for(folder, base_name)
        tok.save_pretrained(tmp)
        copy_template_info(folder, tmp)  # our own inference keeps formatting prompts as training did
        from .cards import merged_card

        (tmp / MERGED_CARD).write_text(merged_card(base_name, folder, dtype, tok), encoding="utf-8")
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def adapter_folder(adapter: str | Path) -> Path:
    """The adapter folder of a run, an adapter folder or a Hub repo (see ``inference.adapter_dir``), refusing a
    run that has not finished (no adapter yet) with a message that says so."""
    from .. import inference
    from ..adapter import adapter_file_missing, find_adapter_dir

    p = Path(adapter)
    if p.is_dir() and find_adapter_dir(p) is None and (missing := adapter_file_missing(p)):
        raise ModelError(missing)
    if p.is_dir() and find_adapter_dir(p) is None and (p / "config.yaml").exists():
        raise ModelError(f"the run {p} has no adapter yet: it has not finished; wait for it to finish "
                         "(or resume it) and export again")
    return inference.adapter_dir(adapter)


def tokenizer_for(folder: Path, base_name: str) -> Tokenizer:
    """The tokenizer saved with the adapter (with the trained chat template and pad token), else the base's."""
    from transformers import AutoTokenizer

    from .. import inference, models

    if has_tokenizer(folder):
        return AutoTokenizer.from_pretrained(str(folder))
    return models.load_tokenizer(inference.base_config(base_name))


def push_merged(adapter: str | Path, repo_id: str, *, model: str | None = None, dtype: str = "bfloat16",
                token: str | None = None, private: bool = True, revision: str | None = None,
                commit_message: str = "Upload merged model with finetune", api: HfApi | None = None,
                ignore_template_mismatch: bool = False, progress: Progress = no_progress) -> str:
    """Merge the adapter into a 16-bit copy of its base (see :func:`merge_adapter`) and push the result."""
    from ..hub import check_repo_id, push_folder, resolve_token, stage_card

    repo_id = check_repo_id(repo_id)
    resolve_token(token)  # fail before minutes of merging, not after
    with tempfile.TemporaryDirectory(prefix="finetune-merge-") as tmp:
        merged = merge_adapter(adapter, Path(tmp) / "merged", model=model, dtype=dtype,
                               ignore_template_mismatch=ignore_template_mismatch, progress=progress)
        out = Path(tmp) / "staged"
        stage_card(merged, out, repo_id)
        return push_folder(out, repo_id, repo_type="model", token=token, private=private, revision=revision,
                           commit_message=commit_message, api=api)
