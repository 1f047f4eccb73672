"""The prediction grid of a depth run: input, ground truth, three rmse-frontier stitches; one colour scale per row."""
from __future__ import annotations

from pathlib import Path

import torch

from ..._atomic import atomic_path
from ...results import frontier


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    front = frontier(rows, task.primary_metric, higher_is_better=False)
    picks = list({r["stitch_id"]: r for r in (front[0], front[len(front) // 2], front[-1])}.values())
    n = min(task.cfg.eval.visualize, len(task.val_set))
    samples = [task.val_set[i] for i in range(n)]
    mean, std = torch.tensor(task.mean)[:, None, None], torch.tensor(task.std)[:, None, None]
    model.eval()
    preds = {}
    for r in picks:
        model.select(r["stitch_id"])
        preds[r["stitch_id"]] = task.predict(model, [s[0] for s in samples], device)
    cols = 2 + len(picks)
    fig = Figure(figsize=(2.4 * cols, 2.0 * n + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, (image, depth) in enumerate(samples):
        gt = depth.as_subclass(torch.Tensor)[0]
        valid = gt[gt > 0]
        lo, hi = (valid.min().item(), valid.max().item()) if valid.numel() else (0.0, 1.0)  # one scale per row
        img = (image.as_subclass(torch.Tensor) * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels = [("image", img, None), ("depth", gt.numpy(), "magma_r")]
        panels += [(f"#{r['stitch_id']} {r['gflops']:.2f} G\nrmse {r['rmse']:.3f}",
                    preds[r["stitch_id"]][i].cpu().numpy(), "magma_r") for r in picks]
        for j, (title, pixels, cmap) in enumerate(panels):
            ax = fig.add_subplot(n, cols, i * cols + j + 1)
            ax.imshow(pixels, cmap=cmap, vmin=None if cmap is None else lo, vmax=None if cmap is None else hi)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
