"""Reading the files of datasets: RGB images and single-channel PNG maps, with one-line errors; split names,
another transform over the same files, and what a streamed dataset offers."""
from __future__ import annotations

import copy
import itertools
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, IterableDataset

from ..errors import SNNetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: Path) -> np.ndarray:
    """(H, W, 3) uint8."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except Exception as e:  # a corrupt or foreign file among the images
        raise SNNetError(f"cannot read image {path}: {type(e).__name__}") from None


def read_map(path: Path, kind: str, modes: tuple[str, ...], expected: str, why: str) -> np.ndarray:
    """(H, W) float64 values of a PNG whose PIL mode is one of ``modes``, else a one-line error saying what a
    ``kind`` file must be (``expected``) and ``why``."""
    try:
        with Image.open(path) as im:
            if im.mode not in modes:
                raise SNNetError(f"{kind} {path} is not {expected} (mode {im.mode}): {why}")
            return np.asarray(im).astype(np.float64)
    except SNNetError:
        raise
    except Exception as e:
        raise SNNetError(f"cannot read {kind} {path}: {type(e).__name__}") from None


def dataset_root(data, where: str) -> Path | None:
    """The dense dataset's root folder, None for the built-in scenes; a one-line error when ``data.root`` is not
    set (``where`` says what it must point at)."""
    if data.dataset == "shapes":
        return None
    if not data.root:
        raise SNNetError(f"config key 'data.root' is not set: point it at {where}")
    return Path(data.root)


def collate_lists(batch: list) -> tuple[list, list]:
    """Images and targets as lists, not stacked tensors: evaluation images keep their own sizes."""
    return [b[0] for b in batch], [b[1] for b in batch]


def split_names(data, train: str, val: str) -> tuple[str, str]:
    """``data.train_split`` / ``data.val_split`` when the config sets them, else the dataset's own names."""
    return data.train_split or train, data.val_split or val


class First(IterableDataset):
    """The first ``n`` items of a streamed dataset, read through a copy of its reader: the dataset's own reader stays
    unstarted, so loader workers forked from this process later still split its shards among themselves."""

    def __init__(self, dataset: IterableDataset, n: int) -> None:
        self.dataset, self.n = dataset, n

    def __iter__(self):
        stream = copy.copy(self.dataset)
        reader = getattr(stream, "reader", None)
        if reader is not None:  # timm's: it starts its pipeline (and fixes its worker id) on first use
            stream.reader = copy.copy(reader)
            stream.reader.ds = None
        return itertools.islice(iter(stream), self.n)


def by_index(dataset: Dataset, what: str) -> Dataset:
    """``dataset``, which ``what`` reads by index; a one-line error for a streamed one (webdataset shards)."""
    if isinstance(dataset, IterableDataset):
        raise SNNetError(f"{what} reads images by index, which streamed webdataset shards (data.dataset: wds) do not "
                         f"offer: point it at an imagefolder, tar or hfds copy of the data")
    return dataset


def with_transform(dataset: Dataset, transform) -> Dataset:
    """The same files under another transform (the least-squares fit's)."""
    other = copy.copy(dataset)
    other.transform = transform
    return other
