"""Object detection and instance segmentation on stitched backbones: ViTDet's simple feature pyramid under
torchvision's Mask R-CNN, COCO data and evaluation with pycocotools."""
from .model import DetectionModel, SimpleFeaturePyramid, StageFeaturePyramid
from .task import DetectionTask

__all__ = ["DetectionModel", "DetectionTask", "SimpleFeaturePyramid", "StageFeaturePyramid"]
