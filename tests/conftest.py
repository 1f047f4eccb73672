"""Tiny anchors built on the fly: DeiT-3 style (layer scale, position embedding without class slot)."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub; set before timm reads it

import pytest  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402

IMG = 32


def tiny_vit(depth: int, width: int, heads: int = 2, arch: str = "deit3_small_patch16_224", seed: int = 0,
             **kwargs) -> torch.nn.Module:
    """A small timm ViT with random but non-trivial weights (layer scales 0.1 so blocks matter)."""
    torch.manual_seed(seed)
    kw = dict(img_size=IMG, patch_size=8, embed_dim=width, depth=depth, num_heads=heads, num_classes=10)
    kw.update(kwargs)
    model = timm.create_model(arch, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.1)
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()


@pytest.fixture
def pair_s_l():
    """Depths 3/6 (ratio 2, like DeiT3-S/L; every stitch kind occurs), widths 32/48."""
    return tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)


@pytest.fixture
def images():
    torch.manual_seed(123)
    return torch.randn(3, 3, IMG, IMG)
