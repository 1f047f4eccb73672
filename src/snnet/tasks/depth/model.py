"""A stitched backbone with DPT's head: depth from any stitch, with the reference's flip test."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ...errors import SNNetError
from ...flops import BILINEAR_FLOPS_PER_OUTPUT
from ...model import SNNetBackbone
from ...stitch_space import is_hierarchical
from ..dense import DenseModel
from .heads import HIERARCHICAL_SCALES, REASSEMBLE_CHANNELS, VIT_SCALES, DPTHead


class DepthModel(DenseModel):
    """``model(images)`` returns the active stitch's depth (B, 1, H, W) at the input size, in metres; in eval mode
    clamped to [min_depth, max_depth] before the resize, as the reference's ``encode_decode``. FLOPs are reported
    at ``input_size`` (the evaluation size: NYUv2's 480x640)."""

    task = "depth"
    primary_metric = "rmse"
    higher_is_better = False
    pipeline_tag = "depth-estimation"
    num_classes = None

    @classmethod
    def from_backbone(cls, backbone: SNNetBackbone, head, num_classes: int | None,
                      input_size: tuple[int, int]) -> "DepthModel":
        return cls(backbone, head.channels, head.min_depth, input_size, head.reassemble_channels, head.max_depth)

    def __init__(self, backbone: SNNetBackbone, channels: int = 256, min_depth: float = 1e-3,
                 input_size: tuple[int, int] = (480, 640),
                 reassemble_channels: tuple[int, ...] = REASSEMBLE_CHANNELS, max_depth: float = 10.0) -> None:
        super().__init__(backbone, {"channels": channels, "min_depth": min_depth, "max_depth": max_depth,
                                    "reassemble_channels": list(reassemble_channels),
                                    "input_size": [int(v) for v in input_size]})
        if len(backbone.out_indices) != len(REASSEMBLE_CHANNELS):
            raise SNNetError(f"DPT reads {len(REASSEMBLE_CHANNELS)} taps: model.out_indices has "
                             f"{len(backbone.out_indices)} ({backbone.out_indices})")
        # DPT's readout merges each tap's class token into its patch tokens; anchors without one are read as they are
        classes = backbone.families[-1].prefix_layout(backbone.anchors[-1])[0]
        scales = HIERARCHICAL_SCALES if is_hierarchical(backbone.stages) else VIT_SCALES
        self.decode_head = DPTHead(tuple(backbone.tap_widths), channels, min_depth, reassemble_channels,
                                   readout=classes > 0, scales=scales)
        self.min_depth, self.max_depth = min_depth, max_depth

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.head_config["input_size"])

    def head_flops(self, img_size: tuple[int, int]) -> int:
        # the reference resizes the prediction to the input size even when it already has it (fvcore counts it)
        return self.decode_head.flops(self.backbone.tap_grids(img_size)) + \
            BILINEAR_FLOPS_PER_OUTPUT * img_size[0] * img_size[1]

    def inference_heads(self) -> list[torch.nn.Module]:
        return [self.decode_head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Depth (B, 1, H, W) at the input's size. An input that is not a multiple of the patch size (NYUv2's
        480x640 under 14-pixel patches) runs resized to the nearest multiple (476x644), as Depth Anything V2's
        inference does, and its prediction is resized back."""
        x_in = x  # anything but a batch of images: the embedding says what is wrong with it
        if isinstance(x, torch.Tensor) and x.ndim == 4 and x.is_floating_point():
            size = fit_to_patches(tuple(x.shape[-2:]), self.backbone.patch_size)
            if size != tuple(x.shape[-2:]):
                x_in = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        taps = self.features(x_in, return_prefix_tokens=True)  # all four
        # the class token of each tap (the first prefix token), where the anchors have one
        depth = self.decode_head([(f, prefix[:, 0] if self.decode_head.readout else None) for f, prefix in taps])
        if not self.training:  # the reference clamps test predictions (so before the flip average too)
            depth = depth.clamp(self.min_depth, self.max_depth)
        return F.interpolate(depth, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @torch.no_grad()
    def flip_inference(self, x: torch.Tensor) -> torch.Tensor:
        """The reference's test: the mean of the prediction and the flipped prediction of the flipped image."""
        return flip_mean(self, x)


def fit_to_patches(size: tuple[int, int], patch: tuple[int, int]) -> tuple[int, int]:
    """The nearest multiple of the patch size (at least one patch) in each dimension, halves rounded up."""
    return tuple(max(p, int(s / p + 0.5) * p) for s, p in zip(size, patch))


def flip_mean(net, x: torch.Tensor) -> torch.Tensor:
    """The mean of ``net``'s prediction and the flipped prediction of the flipped image (any depth network: the
    model, or its exported stitch under ONNX Runtime)."""
    return (net(x) + net(x.flip(-1)).flip(-1)) / 2
