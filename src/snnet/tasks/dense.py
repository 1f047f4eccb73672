"""A stitched backbone with a dense head: FLOPs, parameters and the deployed stitch with the head.

Segmentation, depth and detection models subclass ``DenseModel`` and add only their heads; every stitch runs
through the backbone's one route runner (``SNNetBackbone.forward_intermediates``).
"""
from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import nn

from ..config import EvalSection, Int, ModelSection, RunConfig, Section
from ..model import SNNetBackbone, StitchNet, TaskModel
from ._files import collate_lists
from .base import Task

DISPLAY = 384  # the demo shows dense answers at least this many pixels wide


class DenseHeadSection(Section):
    """``model.head``: the keys every dense head has; each task's subclass adds its own."""

    channels: Int = Field(256, ge=1)
    # the heads' initial weights: "reference" as the reference's heads are built (mmseg / mmcv: conv_seg N(0, 0.01),
    # Kaiming ConvModules; torchvision's for detection), or "torch": PyTorch's default for every conv and linear
    init: Literal["reference", "torch"] = "reference"


class ClassesHeadSection(DenseHeadSection):
    """A head that predicts classes (segmentation, detection)."""

    num_classes: Int | None = Field(None, ge=1)  # default: the dataset's


class DenseEvalSection(EvalSection):
    visualize: Int = Field(4, ge=0)  # validation images in the prediction grid (predictions.png)


def init_conv_module(conv: nn.Module) -> nn.Module:
    """mmcv's ``ConvModule.init_weights``, which the reference's heads ran at construction: Kaiming normal
    (fan_out, ReLU gain) weights, zero bias."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class DenseTask(Task):
    """What the dense tasks share: a data check (``check_folders``), evaluation batches as lists of images of their
    own sizes, the report's ``predictions.png`` (a few validation images, their ground truth and the predictions of
    the smallest, middle and largest stitch on the frontier, drawn by the task's ``grid`` function), and the demo's
    answer drawn by ``draw_answer`` on the upload enlarged to at least ``DISPLAY`` pixels."""

    eval_collate = staticmethod(collate_lists)
    grid: Callable  # (task, model, rows, path, device) -> path

    @classmethod
    def check_folders(cls, cfg: RunConfig) -> None:
        """The dataset's folders and files exist; the scenes need none."""

    @classmethod
    def check_data(cls, cfg: RunConfig) -> int | None:
        cls.check_folders(cfg)
        return cls.head_classes(cfg)

    @classmethod
    def answer(cls, out, image: Image.Image, input_hw: tuple[int, int], classes: list[str] | None,
               min_score: float) -> tuple[np.ndarray, str]:
        h, w = input_hw
        scale = max(1, math.ceil(DISPLAY / max(h, w)))
        size = (w * scale, h * scale)  # PIL's (width, height)
        shown = np.asarray(image.convert("RGB").resize(size, Image.BILINEAR), dtype=np.float32) / 255
        return cls.draw_answer(out, shown, scale, classes, min_score)

    @classmethod
    def draw_answer(cls, out, shown: np.ndarray, scale: int, classes: list[str] | None,
                    min_score: float) -> tuple[np.ndarray, str]:
        """The prediction drawn at the size of ``shown`` (the upload, ``scale`` times the input), and its legend."""
        raise NotImplementedError

    def report(self, model, rows: list[dict], run_dir: Path, device: torch.device) -> list[Path]:
        if self.cfg.eval.visualize == 0:
            return []
        return [self.grid(model, rows, run_dir / "predictions.png", device)]


