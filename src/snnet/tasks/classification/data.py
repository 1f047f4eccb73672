"""Classification data: ImageFolder trees, tar files and Hugging Face datasets (read by timm's dataset factory) or
the built-in scenes, timm's ImageNet pipelines, DeiT's teacher."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import timm
import torch
from PIL import Image
from timm.data import create_dataset, create_transform
from torch.utils.data import Dataset
from torchvision import datasets
from torchvision import transforms as T

from ...config import DataSection
from ...data import ShapesClassification
from ...errors import SNNetError, first_line
from ...files import read_json
from ...selection import is_integer
from .._files import split_names, with_transform
from .config import ClassificationAugmentSection, DistillationSection


def _read_rgb(path: str) -> Image.Image:
    try:
        with open(path, "rb") as f:
            return Image.open(f).convert("RGB")
    except Exception as e:  # a corrupt or foreign file among the images
        raise SNNetError(f"cannot read image {path}: {type(e).__name__}") from None


def build_transform(aug: ClassificationAugmentSection, interp: str, train: bool, input_size: int, mean, std,
                    prefetch: bool = False):
    """timm's ImageNet pipelines (``interp``: ``data.interpolation``); ``crop: simple`` is DeiT-3's resize + padded
    random crop. ``prefetch``: uint8 tensors out, for timm's prefetcher to normalise and erase on the device."""
    if not train:
        return create_transform(input_size, is_training=False, crop_pct=aug.eval_crop_ratio,
                                interpolation=interp, mean=mean, std=std)
    primary, secondary, final = create_transform(
        input_size, is_training=True, hflip=aug.hflip, color_jitter=aug.color_jitter or None,
        auto_augment=aug.auto_augment, re_prob=aug.reprob, interpolation=interp, mean=mean, std=std, separate=True,
        use_prefetcher=prefetch)
    mode = T.InterpolationMode(interp)
    if aug.crop == "simple":
        primary = T.Compose([T.Resize(input_size, interpolation=mode),
                             T.RandomCrop(input_size, padding=4, padding_mode="reflect"), T.RandomHorizontalFlip(aug.hflip)])
    elif aug.crop == "none":
        primary = T.Compose([T.Resize(input_size, interpolation=mode), T.CenterCrop(input_size),
                             T.RandomHorizontalFlip(aug.hflip)])
    return T.Compose([primary, secondary, final])


def build_datasets(data: DataSection, aug: ClassificationAugmentSection, input_size: int, mean, std,
                   progress: bool = True,
                   train: bool = True) -> tuple[Dataset | None, Dataset, Dataset | None, list[str]]:
    """(train, val, init, class names) from an ImageFolder tree or the built-in shapes scenes; without
    ``train``, train and init are None.

    ``init`` holds the training images under the deterministic eval pipeline, for the least-squares fit.
    """
    train_tf = build_transform(aug, data.interpolation, True, input_size, mean, std)
    val_tf = build_transform(aug, data.interpolation, False, input_size, mean, std)
    if data.dataset == "shapes":
        s = data.shapes
        scenes = s.scene_config()
        train_set = (ShapesClassification("train", s.num_train, scenes, train_tf, preload=s.preload, progress=progress)
                     if train else None)
        val = ShapesClassification("val", s.num_val, scenes, val_tf, preload=s.preload, progress=progress)
    elif data.dataset in TIMM_SOURCES:
        splits = splits_of(data)
        names = wds_class_names(data) if data.dataset == "wds" else None  # a listing's, read before its shards
        train_set = timm_split(data, splits[0], train_tf, training=True) if train else None
        val = timm_split(data, splits[1], val_tf)
        # each split read once: the others' classes come from the datasets just built
        names = names or split_classes(data, train_set or val, val)
        return train_set, val, with_transform(train_set, val_tf) if train else None, names
    else:
        data_classes(data)  # class folders present and the same in both splits
        roots = image_folder_roots(data)
        folder = lambda root, tf: datasets.ImageFolder(str(root), transform=tf, loader=_read_rgb)
        try:
            train_set, val = folder(roots[0], train_tf) if train else None, folder(roots[1], val_tf)
        except FileNotFoundError as e:  # no class folders, or no images in them
            raise SNNetError(f"no images under {data.root}: {first_line(e)}") from None
    init = with_transform(train_set, val_tf) if train else None
    return train_set, val, init, list(val.classes)


