"""Semantic segmentation for the shared training loop: data, loss, per-stitch metric sums, prediction grid."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...config import RunConfig
from ...data.scenes import SHAPES
from ...errors import SNNetError
from ..base import register_task
from ..dense import DenseTask, image_batches
from .config import SegmentationConfig
from .data import build_datasets, check_folders, dataset_info
from .metrics import area_sums, summarize
from .model import SegmentationModel, slide_inference
from .visualize import prediction_grid, segmentation_overlay


@register_task
class SegmentationTask(DenseTask):
    """Semantic segmentation: mIoU, mAcc and aAcc per stitch, SETR-naive heads."""

    name = "segmentation"
    model_class = SegmentationModel
    datasets = ("ade20k", "coco_stuff10k", "segfolder", "shapes")
    plot_metrics = (("mIoU", True),)
    report_metrics = ("mIoU", "mAcc", "aAcc")
    metric_directions = {"mIoU": True, "mAcc": True, "aAcc": True}
    config_class = SegmentationConfig
    fixed_input_size = True  # built for the training crop: relative position tables, FLOPs
    released_logging_state = True
    head_weight = "decode_head.conv_seg.weight"
    grid = prediction_grid

    @classmethod
    def check_folders(cls, cfg: RunConfig) -> None:
        check_folders(cfg.data, cfg.model.head.num_classes)

    @classmethod
    def check_input_size(cls, cfg: RunConfig, hw: tuple[int, int]) -> None:
        if cfg.eval.mode == "slide" and cfg.eval.stride is not None and cfg.eval.stride > min(hw):
            raise SNNetError(f"eval.stride {cfg.eval.stride} is larger than the {hw[0]}x{hw[1]} sliding window: "
                             f"pixels between windows would get no prediction (at most {min(hw)})")

    @classmethod
    def head_classes(cls, cfg: RunConfig) -> int:
        return dataset_info(cfg.data, cfg.model.head.num_classes)[0]

    @classmethod
    def class_names(cls, cfg: RunConfig) -> list[str] | None:
        """The built-in scenes' shapes, background first."""
        return ["background", *SHAPES[:cfg.data.shapes.num_classes]] if cfg.data.dataset == "shapes" else None

    @classmethod
    def draw_answer(cls, out: torch.Tensor, shown, scale: int, classes, min_score: float):
        """The class map over the image, and the classes it holds."""
        return segmentation_overlay(out[0].argmax(0).cpu().numpy(), out.shape[1], shown, scale, classes)

    def __init__(self, cfg: RunConfig, input_size: int, mean, std, progress: bool = True, train: bool = True) -> None:
        super().__init__(cfg, input_size, mean, std, progress, train)
        self.train_set, self.val_set, self.init_set, self.num_classes = build_datasets(
            cfg.data, cfg.augment, cfg.model.head.num_classes, input_size, mean, std, progress, train)
        self.num_sums = 4 * self.num_classes + 1  # per-class areas, then the image count
        self.ignore_index = cfg.data.ignore_index
        self.aux_weight = cfg.model.head.aux_weight

    def training_loss(self, model, batch, device: torch.device, step: int = 0) -> torch.Tensor:
        """Cross-entropy of the decode head plus ``aux_weight`` x each auxiliary head's, on logits resized to
        the labels; averaged over all pixels, ignored ones counting zero (mmsegmentation's default)."""
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        masks = masks.as_subclass(torch.Tensor)
        loss = images.new_zeros((), dtype=torch.float32)
        for k, logits in enumerate(model(images.as_subclass(torch.Tensor))):
            logits = F.interpolate(logits, size=masks.shape[-2:], mode="bilinear", align_corners=False)
            ce = F.cross_entropy(logits.float(), masks, ignore_index=self.ignore_index, reduction="none").mean()
            loss = loss + (1.0 if k == 0 else self.aux_weight) * ce
        return loss

    @torch.no_grad()
    def predict(self, model, images: list[torch.Tensor], sizes: list[tuple[int, int]],
                device: torch.device) -> list[torch.Tensor]:
        """Class maps at ``sizes`` (the labels'): whole-image or sliding-window logits, bilinearly resized."""
        ev = self.cfg.eval
        logits = []
        for x in image_batches(images):
            x = x.to(device, non_blocking=True).as_subclass(torch.Tensor)
            out = slide_inference(model, x, self.input_size, ev.stride) if ev.mode == "slide" else model(x)
            logits.extend(out.float())
        return [F.interpolate(lg[None], size=size, mode="bilinear", align_corners=False)[0].argmax(0)
                for lg, size in zip(logits, sizes)]

    @torch.no_grad()
    def eval_batch(self, model, batch, device: torch.device) -> torch.Tensor:
        """Per-class intersection, union, predicted and labelled pixels of one batch, and its image count."""
        images, labels = batch
        preds = self.predict(model, images, [tuple(lb.shape[-2:]) for lb in labels], device)
        areas = sum(area_sums(p, lb.to(device).as_subclass(torch.Tensor), self.num_classes, self.ignore_index)
                    for p, lb in zip(preds, labels))
        count = torch.tensor([float(len(images))], dtype=torch.float64, device=device)
        return torch.cat([areas.flatten(), count])

    def finalize(self, sums: torch.Tensor) -> dict:
        return {**summarize(sums[:-1].reshape(4, self.num_classes)), "images": int(sums[-1].item())}
