"""A stitched backbone with SETR-naive heads: per-pixel logits from any stitch, whole-image or by windows."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import SNNetError
from ...model import SNNetBackbone
from ..dense import DenseModel
from .heads import SETRUpHead


class SegmentationModel(DenseModel):
    """``decode_head`` reads the last tap; ``auxiliary_head[i]`` reads tap i during training.

    In eval mode ``model(images)`` returns the selected stitch's logits (B, K, H, W) at the input size;
    in train mode it returns the raw outputs of the decode head and of each auxiliary head, for the loss.
    """

    task = "segmentation"
    primary_metric = "mIoU"
    higher_is_better = True
    pipeline_tag = "image-segmentation"
    inference_taps = (-1,)  # the decode head's

    @classmethod
    def from_backbone(cls, backbone: SNNetBackbone, head, num_classes: int | None,
                      input_size: tuple[int, int]) -> "SegmentationModel":
        return cls(backbone, num_classes or head.num_classes, head.channels, head.aux_weight)

    def __init__(self, backbone: SNNetBackbone, num_classes: int, channels: int = 256, aux_weight: float = 0.4) -> None:
        super().__init__(backbone, {"num_classes": num_classes, "channels": channels, "aux_weight": aux_weight})
        if len(backbone.out_indices) < 1:
            raise SNNetError("segmentation needs at least one tap in model.out_indices")
        widths = backbone.tap_widths  # Swin's: each its stage's
        self.num_classes = num_classes
        self.decode_head = SETRUpHead(widths[-1], channels, num_classes, num_convs=1)
        n_aux = len(backbone.out_indices) - 1 if aux_weight > 0 else 0
        self.auxiliary_head = nn.ModuleList(SETRUpHead(widths[i], channels, num_classes, num_convs=2)
                                            for i in range(n_aux))

    def head_flops(self, img_size: tuple[int, int]) -> int:
        return self.decode_head.flops(self.backbone.tap_grids(img_size)[-1])

    def inference_heads(self) -> list[nn.Module]:
        return [self.decode_head]

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        feats = self.features(x)  # eval mode: the last tap only
        if self.training:
            return [self.decode_head(feats[-1]), *(head(f) for head, f in zip(self.auxiliary_head, feats))]
        logits = self.decode_head(feats[-1])
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    def slide_inference(self, images: torch.Tensor, crop_size: int | tuple[int, int] | None = None,
                        stride: int | tuple[int, int] | None = None) -> torch.Tensor:
        """Logits (B, K, H, W) from windows of ``crop_size`` (default: the training crop): :func:`slide_inference`."""
        return slide_inference(self, images, crop_size if crop_size is not None else self.img_size, stride)


@torch.no_grad()
def slide_inference(model, images: torch.Tensor, crop_size: int | tuple[int, int],
                    stride: int | tuple[int, int] | None = None) -> torch.Tensor:
    """Logits (B, K, H, W) of ``model`` (a segmentation model or its exported file: crops in, logits at the crop
    size out) from windows of ``crop_size`` every ``stride`` pixels (default: 2/3 of the window); the last window
    of each axis ends at the border and the logits of overlapping windows are averaged, as mmsegmentation does."""
    ch, cw = _pair(crop_size)
    sh, sw = _pair(stride) if stride is not None else (max(1, ch * 2 // 3), max(1, cw * 2 // 3))
    if images.ndim != 4:
        raise SNNetError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    b, _, h, w = images.shape
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    boxes = []
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            boxes.append((max(y2 - ch, 0), max(x2 - cw, 0), y2, x2))
    # windows of one image run as one batch; an image smaller than the window is padded (bottom, right)
    crops = torch.cat([_pad_to(images[:, :, y1:y2, x1:x2], (ch, cw)) for y1, x1, y2, x2 in boxes])
    logits = model(crops)
    logits = logits.reshape(len(boxes), b, *logits.shape[1:])
    out = images.new_zeros((b, logits.shape[2], h, w), dtype=logits.dtype)
    count = images.new_zeros((1, 1, h, w), dtype=logits.dtype)
    for (y1, x1, y2, x2), lg in zip(boxes, logits):
        out[:, :, y1:y2, x1:x2] += lg[:, :, :y2 - y1, :x2 - x1]
        count[:, :, y1:y2, x1:x2] += 1
    return out / count


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _pad_to(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    dh, dw = size[0] - x.shape[-2], size[1] - x.shape[-1]
    return F.pad(x, (0, dw, 0, dh)) if dh or dw else x
