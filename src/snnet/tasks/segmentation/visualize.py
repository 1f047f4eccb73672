"""The prediction grid of a segmentation run: input, label, and three mIoU-frontier stitches per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .._grid import denormalize, grid_inputs, palette, save_grid, swatch


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


def segmentation_overlay(labels: np.ndarray, num_classes: int, shown: np.ndarray, scale: int,
                         classes: list[str] | None) -> tuple[np.ndarray, str]:
    """The demo's answer: the class map (``labels``, upsampled ``scale`` times by nearest neighbour, so class borders
    stay sharp) half over the image ``shown``, and the legend: colour, name and share of the pixels, most frequent
    first."""
    colours = palette(num_classes, 255)
    big = labels.repeat(scale, 0).repeat(scale, 1)
    ids, counts = np.unique(labels, return_counts=True)
    names = classes or []
    items = []
    for i, n in sorted(zip(ids.tolist(), counts.tolist()), key=lambda t: -t[1]):
        name = names[i] if i < len(names) else f"class {i}"
        items.append(f"<li>{swatch(colours[i])}{name}: {100 * n / labels.size:.1f} %</li>")
    return (0.5 * shown + 0.5 * colours[big] / 255,
            f'<ul id="legend" style="list-style:none;padding:0">{"".join(items)}</ul>')
