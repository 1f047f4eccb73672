"""Run directories: checked before any work, held by one process at a time through a lock file, and read
back (the saved model, its normalisation and class names)."""
from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

from timm.models import get_pretrained_cfg

from .config import load_config
from .errors import SNNetError
from .pretrained import CONFIG_NAME
from .tasks import class_names, data_defaults

LOCK_NAME = ".snnet.lock"


def saved_model_dir(path: Path) -> Path | None:
    """The saved model in ``path``: ``path`` itself or its ``model/`` (a run directory), if either has one."""
    return next((d for d in (path, path / "model") if (d / CONFIG_NAME).is_file()), None)


def run_of(path: str) -> tuple[Path, Path | None]:
    """(saved model directory, run directory or None) of ``--checkpoint``/``--run``: a run or a model directory."""
    p = Path(path)
    saved = saved_model_dir(p)
    if saved is None:
        raise SNNetError(f"no saved model at {p}: give a run directory (with model/) or a saved model directory")
    if saved != p:
        return saved, p
    parent = p.parent  # a saved model directory: its parent is the run when it holds one
    return p, parent if (parent / "results.jsonl").is_file() or (parent / "config.yaml").is_file() else None


def saved_run_of(config: str | Path, output_dir: str | Path) -> Path | None:
    """The run directory whose saved ``config.yaml`` is ``config``, when its ``output_dir`` names another place (the
    run was moved or copied, or the path is relative to another working directory): its results belong beside it,
    not in whatever sits at the old place. None for any other config."""
    path = Path(config)
    run = path.parent
    if path.name != "config.yaml" or not path.is_file() or Path(output_dir).resolve() == run.resolve():
        return None
    ran = saved_model_dir(run) is not None or any((run / n).is_file() for n in ("checkpoint.pt", "results.jsonl",
                                                                             "log.jsonl"))
    return run if ran else None


def run_info(run: Path | None, model) -> dict:
    """Normalisation and class names for an exported stitch: the run's config, else the anchors' timm defaults."""
    if run is not None and (run / "config.yaml").is_file():
        cfg = load_config(str(run / "config.yaml"))
        _, mean, std = data_defaults(cfg)
        return {"mean": list(mean), "std": list(std), "class_names": class_names(cfg)}
    pre = get_pretrained_cfg(model.config.to_dict()["anchors"][0]["name"])
    mean, std = (pre.mean, pre.std) if pre else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    return {"mean": list(mean), "std": list(std), "class_names": None}


# what training, evaluation and profiling write into a run directory (besides model/ and tensorboard/)
RUN_FILES = ("results.jsonl", "results.csv", "results_subset.jsonl", "results_subset.csv", "config.yaml",
             "log.jsonl", "checkpoint.pt", LOCK_NAME)


def check_output(paths: list[Path], model_dir: Path, run: Path | None) -> None:
    """An export may go anywhere but over the saved model or one of its run's own files (one line naming it)."""
    model_dir = model_dir.resolve()
    for path in paths:
        target = path.resolve()
        own = model_dir in target.parents
        if run is not None and target.parent == run.resolve():
            own = own or target.name in RUN_FILES or (target.suffix == ".png" and target.stem.startswith(
                ("pareto", "predictions")))
        if run is not None and run.resolve() / "tensorboard" in target.parents:
            own = True
        if own:
            raise SNNetError(f"--output {path} would overwrite the run's own {target.name}: choose another file")


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
    """``<run dir>/.snnet.lock`` holding ``pid host``: a second writer (train, eval, profile, export into the run)
    refuses to start; a lock whose process has died on this host is stale and taken over, with its temp files."""

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
            try:
                try:
                    os.write(fd, (self.owner + "\n").encode())
                finally:
                    os.close(fd)
            except OSError as e:  # a full disk: no empty lock left behind to confuse the next process
                self.path.unlink(missing_ok=True)
                raise SNNetError(f"cannot lock run directory {self.path.parent}: writing {self.path.name} failed "
                                 f"({e.strerror or e}; is the disk full?)") from None
            for stale in self.path.parent.glob(".*.tmp"):  # left by a writer that was killed: no one else writes here
                stale.unlink(missing_ok=True)
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

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        try:
            if self.path.read_text().strip() == self.owner:
                self.path.unlink()
        except OSError:
            pass
