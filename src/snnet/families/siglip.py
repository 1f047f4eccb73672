"""Attention-pooled ViTs without a class token (SigLIP, SigLIP 2): timm's ``VisionTransformer`` pooled by a latent
query (``global_pool='map'``). The pooling head belongs to the last anchor of a route, as a classifier does."""
from __future__ import annotations

from timm.models.vision_transformer import VisionTransformer
from torch import nn

from ..errors import SNNetError
from ..flops import NORM_FLOPS_PER_ELEMENT, AnchorShape
from .base import common_shape, name_of, norm_elements, register_family
from .vit import ViTFamily


@register_family
class SigLIPFamily(ViTFamily):
    """timm's ``VisionTransformer`` with an attention-pool head."""

    name = "siglip"
    examples = "vit_base_patch16_siglip_224, vit_so400m_patch14_siglip_378"

    @classmethod
    def takes(cls, a: nn.Module) -> bool:
        return isinstance(a, VisionTransformer) and a.attn_pool is not None

    @classmethod
    def check(cls, a: nn.Module) -> None:
        if a.global_pool != "map":
            raise SNNetError(f"anchor {name_of(a)} has an attention pool but pools by {a.global_pool!r}")

    @classmethod
    def shape(cls, a: nn.Module) -> AnchorShape:
        """The blocks as a plain ViT's, and the pool: per token its key/value projection and the latent queries'
        products; once, the latents' query, output projection, MLP and norms."""
        pool = a.attn_pool
        width = pool.num_heads * pool.head_dim
        queries = pool.latent_len
        per_token = pool.kv.in_features * pool.kv.out_features + 2 * queries * width
        per_token += NORM_FLOPS_PER_ELEMENT * norm_elements(pool.k_norm, pool.num_heads)
        once = queries * sum(m.in_features * m.out_features for name, m in pool.named_modules()
                             if isinstance(m, nn.Linear) and name != "kv")
        norms = norm_elements(pool.norm) + norm_elements(pool.q_norm, pool.num_heads)
        once += NORM_FLOPS_PER_ELEMENT * queries * norms
        return common_shape(a, pool_token_macs=per_token, pool_macs=once)
