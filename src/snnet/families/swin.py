"""The Swin family: timm's ``SwinTransformer`` (SN-Net's hierarchical anchors, ``version="sn-net"``). Tokens stay
on their (B, H, W, C) grid; a route numbers blocks across the stages, the patch merging that starts a stage running
with its first block, and stitches inside one stage, where the anchors' grids agree."""
from __future__ import annotations

from typing import Any

import torch
from timm.models.swin_transformer import SwinTransformer, SwinTransformerBlock, checkpoint_filter_fn
from torch import nn

from ..errors import SNNetError
from ..flops import AnchorShape, StageShape
from .base import Family, linear_macs, name_of, norm_elements, register_family


@register_family
class SwinFamily(Family):
    """timm's ``SwinTransformer``, average-pooled."""

    name = "swin"
    model_class = SwinTransformer
    examples = "swin_tiny_patch4_window7_224, swin_base_patch4_window7_224"
    block_container = "layers"
    classifier_path = "head.fc"

    @classmethod
    def check(cls, a: nn.Module) -> None:
        if a.head.global_pool.pool_type != "avg":
            raise SNNetError(f"anchor {name_of(a)} pooled by {a.head.global_pool.pool_type!r}: the swin family "
                             f"stitches average-pooled anchors (global_pool 'avg')")

    @classmethod
    def prefix_layout(cls, a: nn.Module) -> tuple[int, int]:
        return 0, 0

    @classmethod
    def fixed_size(cls, a: nn.Module) -> bool:
        return a.patch_embed.strict_img_size

    @classmethod
    def embed(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> patch tokens on their grid (B, H/p, W/p, C)."""
        return a.patch_embed(cls.check_images(a, x))

    @classmethod
    def stage_depths(cls, a: nn.Module) -> tuple[int, ...]:
        return tuple(len(layer.blocks) for layer in a.layers)

    @classmethod
    def block(cls, a: nn.Module, index: int) -> nn.Module:
        """Block ``index`` across the stages; a stage's first block runs after the stage's patch merging."""
        blk, merging = cls._locate(a, index)
        return blk if merging is None else nn.Sequential(merging, blk)

    @classmethod
    def merging(cls, a: nn.Module, index: int) -> nn.Module | None:
        return cls._locate(a, index)[1]

    @staticmethod
    def _locate(a: nn.Module, index: int) -> tuple[nn.Module, nn.Module | None]:
        """(block ``index``, the patch merging that runs before it when it starts a stage, else None)."""
        j = index
        for layer in a.layers:
            if j < len(layer.blocks):
                merges = j == 0 and not isinstance(layer.downsample, nn.Identity)
                return layer.blocks[j], layer.downsample if merges else None
            j -= len(layer.blocks)
        raise IndexError(f"anchor {name_of(a)} has no block {index}")

    @classmethod
    def width(cls, a: nn.Module) -> int:
        return a.num_features

    @classmethod
    def fix_size(cls, module: nn.Module, x: torch.Tensor) -> None:
        # a block of any input size builds its shifted windows' mask on every call (timm's dynamic_mask): built
        # once here, for the grid padded to whole windows as the block pads it
        if isinstance(module, SwinTransformerBlock) and module.dynamic_mask:
            (h, w), (wh, ww) = x.shape[1:3], module.window_size
            padded = x.new_zeros(1, -(-h // wh) * wh, -(-w // ww) * ww, 1)
            module.dynamic_mask = False
            module.register_buffer("attn_mask", module.get_attn_mask(padded), persistent=False)

    @classmethod
    def shape(cls, a: nn.Module) -> AnchorShape:
        """Per stage: the blocks' multiply-adds per token and the window their attention spans, the patch merging
        per token it outputs; the grid halves at each merging."""
        stages, stride = [], 1
        for s, layer in enumerate(a.layers):
            merging = layer.downsample
            if not isinstance(merging, nn.Identity):
                stride *= 2
            costs = {(linear_macs(b), linear_macs(b.attn), sum(norm_elements(m) for m in b.modules()),
                      b.attn.qkv.out_features // 3, tuple(b.window_size)) for b in layer.blocks}
            if len(costs) != 1:
                raise SNNetError(f"anchor {name_of(a)} has blocks of different sizes in stage {s}")
            linear, attn_linear, norms, attn_dim, window = costs.pop()
            stages.append(StageShape(
                depth=len(layer.blocks), width=layer.blocks[0].attn.qkv.in_features, stride=stride, window=window,
                block_linear_macs=linear, block_norm_elements=norms, attn_dim=attn_dim, attn_linear_macs=attn_linear,
                merge_linear_macs=linear_macs(merging),
                merge_norm_elements=norm_elements(getattr(merging, "norm", None))))
        pe, fc = a.patch_embed, a.head.fc
        return AnchorShape(
            embed_dim=a.embed_dim, depth=sum(st.depth for st in stages), patch_size=tuple(pe.patch_size),
            img_size=tuple(pe.img_size), in_chans=pe.proj.in_channels, num_prefix_tokens=0,
            num_classes=fc.out_features if isinstance(fc, nn.Linear) else 0, block_linear_macs=0,
            block_norm_elements=0, attn_dim=0, embed_norm_elements=norm_elements(getattr(pe, "norm", None)),
            final_norm=not isinstance(a.norm, nn.Identity), stages=tuple(stages))

    @classmethod
    def rebuild_kwargs(cls, a: nn.Module) -> dict[str, Any]:
        blocks = [layer.blocks[0] for layer in a.layers]
        return dict(
            img_size=list(a.patch_embed.img_size), patch_size=list(a.patch_embed.patch_size),
            in_chans=a.patch_embed.proj.in_channels, num_classes=a.num_classes, embed_dim=a.embed_dim,
            depths=list(cls.stage_depths(a)), num_heads=[b.attn.num_heads for b in blocks],
            # a stage smaller than the window attends to all of it: the largest window is the configured one
            window_size=list(max(tuple(b.window_size) for b in blocks)),
            mlp_ratio=blocks[0].mlp.fc1.out_features / blocks[0].mlp.fc1.in_features,
            qkv_bias=blocks[0].attn.qkv.bias is not None,
        )

    @classmethod
    def filter_state(cls, state: dict[str, torch.Tensor], a: nn.Module) -> dict[str, torch.Tensor]:
        # the original Swin's layout (patch merging at a stage's end, a bare classifier) to timm's
        return checkpoint_filter_fn(state, a)