def build_teacher(d: DistillationSection, num_classes: int) -> torch.nn.Module:
    """The frozen eval-mode teacher of ``train.distillation``, with a head for ``num_classes``."""
    try:
        teacher = timm.create_model(d.teacher, pretrained=d.pretrained, num_classes=num_classes)
    except (OSError, RuntimeError) as e:  # no network, no cache, or weights for another head
        raise SNNetError(f"cannot load the teacher {d.teacher!r} for {num_classes} classes "
                         f"({first_line(e)})") from None
    return teacher.eval().requires_grad_(False)


def image_folder_roots(data: DataSection) -> list[Path]:
    """``root/train`` and ``root/val`` of an ImageFolder dataset, or a one-line error."""
    if not data.root:
        raise SNNetError("config key 'data.root' is not set: point it at a folder with train/ and val/ image folders")
    roots = [Path(data.root) / split for split in split_names(data, "train", "val")]
    for root in roots:
        if not root.is_dir():
            raise SNNetError(f"data folder not found: {root}")
    return roots


def class_folders(root: Path) -> list[str]:
    """The class folders of one ImageFolder split, sorted (torchvision's class order)."""
    return sorted(e.name for e in os.scandir(root) if e.is_dir())


# data.dataset values timm's dataset factory reads: a tar file per split (root/<split>.tar, a class folder each), a
# Hugging Face dataset (data.root names it: a hub id, or a local folder of its files), its "image" and "label";
# webdataset shards (root/_info.json lists each split's shards and sizes, and the classes), streamed
TIMM_SOURCES = ("tar", "hfds", "wds")


def splits_of(data: DataSection) -> tuple[str, str]:
    """The (train, val) split names: the config's, else the dataset's own (a Hugging Face dataset's "validation")."""
    return split_names(data, "train", "validation" if data.dataset == "hfds" else "val")


ROOTS = {"tar": "folder of <split>.tar files", "hfds": "Hugging Face id or folder", "wds": "folder of shards"}
EXTRAS = {"hfds": "datasets", "wds": "webdataset"}  # the package each source needs (snnet's extra of that name)


def timm_split(data: DataSection, split: str, transform=None, training: bool = False) -> Dataset:
    """One split of a ``TIMM_SOURCES`` dataset through timm's ``create_dataset``: (image, class index) pairs; a
    webdataset split streams (``training``: shuffled by timm, each rank its shards, padded to whole batches;
    otherwise each rank reads its own shards once, so summed metrics stay exact)."""
    if not data.root:
        raise SNNetError(f"config key 'data.root' is not set: name the {data.dataset} dataset's {ROOTS[data.dataset]}")
    package = EXTRAS.get(data.dataset)
    if package and importlib.util.find_spec(package) is None:
        raise SNNetError(f"data.dataset {data.dataset!r} needs {package}: pip install 'snnet[{data.dataset}]'")
    if data.dataset == "tar":
        path = Path(data.root) / f"{split}.tar"
        if not path.is_file():
            raise SNNetError(f"tar file not found: {path}")
        name, root = "", str(path)
    elif data.dataset == "wds":
        wds_info(data)  # a listing of the shards, read before timm does
        name, root = "wds/", data.root
    else:
        name, root = f"hfds/{data.root}", None
    try:
        dataset = create_dataset(name, root=root, split=split, transform=transform, is_training=training,
                                 batch_size=data.batch_size)
    except Exception as e:  # datasets and tarfile raise their own errors for a missing split or a damaged file
        raise SNNetError(f"cannot read the {data.dataset} dataset {data.root}, split {split!r}: "
                         f"{first_line(e)}") from None
    if data.dataset == "wds" and not training:
        own_shards(dataset)
    return dataset


