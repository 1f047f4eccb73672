"""The prediction grid of a detection run: ground truth and three box-AP-frontier stitches' detections."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import font_manager
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

from .._grid import denormalize, grid_inputs, palette, save_grid, swatch

SCORE_THRESHOLD = 0.5  # detections drawn in the grid and the demo
COLOURS = palette(256, 255)  # label i in colour i, as segmentation draws class i


def draw_detections(pixels: torch.Tensor, boxes: torch.Tensor, labels: list[int], masks: torch.Tensor,
                    names: list[str], scores: list[float] | None = None, font_size: int | None = None) -> np.ndarray:
    """uint8 (3, H, W) pixels with the masks and boxes of each class in its colour, boxes labelled by class name
    (and score) inside their top-left corner, as (H, W, 3). ``font_size``: labels in matplotlib's DejaVu Sans on
    a band, else in PIL's small bitmap font."""
    if len(boxes):
        colours = [tuple(int(c) for c in COLOURS[i % len(COLOURS)]) for i in labels]
        text = ([names[i] for i in labels] if scores is None
                else [f"{names[i]} {score:.2f}" for i, score in zip(labels, scores)])
        font = None
        if font_size:
            font = font_manager.findfont("DejaVu Sans")
        pixels = draw_segmentation_masks(pixels, masks.bool(), alpha=0.45, colors=colours)
        # large labels: text on a band of the box's colour, readable on any image; small ones (the grid's 64-pixel
        # scenes) in the box's colour, as a band would hide the object
        ink = [(0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255) for r, g, b in colours]
        pixels = draw_bounding_boxes(pixels, boxes, text, colors=colours, width=2 if font_size else 1, font=font,
                                     font_size=font_size, fill_labels=bool(font_size), label_background_colors=colours,
                                     label_colors=ink if font_size else colours)
    return pixels.permute(1, 2, 0).numpy()


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks, samples, preds = grid_inputs(task, model, rows,
                                        lambda m, samples: task.predict(m, [s[0] for s in samples], device))
    names = ["background"] + [task.val_set.coco.cats[c]["name"] for c in sorted(task.val_set.coco.cats)]
    panels = []
    for i, (image, target) in enumerate(samples):
        pixels = (denormalize(task, image) * 255).to(torch.uint8)
        row = [("ground truth", draw_detections(pixels, target["boxes"], target["labels"].tolist(), target["masks"],
                                                names), {})]
        for r in picks:
            p = preds[r["stitch_id"]][i]
            keep = p["scores"].cpu() >= SCORE_THRESHOLD
            row.append((f"#{r['stitch_id']} {r['gflops']:.2f} G\nbox AP {r['bbox_AP']:.1f}",
                        draw_detections(pixels, p["boxes"].cpu()[keep], p["labels"].cpu()[keep].tolist(),
                                        p["masks"].cpu()[keep][:, 0] > 0.5, names), {}))
        panels.append(row)
    return save_grid(path, panels)


def detection_answer(found: dict, shown: np.ndarray, scale: int, classes: list[str] | None,
                     min_score: float) -> tuple[np.ndarray, str]:
    """The demo's answer: the detections scoring ``min_score`` or more drawn on the enlarged image ``shown`` (boxes
    scaled, masks resized), and their list: colour, class, score, best first."""
    keep = found["scores"].cpu() >= min_score
    kept = {k: v.cpu()[keep] for k, v in found.items()}
    boxes, labels, scores = kept["boxes"].float() * scale, kept["labels"].tolist(), kept["scores"].tolist()
    masks = torch.nn.functional.interpolate(kept["masks"].float(), size=shown.shape[:2], mode="bilinear",
                                            align_corners=False)[:, 0] > 0.5
    names = (["background", *classes] if classes else [f"class {i}" for i in range(max(labels, default=0) + 1)])
    pixels = torch.from_numpy(np.ascontiguousarray(shown.transpose(2, 0, 1) * 255).round().astype(np.uint8))
    drawn = draw_detections(pixels, boxes, labels, masks, names, scores, font_size=14)
    items = [f"<li>{swatch(COLOURS[i])}{names[i]}: {s:.2f}</li>"
             for i, s in sorted(zip(labels, scores), key=lambda t: -t[1])]
    title = (f"{len(items)} detections scoring {min_score:g} or more" if items
             else f"no detection scores {min_score:g} or more")
    return drawn.astype(np.float32) / 255, (f'<div id="legend"><b>{title}</b>'
                                            f'<ul style="list-style:none;padding:0">{"".join(items)}</ul></div>')
