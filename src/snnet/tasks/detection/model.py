"""A stitched ViTDet backbone under torchvision's Mask R-CNN (SPEC section 12): the stitch's last feature map
through a simple feature pyramid (strides 4, 8, 16, 32 and 64), then torchvision's RPN and RoI heads. Swin's
stage ends go through an FPN instead (torchvision's, as its Mask R-CNN over Swin)."""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ...errors import SNNetError
from ...flops import NORM_FLOPS_PER_ELEMENT, conv_flops
from ...model import SNNetBackbone
from ...stitch_space import is_hierarchical, stage_ends
from ..dense import DenseModel

SCALES = (4.0, 2.0, 1.0, 0.5)  # of the stride-16 map: strides 4, 8, 16, 32


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's pyramid from one stride-16 map (B, C, h, w), the last tap: per scale a resampling (two 2x2
    transposed convs with LayerNorm + GELU between, one, none, or a 2x2 max pool), then a 1x1 and a 3x3 conv to
    ``out_channels``, each without bias and followed by a LayerNorm over channels; plus a stride-64 level by max
    pooling."""

    taps = (-1,)  # the backbone's taps it reads

    def __init__(self, in_channels: int, out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        c = in_channels
        self.stages = nn.ModuleList()
        for scale in SCALES:
            if scale == 4.0:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, stride=2), LayerNorm2d(c // 2), nn.GELU(),
                               nn.ConvTranspose2d(c // 2, c // 4, 2, stride=2)], c // 4
            elif scale == 2.0:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, stride=2)], c // 2
            elif scale == 1.0:
                layers, dim = [], c
            else:
                layers, dim = [nn.MaxPool2d(2, stride=2)], c
            layers += [nn.Conv2d(dim, out_channels, 1, bias=False), LayerNorm2d(out_channels),
                       nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False), LayerNorm2d(out_channels)]
            self.stages.append(nn.Sequential(*layers))

    def forward(self, taps: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        maps = OrderedDict((str(i), stage(taps[-1])) for i, stage in enumerate(self.stages))
        maps["pool"] = F.max_pool2d(maps[str(len(SCALES) - 1)], kernel_size=1, stride=2)  # LastLevelMaxPool
        return maps

    def flops(self, grids: list[tuple[int, int]]) -> int:
        """On the last tap's (rows, columns): convolutions as multiply-adds (transposed ones per input position),
        LayerNorm 5 per element."""
        h, w = grids[-1]
        c, out = self.in_channels, self.out_channels
        flops = 0
        for scale in SCALES:
            if scale == 4.0:
                flops += conv_flops((h, w), c, c // 2, 2) + NORM_FLOPS_PER_ELEMENT * (c // 2) * 4 * h * w
                flops += conv_flops((2 * h, 2 * w), c // 2, c // 4, 2)
                size, dim = (4 * h, 4 * w), c // 4
            elif scale == 2.0:
                flops += conv_flops((h, w), c, c // 2, 2)
                size, dim = (2 * h, 2 * w), c // 2
            elif scale == 1.0:
                size, dim = (h, w), c
            else:
                size, dim = (h // 2, w // 2), c
            n = size[0] * size[1]
            flops += conv_flops(size, dim, out) + conv_flops(size, out, out, 3) + 2 * NORM_FLOPS_PER_ELEMENT * out * n
        return flops


class StageFeaturePyramid(nn.Module):
    """An FPN over a hierarchical backbone's four stage ends (strides 4 to 32): torchvision's, a 1x1 lateral and a
    3x3 output conv per level to ``out_channels``, nearest top-down sums, and a stride-64 level by max pooling, as
    Swin's Mask R-CNN (mmdetection's FPN) builds it."""

    taps = None  # every tap

    def __init__(self, in_channels: list[int], out_channels: int = 256) -> None:
        super().__init__()
        self.in_channels, self.out_channels = list(in_channels), out_channels
        self.fpn = FeaturePyramidNetwork(self.in_channels, out_channels, extra_blocks=LastLevelMaxPool())

    def forward(self, taps: list[torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        return self.fpn(OrderedDict((str(i), t) for i, t in enumerate(taps)))

    def flops(self, grids: list[tuple[int, int]]) -> int:
        """Convolutions as multiply-adds; the nearest upsampling, sums and max pooling are free."""
        out = self.out_channels
        return sum(conv_flops(g, c, out) + conv_flops(g, out, out, 3) for g, c in zip(grids, self.in_channels))


class _StitchedPyramid(nn.Module):
    """What Mask R-CNN calls its backbone: the active stitch's last dense tap through the pyramid."""

    def __init__(self, body: SNNetBackbone, pyramid: SimpleFeaturePyramid | StageFeaturePyramid) -> None:
        super().__init__()
        # the backbone is registered once, as DetectionModel.backbone; here it is only used
        self.__dict__["body"] = body
        self.pyramid = pyramid
        self.out_channels = pyramid.out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        return self.pyramid(self.body.forward_intermediates(x, taps=self.pyramid.taps))


