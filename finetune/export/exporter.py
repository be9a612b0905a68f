"""One export function behind the CLI (`python -m finetune export`), the app's Export tab and `/export_model`.

Formats: ``merged`` (16-bit safetensors folder), ``gguf`` (one file: the merged model), ``lora-gguf`` (the adapter
as a GGUF file, optionally with the base as GGUF), ``ollama`` (a folder: GGUF + Modelfile), ``space`` (a Gradio
chat Space on the Hub). The adapter's chat template is verified before anything is written; a file is written
under a temporary name and renamed when complete, so a failure (disk full, bad input) leaves nothing behind.

>>> export_model("runs/20261123-101500-3f9c2a7d1b", "gguf", "m.gguf", quant="q8_0")  # doctest: +SKIP
ExportResult(format='gguf', out=PosixPath('m.gguf'), ...)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..adapter import read_base_model, read_lora_config, read_template_info
from ..io import remove_dead_partials
from ..models import ModelError
from . import gguf_file, ollama
from .gguf_file import DEFAULT_QUANT, QUANTS, ExportError
from .merge import DTYPES, MergedWeights, Progress, adapter_folder, base_folder, merge_adapter, no_progress, \
    read_lora, tokenizer_for

if TYPE_CHECKING:
    from huggingface_hub import HfApi

FORMATS = ("merged", "gguf", "lora-gguf", "ollama", "space")
CARD = "README.md"
# bytes per parameter of each GGUF type (blocks of 32: 34 bytes for q8_0, 18 for q4_0)
_BYTES = {"f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}


@dataclass
class ExportResult:
    """What an export wrote: ``out`` (the file or folder; None when only pushed), its files and their sizes,
    the Hub URL when pushed, and the command that runs it."""

    format: str
    out: Path | None
    files: list[Path] = field(default_factory=list)
    sizes: dict[str, int] = field(default_factory=dict)
    url: str | None = None
    command: str = ""
    card: str = field(default="", repr=False)  # the model card of a file export, uploaded with a push

    def summary(self) -> str:
        lines = [f"{self.format} export" + (f" written to {self.out}" if self.out else "")]
        for name, size in self.sizes.items():
            lines.append(f"  {name}: {size / 1e6:.1f} MB")
        if self.url:
            lines.append(f"pushed to {self.url}")
        if self.command:
            lines.append(f"run it: {self.command}")
        return "\n".join(lines)


def quants_for(fmt: str) -> tuple[str, ...]:
    """The GGUF types a format is written in: every one for a model file (gguf, ollama), f16, bf16 and q8_0 for a
    LoRA GGUF; none for the formats without a GGUF file (merged, space).

    >>> quants_for("lora-gguf")
    ('f16', 'bf16', 'q8_0')
    """
    return QUANTS if fmt in ("gguf", "ollama") else gguf_file.LORA_QUANTS if fmt == "lora-gguf" else ()


def _check_space(target: Path, needed: int) -> None:
    """Refuse before writing when the folder lacks the space the file needs (with a 5% margin)."""
    folder = target if target.is_dir() else target.parent
    folder.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(folder)  # an export killed midway left them: their space is free again
    free = shutil.disk_usage(folder).free
    if free < needed * 1.05:
        raise ExportError(f"not enough disk space in {folder}: the export needs about {needed / 1e9:.2f} GB and "
                          f"{free / 1e9:.2f} GB are free; free some space or choose another --out").in_app(
            f"not enough disk space on the server: the export needs about {needed / 1e9:.2f} GB and "
            f"{free / 1e9:.2f} GB are free; delete old runs (Train tab) or pick a smaller GGUF type")


@contextmanager
def _staged(final: Path, is_dir: bool) -> Iterator[Path]:
    """A temporary path next to ``final``, renamed to it on success and removed on any failure."""
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(final.parent)  # what an export killed midway left behind (it can be GBs)
    tmp = final.with_name(f".{final.name}.partial{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
    if is_dir:
        tmp.mkdir(parents=True)
    try:
        yield tmp
    except OSError as e:
        _remove(tmp)
        if e.errno == errno.ENOSPC:
            raise ExportError(f"the disk holding {final.parent} filled up while writing {final.name}; nothing was "
                              "kept. Free some space or choose another --out, then export again").in_app(
                f"the server's disk filled up while writing {final.name}; nothing was kept. Delete old runs (Train "
                "tab) or pick a smaller GGUF type, then export again") from None
        raise
    except BaseException:
        _remove(tmp)
        raise
    if final.exists() and final.is_dir() and not any(final.iterdir()):
        final.rmdir()
    os.replace(tmp, final)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _refuse_existing(out: Path, is_dir: bool) -> None:
    if is_dir and out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} exists and is not an empty folder; choose a new --out folder")
    if not is_dir and out.exists():
        raise ExportError(f"{out} exists; choose a new --out file name (or remove it)")


def default_out(adapter: str | Path, fmt: str, quant: str) -> Path:
    """``<run or repo name>-<quant>.gguf`` (gguf, lora-gguf) or ``<name>-<format>`` (folders) in the current folder."""
    p = Path(str(adapter).rstrip("/"))
    name = (p.parent.name if p.name == "adapter" else p.name).split("@")[0] or "model"
    if fmt == "gguf":
        return Path(f"{name}-{quant}.gguf")
    if fmt == "lora-gguf":
        return Path(f"{name}-lora-{quant}.gguf")
    return Path(f"{name}-{fmt}")


def _template_text(tok: Any) -> str | None:
    template = getattr(tok, "chat_template", None)
    return template if isinstance(template, str) else None


def _write_gguf(folder: Path, base_name: str, target: Path, quant: str, progress: Progress,
                with_lora: bool = True) -> Any:
    """The merged (or, ``with_lora=False``, plain base) model as GGUF, with the adapter's tokenizer and template."""
    base = base_folder(base_name)
    gguf_file.architecture(json.loads((base / "config.json").read_text()))  # before reading any weight
    weights = MergedWeights(base, folder if with_lora else None)
    tok = tokenizer_for(folder, base_name)
    with tempfile.TemporaryDirectory(prefix="finetune-tok-") as tmp:
        tok.save_pretrained(tmp)
        _check_space(target.parent, int(weights.numel() * _BYTES[quant]))
        gguf_file.write_model(weights, tok, Path(tmp), target, quant=quant, chat_template=_template_text(tok),
                              name=f"{Path(base_name).name} fine-tuned" if with_lora else Path(base_name).name,
                              progress=progress)
    return tok


