"""The prediction grid of a dense run: per validation image a row of input, ground truth and the predictions of
the smallest, middle and largest stitch on the frontier of the task's metric; one colour per class for every
task."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .._atomic import atomic_path
from ..results import frontier


def frontier_picks(rows: list[dict], metric: str, higher_is_better: bool) -> list[dict]:
    """The smallest, middle and largest stitch of the frontier (fewer when it is shorter)."""
    front = frontier(rows, metric, higher_is_better)
    return list({r["stitch_id"]: r for r in (front[0], front[len(front) // 2], front[-1])}.values())


def grid_inputs(task, model, rows: list[dict], predict: Callable) -> tuple[list[dict], list, dict]:
    """(frontier picks, the first ``eval.visualize`` validation samples, ``predict(model, samples)`` of each
    pick keyed by stitch id)."""
    picks = frontier_picks(rows, task.primary_metric, task.higher_is_better)
    samples = [task.val_set[i] for i in range(min(task.cfg.eval.visualize, len(task.val_set)))]
    model.eval()
    return picks, samples, {r["stitch_id"]: predict(model.select(r["stitch_id"]), samples) for r in picks}


def palette(num_classes: int, ignore_index: int) -> np.ndarray:
    """A fixed colour per class (black for ignored pixels), the same in every run."""
    rng = np.random.default_rng(0)
    colours = np.zeros((max(num_classes, ignore_index + 1), 3), np.uint8)
    colours[:num_classes] = rng.integers(40, 256, (num_classes, 3))
    return colours


def denormalize(task, image: torch.Tensor) -> torch.Tensor:
    """A normalised (3, H, W) input back to [0, 1] with the task's mean and std."""
    mean, std = torch.tensor(task.mean)[:, None, None], torch.tensor(task.std)[:, None, None]
    return (image.as_subclass(torch.Tensor) * std + mean).clamp(0, 1)


def save_grid(path: Path, panels: list[list[tuple[str, object, dict]]]) -> Path:
    """``panels[i][j]`` = (title shown on the first row, pixels, ``imshow`` options); written atomically."""
    rows, cols = len(panels), max(len(r) for r in panels)
    fig = Figure(figsize=(2.3 * cols, 2.1 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, row in enumerate(panels):
        for j, (title, pixels, options) in enumerate(row):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.imshow(pixels, **options)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def swatch(rgb) -> str:
    """A square of colour ``rgb`` for a legend line (HTML)."""
    r, g, b = (int(c) for c in rgb)
    return (f'<span style="display:inline-block;width:1em;height:1em;background:rgb({r},{g},{b});'
            f'vertical-align:middle;margin-right:0.4em"></span>')
