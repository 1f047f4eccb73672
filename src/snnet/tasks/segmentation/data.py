"""Segmentation data: ADE20K, COCO-Stuff-10K, a generic images + PNG labels folder, the built-in scenes,
and mmsegmentation's training pipeline on torchvision transforms v2 (SPEC section 8)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...data import ShapesMaps
from ...errors import SNNetError
from .._files import IMAGE_SUFFIXES, dataset_root, read_image, read_map, split_names, with_transform
from .config import SegmentationAugmentSection, SegmentationDataSection
from .photometric import PhotoMetricDistortion

# dataset -> (train split, val split, label file suffix, classes, reduce_zero_label), as the reference reads them
LAYOUTS = {
    "ade20k": ("training", "validation", ".png", 150, True),  # ADEChallengeData2016
    "coco_stuff10k": ("train2014", "test2014", "_labelTrainIds.png", 171, True),  # mmsegmentation's converter
    "segfolder": ("train", "val", ".png", None, False),
}


# ---- datasets ----------------------------------------------------------------------------------
class SegmentationFolder(Dataset):
    """``root/images/<split>/<name>.<jpg|png|...>`` with ``root/annotations/<split>/<name><label_suffix>``,
    single-channel label PNGs of class ids (``ignore_index`` = unlabeled)."""

    def __init__(self, root: str | Path, split: str, label_suffix: str, num_classes: int, transform=None,
                 reduce_zero_label: bool = False, ignore_index: int = 255) -> None:
        root = Path(root)
        image_dir, label_dir = root / "images" / split, root / "annotations" / split
        for d in (image_dir, label_dir):
            if not d.is_dir():
                raise SNNetError(f"data folder not found: {d}")
        self.images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise SNNetError(f"no images in {image_dir}")
        self.labels = [label_dir / f"{p.stem}{label_suffix}" for p in self.images]
        for img, lab in zip(self.images, self.labels):
            if not lab.is_file():
                raise SNNetError(f"label file missing for {img}: expected {lab}")
        self.num_classes, self.transform = num_classes, transform
        self.reduce_zero_label, self.ignore_index = reduce_zero_label, ignore_index

    def __len__(self) -> int:
        return len(self.images)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 image and (H, W) int64 class ids, checked."""
        image = read_image(self.images[index])
        label = read_map(self.labels[index], "label", ("L", "P", "I;16", "I"),
                         "a single-channel PNG", "labels hold one class id per pixel").astype(np.int64)
        if image.shape[:2] != label.shape:
            raise SNNetError(f"label {self.labels[index]} is {label.shape[1]}x{label.shape[0]} but its image "
                             f"{self.images[index].name} is {image.shape[1]}x{image.shape[0]}")
        label = prepare_label(label, self.num_classes, self.reduce_zero_label, self.ignore_index, self.labels[index])
        return image, label

    def __getitem__(self, index: int):
        image, label = self.read(index)
        return _apply(self.transform, image, label)


def prepare_label(label: np.ndarray, num_classes: int, reduce_zero_label: bool, ignore_index: int,
                  source: object = "label") -> np.ndarray:
    """mmsegmentation's reduce-zero-label (0 -> ignored, c -> c - 1), then every id checked."""
    if reduce_zero_label:  # exactly mmsegmentation's: an unlabeled pixel stays unlabeled
        label = label.copy()
        label[label == 0] = ignore_index
        label -= 1
        label[label == ignore_index - 1] = ignore_index
    bad = (label != ignore_index) & ((label < 0) | (label >= num_classes))
    if bad.any():
        v = int(label[bad][0]) + (1 if reduce_zero_label else 0)
        raise SNNetError(f"{source} has class id {v}, outside 0..{num_classes - 1 + reduce_zero_label}"
                         f"{' (reduce_zero_label)' if reduce_zero_label else ''} and the ignore index {ignore_index}")
    return label