def wds_info(data: DataSection) -> dict:
    """A webdataset folder's ``_info.json``: its splits (``filenames``, ``shard_lengths``, ``num_samples``) and its
    classes (``class_names``, or ``num_classes``), as timm's webdataset reader reads it."""
    path = Path(data.root) / "_info.json"
    if not path.is_file():
        raise SNNetError(f"no _info.json in {data.root}: a webdataset folder lists its splits' shards there")
    info = read_json(path, "webdataset listing")
    if not isinstance(info, dict) or not isinstance(info.get("splits"), dict):
        raise SNNetError(f"{path} has no 'splits' mapping of each split's shards")
    return info


def wds_class_names(data: DataSection) -> list[str]:
    """A webdataset folder's classes, as its ``_info.json`` names or counts them."""
    info = wds_info(data)
    names, count = info.get("class_names"), info.get("num_classes")
    if names is not None:
        if not isinstance(names, list) or not names:
            raise SNNetError(f"{data.root}/_info.json: \"class_names\" must be a list of the class names, "
                             f"got {names!r}")
        return [str(n) for n in names]
    if count is not None:
        if not is_integer(count) or count < 1:
            raise SNNetError(f"{data.root}/_info.json: \"num_classes\" must be a positive integer, got {count!r}")
        return [str(i) for i in range(count)]
    raise SNNetError(f"{data.root}/_info.json names no classes: add \"num_classes\" (or \"class_names\")")


def own_shards(dataset) -> None:
    """Give this rank every world-size-th shard of an evaluation split to read once, as a single reader: timm's
    reader would split them too, but fill every rank up to the same count by repeating samples."""
    reader = dataset.reader
    rank, world, info = reader.dist_rank, reader.dist_num_replicas, reader.split_info
    files, lengths = info.filenames[rank::world], info.shard_lengths[rank::world]
    reader.split_info = replace(info, filenames=files, shard_lengths=lengths, num_samples=sum(lengths))
    reader.num_samples = reader.split_info.num_samples
    reader.dist_rank, reader.dist_num_replicas = 0, 1


def timm_classes(dataset: Dataset) -> list[str]:
    """Class names of a dataset from timm's factory, in index order."""
    reader = dataset.reader  # the tar reader names its mapping class_name_to_idx, the others class_to_idx
    mapping = getattr(reader, "class_to_idx", None) or getattr(reader, "class_name_to_idx", {})
    return [name for name, _ in sorted(mapping.items(), key=lambda kv: kv[1])]


def data_class_names(data: DataSection) -> list[str]:
    """The class names of a folder or timm-read dataset, read cheaply (folder names or the dataset's index, not
    images) and checked to be the same in both splits."""
    if data.dataset == "wds":
        return wds_class_names(data)
    if data.dataset in TIMM_SOURCES:
        return split_classes(data, *(timm_split(data, split) for split in splits_of(data)))
    roots = image_folder_roots(data)
    return same_classes(*(class_folders(r) for r in roots), roots[0], f"{roots[0]} and {roots[1]}", "class folders")


def split_classes(data: DataSection, train: Dataset, val: Dataset) -> list[str]:
    """The classes of a tar or Hugging Face dataset's two splits, checked to agree."""
    splits = splits_of(data)
    where = f"the {data.dataset} dataset {data.root}'s {splits[0]}"
    return same_classes(timm_classes(train), timm_classes(val), f"{where} split", f"{where} and {splits[1]} splits",
                        "classes")


def same_classes(train: list[str], val: list[str], first, both: str, what: str) -> list[str]:
    """``train``'s classes when there are some and ``val`` has the same; one line naming ``what`` differs otherwise."""
    if not train:
        raise SNNetError(f"no {what} in {first}")
    if train != val:
        raise SNNetError(f"{both} have different {what}")
    return train


def data_classes(data: DataSection) -> int:
    """How many classes the data has, read before any image is loaded."""
    return data.shapes.num_classes if data.dataset == "shapes" else len(data_class_names(data))
