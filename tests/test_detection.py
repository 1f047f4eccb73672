"""Detection (a first slice of issue 9): the stitched ViTDet pyramid under torchvision's Mask R-CNN."""
from __future__ import annotations

import pytest
import torch
from timm.layers import LayerNorm2d
from torch import nn

from snnet import SNNet, SNNetError
from snnet.anchors import AnchorConfig
from snnet.tasks.detection import DetectionModel, SimpleFeaturePyramid


def tiny_detector(out_indices=(5,)) -> DetectionModel:
    anchors = [AnchorConfig("deit3_small_patch16_224", kwargs=dict(
        img_size=64, patch_size=8, embed_dim=w, depth=d, num_heads=h, num_classes=0, final_norm=False,
        dynamic_img_size=True)) for d, w, h in ((3, 32, 2), (6, 48, 3))]
    torch.manual_seed(0)
    return DetectionModel(SNNet(anchors, lora_rank=4, out_indices=list(out_indices)), num_classes=3, channels=16,
                          image_size=64)


def targets() -> list[dict]:
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:20, 5:30] = 1
    masks[1, 30:60, 10:40] = 1
    return [{"boxes": torch.tensor([[5.0, 5, 30, 20], [10, 30, 40, 60]]), "labels": torch.tensor([1, 2]), "masks": masks},
            {"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([3]), "masks": masks[:1]}]


def test_pyramid_levels_for_every_stitch():
    model = tiny_detector().eval()
    x = torch.randn(2, 3, 64, 96)
    for sid in model.stitch_ids:
        maps = model.select(sid).detector.backbone(x)
        assert list(maps) == ["0", "1", "2", "3", "pool"]
        # the stride-8 token grid (8x12) at strides 2, 4, 8, 16 and 32 of it
        assert [tuple(m.shape) for m in maps.values()] == [(2, 16, 32, 48), (2, 16, 16, 24), (2, 16, 8, 12),
                                                           (2, 16, 4, 6), (2, 16, 2, 3)], sid


def test_training_losses_are_finite_and_reach_every_part():
    model = tiny_detector().train()
    torch.manual_seed(1)
    for _ in range(3):  # each call trains a ROS-sampled stitch
        losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], targets())
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        model.zero_grad()
        total.backward()
        assert model.detector.backbone.pyramid.stages[0][0].weight.grad.abs().sum() > 0
        assert model.detector.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_eval_gives_boxes_labels_scores_and_masks_per_image():
    model = tiny_detector().eval().select(7)
    out = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert len(out) == 2 and out[1]["masks"].shape[-2:] == (48, 64)
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_only_the_last_block_is_tapped():
    with pytest.raises(SNNetError, match=r"taps the last block only: set model.out_indices to \[5\]"):
        tiny_detector(out_indices=(2, 5))


def test_pyramid_flops_equal_a_count_of_the_modules_that_run():
    """Multiply-adds of every conv (transposed: per input position) and 5 per LayerNorm element, counted
    with hooks on a forward, against the closed form."""
    pyramid = SimpleFeaturePyramid(48, 16)
    counted = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            counted.append(x.shape[-2] * x.shape[-1] * module.in_channels * module.out_channels * 4)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counted.append(output.shape[-2] * output.shape[-1] * module.in_channels * module.out_channels * k)
        elif isinstance(module, LayerNorm2d):
            counted.append(5 * output.numel())

    for m in pyramid.modules():
        m.register_forward_hook(hook)
    pyramid(torch.randn(1, 48, 8, 12))
    assert pyramid.flops((8, 12)) == sum(counted)
