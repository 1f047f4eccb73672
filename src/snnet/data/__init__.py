"""Built-in offline data: procedural geometric-shape scenes."""

from .scenes import (SHAPES, Scene, SceneConfig, ShapesClassification, ShapesMaps, class_folder, render_scene,
                     write_image_folder)

__all__ = ["SHAPES", "Scene", "SceneConfig", "ShapesClassification", "ShapesMaps", "class_folder", "render_scene",
           "write_image_folder"]
