"""The Eva family: timm's ``Eva`` (EVA02, DINOv3): rotary position embeddings, computed inside each anchor for
the input's token grid and given to every block of that anchor; registers; SwiGLU or GELU MLPs."""
from __future__ import annotations

from typing import Any

import torch
from timm.models.eva import Eva, checkpoint_filter_fn
from torch import nn

from ..errors import SNNetError
from ..flops import AnchorShape
from .base import Family, common_shape, name_of, register_family, with_position


@register_family
class EvaFamily(Family):
    """timm's ``Eva`` with a class token."""

    name = "eva"
    model_class = Eva
    examples = "eva02_small_patch14_224, vit_small_patch16_dinov3"

    @classmethod
    def check(cls, a: nn.Module) -> None:
        if a.cls_token is None:
            raise SNNetError(f"anchor {name_of(a)} without a class token: the Eva family stitches anchors "
                             f"with one")
        if getattr(a, "rope_mixed", False):
            raise SNNetError(f"anchor {name_of(a)} with mixed (per-block) rotary embeddings: the Eva family "
                             f"stitches anchors whose blocks share one rotary embedding")
        if a.patch_drop is not None:
            raise SNNetError(f"anchor {name_of(a)} with patch dropout: its rotary embeddings would follow the kept "
                             f"tokens; build it with patch_drop_rate=0")

    @classmethod
    def position(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        # the rotary embedding is the blocks' context, not the embedding's
        return with_position(cls, a, x) if a.dynamic_img_size else a._pos_embed(x)[0]

    @classmethod
    def context_source(cls, a: nn.Module) -> nn.Module | None:
        return a.rope

    @classmethod
    def context(cls, source: nn.Module | None, grid: tuple[int, int]) -> Any:
        """The anchor's rotary embedding for the grid (for the grid it was built for, the one it caches)."""
        return None if source is None else source.get_embed(shape=grid)

    @classmethod
    def run_block(cls, block: nn.Module, x: torch.Tensor, context: Any) -> torch.Tensor:
        return block(x, rope=context)

    @classmethod
    def shape(cls, a: nn.Module) -> AnchorShape:
        return common_shape(a)  # rotary embeddings and pooling are element-wise: no multiply-adds

    @classmethod
    def rebuild_kwargs(cls, a: nn.Module) -> dict[str, Any]:
        blk = a.blocks[0]
        return dict(
            img_size=list(a.patch_embed.img_size), patch_size=list(a.patch_embed.patch_size),
            num_classes=a.num_classes, global_pool=a.global_pool, embed_dim=a.embed_dim, depth=len(a.blocks),
            num_heads=blk.attn.num_heads, mlp_ratio=blk.mlp.fc2.in_features / a.embed_dim,
            dynamic_img_size=a.dynamic_img_size,
        )

    @classmethod
    def filter_state(cls, state: dict[str, torch.Tensor], a: nn.Module) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state, a)