class DetectionModel(DenseModel):
    """Mask R-CNN on a stitched backbone. Train mode: ``model(images, targets)`` returns torchvision's loss dict
    for a ROS-sampled stitch; eval mode: ``model(images)`` returns the selected stitch's detections (boxes,
    labels 1..num_classes, scores, masks per image). Images are lists of normalised (3, H, W) tensors, resized
    to fit ``image_size`` and padded to that square; FLOPs count the backbone and the pyramid at ``image_size`` (RPN and RoI heads depend
    on the proposals and are left out)."""

    task = "detection"
    primary_metric = "bbox_AP"
    higher_is_better = True
    pipeline_tag = "object-detection"
    takes_image_lists = True  # torchvision's detectors fit and pad each image themselves

    @classmethod
    def from_backbone(cls, backbone: SNNetBackbone, head, num_classes: int | None,
                      input_size: tuple[int, int]) -> "DetectionModel":
        return cls(backbone, num_classes or head.num_classes, head.channels, input_size[0], head.roi_channels,
                   head.roi_samples, head.detections)

    def __init__(self, backbone: SNNetBackbone, num_classes: int, channels: int = 256, image_size: int = 1024,
                 roi_channels: int = 256, roi_samples: int = 512, detections: int = 100) -> None:
        super().__init__(backbone, {"num_classes": num_classes, "channels": channels, "roi_channels": roi_channels,
                                    "roi_samples": roi_samples, "detections": detections,
                                    "input_size": [image_size, image_size]})
        hierarchical = is_hierarchical(backbone.stages)
        wanted = stage_ends(backbone.stages[-1]) if hierarchical else [backbone.depths[-1] - 1]
        if backbone.out_indices != wanted:
            reads = "an FPN over Swin reads its stage ends" if hierarchical else \
                "a ViTDet backbone taps the last block only"
            raise SNNetError(f"{reads}: set model.out_indices to {wanted}, got {backbone.out_indices}")
        self.num_classes = num_classes
        pyramid = StageFeaturePyramid(backbone.tap_widths, channels) if hierarchical else \
            SimpleFeaturePyramid(backbone.widths[-1], channels)
        # images arrive normalised, as for every snnet model: torchvision's transform only resizes them to fit
        # image_size and pads them to the image_size square with 0 (the normalised mean), as ViTDet pads
        # anchor boxes of image_size / 32 .. / 2 on the five levels: ViTDet's 32..512 at 1024
        sizes = tuple((max(1, image_size * 2 ** i // 32),) for i in range(len(SCALES) + 1))
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
        # torchvision's heads (box: two FC layers of 4 x roi_channels; mask: four 3x3 convs of roi_channels), with
        # roi_samples RoIs per image for the box head's loss (torchvision's and ViTDet's 1024 / 256 / 512 by default)
        k = num_classes + 1  # + background
        self.detector = MaskRCNN(
            _StitchedPyramid(backbone, pyramid), min_size=image_size, max_size=image_size,
            image_mean=[0.0] * 3, image_std=[1.0] * 3, size_divisible=image_size, rpn_anchor_generator=anchors,
            box_head=TwoMLPHead(channels * 7 * 7, 4 * roi_channels), box_predictor=FastRCNNPredictor(4 * roi_channels, k),
            mask_head=MaskRCNNHeads(channels, [roi_channels] * 4, 1),
            mask_predictor=MaskRCNNPredictor(roi_channels, roi_channels, k), box_batch_size_per_image=roi_samples,
            box_detections_per_img=detections)

    @property
    def img_size(self) -> tuple[int, int]:
        return tuple(self.head_config["input_size"])

    def head_flops(self, img_size: tuple[int, int]) -> int:
        return self.detector.backbone.pyramid.flops(self.backbone.tap_grids(img_size))

    def inference_heads(self) -> list[nn.Module]:
        return [self.detector.backbone.pyramid, self.detector.rpn, self.detector.roi_heads]

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        return self.detector(images, targets)
