"""The prediction grid of a segmentation run: input, label, and three mIoU-frontier stitches per row."""
from __future__ import annotations

from pathlib import Path

import torch

from .._grid import denormalize, grid_inputs, palette, save_grid


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks, samples, preds = grid_inputs(task, model, rows, lambda m, samples: task.predict(
        m, [s[0] for s in samples], [tuple(s[1].shape) for s in samples], device))
    colours = palette(task.num_classes, task.ignore_index)
    nearest = {"interpolation": "nearest"}
    panels = []
    for i, (image, label) in enumerate(samples):
        img = denormalize(task, image).permute(1, 2, 0).numpy()
        panels.append([("image", img, nearest), ("label", colours[label.numpy()], nearest)] + [
            (f"#{r['stitch_id']} {r['gflops']:.2f} G\nmIoU {r['mIoU']:.1f}",
             colours[preds[r["stitch_id"]][i].cpu().numpy()], nearest) for r in picks])
    return save_grid(path, panels)
