"""The prediction grid of a detection run: ground truth and three box-AP-frontier stitches' detections."""
from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .._grid import denormalize, grid_inputs, save_grid

SCORE_THRESHOLD = 0.5


def _draw(image: torch.Tensor, boxes, labels, masks, names: list[str]) -> object:
    """uint8 (3, H, W) with masks and labelled boxes, as (H, W, 3) for imshow."""
    if len(boxes):
        image = draw_segmentation_masks(image, masks.bool(), alpha=0.45)
        image = draw_bounding_boxes(image, boxes, [names[i] for i in labels], width=1)
    return image.permute(1, 2, 0).numpy()


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks, samples, preds = grid_inputs(task, model, rows,
                                        lambda m, samples: task.predict(m, [s[0] for s in samples], device))
    names = ["background"] + [task.val_set.coco.cats[c]["name"] for c in sorted(task.val_set.coco.cats)]
    panels = []
    for i, (image, target) in enumerate(samples):
        pixels = (denormalize(task, image) * 255).to(torch.uint8)
        row = [("ground truth", _draw(pixels, target["boxes"], target["labels"].tolist(), target["masks"], names), {})]
        for r in picks:
            p = preds[r["stitch_id"]][i]
            keep = p["scores"].cpu() >= SCORE_THRESHOLD
            row.append((f"#{r['stitch_id']} {r['gflops']:.2f} G\nbox AP {r['bbox_AP']:.1f}",
                        _draw(pixels, p["boxes"].cpu()[keep], p["labels"].cpu()[keep].tolist(),
                              p["masks"].cpu()[keep][:, 0] > 0.5, names), {}))
        panels.append(row)
    return save_grid(path, panels)
