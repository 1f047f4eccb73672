"""Run directories: checked before any work, and held by one process at a time through a lock file."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from .errors import SNNetError

LOCK_NAME = ".snnet.lock"


def check_run_dir(path: str | Path) -> Path:
    """Create ``path`` if needed and prove it writable, or a one-line error (a file, no permission, read-only)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SNNetError(f"run directory {path} is a file: choose another --output-dir")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SNNetError(f"run directory {path} is not writable: {e.strerror or e}") from None
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLock:
    """``<run dir>/.snnet.lock`` holding ``pid host``: a second training or evaluation into the same
    directory refuses to start; a lock whose process has died on this host is stale and taken over."""

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.owner = f"{os.getpid()} {socket.gethostname()}"
        self.stale_owner: str | None = None  # set when a dead process's lock was taken over

    def acquire(self) -> "RunLock":
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_holder()
                continue
            except OSError as e:
                raise SNNetError(f"cannot lock run directory {self.path.parent}: {e.strerror or e}") from None
            with os.fdopen(fd, "w") as f:
                f.write(self.owner + "\n")
            return self
        raise SNNetError(f"cannot lock run directory {self.path.parent}: another process keeps taking {self.path}")

    def _check_holder(self) -> None:
        """Raise if a live process holds the lock; remove it if its process is gone."""
        try:
            pid_text, _, host = self.path.read_text().strip().partition(" ")
            pid = int(pid_text)
        except (OSError, ValueError):  # vanished or half-written: no process can be named
            pid, host = -1, socket.gethostname()
        if host != socket.gethostname():
            raise SNNetError(f"run directory {self.path.parent} is in use by process {pid} on {host} "
                             f"(delete {self.path} if that run is over)")
        if pid > 0 and _alive(pid):
            raise SNNetError(f"run directory {self.path.parent} is in use by process {pid} "
                             f"(wait for it to finish, or choose another --output-dir)")
        self.stale_owner = f"process {pid}" if pid > 0 else "an unknown process"
        self.path.unlink(missing_ok=True)

    @property
    def notes(self) -> list[str]:
        return [f"took over the lock of {self.stale_owner}, which is no longer running"] if self.stale_owner else []

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass
