"""A checkpoint or the adapter that could not be saved, checked against the free space.

:func:`saving` wraps training and saving: on a full disk, whatever the library's error says (torch's
``unexpected pos``, safetensors' ``os error 28``), the half-written folder is removed (the last complete checkpoint
stays) and the error says how much space there is and how much the save needs (:func:`disk_full`).
"""

from __future__ import annotations

import contextlib
import errno
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from . import runs
from .errors import TrainingError
from .io import DiskFullError

if TYPE_CHECKING:
    from transformers import Trainer

    from .models import Model


@contextlib.contextmanager
def saving(run_dir: Path, trainer: Trainer, base_path: str) -> Iterator[None]:
    """Training and saving, with a failure while a checkpoint or the adapter was being written checked against the
    free space: on a full disk, whatever the library's error says (torch's ``unexpected pos``, safetensors'
    ``os error 28``), the half-written folder is removed (the last complete checkpoint stays) and the error says
    how much space there is and how much the save needs."""
    try:
        yield
    except DiskFullError:
        raise  # a run file's own write: its message names the file already
    except Exception as e:  # noqa: BLE001 - re-raised, as the disk's error when the disk is full
        full = disk_full(run_dir, e, _save_bytes(trainer, base_path))
        if full is not None:
            raise full from e
        raise


def _no_space(error: BaseException | None) -> bool:
    """Whether an error (or one it was raised from) is the disk's: ENOSPC/EDQUOT, or a library's "os error 28"."""
    seen = 0
    while error is not None and seen < 10:
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(error)
        if "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text:
            return True
        error, seen = error.__cause__ or error.__context__, seen + 1
    return False


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _save_bytes(trainer: Trainer, base_path: str) -> int:
    """About what one checkpoint takes: the LoRA weights (fp32 bytes) four times (the checkpoint's and its adapter's
    copy, Adam's two moments) and the tokenizer's files twice."""
    model: Model = trainer.model  # a PeftModel: transformers types it as PreTrainedModel | Module | None
    params = sum(int(p.numel() * p.element_size()) for p in model.parameters() if p.requires_grad)
    base = Path(base_path)
    tokenizer = sum(f.stat().st_size for f in base.glob("tokenizer*") if f.is_file()) if base.is_dir() else 0
    return 4 * params + 2 * tokenizer


def disk_full(run_dir: Path, error: Exception, estimate: int) -> TrainingError | None:
    """The full disk's error for a failed save (None: the failure is not the disk's, or nothing was being saved).
    A save was under way when a checkpoint newer than the last complete one is there, or an ``adapter.tmp``:
    those are removed (they hold nothing usable and keep the disk full), then the free space decides."""
    import shutil

    from .adapter import checkpoint_step, is_adapter_dir

    last = runs.last_checkpoint(run_dir)
    after = (checkpoint_step(last) or 0) if last is not None else 0
    # a later checkpoint than the last complete one was being written; one whose adapter/ is intact stays usable
    # (chat, evaluation, export) and goes only when the disk is full
    partial = [d for d in runs.incomplete_checkpoints(run_dir) if (checkpoint_step(d) or 0) > after
               and (_no_space(error) or not is_adapter_dir(d / runs.ADAPTER))]
    tmp = [d for d in [run_dir / f"{runs.ADAPTER}.tmp",
                       *(run_dir / runs.CHECKPOINTS).glob(f"checkpoint-*/{runs.ADAPTER}.tmp")] if d.is_dir()]
    if not partial and not tmp and not _no_space(error):
        return None
    what = "the checkpoint" if partial or any(d.parent != run_dir for d in tmp) else f"the {runs.ADAPTER}/"
    for folder in partial + tmp:
        shutil.rmtree(folder, ignore_errors=True)
    free = shutil.disk_usage(run_dir).free
    need = max(_folder_bytes(last) if last is not None else 0, estimate)
    if not _no_space(error) and free >= need:
        return None
    mb = 1024 * 1024
    kept = f"the last complete checkpoint ({last.name}) is kept" if last is not None else "no checkpoint was complete yet"
    return TrainingError(f"No space left on device under {run_dir}: {free / mb:.0f} MB free, {what} needs about "
                         f"{max(1, round(need / mb))} MB; free space and resume (delete old runs or checkpoints): "
                         f"{kept}")
