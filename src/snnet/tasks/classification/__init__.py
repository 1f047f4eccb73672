"""Image classification: the classification model (the stitched backbone under the anchors' own classifier heads),
ImageFolder or scene data with timm's pipelines, top-1 / top-5 per stitch."""
from .data import build_transform, image_folder_roots
from .model import SNNet
from .task import ClassificationTask

__all__ = ["ClassificationTask", "SNNet", "build_transform", "image_folder_roots"]
