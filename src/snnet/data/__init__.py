"""Built-in offline data: procedural geometric-shape scenes (and their COCO-format export)."""

from .scenes import (SHAPES, Scene, SceneConfig, ShapesClassification, ShapesMaps, class_folder, render_scene,
                     write_image_folder)
from .coco import scenes_coco, write_coco_dataset

__all__ = ["SHAPES", "Scene", "SceneConfig", "ShapesClassification", "ShapesMaps", "class_folder", "render_scene",
           "scenes_coco", "write_coco_dataset", "write_image_folder"]