def image_batches(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Evaluation images as model inputs: one stacked batch when all share a size, else a batch per image."""
    if all(i.shape == images[0].shape for i in images):
        return [torch.stack(images)]
    return [i[None] for i in images]


class DenseModel(TaskModel):
    """``backbone`` (its taps at ``out_indices``) plus heads defined by a subclass."""

    # positions in out_indices the eval-mode forward reads (None: all); training computes every tap
    inference_taps: ClassVar[tuple[int, ...] | None] = None

    def __init__(self, backbone: SNNetBackbone, head_config: dict[str, Any]) -> None:
        super().__init__(backbone)
        self.head_config = dict(head_config)

    @classmethod
    def from_section(cls, section: ModelSection, num_classes: int | None = None, load_weights: bool = True,
                     device: str | None = None, input_size: tuple[int, int] | None = None) -> "DenseModel":
        """The task model over a dense backbone of the config's anchors. ``input_size``: the size depth and
        detection models report FLOPs at (detection: the square images are resized to fit)."""
        # the reference's dense anchors: no classifier, no final norm, any input size
        backbone = SNNetBackbone.from_section(section, load_weights, device,
                                              overrides=lambda family: family.backbone_kwargs,
                                              defaults={"dynamic_img_size": True}, dense=True)
        model = cls.from_backbone(backbone, section.head, num_classes, tuple(input_size or backbone.img_size))
        if section.head.init == "torch":
            reset_heads(model)
        return model.to(device) if device == "meta" else model

    # ---- what the head adds (subclasses) -----------------------------------------------------
    @classmethod
    def from_backbone(cls, backbone: SNNetBackbone, head: DenseHeadSection, num_classes: int | None,
                      input_size: tuple[int, int]) -> "DenseModel":
        """The model with the heads the config's ``model.head`` describes."""
        raise NotImplementedError

    def head_flops(self, img_size: tuple[int, int]) -> int:
        raise NotImplementedError

    def inference_heads(self) -> list[nn.Module]:
        """The heads a deployed stitch keeps (auxiliary training heads excluded)."""
        raise NotImplementedError

    # ---- what the task adds to the backbone ---------------------------------------------------------
    def features(self, x: torch.Tensor, return_prefix_tokens: bool = False) -> list:
        """The backbone's dense taps this model reads: every tap in training, ``inference_taps`` in eval mode (the
        others' projections are not computed; FLOPs still count them, as the reference's tables do)."""
        taps = None if self.training else self.inference_taps
        return self.backbone.forward_intermediates(x, return_prefix_tokens, taps)

    def flops(self, stitch_id: int, img_size: tuple[int, int] | None = None) -> int:
        """Backbone (with the projections of small-anchor taps) and inference heads at ``img_size``
        (default: the training crop)."""
        size = tuple(img_size) if img_size is not None else self.img_size
        return self.backbone.flops(stitch_id, size, taps=True) + self.head_flops(size)

    def params(self, stitch_id: int) -> int:
        """Parameters a deployed stitch keeps: its route, the SL layers projecting its smaller anchors' taps,
        and the inference heads."""
        b = self.backbone
        s = b.stitch(stitch_id)
        n = b.params(stitch_id, taps=True)
        projections = {ref for tap in b.route_taps(s) for ref in b.tap_layers(*tap)} - set(s.layers)
        # merged, as the deployed stitch holds them (a low-rank update's own matrices are not kept)
        n += sum(layer.in_features * layer.out_features + layer.out_features
                 for layer in map(b.stitching_layer, projections))
        return n + sum(p.numel() for h in self.inference_heads() for p in h.parameters())

    def deployable(self, stitch_id: int) -> nn.Module:
        """A copy in which every reference to the backbone (detection's pyramid holds one) is the stitch's
        ``StitchNet``, and the heads a deployed stitch does not run (auxiliary training heads) are empty."""
        heads = self.inference_heads()
        memo = {id(self.backbone): StitchNet(self.backbone, stitch_id, dense=True)}
        memo.update({id(child): nn.ModuleList() for name, child in self.named_children()
                     if name != "backbone" and not any(m is h for m in child.modules() for h in heads)})
        return copy.deepcopy(self, memo).eval()

    # ---- weights -------------------------------------------------------------------------------
    @property
    def config(self) -> "DenseConfig":
        return DenseConfig(self.task, self.backbone.config.to_dict(), self.head_config)


def reset_heads(model: DenseModel) -> None:
    """PyTorch's default initialisation for every convolution and linear layer outside the backbone."""
    for name, child in model.named_children():
        if name != "backbone":
            for m in child.modules():
                if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
                    m.reset_parameters()


class DenseConfig:
    """What ``config.json`` holds for a dense model: the task, the backbone's SNNetConfig and the head."""

    def __init__(self, task: str, backbone: dict, head: dict) -> None:
        self.task, self.backbone, self.head = task, backbone, head

    def to_dict(self) -> dict:
        return {"task": self.task, **self.backbone, "head": dict(self.head)}
