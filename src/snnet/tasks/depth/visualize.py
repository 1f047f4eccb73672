"""The prediction grid of a depth run: input, ground truth, three rmse-frontier stitches; one colour scale per row."""
from __future__ import annotations

from pathlib import Path

import torch

from .._grid import denormalize, grid_inputs, save_grid


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks, samples, preds = grid_inputs(task, model, rows,
                                        lambda m, samples: task.predict(m, [s[0] for s in samples], device))
    panels = []
    for i, (image, depth) in enumerate(samples):
        gt = depth.as_subclass(torch.Tensor)[0]
        valid = gt[gt > 0]
        scale = {"cmap": "magma_r", "vmin": valid.min().item() if valid.numel() else 0.0,
                 "vmax": valid.max().item() if valid.numel() else 1.0}  # one colour scale per row
        panels.append([("image", denormalize(task, image).permute(1, 2, 0).numpy(), {}), ("depth", gt.numpy(), scale)]
                      + [(f"#{r['stitch_id']} {r['gflops']:.2f} G\nrmse {r['rmse']:.3f}",
                          preds[r["stitch_id"]][i].cpu().numpy(), scale) for r in picks])
    return save_grid(path, panels)
