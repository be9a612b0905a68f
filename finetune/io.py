"""Small file helpers: writes are atomic (temporary file, then rename) so a crash never leaves half a file."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from .errors import UserError

# A full disk (or an exhausted quota) while writing: the message says what to free and that nothing is lost.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError, UserError):
    """No space left while writing a run file; the folder keeps its last complete state."""


DISK_FULL_FIX = "free space (delete old runs or checkpoints) and resume: the files written before are intact"


def _disk_full(e: OSError, path: Path) -> DiskFullError:
    return DiskFullError(e.errno, f"no space left on the disk while writing {path}; {DISK_FULL_FIX}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError) and e.errno in _NO_SPACE:
            raise _disk_full(e, path) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: object) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def append_jsonl(path: Path, obj: object) -> None:
    """Append one JSON line with a single write (O_APPEND): a crash leaves whole lines or a torn last line,
    which readers skip. A torn last line is closed first, so it cannot swallow the line written after it."""
    line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        written = os.write(fd, line)
        if written != len(line):  # a short write is a full disk that did not say so
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    except OSError as e:
        if e.errno in _NO_SPACE:
            raise _disk_full(e, Path(path)) from None
        raise
    finally:
        os.close(fd)


def process_started(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since the machine booted (``/proc/PID/stat``; None: unknown, or
    not Linux). With its pid it names one process: a pid is reused once its process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
        return int(stat[stat.rindex(")") + 2:].split()[19])  # field 22; the name in (...) may hold spaces
    except (OSError, ValueError, IndexError):
        return None


def pid_alive(pid: object, started: object = None) -> bool:
    """Whether process ``pid`` (of this machine) lives; with ``started`` (its :func:`process_started` when it was
    recorded), whether that same process lives, not a later one given the same pid."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if isinstance(started, int) and not isinstance(started, bool):
        now = process_started(pid)
        return now is None or now == started
    return True


def remove_dead_partials(folder: Path, marker: str = ".partial") -> list[Path]:
    """Remove what processes that are gone left half-written in ``folder``: hidden ``.NAME<marker><pid>`` files and
    folders whose process no longer lives (a live one is still writing). Returns what was removed."""
    import shutil

    removed: list[Path] = []
    for path in Path(folder).glob(f".*{marker}*"):
        pid = path.name.rsplit(marker, 1)[-1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read a JSON-lines file, skipping a torn or malformed line instead of failing."""
    out: list[dict[str, Any]] = []
    try:
        with open(path, "rb") as f:
            for raw in f:
                try:
                    obj = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(obj, dict):
                    out.append(obj)
    except FileNotFoundError:
        pass
    return out


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, with its folder) for the block: one holder at a time
    across the app's threads and processes (each open of the file is its own flock)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
