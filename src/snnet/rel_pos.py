"""Relative position bias (BEiT style) in timm's attention: the anchors of the reference's dense models.

The reference's segmentation anchors are DeiT-3 ViTs whose every attention adds a learned bias
``B[h, i, j] = table[index[i, j], h]`` to ``q k^T / sqrt(d)`` (SPEC section 10). Here that is timm's
own ``Attention`` given the bias as its additive mask; the table is tied to the grid it was built for.
"""
from __future__ import annotations

import torch
from timm.layers import Attention
from timm.layers.pos_embed_rel import gen_relative_position_index
from torch import nn

from .errors import SNNetError


class RelPosAttention(Attention):
    """timm ``Attention`` plus a per-head bias table over (2Gh-1)(2Gw-1) patch offsets and 3 class-token
    entries, zero at the start (as the reference's MAE backbone initialises it)."""

    grid_size: tuple[int, int] = (0, 0)  # set by ``rel_pos_attention``

    def __init__(self, dim: int, num_heads: int = 8, **kwargs) -> None:
        super().__init__(dim, num_heads=num_heads, **kwargs)
        index = gen_relative_position_index(self.grid_size, class_token=True)  # (N, N), N = 1 + Gh*Gw
        gh, gw = self.grid_size
        table_rows = (2 * gh - 1) * (2 * gw - 1) + 3  # index.max() + 1, known without reading it (meta device)
        device = kwargs.get("device")
        self.relative_position_bias_table = nn.Parameter(torch.zeros(table_rows, num_heads, device=device))
        # derived from the grid, so not saved: a file's own index is checked against it on import
        self.register_buffer("relative_position_index", index.to(device), persistent=False)

    def bias(self) -> torch.Tensor:
        """(1, heads, N, N) additive attention bias."""
        n = self.relative_position_index.shape[0]
        b = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return b.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        n = self.relative_position_index.shape[0]
        if x.shape[1] != n:
            gh, gw = self.grid_size
            raise SNNetError(f"anchors with a relative position bias run on their {gh}x{gw} token grid only "
                             f"({x.shape[1] - 1} patches given, {gh * gw} expected): use sliding-window "
                             f"inference, or build the anchors for this size (kwargs.img_size)")
        bias = self.bias().to(x.dtype)
        return super().forward(x, attn_mask=bias if attn_mask is None else attn_mask + bias, is_causal=is_causal)


def rel_pos_attention(grid_size: tuple[int, int]) -> type[RelPosAttention]:
    """The attention class for ``timm.create_model(attn_layer=...)`` on a ``grid_size`` token grid
    (timm takes a class there, not a partial)."""
    return type("RelPosAttention", (RelPosAttention,), {"grid_size": tuple(grid_size)})


def grid_of(model: nn.Module) -> tuple[int, int] | None:
    """The token grid a model's relative position tables are built for (None: it has none)."""
    blocks = getattr(model, "blocks", None)  # Swin's stages hold theirs: timm's own relative position bias
    attn = getattr(blocks[0], "attn", None) if blocks is not None else None
    return attn.grid_size if isinstance(attn, RelPosAttention) else None
