"""The prediction grid of a segmentation run: input, label, and three frontier stitches per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..._atomic import atomic_path
from ...results import frontier


def palette(num_classes: int, ignore_index: int) -> np.ndarray:
    """A fixed colour per class (black for ignored pixels), the same in every run."""
    rng = np.random.default_rng(0)
    colours = np.zeros((max(num_classes, ignore_index + 1), 3), np.uint8)
    colours[:num_classes] = rng.integers(40, 256, (num_classes, 3))
    return colours


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    front = frontier(rows, task.primary_metric)
    picks = list({r["stitch_id"]: r for r in (front[0], front[len(front) // 2], front[-1])}.values())
    n = min(task.cfg.eval.visualize, len(task.val_set))
    samples = [task.val_set[i] for i in range(n)]
    colours = palette(task.num_classes, task.ignore_index)
    mean, std = torch.tensor(task.mean)[:, None, None], torch.tensor(task.std)[:, None, None]
    preds = {}
    model.eval()
    for r in picks:
        model.select(r["stitch_id"])
        preds[r["stitch_id"]] = task.predict(model, [s[0] for s in samples], [tuple(s[1].shape) for s in samples],
                                             device)
    cols = 2 + len(picks)
    fig = Figure(figsize=(2.2 * cols, 2.2 * n + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (image, label) in enumerate(samples):
        img = (image.as_subclass(torch.Tensor) * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [("image", img), ("label", colours[label.numpy()])]
        panels += [(f"#{r['stitch_id']} {r['gflops']:.2f} G\nmIoU {r['mIoU']:.1f}",
                    colours[preds[r["stitch_id"]][i].cpu().numpy()]) for r in picks]
        for j, (title, pixels) in enumerate(panels):
            ax = fig.add_subplot(n, cols, i * cols + j + 1)
            ax.imshow(pixels, interpolation="nearest")
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
