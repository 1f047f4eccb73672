"""The prediction grid of a depth run: input, ground truth, three rmse-frontier stitches; one colour scale per row."""
from __future__ import annotations

from pathlib import Path

import torch

from .._grid import frontier_picks, save_grid


def prediction_grid(task, model, rows: list[dict], path: Path, device: torch.device) -> Path:
    picks = frontier_picks(rows, task.primary_metric, task.higher_is_better)
    samples = [task.val_set[i] for i in range(min(task.cfg.eval.visualize, len(task.val_set)))]
    mean, std = torch.tensor(task.mean)[:, None, None], torch.tensor(task.std)[:, None, None]
    model.eval()
    preds = {r["stitch_id"]: task.predict(model.select(r["stitch_id"]), [s[0] for s in samples], device)
             for r in picks}
    panels = []
    for i, (image, depth) in enumerate(samples):
        gt = depth.as_subclass(torch.Tensor)[0]
        valid = gt[gt > 0]
        scale = {"cmap": "magma_r", "vmin": valid.min().item() if valid.numel() else 0.0,
                 "vmax": valid.max().item() if valid.numel() else 1.0}  # one colour scale per row
        img = (image.as_subclass(torch.Tensor) * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()
        panels.append([("image", img, {}), ("depth", gt.numpy(), scale)] + [
            (f"#{r['stitch_id']} {r['gflops']:.2f} G\nrmse {r['rmse']:.3f}", preds[r["stitch_id"]][i].cpu().numpy(), scale)
            for r in picks])
    return save_grid(path, panels)
