"""The classification model: the stitched backbone under the anchors' own classifier heads."""
from __future__ import annotations

import re
from collections.abc import Sequence

import torch
from torch import nn

from ...anchors import AnchorConfig
from ...config import ModelSection
from ...errors import SNNetError
from ...families import classifier_of, with_classifier
from ...model import SNNetBackbone, StitchNet, TaskModel, anchor_configs
from ...stitch_space import Stitch


class SNNet(TaskModel):
    """SN-Netv2 (or v1, or SN-Net) for image classification: the stitched ``backbone`` and ``heads[i]``, anchor i's
    classifier, which every stitch ending in anchor i runs. ``forward`` returns the logits of the selected (eval)
    or sampled (train, ROS) stitch; ``forward_features`` and ``forward_head`` mean what they mean in timm."""

    task = "classification"
    primary_metric = "acc1"
    higher_is_better = True
    pipeline_tag = "image-classification"

    def __init__(self, anchors: Sequence[nn.Module | str | AnchorConfig], version: str = "v2", lora_rank: int = 0,
                 lora_alpha: float = 1.0, out_indices: Sequence[int] | None = None, pretrained: bool = False) -> None:
        super().__init__(SNNetBackbone(anchors, version, lora_rank, lora_alpha, out_indices, pretrained))
        # each anchor's classifier, taken out of a shallow copy of it: a module the caller passed in keeps its own
        self.heads = nn.ModuleList(classifier_of(a) for a in self.backbone.anchors)
        for i, a in enumerate(self.backbone.anchors):
            self.backbone.anchors[i] = with_classifier(a, nn.Identity())

    @classmethod
    def from_section(cls, section: ModelSection, num_classes: int | None = None, load_weights: bool = True,
                     device: str | None = None, input_size: tuple[int, int] | None = None) -> "SNNet":
        """The model of a config's anchors, their heads sized by ``num_classes`` when given (checked against their
        weights by the task first); it counts FLOPs at the anchors' own input size."""
        overrides = {"num_classes": num_classes} if num_classes is not None else None
        return cls(anchor_configs(section, load_weights, device, overrides), version=section.version,
                   lora_rank=section.lora_rank, lora_alpha=section.lora_alpha, out_indices=section.out_indices)

    def replace_heads(self) -> None:
        """New classifiers of the same sizes, initialised as timm initialises a ViT's."""
        for i, head in enumerate(self.heads):
            new = nn.Linear(head.in_features, head.out_features, device=head.weight.device)
            nn.init.trunc_normal_(new.weight, std=0.02)
            nn.init.zeros_(new.bias)
            self.heads[i] = new

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Models saved before the backbone was a module of its own (no ``backbone.`` prefix), and released
        files renamed to the backbone's names: each anchor's classifier is ``heads.<anchor>``."""
        out = {}
        for key, value in state.items():
            if not key.startswith(("backbone.", "heads.")):
                key = f"backbone.{key}"
            head = re.fullmatch(r"backbone\.anchors\.(\d+)\.head\.(.+)", key)
            out[f"heads.{head[1]}.{head[2]}" if head else key] = value
        return out

    @property
    def num_classes(self) -> int:
        """Classes of the heads (the last anchor's, which every stitch ends in)."""
        return self.backbone.anchors[-1].num_classes

    @property
    def config(self):
        return self.backbone.config

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False, stitch: Stitch | None = None) -> torch.Tensor:
        """Final tokens to logits by the pooling of the stitch's last anchor and its classifier (``stitch``
        default: the stitch the latest call ran): (B, N, C) -> (B, num_classes)."""
        if stitch is None:
            stitch = self.backbone.last_stitch if self.training else self.backbone.selected
        if stitch is None:  # train mode, before any call drew a stitch
            raise SNNetError("forward_head in train mode follows forward_features, which draws the stitch: call it "
                             "first, or pass stitch=")
        x = self.backbone.pool(x, stitch)
        return x if pre_logits else self.heads[stitch.last_anchor](x)

    def logits(self, tokens: torch.Tensor, stitch: Stitch) -> torch.Tensor:
        """The logits of ``stitch`` from its route's output tokens (before the final norm)."""
        return self.forward_head(self.backbone.final_norm(tokens, stitch), stitch=stitch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the selected (eval) or sampled (train) stitch: (B, 3, H, W) -> (B, num_classes)."""
        stitch = self.backbone.active_stitch()
        return self.logits(self.backbone.run_route(x, stitch)[0], stitch)

    def flops(self, stitch_id: int, img_size: tuple[int, int] | None = None) -> int:
        """The route, its last anchor's norm and classifier, at ``img_size`` (default: the anchors' input size)."""
        return self.backbone.flops(stitch_id, img_size)

    def params(self, stitch_id: int) -> int:
        last = self.stitch(stitch_id).last_anchor
        return self.backbone.params(stitch_id) + sum(p.numel() for p in self.heads[last].parameters())

    def deployable(self, stitch_id: int) -> nn.Module:
        """The stitch's ``StitchNet`` ending in its last anchor's classifier."""
        head = self.heads[self.stitch(stitch_id).last_anchor]
        return StitchNet(self.backbone, stitch_id, head=head).eval()
