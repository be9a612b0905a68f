"""Uploaded files, kept in the owner's folder: ``uploads/<content hash>/<the user's file name>``.

Uploads are temporary; runs must outlive them, so the service keeps a copy (:func:`keep_upload`) whose name is the
user's (cut to letters, digits, ``._-`` and spaces: no user-chosen path reaches disk) in a folder of ours, and the
messages name it as the user did (:func:`as_uploaded`, :func:`without_upload_folders`).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from .. import limits
from ..errors import UserError
from .checks import ServiceError

UPLOADS = "uploads"
_KEPT = re.compile(r"/" + UPLOADS + r"/[0-9a-f]{16}/")  # the folder of a kept upload, before its file name


def kept_name(name: str) -> str:
    """An upload's file name as it is kept: letters, digits, ``._-`` and spaces (no path, no hidden file), its
    suffix in lower case (what the readers go by)."""
    path = Path(name)
    stem = re.sub(r"[^\w.\- ]", "_", path.stem).strip(" .")[:80]
    # at most 200 bytes, whole characters: a file name holds 255 bytes, and a letter may take 4 of them
    stem = stem.encode("utf-8")[:200].decode("utf-8", errors="ignore").strip(" .") or "data"
    suffix = "".join(c for c in path.suffix.lower() if c.isalnum() or c == ".")[:10]
    return stem + suffix


def as_uploaded(e: UserError, upload: str | Path | None, kept: Path | None = None) -> UserError:
    """The user's error ``e`` with an upload said by its file name, not by where the server keeps it (its temporary
    path ``upload`` and the kept copy ``kept``): what the app shows."""
    if not upload:
        return e
    name = Path(upload).name
    paths = {str(upload): name} | ({str(kept): name, str(kept.resolve()): name} if kept is not None else {})
    return e.renamed(paths)


def without_upload_folders(text: str) -> str:
    """A run's message with each kept upload said by its file name (``…/uploads/<hash>/data.jsonl`` ->
    ``data.jsonl``)."""
    return re.sub(r"(?:/[^\s/:'\"]+)*" + _KEPT.pattern, "", text)


def keep_upload(root: Path, path: str | Path, *, shared: bool) -> Path:
    """Copy an uploaded data file into the owner's folder (uploads are temporary; runs must outlive them).

    It is kept as ``uploads/<content hash>/<its file name>``: a run's reports and messages name the file the user
    uploaded, and no user-chosen path reaches disk (the name is cut to letters, digits, ``._-`` and spaces, in
    a folder of ours).
    """
    from ..data import MAX_UPLOAD_ENV, max_upload_bytes

    src = Path(path)
    if not src.is_file():
        raise ServiceError(f"the uploaded file {src.name} is gone; upload it again")
    size, limit = src.stat().st_size, max_upload_bytes()
    if size > limit:
        raise ServiceError(f"{src.name} is {size / 1e6:.1f} MB, over the {limit / 1e6:g} MB upload limit; split "
                           f"it, use a Hub dataset, or raise the limit on the server ({MAX_UPLOAD_ENV})")
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:16]
    target = root / UPLOADS / digest / kept_name(src.name)
    if target.exists():  # kept already: no more room taken
        return target
    if shared:
        try:
            limits.check_disk(root, size, f"uploading {src.name}")
        except ValueError as e:  # over the quota, or the quota's setting unreadable on the server
            raise ServiceError(str(e)) from None
    from ..io import atomic_write_bytes

    atomic_write_bytes(target, data)
    return target


def drop_upload(root: Path, kept: str | Path) -> bool:
    """Delete a kept upload (``keep_upload``'s path) that no run of the owner names in its config: the form's
    file once the form moved on to another (True: deleted). Anything outside the owner's uploads is left."""
    import shutil

    folder = Path(kept).parent
    uploads = (root / UPLOADS).resolve()
    if not folder.resolve().is_relative_to(uploads) or folder.resolve() == uploads or not folder.is_dir():
        return False
    name = str(folder)
    for config in root.glob("*/config.yaml"):
        try:
            if name in config.read_text(encoding="utf-8"):
                return False
        except OSError:  # a run folder being deleted
            continue
    shutil.rmtree(folder, ignore_errors=True)
    return True
