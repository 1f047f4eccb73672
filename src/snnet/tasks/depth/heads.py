"""DPT's head (readout "project", reassemble, fusion, depth head) as the reference's depth code runs it (SPEC 11).

Initialised as there: the layers the reference builds as mmcv ConvModules (the 1x1 projections, the per-level
3x3 convs, the residual units, the fusion projections, the final 3x3 conv) by mmcv's rule; the readout linears,
the resize layers and the depth head's plain ``nn.Conv2d`` keep PyTorch's default initialisation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...flops import BILINEAR_FLOPS_PER_OUTPUT, conv_flops
from ..dense import init_conv_module

REASSEMBLE_CHANNELS = (96, 192, 384, 768)
VIT_SCALES = (4.0, 2.0, 1.0, 0.5)  # DPT's resampling of four taps of one plain ViT's token grid
HIERARCHICAL_SCALES = (1.0,) * 4  # Swin's stage ends are already at strides 4 to 32 (MiDaS v3.1's Swin DPT)


def _resize_layer(scale: float, channels: int) -> nn.Module:
    """x4 and x2 transposed convolutions, identity, or a stride-2 convolution."""
    if scale == 0.5:
        return nn.Conv2d(channels, channels, 3, stride=2, padding=1)
    return nn.Identity() if scale == 1 else nn.ConvTranspose2d(channels, channels, int(scale), stride=int(scale))


def _resized(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """A map's (rows, columns) after ``_resize_layer(scale)``."""
    return ((size[0] - 1) // 2 + 1, (size[1] - 1) // 2 + 1) if scale == 0.5 else \
        (int(size[0] * scale), int(size[1] * scale))


class Reassemble(nn.Module):
    """One tap (B, C, h, w) and its class token (B, C) -> a feature map of ``out_channels`` resampled by
    ``scale``. Without ``readout`` (anchors without a class token, such as SigLIP's and Swin's) the tap is read as
    it is: DPT's readout "ignore"."""

    def __init__(self, scale: float, width: int, out_channels: int, readout: bool = True) -> None:
        super().__init__()
        # readout "project"
        self.readout = nn.Sequential(nn.Linear(2 * width, width), nn.GELU()) if readout else None
        self.project = init_conv_module(nn.Conv2d(width, out_channels, 1))
        self.resize = _resize_layer(scale, out_channels)

    def forward(self, x: torch.Tensor, cls_token: torch.Tensor | None) -> torch.Tensor:
        if self.readout is not None:
            b, c, h, w = x.shape
            tokens = x.flatten(2).transpose(1, 2)  # (B, hw, C)
            tokens = self.readout(torch.cat([tokens, cls_token[:, None].expand_as(tokens)], dim=-1))
            x = tokens.transpose(1, 2).reshape(b, c, h, w)
        return self.resize(self.project(x))


class ResidualUnit(nn.Module):
    """ReLU -> 3x3 conv -> ReLU -> 3x3 conv (no biases), plus the input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = init_conv_module(nn.Conv2d(channels, channels, 3, padding=1, bias=False))
        self.conv2 = init_conv_module(nn.Conv2d(channels, channels, 3, padding=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds ``residual_unit_1(skip)`` (skip resized to the input if needed), then ``residual_unit_2``,
    x2 bilinear (align_corners True) and a 1x1 conv. The deepest block has no skip."""

    def __init__(self, channels: int, with_skip: bool) -> None:
        super().__init__()
        self.residual_unit_1 = ResidualUnit(channels) if with_skip else None
        self.residual_unit_2 = ResidualUnit(channels)
        self.project = init_conv_module(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            if skip.shape != x.shape:
                skip = F.interpolate(skip, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = x + self.residual_unit_1(skip)
        x = self.residual_unit_2(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.project(x)


class DPTHead(nn.Module):
    """Four taps of ``widths`` channels with class tokens -> depth ``ReLU(x) + min_depth``: on one (h, w) token
    grid (a plain ViT's, resampled by ``VIT_SCALES``) at (16h, 16w), the input size for 16-pixel patches; on
    Swin's stage ends (``HIERARCHICAL_SCALES``) at 4 times the first. ``readout=False``: taps without class tokens
    (readout "ignore")."""

    def __init__(self, widths: tuple[int, ...], channels: int = 256, min_depth: float = 1e-3,
                 reassemble_channels: tuple[int, ...] = REASSEMBLE_CHANNELS, readout: bool = True,
                 scales: tuple[float, ...] = VIT_SCALES) -> None:
        super().__init__()
        self.widths, self.channels, self.min_depth, self.readout = tuple(widths), channels, min_depth, readout
        self.reassemble_channels, self.scales = tuple(reassemble_channels), tuple(scales)
        self.reassemble = nn.ModuleList(Reassemble(scale, w, c, readout)
                                        for scale, w, c in zip(self.scales, self.widths, self.reassemble_channels))
        self.convs = nn.ModuleList(init_conv_module(nn.Conv2d(c, channels, 3, padding=1, bias=False))
                                   for c in self.reassemble_channels)
        self.fusion = nn.ModuleList(FusionBlock(channels, with_skip=i > 0) for i in range(len(self.reassemble_channels)))
        self.conv = init_conv_module(nn.Conv2d(channels, channels, 3, padding=1))
        self.depth_conv1 = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.depth_conv2 = nn.Conv2d(channels // 2, 32, 3, padding=1)
        self.depth_conv3 = nn.Conv2d(32, 1, 1)

    def forward(self, taps: list[tuple[torch.Tensor, torch.Tensor | None]]) -> torch.Tensor:
        """``taps``: (map (B, C, h, w), class token (B, C) or None) per level, shallow to deep -> (B, 1, H', W')."""
        x = [conv(block(f, cls)) for block, conv, (f, cls) in zip(self.reassemble, self.convs, taps)]
        out = self.fusion[0](x[-1])
        for i in range(1, len(self.fusion)):
            out = self.fusion[i](out, x[-(i + 1)])
        out = F.relu(self.conv(out))
        out = F.interpolate(self.depth_conv1(out), scale_factor=2, mode="bilinear", align_corners=True)
        out = self.depth_conv3(F.relu(self.depth_conv2(out)))
        return F.relu(out) + self.min_depth

    def flops(self, grids: list[tuple[int, int]]) -> int:
        """On taps of these (rows, columns), SPEC section 4's convention (a transposed conv per input position)."""
        ch = self.channels
        flops, sizes = 0, []
        for (h, w), c, out, scale in zip(grids, self.widths, self.reassemble_channels, self.scales):
            flops += h * w * 2 * c * c * self.readout + conv_flops((h, w), c, out)  # readout linear, 1x1 projection
            size = _resized((h, w), scale)
            if scale > 1:
                flops += conv_flops((h, w), out, out, int(scale))
            elif scale < 1:
                flops += conv_flops(size, out, out, 3)
            flops += conv_flops(size, out, ch, 3)
            sizes.append(size)
        unit = lambda s: 2 * conv_flops(s, ch, ch, 3)  # noqa: E731  a residual unit
        size = sizes[-1]
        for i in range(len(sizes)):
            if i > 0:
                skip = sizes[-(i + 1)]
                if skip != size:  # resized to the running map
                    flops += BILINEAR_FLOPS_PER_OUTPUT * ch * size[0] * size[1]
                flops += unit(size)
            flops += unit(size)
            size = (2 * size[0], 2 * size[1])
            flops += BILINEAR_FLOPS_PER_OUTPUT * ch * size[0] * size[1] + conv_flops(size, ch, ch)
        flops += conv_flops(size, ch, ch, 3) + conv_flops(size, ch, ch // 2, 3)
        size = (2 * size[0], 2 * size[1])
        flops += BILINEAR_FLOPS_PER_OUTPUT * (ch // 2) * size[0] * size[1]
        return flops + conv_flops(size, ch // 2, 32, 3) + conv_flops(size, 32, 1)
