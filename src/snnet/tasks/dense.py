"""A stitched backbone with a task head: the stitch verbs of ``SNNet``, FLOPs and parameters with the head.

Segmentation, depth and detection models subclass ``DenseModel`` and add only their heads; every
stitch runs through the backbone's one route runner (``SNNet.forward_features``).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from ..hub import Pretrained
from ..model import SNNet
from ..selection import best_under_budget, pareto_frontier
from ..stitch_space import SMALL, Stitch, route_taps


def init_conv_module(conv: nn.Module) -> nn.Module:
    """mmcv's ``ConvModule.init_weights``, which the reference's heads ran at construction: Kaiming normal
    (fan_out, ReLU gain) weights, zero bias."""
    nn.init.kaiming_normal_(conv.weight, a=0, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


def image_batches(images: list[torch.Tensor]) -> list[torch.Tensor]:
    """Evaluation images as model inputs: one stacked batch when all share a size, else a batch per image."""
    if all(i.shape == images[0].shape for i in images):
        return [torch.stack(images)]
    return [i[None] for i in images]


class DenseModel(Pretrained, nn.Module):
    """``backbone`` (an SNNet whose taps are ``out_indices``) plus heads defined by a subclass."""

    task: ClassVar[str]

    def __init__(self, backbone: SNNet, head_config: dict[str, Any]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head_config = dict(head_config)

    # ---- what the head adds (subclasses) -----------------------------------------------------
    def head_flops(self, img_size: tuple[int, int]) -> int:
        raise NotImplementedError

    def inference_heads(self) -> list[nn.Module]:
        """The heads a deployed stitch keeps (auxiliary training heads excluded)."""
        raise NotImplementedError

    # ---- stitches (the backbone's) ---------------------------------------------------------------
    @property
    def stitches(self) -> tuple[Stitch, ...]:
        return self.backbone.stitches

    @property
    def stitch_ids(self) -> list[int]:
        return self.backbone.stitch_ids

    @property
    def selected(self) -> Stitch:
        return self.backbone.selected

    @property
    def sampler(self):
        return self.backbone.sampler

    @property
    def last_stitch(self) -> Stitch | None:
        return self.backbone.last_stitch

    def stitch(self, stitch_id: int) -> Stitch:
        return self.backbone.stitch(stitch_id)

    def select(self, stitch_id: int) -> "DenseModel":
        self.backbone.select(stitch_id)
        return self

    def describe(self, stitch_id: int) -> str:
        return self.backbone.describe(stitch_id)

    @property
    def img_size(self) -> tuple[int, int]:
        """The input size the anchors are built for (the training crop)."""
        return self.backbone.img_size

    def flops(self, stitch_id: int, img_size: tuple[int, int] | None = None) -> int:
        """Backbone (with the projections of small-anchor taps) and inference heads at ``img_size``
        (default: the training crop)."""
        size = tuple(img_size) if img_size is not None else self.img_size
        return self.backbone.flops(stitch_id, size, dense=True) + self.head_flops(size)

    def flops_table(self, img_size: tuple[int, int] | None = None) -> dict[int, int]:
        return {s.id: self.flops(s.id, img_size) for s in self.stitches}

    def params(self, stitch_id: int) -> int:
        """Parameters a deployed stitch keeps: its route, the SL layers projecting its small-anchor taps,
        and the inference heads."""
        b = self.backbone
        s = b.stitch(stitch_id)
        n = b.params(stitch_id)
        route_layers = {(ref.direction, ref.index) for ref in s.layers}
        for anchor, block in set(route_taps(s, tuple(b.out_indices), *b.depths)):
            if anchor == SMALL and ("SL", block) not in route_layers:
                n += sum(p.numel() for p in b.sl_layers[block].parameters())
        return n + sum(p.numel() for h in self.inference_heads() for p in h.parameters())

    def pareto_frontier(self, metric: dict[int, float], higher_is_better: bool = True) -> list[int]:
        return pareto_frontier(self.flops_table(), metric, higher_is_better)

    def best_under_budget(self, metric: dict[int, float], max_flops: float, higher_is_better: bool = True) -> int | None:
        return best_under_budget(self.flops_table(), metric, max_flops, higher_is_better)

    def configure_sampling(self, gap_gflops: float, k: float | None = None, seed: int = 0) -> None:
        """ROS over this task's FLOPs (backbone and head), as the reference groups dense stitches."""
        self.backbone.configure_sampling(gap_gflops, k, seed, flops=self.flops_table())

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The active stitch's dense taps, (B, C_large, H/p, W/p) each."""
        return self.backbone.forward_features(x)

    # ---- weights -------------------------------------------------------------------------------
    @property
    def config(self) -> "DenseConfig":
        return DenseConfig(self.task, self.backbone.config.to_dict(), self.head_config)

    @torch.no_grad()
    def merge_lora(self) -> "DenseModel":
        self.backbone.merge_lora()
        return self



class DenseConfig:
    """What ``config.json`` holds for a dense model: the task, the backbone's SNNetConfig and the head."""

    def __init__(self, task: str, backbone: dict, head: dict) -> None:
        self.task, self.backbone, self.head = task, backbone, head

    def to_dict(self) -> dict:
        return {"task": self.task, **self.backbone, "head": dict(self.head)}
