"""Semantic segmentation on stitched backbones: SETR-naive heads, mmsegmentation's data pipeline and metrics."""
from .heads import SETRUpHead
from .model import SegmentationModel
from .task import SegmentationTask

__all__ = ["SETRUpHead", "SegmentationModel", "SegmentationTask"]
