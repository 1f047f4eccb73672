"""A run's state on disk: the training checkpoint (model, optimizer, scheduler, scaler, epoch, every rank's
RNG and ROS state), finding the one to resume, and the per-epoch log."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._atomic import atomic_path, atomic_write_text
from .files import load_torch_checkpoint
from .config import RunConfig
from .distributed import DistEnv, all_gather_objects
from .errors import SNNetError
from .model import TaskModel
from .selection import is_stitchable



CHECKPOINT_NAME = "checkpoint.pt"


LOG_NAME = "log.jsonl"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(model: TaskModel) -> dict[str, Any]:
    """Every generator a step draws from: torch (CPU, CUDA), Python, NumPy (timm's Mixup), ROS.
    Plain Python values only, so ranks can gather them and checkpoints load with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state().tolist(),
            "cuda": [s.tolist() for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
            "python": random.getstate(), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "ros": model.sampler.state_dict() if is_stitchable(model) else None}


def set_rng_state(model: TaskModel, state: dict[str, Any]) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if is_stitchable(model):
        model.sampler.load_state_dict(state["ros"])


def save_checkpoint(path: Path, model: TaskModel, optimizer, scheduler, scaler, epoch: int, cfg: RunConfig,
                    env: DistEnv) -> None:
    """Everything needed to continue after ``epoch``; every rank's RNG state; written atomically by rank 0."""
    rngs = all_gather_objects(rng_state(model))
    if not env.is_main:
        return
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
             "scaler": scaler.state_dict(), "epoch": epoch, "rng": rngs, "config": cfg.to_dict()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    state = load_torch_checkpoint(path)
    missing = {"model", "optimizer", "scheduler", "scaler", "epoch", "rng"} - set(state)
    if missing:
        raise SNNetError(f"{path} is not an snnet training checkpoint (missing {', '.join(sorted(missing))})")
    return state


def find_resume(run_dir: Path, resume: str | None) -> Path | None:
    """``resume``: a checkpoint path, "auto" (the run directory's own, if any) or None (start fresh)."""
    if resume is None:
        return None
    if resume == "auto":
        path = run_dir / CHECKPOINT_NAME
        return path if path.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise SNNetError(f"checkpoint to resume not found: {resume}")
    return path


class EpochLog:
    """``log.jsonl`` in the run directory (rewritten atomically), plus TensorBoard when installed."""

    def __init__(self, run_dir: Path, keep_before_epoch: int) -> None:
        self.path = run_dir / LOG_NAME
        self.lines = []
        if self.path.is_file():  # after a resume, drop epochs that will be trained again
            for number, line in enumerate(self.path.read_bytes().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    keep = json.loads(line)["epoch"] < keep_before_epoch
                except (ValueError, TypeError, KeyError):  # a damaged line: the checkpoint is what counts
                    print(f"{self.path} line {number} is damaged; dropped from the log")
                    continue
                if keep:
                    self.lines.append(line.decode())
        try:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        except ImportError:
            self.tb = None

    def write(self, stats: dict[str, Any]) -> None:
        self.lines.append(json.dumps(stats))
        atomic_write_text(self.path, "\n".join(self.lines) + "\n")
        if self.tb is not None:
            for k, v in stats.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(f"train/{k}", v, stats["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