def export_model(adapter: str | Path, fmt: str = "gguf", out: str | Path | None = None, *, quant: str = DEFAULT_QUANT,
                 push: str | None = None, model: str | None = None, dtype: str = "bfloat16", with_base: bool = False,
                 token: str | None = None, private: bool = True, ignore_template_mismatch: bool = False,
                 progress: Progress = no_progress, api: HfApi | None = None) -> ExportResult:
    """Export an adapter (run folder, adapter folder or Hub repo) in ``fmt``; push it when ``push`` names a repo."""
    from ..verify import require_consistent

    # the command line names its flags, the app its fields (Format, GGUF type, Push to Hub repo) after which the
    # /export_model parameters are named (format, quant, push_repo)
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt} is not one of {', '.join(FORMATS)}").in_app(
            f"format {fmt} is not one of {', '.join(FORMATS)}")
    if fmt in ("gguf", "ollama") and quant not in quants_for(fmt):
        raise ExportError(f"--quant {quant} is not one of {', '.join(QUANTS)}").in_app(
            f"GGUF type {quant} is not one of {', '.join(QUANTS)}")
    if fmt == "lora-gguf" and quant not in quants_for(fmt):
        raise ExportError(f"a LoRA GGUF is written in {', '.join(quants_for(fmt))}; --quant {quant} is for "
                          "model files").in_app(f"a LoRA GGUF is written in {', '.join(quants_for(fmt))}; "
                                                f"GGUF type {quant} is for model files: pick one of those")
    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}")
    if fmt == "space" and not push:
        raise ExportError("--format space creates a Space on the Hub: pass --push OWNER/NAME").in_app(
            "the space format creates a Space on the Hub: give the repo to create in Push to Hub repo (OWNER/NAME)")
    if push:
        from ..hub import check_repo_id, resolve_token

        push = check_repo_id(push)
        resolve_token(token)  # fail before minutes of exporting, not after
    folder = adapter_folder(adapter)
    require_consistent(folder, action="export", ignore_mismatch=ignore_template_mismatch)
    base_name = model or read_base_model(folder)
    if not base_name:
        raise ExportError(f"{folder} names no base model (adapter_config.json); pass the base with --model")
    if fmt == "space":
        from .space import push_space

        url = push_space(folder, base_name, push or "", token=token, private=private, api=api, progress=progress)
        return ExportResult(fmt, None, url=url, command=f"open {url}")
    with tempfile.TemporaryDirectory(prefix="finetune-export-") as scratch:
        target = Path(out) if out is not None else (Path(scratch) / default_out(adapter, fmt, quant).name
                                                     if push else default_out(adapter, fmt, quant))
        result = _export_to(folder, base_name, fmt, target, quant=quant, dtype=dtype, with_base=with_base,
                            progress=progress, ignore_template_mismatch=ignore_template_mismatch)
        if push:
            result.url = _push(result, push, token=token, private=private, api=api)
        if out is None and push:
            result.out = None
        return result