def _apply(transform, image: np.ndarray, label: np.ndarray):
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    mask = tv_tensors.Mask(torch.from_numpy(label))
    return transform(img, mask) if transform is not None else (img, mask)


# ---- mmsegmentation's pipeline on transforms v2 ---------------------------------------------------
def rescale_size(h: int, w: int, long_side: float, short_side: float) -> tuple[int, int]:
    """mmcv's keep-ratio rescale: the largest size with long edge <= long_side and short edge <= short_side."""
    factor = min(long_side / max(h, w), short_side / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


def _image_of(flat_inputs: list) -> torch.Tensor:
    return next(i for i in flat_inputs if isinstance(i, tv_tensors.Image))


class RandomRescale(v2.Transform):
    """mmsegmentation's RandomResize: ``scale`` (long, short) times a ratio drawn from ``ratio_range``,
    aspect kept; bilinear for images (no antialiasing, as OpenCV), nearest for masks."""

    def __init__(self, scale: tuple[int, int], ratio_range: tuple[float, float]) -> None:
        super().__init__()
        self.scale, self.ratio_range = scale, ratio_range

    def make_params(self, flat_inputs: list) -> dict:
        lo, hi = self.ratio_range
        r = lo + (hi - lo) * torch.rand(()).item()
        h, w = _image_of(flat_inputs).shape[-2:]
        return {"size": list(rescale_size(h, w, int(self.scale[0] * r), int(self.scale[1] * r)))}

    def transform(self, inpt, params: dict):
        return TF.resize(inpt, params["size"], antialias=False)


class KeepRatioResize(v2.Transform):
    """The test resize: largest size within (long, short), aspect kept; images only (labels stay full size)."""

    def __init__(self, scale: tuple[int, int]) -> None:
        super().__init__()
        self.scale = scale

    def make_params(self, flat_inputs: list) -> dict:
        h, w = _image_of(flat_inputs).shape[-2:]
        return {"size": list(rescale_size(h, w, *self.scale))}

    def transform(self, inpt, params: dict):
        return TF.resize(inpt, params["size"], antialias=False) if isinstance(inpt, tv_tensors.Image) else inpt


class CatMaxRandomCrop(v2.Transform):
    """mmsegmentation's RandomCrop: a crop of at most ``size``, re-drawn up to 10 times until no class
    covers ``cat_max_ratio`` or more of its labelled pixels (the 11th draw is kept regardless)."""

    def __init__(self, size: int, cat_max_ratio: float, ignore_index: int) -> None:
        super().__init__()
        self.size, self.cat_max_ratio, self.ignore_index = size, cat_max_ratio, ignore_index

    def make_params(self, flat_inputs: list) -> dict:
        h, w = _image_of(flat_inputs).shape[-2:]
        mask = next((i for i in flat_inputs if isinstance(i, tv_tensors.Mask)), None)
        ch, cw = min(self.size, h), min(self.size, w)

        def draw() -> tuple[int, int]:
            return int(torch.randint(h - ch + 1, ())), int(torch.randint(w - cw + 1, ()))

        top, left = draw()
        if self.cat_max_ratio < 1 and mask is not None:
            for _ in range(10):
                crop = mask[..., top:top + ch, left:left + cw]
                _, counts = crop[crop != self.ignore_index].unique(return_counts=True)
                if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                    break
                top, left = draw()
        return {"box": (top, left, ch, cw)}

    def transform(self, inpt, params: dict):
        return TF.crop(inpt, *params["box"])


class PadTo(v2.Transform):
    """Pad bottom and right up to ``size`` (images with 0 after normalisation, masks with the ignore index),
    as mmsegmentation's data preprocessor pads training batches."""

    def __init__(self, size: int, ignore_index: int) -> None:
        super().__init__()
        self.size, self.ignore_index = size, ignore_index

    def make_params(self, flat_inputs: list) -> dict:
        h, w = _image_of(flat_inputs).shape[-2:]
        return {"pad": [0, 0, max(self.size - w, 0), max(self.size - h, 0)]}

    def transform(self, inpt, params: dict):
        if not any(params["pad"]):
            return inpt
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0
        return TF.pad(inpt, params["pad"], fill=fill)


def _to_model_input(mean, std) -> list:
    return [v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std), v2.ToDtype({tv_tensors.Mask: torch.int64, "others": None})]


