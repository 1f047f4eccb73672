"""Detection data: COCO-format instances (JSON + images) read with pycocotools, the built-in scenes as such a
dataset in memory, and large-scale jitter on torchvision transforms v2 (boxes and masks move with the image)."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from ...config import DataSection
from ...data import scenes_coco
from ...errors import SNNetError, first_line
from ...selection import is_integer, is_number
from .._files import dataset_root, read_image, split_names
from .config import DetectionAugmentSection


def read_coco_json(path: Path) -> dict:
    """A COCO instances file's contents: valid JSON with images, annotations and categories."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SNNetError(f"annotation file not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise SNNetError(f"{path} is not valid JSON ({first_line(e)})") from None
    if not isinstance(data, dict) or not {"images", "annotations", "categories"} <= set(data):
        raise SNNetError(f"{path} is not a COCO instances file: it needs images, annotations and categories")
    return data


def load_coco(path: Path, image_dir: Path | None = None) -> COCO:
    """A COCO instances file, checked (``read_coco_json``): also every image file present (when ``image_dir`` is
    given); every annotation on a known image and category, its box inside it."""
    return coco_from_dict(read_coco_json(path), str(path), image_dir)


def check_categories(data: dict, source: str) -> list[dict]:
    """The file's categories: a non-empty list of objects with integer ids, or a one-line error."""
    categories = data["categories"]
    if not isinstance(categories, list):
        raise SNNetError(f"{source}: 'categories' must be a list, got {type(categories).__name__}")
    if not categories:
        raise SNNetError(f"{source}: no categories (the list of classes a COCO instances file names)")
    for i, c in enumerate(categories):
        if not isinstance(c, dict) or not is_integer(c.get("id")):
            raise SNNetError(f"{source}: category {i} has no integer 'id'")
    return categories


def check_coco_fields(data: dict, source: str, with_files: bool) -> None:
    """Every field pycocotools and COCOeval read, present and of its type, or a one-line error naming the entry."""
    def fail(what: str):
        raise SNNetError(f"{source}: {what}")

    for key in ("images", "annotations"):
        if not isinstance(data[key], list):
            fail(f"'{key}' must be a list, got {type(data[key]).__name__}")
    check_categories(data, source)
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            fail(f"image {i} is not an object")
        for key in ("id", "width", "height"):
            if not is_integer(im.get(key)):
                fail(f"image {im.get('id', f'#{i}')} has no integer '{key}'")
        if with_files and not isinstance(im.get("file_name"), str):
            fail(f"image {im['id']} has no 'file_name'")
    for i, a in enumerate(data["annotations"]):
        if not isinstance(a, dict):
            fail(f"annotation {i} is not an object")
        name = f"annotation {a.get('id', f'#{i}')}"
        for key in ("id", "image_id", "category_id"):
            if not is_integer(a.get(key)):
                fail(f"{name} has no integer '{key}'")
        box = a.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(is_number(v) for v in box)):
            fail(f"{name} has 'bbox' {box!r}: expected [x, y, width, height] numbers")
        if not is_number(a.get("area")):
            fail(f"{name} has no numeric 'area' (COCOeval sorts boxes into sizes by it)")
        seg = a.get("segmentation")
        polygons = isinstance(seg, list) and seg and all(
            isinstance(p, list) and len(p) >= 6 and all(is_number(v) for v in p) for p in seg)
        rle = isinstance(seg, dict) and "counts" in seg and "size" in seg
        if not (polygons or rle):
            fail(f"{name} has 'segmentation' {str(seg)[:40]!r}: expected polygons or an RLE with counts and size")


def coco_from_dict(data: dict, source: str, image_dir: Path | None = None) -> COCO:
    check_coco_fields(data, source, with_files=image_dir is not None)
    images = {im["id"]: im for im in data["images"]}
    categories = {c["id"] for c in data["categories"]}
    if image_dir is not None:
        for im in data["images"]:
            if not (image_dir / im["file_name"]).is_file():
                raise SNNetError(f"{source}: the file of image {im['id']} is missing: {image_dir / im['file_name']}")
    for a in data["annotations"]:
        if a["category_id"] not in categories:
            raise SNNetError(f"{source}: annotation {a['id']} has unknown category id {a['category_id']}")
        im = images.get(a["image_id"])
        if im is None:
            raise SNNetError(f"{source}: annotation {a['id']} is on unknown image {a['image_id']}")
        x, y, w, h = a["bbox"]
        if x < -1 or y < -1 or w < 0 or h < 0 or x + w > im["width"] + 1 or y + h > im["height"] + 1:
            raise SNNetError(f"{source}: annotation {a['id']} has box {a['bbox']} outside its "
                             f"{im['width']}x{im['height']} image {im['id']}")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
        coco.createIndex()
    return coco


