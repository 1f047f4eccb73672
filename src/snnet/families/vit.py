"""The plain ViT family: timm's ``VisionTransformer`` classifying from a class token (DeiT, DeiT-3, DINOv2 with or
without registers, the reference's anchors with a relative position bias)."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import LayerScale
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
from torch import nn

from ..errors import SNNetError
from ..flops import AnchorShape
from .base import Family, common_shape, name_of, register_family, with_position


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], old_grid: tuple[int, int] | None = None) -> torch.Tensor:
    """A patch-only position embedding (1, Gh*Gw, C) on ``old_grid`` (default: square) resized to ``grid``:
    bicubic, align_corners False, no antialiasing, as the reference resizes them (timm would antialias)."""
    if old_grid is None:
        side = math.isqrt(pos.shape[1])
        if side * side != pos.shape[1]:
            raise SNNetError(f"a position embedding of {pos.shape[1]} patches is not a square grid")
        old_grid = (side, side)
    x = pos.reshape(1, *old_grid, -1).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=grid, mode="bicubic", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)


@register_family
class ViTFamily(Family):
    """timm's ``VisionTransformer`` with a class token."""

    name = "vit"
    model_class = VisionTransformer
    examples = "deit3_small_patch16_224, vit_small_patch14_reg4_dinov2"
    backbone_kwargs = {"num_classes": 0, "final_norm": False}

    @classmethod
    def takes(cls, a: nn.Module) -> bool:
        return isinstance(a, VisionTransformer) and a.attn_pool is None

    @classmethod
    def check(cls, a: nn.Module) -> None:
        if not a.has_class_token or a.global_pool not in ("token", ""):
            raise SNNetError(f"anchor {name_of(a)} pooled by {a.global_pool!r} must classify from one class "
                             f"token (global_pool 'token')")

    @classmethod
    def position(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """timm's ``_pos_embed`` (a dynamic size through ``with_position``, which leaves the table as it is on the
        anchor's own grid)."""
        return a.patch_drop(with_position(cls, a, x) if a.dynamic_img_size else a._pos_embed(x))

    @classmethod
    def position_table(cls, a: nn.Module, grid: tuple[int, int]) -> torch.Tensor | None:
        """As timm's, except that a DeiT-3 table (no class-token slot) on another grid is resized as the reference
        resizes it: bicubic without antialiasing (SPEC section 10)."""
        if a.no_embed_class and a.pos_embed is not None and tuple(grid) != tuple(a.patch_embed.grid_size):
            return resize_pos_embed(a.pos_embed, tuple(grid), tuple(a.patch_embed.grid_size))
        return super().position_table(a, grid)

    @classmethod
    def shape(cls, a: nn.Module) -> AnchorShape:
        return common_shape(a)

    @classmethod
    def rebuild_kwargs(cls, a: nn.Module) -> dict[str, Any]:
        blk = a.blocks[0]
        return dict(
            img_size=list(a.patch_embed.img_size), patch_size=list(a.patch_embed.patch_size),
            in_chans=a.in_chans, num_classes=a.num_classes, global_pool=a.global_pool,
            embed_dim=a.embed_dim, depth=len(a.blocks), num_heads=blk.attn.num_heads,
            mlp_ratio=blk.mlp.fc1.out_features / a.embed_dim, qkv_bias=blk.attn.qkv.bias is not None,
            class_token=a.has_class_token, reg_tokens=a.num_reg_tokens,
            no_embed_class=a.no_embed_class, dynamic_img_size=a.dynamic_img_size,
            # only whether layer scale exists matters: its values come with the weights
            init_values=1e-6 if isinstance(blk.ls1, LayerScale) else None,
            final_norm=not (isinstance(a.norm, nn.Identity) and isinstance(a.fc_norm, nn.Identity)),
        )

    @classmethod
    def filter_state(cls, state: dict[str, torch.Tensor], a: nn.Module) -> dict[str, torch.Tensor]:
        pos = state.get("pos_embed")
        if a.no_embed_class and isinstance(pos, torch.Tensor) and pos.ndim == 3 and pos.shape != a.pos_embed.shape:
            state = {**state, "pos_embed": resize_pos_embed(pos, tuple(a.patch_embed.grid_size))}
        # adapt_layer_scale maps DeiT-3's gamma_1/gamma_2 to timm's ls1.gamma/ls2.gamma
        return checkpoint_filter_fn(state, a, adapt_layer_scale=True)
