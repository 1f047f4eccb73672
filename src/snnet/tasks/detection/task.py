"""Detection and instance segmentation for the shared training loop: data, loss, COCO evaluation per stitch."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval

from ...config import RunConfig
from ...data.scenes import SHAPES
from ...distributed import all_gather_objects
from .._files import collate_lists
from ..base import register_task
from ..dense import DenseTask
from .config import DetectionConfig
from .data import build_datasets, check_folders, dataset_classes
from .model import DetectionModel
from .visualize import SCORE_THRESHOLD, detection_answer, prediction_grid

STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six of COCOeval.stats
MASK_THRESHOLD = 0.5


@register_task
class DetectionTask(DenseTask):
    """Detection and instance segmentation: COCO box and mask AP per stitch, Mask R-CNN over ViTDet's pyramid."""

    name = "detection"
    model_class = DetectionModel
    datasets = ("coco", "shapes")
    plot_metrics = (("bbox_AP", True), ("segm_AP", True))
    report_metrics = ("bbox_AP", "bbox_AP50", "segm_AP", "segm_AP50")
    metric_directions = {f"{kind}_{s}": True for kind in ("bbox", "segm") for s in STATS}
    config_class = DetectionConfig
    score_threshold = SCORE_THRESHOLD
    train_collate = staticmethod(collate_lists)
    grid = prediction_grid

    @classmethod
    def check_folders(cls, cfg: RunConfig) -> None:
        check_folders(cfg.data)

    @classmethod
    def head_classes(cls, cfg: RunConfig) -> int:
        return cfg.model.head.num_classes or dataset_classes(cfg.data)

    @classmethod
    def class_names(cls, cfg: RunConfig) -> list[str] | None:
        """The built-in scenes' shapes (label 0 is the background)."""
        return list(SHAPES[:cfg.data.shapes.num_classes]) if cfg.data.dataset == "shapes" else None

    @classmethod
    def draw_answer(cls, out: list[dict], shown, scale: int, classes, min_score: float):
        """Boxes and masks scoring ``min_score`` or more, and their list."""
        return detection_answer(out[0], shown, scale, classes, min_score)

    def __init__(self, cfg: RunConfig, input_size: int, mean, std, progress: bool = True, train: bool = True) -> None:
        super().__init__(cfg, input_size, mean, std, progress, train)
        self.train_set, self.val_set, self.init_set = build_datasets(cfg.data, cfg.augment, input_size, mean, std,
                                                                     progress, train)
        self.num_classes = len(self.val_set.coco.cats)
        self.category_of = {label: cat for cat, label in self.val_set.label_of.items()}

    def training_loss(self, model, batch, device: torch.device, step: int = 0) -> torch.Tensor:
        """The sum of Mask R-CNN's losses (RPN objectness and boxes, classifier, boxes, masks)."""
        images, targets = batch
        images = [i.to(device, non_blocking=True).as_subclass(torch.Tensor) for i in images]
        targets = [{k: (v.to(device).as_subclass(torch.Tensor) if isinstance(v, torch.Tensor) else v)
                    for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())

    @torch.no_grad()
    def predict(self, model, images: list[torch.Tensor], device: torch.device) -> list[dict]:
        return model([i.to(device, non_blocking=True).as_subclass(torch.Tensor) for i in images])

    @torch.no_grad()
    def eval_batch(self, model, batch, device: torch.device) -> list[tuple]:
        """COCO results of one batch: ("image", id) for every image, ("bbox" | "segm", result) per detection."""
        images, targets = batch
        records = []
        for out, target in zip(self.predict(model, images, device), targets):
            image_id = target["image_id"]
            records.append(("image", image_id))
            boxes = out["boxes"].float().cpu().numpy()
            masks = (out["masks"][:, 0] > MASK_THRESHOLD).cpu().numpy().astype(np.uint8)
            for box, label, score, mask in zip(boxes, out["labels"].tolist(), out["scores"].tolist(), masks):
                common = {"image_id": image_id, "category_id": self.category_of[label], "score": float(score)}
                x0, y0, x1, y1 = (float(v) for v in box)
                records.append(("bbox", {**common, "bbox": [x0, y0, x1 - x0, y1 - y0]}))
                rle = mask_utils.encode(np.asfortranarray(mask))
                rle["counts"] = rle["counts"].decode("ascii")
                records.append(("segm", {**common, "segmentation": rle}))
        return records

    def reduce(self, records: list[tuple] | None, device: torch.device) -> list[tuple]:
        """Every rank's records, in rank order (COCOeval scores them together)."""
        return [r for part in all_gather_objects(records or []) for r in part]

    def finalize(self, records: list[tuple]) -> dict:
        """Box and mask AP, AP50, AP75 and by size, in percent, by COCOeval on the images evaluated."""
        image_ids = sorted({r for kind, r in records if kind == "image"})
        out = {}
        for kind in ("bbox", "segm"):
            results = [r for k, r in records if k == kind]
            stats = [0.0] * len(STATS)
            if results:
                with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its tables
                    ev = COCOeval(self.val_set.coco, self.val_set.coco.loadRes(results), kind)
                    ev.params.imgIds = image_ids
                    ev.evaluate()
                    ev.accumulate()
                    ev.summarize()
                stats = [max(float(v), 0.0) * 100 for v in ev.stats[:len(STATS)]]  # -1 (no such objects) -> 0
            out.update({f"{kind}_{name}": v for name, v in zip(STATS, stats)})
        return {**out, "images": len(image_ids)}