class CocoInstances(Dataset):
    """(image (3, H, W) uint8, target with XYXY ``boxes``, ``labels`` 1..K, ``masks`` (N, H, W), ``image_id``);
    crowd annotations are left out, as torchvision's references train."""

    def __init__(self, coco: COCO, load_image, transform=None, key: str = "file_name") -> None:
        # load_image(info[key]): the pixels (H, W, 3) of an image
        self.coco, self.load_image, self.transform, self.key = coco, load_image, transform, key
        self.ids = sorted(coco.imgs)
        self.label_of = {c: i + 1 for i, c in enumerate(sorted(coco.cats))}

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        pixels = self.load_image(info[self.key])
        h, w = pixels.shape[:2]
        anns = [a for a in self.coco.imgToAnns[image_id] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        masks = np.stack([self.coco.annToMask(a) for a in anns]) if anns else np.zeros((0, h, w), np.uint8)
        target = {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=(h, w)),
                  "labels": torch.tensor([self.label_of[a["category_id"]] for a in anns], dtype=torch.int64),
                  "masks": tv_tensors.Mask(torch.from_numpy(masks)), "image_id": image_id}
        image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1))
        return self.transform(image, target) if self.transform is not None else (image, target)


class _Folder:
    """Reads an image file of one folder by name (a class, so DataLoader workers can pickle it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def __call__(self, name: str) -> np.ndarray:
        return read_image(self.root / name)


class ImagesOnly(Dataset):
    """(image, 0) pairs of a detection dataset, for the least-squares fit."""

    def __init__(self, dataset: CocoInstances) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return self.dataset[index][0], 0


def build_transforms(aug: DetectionAugmentSection, size: int, mean, std) -> tuple[v2.Compose, v2.Compose, v2.Compose]:
    """(train, eval, least-squares init): large-scale jitter (a random rescale of the size x size square by
    ``augment.ratio_range``, flip), normalisation, then a crop to the square or a pad with 0 after normalisation
    (the mean, as ViTDet pads); eval images keep their size (the model fits and pads them)."""
    to_input = [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True), v2.Normalize(mean, std)]
    train = v2.Compose([v2.RandomHorizontalFlip(aug.hflip),
                        v2.ScaleJitter((size, size), scale_range=tuple(aug.ratio_range), antialias=True),
                        *to_input, v2.RandomCrop(size, pad_if_needed=True, fill=0), v2.SanitizeBoundingBoxes()])
    init = v2.Compose([v2.Resize(size, antialias=True), v2.CenterCrop(size), *to_input])
    return train, v2.Compose(to_input), init


def splits(data: DataSection) -> tuple[str, str]:
    return split_names(data, "train2017", "val2017")


def annotation_file(data: DataSection, split: str) -> Path:
    return Path(data.root) / "annotations" / f"instances_{split}.json"


def check_folders(data: DataSection) -> None:
    """The COCO root, image folders and annotation files exist, before any run directory is touched."""
    root = dataset_root(data, "a COCO folder (<split>/ images and annotations/instances_<split>.json)")
    if root is None:
        return
    for split in splits(data):
        if not (root / split).is_dir():
            raise SNNetError(f"data folder not found: {root / split}")
        if not annotation_file(data, split).is_file():
            raise SNNetError(f"annotation file not found: {annotation_file(data, split)}")


def dataset_classes(data: DataSection) -> int:
    """Categories of the dataset (read from the validation annotations for COCO)."""
    if data.dataset == "shapes":
        return data.shapes.num_classes
    check_folders(data)
    path = annotation_file(data, splits(data)[1])
    return len(check_categories(read_coco_json(path), str(path)))


def build_datasets(data: DataSection, aug: DetectionAugmentSection, size: int, mean, std, progress: bool = True,
                   train: bool = True):
    """(train, val, init) datasets; ``val.coco`` is the ground truth COCO evaluation reads. Without ``train``,
    train and init are None."""
    train_tf, val_tf, init_tf = build_transforms(aug, size, mean, std)
    if data.dataset == "shapes":
        s = data.shapes

        def instances(split: str, n: int, tf) -> CocoInstances:
            coco_dict, pixels = scenes_coco(s.scene_config(), split, n)
            by_id = {im["id"]: p for im, p in zip(coco_dict["images"], pixels)}
            return CocoInstances(coco_from_dict(coco_dict, f"scenes/{split}"), by_id.__getitem__, tf, key="id")
        train_set = instances("train", s.num_train, train_tf) if train else None
        val = instances("val", s.num_val, val_tf)
    else:
        check_folders(data)
        root = Path(data.root)
        train_name, val_name = splits(data)
        instances = lambda split, tf: CocoInstances(load_coco(annotation_file(data, split), root / split),
                                                    _Folder(root / split), tf, key="file_name")
        train_set, val = instances(train_name, train_tf) if train else None, instances(val_name, val_tf)
    if not train:
        return None, val, None
    init = CocoInstances(train_set.coco, train_set.load_image, init_tf, train_set.key)
    return train_set, val, ImagesOnly(init)
