"""mIoU, mAcc, aAcc and per-class IoU from per-class areas summed over images, batches and ranks
(mmsegmentation's IoUMetric: exact under any split of the data)."""
from __future__ import annotations

import math

import torch


def area_sums(pred: torch.Tensor, label: torch.Tensor, num_classes: int, ignore_index: int = 255) -> torch.Tensor:
    """(4, K) float64: intersection, union, predicted and labelled pixels per class; ignored pixels left out."""
    keep = label != ignore_index
    pred, label = pred[keep], label[keep]
    inter = pred[pred == label]
    count = lambda t: torch.bincount(t, minlength=num_classes)[:num_classes].double()  # noqa: E731
    a_inter, a_pred, a_label = count(inter), count(pred), count(label)
    return torch.stack([a_inter, a_pred + a_label - a_inter, a_pred, a_label])


def summarize(areas: torch.Tensor) -> dict:
    """Percentages from summed (4, K) areas. A class absent from labels and predictions has no IoU and
    is left out of mIoU; a class absent from the labels is left out of mAcc."""
    inter, union, _, label = areas.double().cpu()
    iou = [100 * i / u if u > 0 else math.nan for i, u in zip(inter.tolist(), union.tolist())]
    acc = [100 * i / n if n > 0 else math.nan for i, n in zip(inter.tolist(), label.tolist())]
    return {"mIoU": _nanmean(iou), "mAcc": _nanmean(acc),
            "aAcc": 100 * inter.sum().item() / max(label.sum().item(), 1.0),
            "iou_per_class": [None if math.isnan(v) else round(v, 4) for v in iou]}


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan
