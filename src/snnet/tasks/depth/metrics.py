"""The scale-invariant log loss and NYUv2's depth metrics, as the reference's depth code computes them (SPEC 11)."""
from __future__ import annotations

import torch

from ...errors import SNNetError

LOSS_EPS = 1e-3  # inside the logs of the loss, against exploding gradients
VARIANCE_FOCUS = 0.15
METRICS = ("a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


def sig_loss(pred: torch.Tensor, gt: torch.Tensor, warm_up: bool = False) -> torch.Tensor:
    """``sqrt(var(g) + 0.15 mean(g)^2)``, g = log(pred + eps) - log(gt + eps) over every pixel with gt > 0 in
    the batch (unbiased variance); during warm-up only ``sqrt(0.15 mean(g)^2)``."""
    valid = gt > 0
    g = torch.log(pred[valid] + LOSS_EPS) - torch.log(gt[valid] + LOSS_EPS)
    if warm_up:
        return torch.sqrt(VARIANCE_FOCUS * g.mean() ** 2)
    return torch.sqrt(g.var() + VARIANCE_FOCUS * g.mean() ** 2)


def valid_mask(gt: torch.Tensor, min_depth: float, max_depth: float,
               crop: tuple[int, int, int, int] | None = None) -> torch.Tensor:
    """Pixels with ``min_depth < gt < max_depth`` inside ``crop`` (top, bottom, left, right; ends excluded), which
    must lie inside the map (a crop beyond it would leave no pixel and report perfect metrics)."""
    mask = (gt > min_depth) & (gt < max_depth)
    if crop is not None:
        inside = torch.zeros_like(mask)
        top, bottom, left, right = crop
        h, w = gt.shape[-2:]
        if bottom > h or right > w:
            raise SNNetError(f"data.eval_crop {list(crop)} reaches outside a {h}x{w} depth map "
                             f"(top, bottom, left, right; bottom <= {h}, right <= {w})")
        inside[..., top:bottom, left:right] = True
        mask &= inside
    return mask


def image_metrics(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The nine metrics of one image's valid pixels (1-D tensors), in ``METRICS`` order (float64)."""
    pred, gt = pred.double(), gt.double()
    thresh = torch.maximum(gt / pred, pred / gt)
    err = torch.log(pred) - torch.log(gt)
    silog = torch.sqrt((err ** 2).mean() - err.mean() ** 2) * 100
    return torch.stack([
        (thresh < 1.25).double().mean(), (thresh < 1.25 ** 2).double().mean(), (thresh < 1.25 ** 3).double().mean(),
        ((gt - pred).abs() / gt).mean(), ((gt - pred) ** 2 / gt).mean(), ((gt - pred) ** 2).mean().sqrt(),
        (err ** 2).mean().sqrt(), (torch.log10(gt) - torch.log10(pred)).abs().mean(),
        torch.nan_to_num(silog, nan=0.0),  # a constant error: the reference reports 0
    ])


def summarize(sums: torch.Tensor) -> dict:
    """Means over images from summed per-image metrics and the image count (last entry)."""
    n = max(sums[-1].item(), 1.0)
    return {name: v / n for name, v in zip(METRICS, sums[:-1].tolist())}
