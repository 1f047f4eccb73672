"""Depth data: NYUv2 in the BTS layout (split files), a generic images + 16-bit depth PNG folder, the built-in
scenes; the reference's training pipeline on torchvision transforms v2, image and depth transformed jointly."""
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
from .config import DepthAugmentSection, DepthDataSection


class DepthPairs(Dataset):
    """(image path, depth PNG path) pairs; depth PNGs hold ``depth_scale`` x metres in 16 bits (0 = no depth)."""

    def __init__(self, pairs: list[tuple[Path, Path]], depth_scale: float, transform=None) -> None:
        self.pairs, self.depth_scale, self.transform = pairs, depth_scale, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, depth_path = self.pairs[index]
        image = read_image(image_path)
        depth = read_map(depth_path, "depth", ("I;16", "I;16B", "I"), "a 16-bit single-channel PNG",
                         "depth maps hold depth_scale x metres per pixel") / self.depth_scale
        if image.shape[:2] != depth.shape:
            raise SNNetError(f"depth {depth_path} is {depth.shape[1]}x{depth.shape[0]} but its image "
                             f"{image_path.name} is {image.shape[1]}x{image.shape[0]}")
        return image, depth

    def __getitem__(self, index: int):
        return _apply(self.transform, *self.read(index))


def nyu_pairs(root: Path, split_file: str) -> list[tuple[Path, Path]]:
    """The reference's reading of a BTS split file: "rgb depth focal" per line, paths under ``root`` (a leading
    slash dropped), "None" depths skipped, sorted by image path; every named file must exist."""
    path = Path(split_file) if Path(split_file).is_absolute() else root / split_file
    if not path.is_file():
        raise SNNetError(f"split file not found: {path}")
    pairs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise SNNetError(f"{path} line {number}: expected 'rgb_path depth_path [focal]', got {line!r}")
        if parts[1] == "None":
            continue
        image, depth = (root / p.lstrip("/") for p in parts[:2])
        for f in (image, depth):
            if not f.is_file():
                raise SNNetError(f"{path} line {number} names a missing file: {f}")
        pairs.append((image, depth))
    if not pairs:
        raise SNNetError(f"{path} lists no image with a depth map")
    return sorted(pairs)


def folder_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """``root/images/<split>/<name>.<jpg|png|...>`` with ``root/depths/<split>/<name>.png``."""
    image_dir, depth_dir = root / "images" / split, root / "depths" / split
    for d in (image_dir, depth_dir):
        if not d.is_dir():
            raise SNNetError(f"data folder not found: {d}")
    images = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise SNNetError(f"no images in {image_dir}")
    pairs = [(p, depth_dir / f"{p.stem}.png") for p in images]
    for image, depth in pairs:
        if not depth.is_file():
            raise SNNetError(f"depth file missing for {image}: expected {depth}")
    return pairs


def _apply(transform, image: np.ndarray, depth: np.ndarray):
    img = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    # depth travels as a Mask: geometric transforms move it with nearest interpolation, filling 0 (no depth)
    d = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None])
    return transform(img, d) if transform is not None else (img, d)


# ---- the reference's pipeline on transforms v2 ------------------------------------------------------
class Crop(v2.Transform):
    """A fixed crop (top, bottom, left, right; ends excluded) of image and depth: NYUv2's border."""

    def __init__(self, box: tuple[int, int, int, int]) -> None:
        super().__init__()
        self.box = box

    def transform(self, inpt, params: dict):
        top, bottom, left, right = self.box
        h, w = inpt.shape[-2:]
        if bottom > h or right > w:
            raise SNNetError(f"data.precrop {list(self.box)} reaches outside a {h}x{w} image "
                             f"(top, bottom, left, right; bottom <= {h}, right <= {w})")
        return TF.crop(inpt, top, left, bottom - top, right - left)


