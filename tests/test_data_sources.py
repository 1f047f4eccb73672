"""Classification data through timm's dataset factory (issue 33, point 2): tar files and Hugging Face datasets, made
here from the same images as an ImageFolder tree, read as that tree reads them; training on them; bad input."""
import hashlib
import io
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image

from helpers import read_jsonl, snnet, write_config
from snnet import SNNetError, load_config
from snnet.tasks.classification.data import build_datasets

CLASSES = ("circle", "square", "triangle")
COUNTS = {"train": 4, "val": 2}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The same PNGs as an ImageFolder tree, as a tar file per split, and as a Hugging Face dataset (parquet)."""
    base = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    folder, tars, hf = base / "folder", base / "tar", base / "hf" / "data"
    tars.mkdir()
    hf.mkdir(parents=True)
    for split, n in COUNTS.items():
        rows = {"image": [], "label": []}
        with tarfile.open(tars / f"{split}.tar", "w") as tar:
            for c, name in enumerate(CLASSES):
                for i in range(n):
                    buf = io.BytesIO()
                    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buf, format="PNG")
                    path = folder / split / name / f"{i}.png"
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(buf.getvalue())
                    tar.add(path, arcname=f"{name}/{i}.png")
                    rows["image"].append({"bytes": buf.getvalue(), "path": None})
                    rows["label"].append(c)
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
        hf_split = "validation" if split == "val" else split
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hf / f"{hf_split}-00000-of-00001.parquet"))
    return {"imagefolder": folder, "tar": tars, "hfds": base / "hf"}


@pytest.fixture(autouse=True)
def offline_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def contents(dataset) -> list[tuple[int, str]]:
    """(class index, digest of the transformed image) of every sample, sorted: the same images whatever the order."""
    return sorted((int(y), hashlib.sha256(x.numpy().tobytes()).hexdigest()) for x, y in
                  (dataset[i] for i in range(len(dataset))))


@pytest.mark.parametrize("source", ["tar", "hfds"])
def test_each_source_reads_the_imagefolders_images_and_classes(sources, source):
    folder_cfg = load_config("quickstart", ["data.dataset=imagefolder", f"data.root={sources['imagefolder']}"])
    cfg = load_config("quickstart", [f"data.dataset={source}", f"data.root={sources[source]}"])
    args = (cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
    train, val, init, names = build_datasets(cfg.data, *args)
    f_train, f_val, f_init, f_names = build_datasets(folder_cfg.data, *args)
    assert names == f_names == list(CLASSES)
    assert (len(train), len(val)) == (12, 6)
    assert contents(val) == contents(f_val)
    assert contents(init) == contents(f_init)  # the least-squares images: training images, eval transform


def test_snnet_trains_on_a_tar_and_a_hugging_face_dataset(sources, tmp_path):
    for source in ("tar", "hfds"):
        (tmp_path / source).mkdir()
        cfg = write_config(tmp_path / source, data={"dataset": source, "root": str(sources[source]), "batch_size": 6},
                           train={"steps_per_epoch": 2, "init_images": 6})
        assert snnet("train", "--config", str(cfg)) == 0
        rows = read_jsonl(tmp_path / source / "run" / "results.jsonl")
        assert rows and all(0 <= r["acc1"] <= 100 for r in rows)


def test_bad_timm_sources_are_one_line_errors(sources, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    for overrides, message in [
        (["data.dataset=tar", f"data.root={empty}"], f"tar file not found: {empty}/train.tar"),
        (["data.dataset=hfds", f"data.root={sources['hfds']}", "data.val_split=test"],
         f"cannot read the hfds dataset {sources['hfds']}, split 'test': "),
        (["data.dataset=tar"], "config key 'data.root' is not set: name the tar dataset's folder of <split>.tar files"),
    ]:
        cfg = load_config("quickstart", overrides)
        with pytest.raises(SNNetError) as e:
            build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    (empty / "train.tar").write_bytes(b"not a tar file")
    cfg = load_config("quickstart", ["data.dataset=tar", f"data.root={empty}"])
    with pytest.raises(SNNetError, match=r"^cannot read the tar dataset .*, split 'train': "):
        build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
