"""Anchor families: the kinds of timm ViT snnet stitches, one module each (``base.py``: the interface and the
registry). Importing the package registers the built-in families, most specific first."""
from .base import FAMILIES, Family, family_of, register_family
from .vit import ViTFamily, resize_pos_embed
from .siglip import SigLIPFamily
from .eva import EvaFamily

__all__ = ["FAMILIES", "EvaFamily", "Family", "SigLIPFamily", "ViTFamily", "family_of", "register_family",
           "resize_pos_embed"]
