"""Image classification: the task (augmentation, loss and per-stitch metrics: top-1, top-5, loss)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.data.loader import PrefetchLoader, fast_collate
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from ...anchors import AnchorConfig, head_class_names, head_classes
from ...config import RunConfig
from ...data.scenes import SHAPES
from ...errors import SNNetError
from .._files import split_names, with_transform
from ..base import Task, register_task
from .config import ClassificationConfig
from .data import (TIMM_SOURCES, build_datasets, build_teacher, build_transform, class_folders, data_class_names,
                   data_classes)
from .model import SNNet


@register_task
class ClassificationTask(Task):
    """Image classification: top-1 / top-5 accuracy and the loss per stitch, the anchors' own heads."""

    name = "classification"
    model_class = SNNet
    datasets = ("imagefolder", "shapes", *TIMM_SOURCES)
    plot_metrics = (("acc1", True),)
    report_metrics = ("acc1", "acc5", "loss")
    metric_directions = {"acc1": True, "acc5": True, "loss": False}
    config_class = ClassificationConfig
    answer_is_label = True
    released_state_key, released_backbone_prefix = "model", ""  # SN-Netv2's files: the whole network's state dict
    head_weight = "heads.0.weight"
    num_sums = 4  # the length of eval_batch's tensor

    @classmethod
    def check_keys(cls, cfg: RunConfig) -> None:
        super().check_keys(cfg)
        if cfg.data.dataset == "wds" and cfg.augment.repeated_aug > 1:
            raise ValueError("augment.repeated_aug samples images by index; webdataset shards (data.dataset wds) "
                             "stream: set it to 1")

    @classmethod
    def check_data(cls, cfg: RunConfig) -> int:
        return data_classes(cfg.data)

    @classmethod
    def class_names(cls, cfg: RunConfig) -> list[str] | None:
        """The built-in scenes' shapes, a timm-read dataset's classes, or an ImageFolder's class folders when they are
        on disk."""
        if cfg.data.dataset == "shapes":
            return list(SHAPES[:cfg.data.shapes.num_classes])
        if cfg.data.dataset in TIMM_SOURCES:
            return data_class_names(cfg.data)
        train_dir = Path(cfg.data.root) / split_names(cfg.data, "train", "val")[0] if cfg.data.root else None
        return class_folders(train_dir) if train_dir is not None and train_dir.is_dir() else None

    @classmethod
    def build_model(cls, cfg: ClassificationConfig, num_classes: int | None = None, load_weights: bool = True,
                    device: str | None = None) -> SNNet:
        model = super().build_model(cfg, num_classes, load_weights, device)
        if cfg.model.replace_head and load_weights:  # new heads even where the class count matches
            model.replace_heads()
        return model

    @classmethod
    def check_heads(cls, cfg: RunConfig, load_weights: bool) -> list[str]:
        """The anchors' classifiers (their kwargs', or their weights' when ``load_weights``) must have the data's
        classes, unless ``model.replace_head`` trains new ones; local anchor checkpoints are read on the meta
        device, so a corrupt or mis-shaped one fails here."""
        classes = data_classes(cfg.data)
        names = cls.class_names(cfg)
        notes = []
        for i, a in enumerate(cfg.model.anchors):
            anchor = AnchorConfig(a.name, a.pretrained and load_weights, a.checkpoint_path if load_weights else None,
                                  a.kwargs)
            head = head_classes(anchor)
            if head is None:  # random weights: heads built for the data
                continue
            if cfg.model.replace_head:
                notes.append(f"model.replace_head: anchor {i}'s {head}-class head is replaced by a new "
                             f"{classes}-class head")
            elif head != classes:
                raise SNNetError(f"the data has {classes} classes but anchor {i} ({a.name}) has a {head}-class "
                                 f"head: set model.replace_head=true to train new {classes}-class heads")
            elif load_weights:
                trained_on = head_class_names(anchor)
                if trained_on is not None and names is not None and trained_on != names:
                    # the same count of other classes: say so, the user decides
                    differ = next((k for k, (x, y) in enumerate(zip(trained_on, names)) if x != y), 0)
                    notes.append(f"note: anchor {i}'s head was trained on other classes than the data's (class "
                                 f"{differ}: {trained_on[differ]!r} there, {names[differ]!r} here); it is kept, "
                                 f"read by index: set model.replace_head=true to train new heads")
                elif trained_on is None and a.checkpoint_path:
                    notes.append(f"note: anchor {i}'s checkpoint records no class names: its {head}-class head is "
                                 f"kept because the data has {head} classes (set model.replace_head=true if they "
                                 f"are others)")
        return notes

    @classmethod
    def demo_transform(cls, cfg: RunConfig | None, model, mean, std):
        """The run's own evaluation preprocessing when its config.yaml is there."""
        if cfg is None:
            return super().demo_transform(cfg, model, mean, std)
        return build_transform(cfg.augment, cfg.data.interpolation, False, model.img_size[-1], tuple(mean), tuple(std))

    @classmethod
    def answer(cls, out: torch.Tensor, image, input_hw, classes: list[str] | None, min_score: float) -> dict:
        """The top-5 classes and their probabilities."""
        probs = out.float().softmax(-1)[0]
        top = probs.topk(min(5, probs.numel()))
        names = classes or [str(i) for i in range(probs.numel())]
        return {names[i]: float(p) for p, i in zip(top.values, top.indices)}

    def __init__(self, cfg: RunConfig, input_size: int, mean, std, progress: bool = True, train: bool = True) -> None:
        super().__init__(cfg, input_size, mean, std, progress, train)
        self.train_set, self.val_set, self.init_set, self.classes = build_datasets(cfg.data, cfg.augment, input_size,
                                                                                   mean, std, progress, train)
        self.num_classes = len(self.classes)
        aug = cfg.augment
        self.mixup = None
        if aug.mixup > 0 or aug.cutmix > 0:
            self.mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=aug.label_smoothing,
                               num_classes=self.num_classes)
            self.criterion = SoftTargetCrossEntropy()
        elif aug.label_smoothing > 0:
            self.criterion = LabelSmoothingCrossEntropy(smoothing=aug.label_smoothing)
        else:
            self.criterion = torch.nn.CrossEntropyLoss()
        self.distillation = cfg.train.distillation if train else None
        self.teacher = None
        if self.distillation is not None:
            self.teacher = build_teacher(self.distillation, self.num_classes)

    def training_batches(self, make_loader, device: torch.device):
        """With ``data.prefetcher`` (by default on CUDA): the training images leave the workers as uint8 tensors,
        and timm's ``PrefetchLoader`` copies each batch to the device while the step before runs, then normalises
        and randomly erases it there (``augment.reprob``) instead of in the workers."""
        data, aug = self.cfg.data, self.cfg.augment
        if not (data.prefetcher is True or data.prefetcher == "auto" and device.type == "cuda"):
            return super().training_batches(make_loader, device)
        transform = build_transform(aug, data.interpolation, True, self.input_size, self.mean, self.std, prefetch=True)
        loader = make_loader(with_transform(self.train_set, transform), fast_collate)
        return PrefetchLoader(loader, self.mean, self.std, device=device, re_prob=aug.reprob)

    def training_loss(self, model, batch, device: torch.device, step: int = 0) -> torch.Tensor:
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        if self.mixup is not None:
            if images.shape[0] % 2:  # timm's batch mixing pairs images with the flipped batch
                images, targets = images[:-1], targets[:-1]
            images, targets = self.mixup(images, targets)
        logits = model(images)
        loss = self.criterion(logits, targets)
        if self.teacher is None:
            return loss
        with torch.no_grad():
            teacher = self.teacher.to(device)(images)
        d = self.distillation
        if d.kind == "hard":
            extra = F.cross_entropy(logits, teacher.argmax(dim=1))
        else:  # DeiT's: summed KL of the tempered distributions, per logit
            extra = F.kl_div(F.log_softmax(logits / d.tau, dim=1), F.log_softmax(teacher / d.tau, dim=1),
                             reduction="sum", log_target=True) * d.tau ** 2 / logits.numel()
        return (1 - d.alpha) * loss + d.alpha * extra

    @torch.no_grad()
    def eval_batch(self, model, batch, device: torch.device) -> torch.Tensor:
        """[top-1 correct, top-5 correct, summed loss, images] of one batch, to be summed over batches and ranks."""
        images, targets = (t.to(device, non_blocking=True) for t in batch)
        logits = model(images).float()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hit = top == targets[:, None]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        return torch.stack([hit[:, 0].sum().double(), hit.any(dim=1).sum().double(), loss.double(),
                            torch.tensor(float(targets.numel()), dtype=torch.float64, device=logits.device)])

    @staticmethod
    def finalize(sums: torch.Tensor) -> dict[str, float]:
        c1, c5, loss, n = sums.tolist()
        n = max(n, 1.0)
        return {"acc1": 100.0 * c1 / n, "acc5": 100.0 * c5 / n, "loss": loss / n, "images": int(n)}