def build_transforms(data: SegmentationDataSection, aug: SegmentationAugmentSection, crop: int, mean,
                     std) -> tuple[v2.Compose, v2.Compose, v2.Compose]:
    """(train, eval, least-squares init) pipelines."""
    ignore = data.ignore_index
    train = [RandomRescale(tuple(aug.scale), tuple(aug.ratio_range)), CatMaxRandomCrop(crop, aug.cat_max_ratio, ignore),
             v2.RandomHorizontalFlip(aug.hflip)]
    if aug.photometric:
        train.append(PhotoMetricDistortion())
    train += [*_to_model_input(mean, std), PadTo(crop, ignore)]
    val = [KeepRatioResize(tuple(data.test_resize))] if data.test_resize else []
    init = [v2.Resize(crop, antialias=False), v2.CenterCrop(crop)]
    return v2.Compose(train), v2.Compose([*val, *_to_model_input(mean, std)]), \
        v2.Compose([*init, *_to_model_input(mean, std)])


def dataset_info(data: SegmentationDataSection, num_classes: int | None) -> tuple[int, bool, str, str, str]:
    """(classes, reduce_zero_label, train split, val split, label suffix) of the configured dataset
    (``num_classes``: ``model.head.num_classes``, which a segfolder dataset needs)."""
    if data.dataset == "shapes":
        classes, reduce, train, val, suffix = data.shapes.num_classes + 1, False, "train", "val", ""
    else:
        train, val, suffix, classes, reduce = LAYOUTS[data.dataset]
        train, val = split_names(data, train, val)
    classes = num_classes or classes
    if classes is None:
        raise SNNetError("set model.head.num_classes: a segfolder dataset does not say how many classes it has")
    if data.reduce_zero_label is not None:
        reduce = data.reduce_zero_label
    return classes, reduce, train, val, suffix


def check_folders(data: SegmentationDataSection, num_classes: int | None) -> None:
    """The dataset's folders exist (before any run directory is touched); the scenes need none."""
    root = dataset_root(data, f"the {data.dataset} folder (images/<split> and annotations/<split>)")
    if root is None:
        return
    _, _, train, val, _ = dataset_info(data, num_classes)
    for split in (train, val):
        for sub in ("images", "annotations"):
            if not (root / sub / split).is_dir():
                raise SNNetError(f"data folder not found: {root / sub / split}")


def build_datasets(data: SegmentationDataSection, aug: SegmentationAugmentSection, num_classes: int | None,
                   crop: int, mean, std, progress: bool = True,
                   train: bool = True) -> tuple[Dataset | None, Dataset, Dataset | None, int]:
    """(train, val, init, classes): ``init`` holds training images centre-cropped, for the least-squares fit;
    without ``train``, train and init are None."""
    train_tf, val_tf, init_tf = build_transforms(data, aug, crop, mean, std)
    classes, reduce, train_split, val_split, suffix = dataset_info(data, num_classes)
    if data.dataset == "shapes":
        train_set, val = ShapesMaps.splits(data.shapes, "semantic", _apply, train_tf, val_tf, progress, train)
    else:
        check_folders(data, num_classes)
        folder = lambda split, tf: SegmentationFolder(data.root, split, suffix, classes, tf, reduce, data.ignore_index)
        train_set, val = folder(train_split, train_tf) if train else None, folder(val_split, val_tf)
    init = with_transform(train_set, init_tf) if train else None
    return train_set, val, init, classes
