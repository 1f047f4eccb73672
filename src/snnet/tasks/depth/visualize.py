"""The prediction grid of a depth run: input, ground truth, three rmse-frontier stitches; one colour scale per row."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps

from .._grid import denormalize, grid_inputs, save_grid

DEPTH_COLOURS = "magma_r"  # near bright, far dark


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks, samples, preds = grid_inputs(task, model, rows,
                                        lambda m, samples: task.predict(m, [s[0] for s in samples], device))
    panels = []
    for i, (image, depth) in enumerate(samples):
        gt = depth.as_subclass(torch.Tensor)[0]
        valid = gt[gt > 0]
        scale = {"cmap": DEPTH_COLOURS, "vmin": valid.min().item() if valid.numel() else 0.0,
                 "vmax": valid.max().item() if valid.numel() else 1.0}  # one colour scale per row
        panels.append([("image", denormalize(task, image).permute(1, 2, 0).numpy(), {}), ("depth", gt.numpy(), scale)]
                      + [(f"#{r['stitch_id']} {r['gflops']:.2f} G\nrmse {r['rmse']:.3f}",
                          preds[r["stitch_id"]][i].cpu().numpy(), scale) for r in picks])
    return save_grid(path, panels)


def depth_answer(depth: torch.Tensor, shown: np.ndarray) -> tuple[np.ndarray, str]:
    """The demo's answer: the (1, 1, h, w) depth map bilinearly resized to the enlarged image ``shown`` and
    colour-mapped from its nearest to its farthest depth, and that colour bar in metres."""
    depth = torch.nn.functional.interpolate(depth.float(), size=shown.shape[:2], mode="bilinear",
                                            align_corners=False)[0, 0].cpu().numpy()
    lo, hi = float(depth.min()), float(depth.max())
    colours = colormaps[DEPTH_COLOURS]
    stops = ", ".join("rgb({},{},{})".format(*(int(255 * c) for c in colours(t)[:3])) for t in np.linspace(0, 1, 9))
    legend = (f'<div id="legend"><div style="height:1.2em;background:linear-gradient(to right, {stops})"></div>'
              f'<div style="display:flex;justify-content:space-between"><span>{lo:.2f} m (near)</span>'
              f'<span>{(lo + hi) / 2:.2f} m</span><span>{hi:.2f} m (far)</span></div></div>')
    return colours((depth - lo) / max(hi - lo, 1e-6))[..., :3], legend
