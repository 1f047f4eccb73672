"""The built-in scenes as a COCO-format instances dataset (boxes, RLE masks), in memory or written to disk."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from .scenes import SHAPES, SceneConfig, render_all


def scenes_coco(config: SceneConfig, split: str, num_images: int) -> tuple[dict, list[np.ndarray]]:
    """(COCO instances dict, images): one category per shape (ids 1..K), one instance per visible object, masks
    as RLE, boxes as [x, y, w, h] in pixels."""
    images, annotations, pixels = [], [], []
    scenes = render_all(config, split, num_images, ("image", "boxes", "classes", "masks"), progress=False)
    for i, (image, boxes, classes, masks) in enumerate(scenes):
        h, w = image.shape[:2]
        images.append({"id": i + 1, "file_name": f"{i:06d}.png", "height": h, "width": w})
        pixels.append(image)
        for box, cls, mask in zip(boxes, classes, masks):
            rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x0, y0, x1, y1 = (float(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": int(cls) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": float(mask.sum()), "iscrowd": 0,
                                "segmentation": rle})
    categories = [{"id": c + 1, "name": name} for c, name in enumerate(SHAPES[:config.num_classes])]
    return {"images": images, "annotations": annotations, "categories": categories}, pixels


def write_coco_dataset(root: str | Path, config: SceneConfig, num_train: int, num_val: int) -> Path:
    """``root/{train,val}/<id>.png`` and ``root/annotations/instances_{train,val}.json``, readable by any COCO tool."""
    root = Path(root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    for split, n in (("train", num_train), ("val", num_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        coco, pixels = scenes_coco(config, split, n)
        for info, image in zip(coco["images"], pixels):
            Image.fromarray(image).save(root / split / info["file_name"])
        tmp = root / "annotations" / f".instances_{split}.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(coco))
        os.replace(tmp, root / "annotations" / f"instances_{split}.json")
    return root
