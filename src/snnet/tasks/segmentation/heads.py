"""SETR's up-sampling heads (the reference's ``SETRUPHead``), with mmsegmentation's parameter names."""
from __future__ import annotations

import torch
from torch import nn

from ...flops import (BATCHNORM_FLOPS_PER_ELEMENT, BILINEAR_FLOPS_PER_OUTPUT, NORM_FLOPS_PER_ELEMENT,
                      conv_flops)
from ..dense import init_conv_module

UP_SCALE = 4  # each conv stage is followed by a x4 bilinear upsampling


class ConvBNReLU(nn.Module):
    """mmcv's ConvModule with a norm: 1x1 conv without bias, BatchNorm, ReLU (``conv``, ``bn``), initialised as
    it: Kaiming normal conv, BatchNorm weight 1 and bias 0."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = init_conv_module(nn.Conv2d(in_channels, out_channels, 1, bias=False))
        self.bn = nn.BatchNorm2d(out_channels)  # SyncBatchNorm under torchrun (training.fit converts it)
        self.activate = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activate(self.bn(self.conv(x)))


class SETRUpHead(nn.Module):
    """A feature map -> LayerNorm over channels -> ``num_convs`` x (conv/BN/ReLU, x4 bilinear) -> 1x1
    classifier. ``num_convs=1`` is SETR-naive's decode head, 2 its auxiliary heads (SPEC section 10). Initialised
    as mmseg does: ``conv_seg`` N(0, 0.01) with bias 0, LayerNorm 1 / 0, the ConvModules by mmcv's rule."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, num_convs: int = 1) -> None:
        super().__init__()
        self.in_channels, self.channels, self.num_classes = in_channels, channels, num_classes
        self.norm = nn.LayerNorm(in_channels, eps=1e-6)
        self.up_convs = nn.ModuleList(
            nn.Sequential(ConvBNReLU(in_channels if k == 0 else channels, channels),
                          nn.Upsample(scale_factor=UP_SCALE, mode="bilinear", align_corners=False))
            for k in range(num_convs))
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)
        nn.init.normal_(self.conv_seg.weight, 0.0, 0.01)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, C, h, w) -> (B, K, 4^n h, 4^n w)
        x = self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        for stage in self.up_convs:
            x = stage(x)
        return self.conv_seg(x)

    def flops(self, grid: tuple[int, int]) -> int:
        """On a ``grid`` feature map, as fvcore counts it (the bias of the classifier is free)."""
        h, w = grid
        flops = NORM_FLOPS_PER_ELEMENT * self.in_channels * h * w
        c_in = self.in_channels
        for _ in self.up_convs:
            flops += conv_flops((h, w), c_in, self.channels) + BATCHNORM_FLOPS_PER_ELEMENT * self.channels * h * w
            h, w = h * UP_SCALE, w * UP_SCALE
            flops += BILINEAR_FLOPS_PER_OUTPUT * self.channels * h * w
            c_in = self.channels
        return flops + conv_flops((h, w), self.channels, self.num_classes)
