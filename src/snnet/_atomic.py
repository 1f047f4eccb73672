"""Atomic file writes: a temp file beside the target, fsynced, then renamed over it; inside ``together()`` the
renames wait for the block to end, so the files of one command replace the old ones together or not at all."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Iterator

from .errors import SNNetError, first_line

_pending: ContextVar[list[tuple[Path, Path]] | None] = ContextVar("snnet_atomic_pending", default=None)


def _fail(path: Path, e: BaseException) -> SNNetError:
    # the body only serialises: torch.save and safetensors report a full disk as their own errors
    reason = e.strerror if isinstance(e, OSError) and e.strerror else first_line(e)
    return SNNetError(f"cannot write {path}: {reason}")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path`` (at the end of an enclosing ``together()``),
    on failure it is removed and the failure (disk full, no permission, ...) is a one-line SNNetError naming
    ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise SNNetError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:  # a reader never sees a file the OS has not fully written
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the mode open() would
        pending = _pending.get()
        if pending is None:
            os.replace(tmp, path)
        else:
            pending.append((Path(tmp), path))
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, SNNetError) or not isinstance(e, Exception):
            raise
        raise _fail(path, e) from None


@contextmanager
def together() -> Iterator[None]:
    """Every ``atomic_path`` finished inside the block replaces its target when the block ends without error;
    after an error (or a kill) inside it, every earlier file is as it was. Nested blocks join the outer one."""
    if _pending.get() is not None:
        yield
        return
    pending: list[tuple[Path, Path]] = []
    token = _pending.set(pending)
    try:
        yield
    except BaseException:
        for tmp, _ in pending:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _pending.reset(token)
    for k, (tmp, path) in enumerate(pending):  # renames only: microseconds for the whole set
        try:
            os.replace(tmp, path)
        except OSError as e:
            for rest, _ in pending[k:]:
                rest.unlink(missing_ok=True)
            raise _fail(path, e) from None


@contextmanager
def immediately() -> Iterator[None]:
    """Inside an enclosing ``together()``, files that replace their targets at once (scratch files a command
    reads back before its own files are in place)."""
    token = _pending.set(None)
    try:
        yield
    finally:
        _pending.reset(token)


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