class ColorAug(v2.Transform):
    """The reference's ColorAug with probability ``p``: on 0-255 values, ``x ** gamma`` (gamma 0.9-1.1), times a
    brightness (0.75-1.25), times a colour per channel (0.9-1.1), clipped to 0-255. Images as floats in [0, 1]."""

    def __init__(self, p: float = 0.5, gamma=(0.9, 1.1), brightness=(0.75, 1.25), colour=(0.9, 1.1)) -> None:
        super().__init__()
        self.p, self.gamma, self.brightness, self.colour = p, gamma, brightness, colour

    def make_params(self, flat_inputs: list) -> dict:
        u = lambda lo_hi, *shape: lo_hi[0] + (lo_hi[1] - lo_hi[0]) * torch.rand(shape)  # noqa: E731
        return {"apply": torch.rand(()).item() < self.p, "gamma": u(self.gamma).item(),
                "brightness": u(self.brightness).item(), "colour": u(self.colour, 3)}

    def transform(self, inpt, params: dict):
        if not params["apply"] or not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = (inpt.as_subclass(torch.Tensor) * 255) ** params["gamma"] * params["brightness"]
        x = x * params["colour"].to(x)[:, None, None]
        return tv_tensors.wrap((x.clamp(0, 255) / 255), like=inpt)


def build_transforms(data: DepthDataSection, aug: DepthAugmentSection, crop: tuple[int, int], mean,
                     std) -> tuple[v2.Compose, v2.Compose, v2.Compose]:
    """(train, eval, least-squares init) pipelines; eval keeps the full image (the flip test runs in the model)."""
    pre = [Crop(tuple(data.precrop))] if data.precrop else []
    to_float = v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)
    normalize = v2.Normalize(mean, std)
    # images rotate bilinearly, depth (a Mask) by nearest neighbour, both filling 0: as mmcv.imrotate in the reference
    rotate = v2.RandomRotation(aug.rotation, v2.InterpolationMode.BILINEAR, fill=0)
    train = v2.Compose([*pre, v2.RandomApply([rotate], p=0.5), v2.RandomHorizontalFlip(aug.hflip),
                        v2.RandomCrop(crop, pad_if_needed=True, fill=0), to_float, ColorAug(aug.color_prob), normalize])
    init = v2.Compose([*pre, v2.CenterCrop(crop), to_float, normalize])
    return train, v2.Compose([to_float, normalize]), init


def build_datasets(data: DepthDataSection, aug: DepthAugmentSection, crop: tuple[int, int], mean, std,
                   progress: bool = True, train: bool = True):
    """(train, val, init) for the configured dataset; without ``train``, train and init are None."""
    train_tf, val_tf, init_tf = build_transforms(data, aug, crop, mean, std)
    if data.dataset == "shapes":
        train_set, val = ShapesMaps.splits(data.shapes, "depth", _apply, train_tf, val_tf, progress, train)
    else:
        check_folders(data)
        root = Path(data.root)
        pairs = nyu_pairs if data.dataset == "nyuv2" else folder_pairs
        train_name, val_name = splits(data)
        read = lambda name, tf: DepthPairs(pairs(root, name), data.depth_scale, tf)
        train_set, val = read(train_name, train_tf) if train else None, read(val_name, val_tf)
    return train_set, val, with_transform(train_set, init_tf) if train else None


def splits(data: DepthDataSection) -> tuple[str, str]:
    """NYUv2's split files, or a depth folder's split names."""
    defaults = ("nyu_train.txt", "nyu_test.txt") if data.dataset == "nyuv2" else ("train", "val")
    return split_names(data, *defaults)


def check_folders(data: DepthDataSection) -> None:
    """The dataset's root and split files or folders exist, before any run directory is touched."""
    root = dataset_root(data, f"the {data.dataset} folder")
    if root is None:
        return
    for name in splits(data):
        if data.dataset == "nyuv2":
            path = Path(name) if Path(name).is_absolute() else root / name
            if not path.is_file():
                raise SNNetError(f"split file not found: {path}")
        else:
            for sub in ("images", "depths"):
                if not (root / sub / name).is_dir():
                    raise SNNetError(f"data folder not found: {root / sub / name}")
