"""Monocular depth for the shared training loop: data, loss, per-stitch metric sums, prediction grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import RunConfig
from ..base import register_task
from ..dense import DenseTask, image_batches
from .config import DepthConfig
from .data import build_datasets, check_folders
from .metrics import METRICS, image_metrics, sig_loss, summarize, valid_mask
from .model import DepthModel, flip_mean
from .visualize import depth_answer, prediction_grid


@register_task
class DepthTask(DenseTask):
    """Monocular depth: rmse, threshold accuracies and the other errors per stitch, DPT heads."""

    name = "depth"
    model_class = DepthModel
    datasets = ("nyuv2", "depthfolder", "shapes")
    plot_metrics = (("rmse", False), ("a1", True))  # a Pareto plot each
    report_metrics = ("rmse", "a1", "abs_rel", "silog")
    metric_directions = {m: m in ("a1", "a2", "a3") for m in METRICS}  # errors fall, threshold accuracies rise
    config_class = DepthConfig
    input_size_pairs = True
    grid = prediction_grid
    num_sums = len(METRICS) + 1  # per-image metric sums, then the number of images with valid pixels

    @classmethod
    def check_folders(cls, cfg: RunConfig) -> None:
        check_folders(cfg.data)

    @classmethod
    def eval_size(cls, cfg: RunConfig) -> tuple[int, int]:
        """data.eval_size (NYUv2's full test images), else the input size."""
        return tuple(cfg.data.eval_size) if cfg.data.eval_size else super().eval_size(cfg)

    @classmethod
    def draw_answer(cls, out: torch.Tensor, shown, scale: int, classes, min_score: float):
        """The depth map in colour, nearest bright, and its scale in metres."""
        return depth_answer(out[:, :1], shown)

    def __init__(self, cfg: RunConfig, input_size: int | tuple[int, int], mean, std, progress: bool = True,
                 train: bool = True) -> None:
        crop = tuple(input_size) if isinstance(input_size, tuple) else (input_size, input_size)
        super().__init__(cfg, crop, mean, std, progress, train)
        self.train_set, self.val_set, self.init_set = build_datasets(cfg.data, cfg.augment, crop, mean, std, progress,
                                                                     train)
        # crops beyond the maps fail on the first image, before any training (they would score an empty mask)
        if cfg.data.eval_crop and len(self.val_set):
            valid_mask(self.val_set[0][1][0], cfg.model.head.min_depth, cfg.model.head.max_depth,
                       tuple(cfg.data.eval_crop))
        if train and cfg.data.precrop and len(self.train_set):
            self.train_set[0]  # reading one item applies the precrop

    def training_loss(self, model, batch, device: torch.device, step: int = 0) -> torch.Tensor:
        """The scale-invariant log loss; its first ``train.loss_warmup`` iterations without the variance term."""
        images, depth = (t.to(device, non_blocking=True).as_subclass(torch.Tensor) for t in batch)
        pred = model(images)
        if pred.shape[-2:] != depth.shape[-2:]:
            pred = F.interpolate(pred, size=depth.shape[-2:], mode="bilinear", align_corners=False)
        return sig_loss(pred.float(), depth, warm_up=step < self.cfg.train.loss_warmup)

    @torch.no_grad()
    def predict(self, model, images: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
        """Depth (H, W) per image, with the flip test when ``eval.flip``."""
        out = []
        for x in image_batches(images):
            x = x.to(device, non_blocking=True).as_subclass(torch.Tensor)
            out.extend((flip_mean(model, x) if self.cfg.eval.flip else model(x))[:, 0].float())
        return out

    @torch.no_grad()
    def eval_batch(self, model, batch, device: torch.device) -> torch.Tensor:
        """Per-image metrics on valid pixels inside the evaluation crop, summed, and the count of such images."""
        images, depths = batch
        data, head = self.cfg.data, self.cfg.model.head
        sums = torch.zeros(self.num_sums, dtype=torch.float64, device=device)
        for pred, gt in zip(self.predict(model, images, device), depths):
            gt = gt.to(device).as_subclass(torch.Tensor)[0]
            if pred.shape != gt.shape:
                pred = F.interpolate(pred[None, None], size=gt.shape, mode="bilinear", align_corners=False)[0, 0]
            mask = valid_mask(gt, head.min_depth, head.max_depth, tuple(data.eval_crop) if data.eval_crop else None)
            if mask.any():
                sums[:-1] += image_metrics(pred[mask], gt[mask])
                sums[-1] += 1
        return sums

    def finalize(self, sums: torch.Tensor) -> dict:
        return {**summarize(sums), "images": int(sums[-1].item())}