def _export_to(folder: Path, base_name: str, fmt: str, target: Path, *, quant: str, dtype: str, with_base: bool,
               progress: Progress, ignore_template_mismatch: bool) -> ExportResult:
    if fmt == "merged":
        _refuse_existing(target, is_dir=True)
        written = merge_adapter(folder, target, model=base_name, dtype=dtype, progress=progress,
                                ignore_template_mismatch=True)  # verified by the caller
        return _result(fmt, written, sorted(p for p in written.iterdir() if p.is_file()),
                       f'AutoModelForCausalLM.from_pretrained("{written}")')
    if fmt == "gguf":
        if target.suffix != ".gguf":
            raise ExportError(f"--out {target}: a GGUF export is one file; name it *.gguf")
        _refuse_existing(target, is_dir=False)
        with _staged(target, is_dir=False) as tmp:
            tok = _write_gguf(folder, base_name, tmp, quant, progress)
        from .cards import gguf_card

        stops = _stops(read_template_info(folder) or {}, tok)
        card = gguf_card(base_name, folder, target.name, quant, tok, ollama.model_name(target.stem), stops)
        return _result(fmt, target, [target], f"llama-server --jinja -m {target}" + "".join(
            f" -r {s!r}" for s in stops if s and s != getattr(tok, "eos_token", None)), card)
    if fmt == "lora-gguf":
        if target.suffix != ".gguf":
            raise ExportError(f"--out {target}: a LoRA GGUF export is one file; name it *.gguf")
        _refuse_existing(target, is_dir=False)
        updates = read_lora(folder)
        config = MergedWeights(base_folder(base_name), None).config
        alpha = float(read_lora_config(folder).get("lora_alpha") or 8)
        base_target = target.with_name(target.stem + "-base.gguf") if with_base else None
        if base_target is not None:
            _refuse_existing(base_target, is_dir=False)
        with _staged(target, is_dir=False) as tmp:
            gguf_file.write_lora(updates, config, alpha, tmp, quant=quant if quant != "q4_0" else "q8_0",
                                 progress=progress if base_target is None else _part(progress, 0.0, 0.1))
        files = [target]
        if base_target is not None:
            base_quant = quant if quant in QUANTS else DEFAULT_QUANT
            try:
                with _staged(base_target, is_dir=False) as tmp:
                    _write_gguf(folder, base_name, tmp, base_quant, _part(progress, 0.1, 1.0), with_lora=False)
            except BaseException:
                target.unlink(missing_ok=True)
                raise
            files.append(base_target)
        from .cards import lora_gguf_card

        base = base_target.name if base_target else "BASE.gguf"
        card = lora_gguf_card(base_name, folder, target.name, base_target.name if base_target else None,
                              tokenizer_for(folder, base_name))
        return _result(fmt, target, files, f"llama-server --jinja -m {base} --lora {target.name}", card)
    # ollama
    _refuse_existing(target, is_dir=True)
    with _staged(target, is_dir=True) as tmp:
        tok = _write_gguf(folder, base_name, tmp / ollama.GGUF_NAME, quant, progress)
        info = read_template_info(folder) or {"template": "model", "system_prompt": ""}
        (tmp / ollama.MODELFILE).write_text(ollama.modelfile(info, tok), encoding="utf-8")
        name = ollama.model_name(target.name)
        from .cards import gguf_card

        (tmp / CARD).write_text(gguf_card(base_name, folder, ollama.GGUF_NAME, quant, tok, name, _stops(info, tok)),
                                encoding="utf-8")
    return _result("ollama", target, sorted(p for p in target.iterdir() if p.is_file()),
                   f"cd {target} && {ollama.run_command(ollama.model_name(target.name))}")


def _stops(info: dict[str, Any], tok: Any) -> list[str]:
    try:
        name, tokens = ollama.template_for(info or {"template": "model"}, tok)
    except ModelError:
        return [str(getattr(tok, "eos_token", "") or "")]
    return ollama.stop_strings(name, tokens, info)


def _part(progress: Progress, start: float, end: float) -> Progress:
    def inner(fraction: float, message: str) -> None:
        progress(start + (end - start) * fraction, message)

    return inner


def _result(fmt: str, out: Path, files: list[Path], command: str, card: str = "") -> ExportResult:
    return ExportResult(fmt, out, files, {p.name: p.stat().st_size for p in files}, command=command, card=card)


def _push(result: ExportResult, repo_id: str, *, token: str | None, private: bool, api: HfApi | None) -> str:
    """Upload the export's files with a card naming the repo."""
    from ..hub import push_folder, stage_card

    with tempfile.TemporaryDirectory(prefix="finetune-push-") as tmp:
        staged = Path(tmp) / "staged"
        if result.out is not None and result.out.is_dir():
            stage_card(result.out, staged, repo_id)
        else:
            src = Path(tmp) / "files"
            src.mkdir()
            for f in result.files:
                os.link(f, src / f.name) if _same_device(f, src) else shutil.copy(f, src / f.name)
            (src / CARD).write_text(result.card, encoding="utf-8")
            stage_card(src, staged, repo_id)
        return push_folder(staged, repo_id, repo_type="model", token=token, private=private,
                           commit_message=f"Upload {result.format} export with finetune")


def _same_device(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False

