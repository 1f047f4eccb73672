"""Anchor families: the kinds of timm ViT snnet stitches, one module each (``base.py``: the interface and the
registry). Importing the package registers the built-in families, most specific first."""
from .base import FAMILIES, Family, classifier_of, family_of, name_of, register_family, with_classifier
from .vit import ViTFamily, resize_pos_embed
from .siglip import SigLIPFamily
from .eva import EvaFamily
from .swin import SwinFamily

__all__ = ["FAMILIES", "EvaFamily", "Family", "SigLIPFamily", "SwinFamily", "ViTFamily", "classifier_of",
           "family_of", "name_of", "register_family", "resize_pos_embed", "with_classifier"]
