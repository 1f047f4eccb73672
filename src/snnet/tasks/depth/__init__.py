"""Monocular depth on stitched backbones: DPT's head, the scale-invariant log loss, NYUv2's protocol."""
from .heads import DPTHead
from .model import DepthModel
from .task import DepthTask

__all__ = ["DPTHead", "DepthModel", "DepthTask"]
