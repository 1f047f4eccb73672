"""Object detection and instance segmentation on stitched backbones: ViTDet's simple feature pyramid under
torchvision's Mask R-CNN."""
from .model import DetectionModel, SimpleFeaturePyramid

__all__ = ["DetectionModel", "SimpleFeaturePyramid"]
