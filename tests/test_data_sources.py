"""Classification data through timm's dataset factory (issue 33, point 2): tar files, Hugging Face datasets and
webdataset shards, made here from the same images as an ImageFolder tree, read as that tree reads them; training on
them; bad input."""
import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_dataset
from torch.utils.data import IterableDataset

from helpers import read_jsonl, snnet, torchrun_then_single, write_config
from snnet import SNNetError, load_config
from snnet.distributed import DistEnv
from snnet.tasks._files import First, by_index
from snnet.tasks.classification.data import build_datasets, own_shards
from snnet.training import make_train_loader

CLASSES = ("circle", "square", "triangle")
COUNTS = {"train": 4, "val": 2}


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """The same PNGs as an ImageFolder tree, as a tar file per split, and as a Hugging Face dataset (parquet)."""
    base = tmp_path_factory.mktemp("sources")
    rng = np.random.default_rng(0)
    folder, tars, hf, shards = base / "folder", base / "tar", base / "hf" / "data", base / "wds"
    for d in (tars, hf, shards):
        d.mkdir(parents=True)
    info = {"name": "scenes", "class_names": list(CLASSES), "splits": {}}
    for split, n in COUNTS.items():
        rows = {"image": [], "label": []}
        samples = []
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
                    samples.append((f"{name}_{i}", buf.getvalue(), c))
        features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(CLASSES))})
        hf_split = "validation" if split == "val" else split
        datasets.Dataset.from_dict(rows, features=features).to_parquet(str(hf / f"{hf_split}-00000-of-00001.parquet"))
        # webdataset: two shards a split, each sample a key's .png and .cls
        names = [f"{split}-{k:03d}.tar" for k in range(2)]
        for k, shard in enumerate(names):
            with tarfile.open(shards / shard, "w") as tar:
                for key, png, c in samples[k::2]:
                    for suffix, data in ((".png", png), (".cls", str(c).encode())):
                        member = tarfile.TarInfo(key + suffix)
                        member.size = len(data)
                        tar.addfile(member, io.BytesIO(data))
        lengths = [len(samples[k::2]) for k in range(2)]
        info["splits"][split] = {"name": split, "num_samples": sum(lengths), "filenames": names,
                                 "shard_lengths": lengths}
    (shards / "_info.json").write_text(json.dumps(info))
    return {"imagefolder": folder, "tar": tars, "hfds": base / "hf", "wds": shards}


@pytest.fixture(autouse=True)
def offline_datasets_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def contents(dataset) -> list[tuple[int, str]]:
    """(class index, digest of the transformed image) of every sample, sorted: the same images whatever the order."""
    items = dataset if isinstance(dataset, IterableDataset) else (dataset[i] for i in range(len(dataset)))
    return sorted((int(y), hashlib.sha256(x.numpy().tobytes()).hexdigest()) for x, y in items)


@pytest.mark.parametrize("source", ["tar", "hfds", "wds"])
def test_each_source_reads_the_imagefolders_images_and_classes(sources, source):
    folder_cfg = load_config("quickstart", ["data.dataset=imagefolder", f"data.root={sources['imagefolder']}"])
    cfg = load_config("quickstart", [f"data.dataset={source}", f"data.root={sources[source]}", "data.batch_size=4"])
    args = (cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
    train, val, init, names = build_datasets(cfg.data, *args)
    f_train, f_val, f_init, f_names = build_datasets(folder_cfg.data, *args)
    assert names == f_names == list(CLASSES)
    assert (len(train), len(val)) == (12, 6)
    assert contents(val) == contents(f_val)
    # the least-squares images: training images, eval transform (streamed shards: shuffled, whole batches)
    assert contents(init) == contents(f_init)


def test_an_evaluation_split_of_shards_is_read_once_across_ranks(sources):
    """Each of two ranks reads its own shard of the validation split, no sample repeated or missing."""
    cfg = load_config("quickstart", ["data.dataset=wds", f"data.root={sources['wds']}"])
    tf = build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)[1].transform
    shares = []
    for rank in range(2):
        val = create_dataset("wds/", root=str(sources["wds"]), split="val", transform=tf)
        val.reader.dist_rank, val.reader.dist_num_replicas = rank, 2  # as under torchrun
        own_shards(val)
        shares.append(contents(val))
        assert len(val) == 3
    folder_cfg = load_config("quickstart", ["data.dataset=imagefolder", f"data.root={sources['imagefolder']}"])
    whole = build_datasets(folder_cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)[1]
    assert sorted(shares[0] + shares[1]) == contents(whole) and not set(shares[0]) & set(shares[1])


def test_snnet_trains_on_a_tar_and_a_hugging_face_dataset(sources, tmp_path):
    for source in ("tar", "hfds", "wds"):
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
        (["data.dataset=wds", f"data.root={empty}"],
         f"no _info.json in {empty}: a webdataset folder lists its splits' shards there"),
    ]:
        cfg = load_config("quickstart", overrides)
        with pytest.raises(SNNetError) as e:
            build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    (empty / "_info.json").write_text(json.dumps({"splits": {"train": {}}}))
    cfg = load_config("quickstart", ["data.dataset=wds", f"data.root={empty}"])
    with pytest.raises(SNNetError, match=r'_info\.json names no classes: add "num_classes" \(or "class_names"\)$'):
        build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
    for key, value, message in (("num_classes", "abc", "must be a positive integer, got 'abc'"),
                                ("num_classes", 0, "must be a positive integer, got 0"),
                                ("class_names", "abc", "must be a list of the class names, got 'abc'"),
                                ("class_names", [], "must be a list of the class names, got []")):
        (empty / "_info.json").write_text(json.dumps({"splits": {"train": {}}, key: value}))
        with pytest.raises(SNNetError) as e:
            build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)
        assert str(e.value) == f'{empty}/_info.json: "{key}" {message}'
    with pytest.raises(SNNetError, match=r"^config: augment\.repeated_aug samples images by index; webdataset shards "):
        load_config("quickstart", ["data.dataset=wds", f"data.root={empty}", "augment.repeated_aug=3"])
    (empty / "train.tar").write_bytes(b"not a tar file")
    cfg = load_config("quickstart", ["data.dataset=tar", f"data.root={empty}"])
    with pytest.raises(SNNetError, match=r"^cannot read the tar dataset .*, split 'train': "):
        build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)


def test_what_reads_images_by_index_refuses_streamed_shards_in_one_line(sources):
    cfg = load_config("quickstart", ["data.dataset=wds", f"data.root={sources['wds']}"])
    val = build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)[1]
    with pytest.raises(SNNetError, match=r"^the cascade's calibration reads images by index, which streamed webdataset "
                                         r"shards \(data.dataset: wds\) do not offer: point it at an imagefolder, tar "
                                         r"or hfds copy of the data$"):
        by_index(val, "the cascade's calibration")


def test_torchrun_on_shards_evaluates_every_image_once(sources, tmp_path):
    """Two processes train on the shards (timm shares them by rank) and evaluate each rank's own validation shard:
    the figures equal one process's evaluation of the saved model."""
    cfg = write_config(tmp_path, data={"dataset": "wds", "root": str(sources["wds"]), "batch_size": 6},
                       train={"init_images": 6})
    dist_rows, single = torchrun_then_single(cfg, tmp_path / "single")
    assert all(r["images"] == 6 for r in dist_rows + single)
    for a, b in zip(dist_rows, single):
        assert (a["stitch_id"], a["acc1"], a["acc5"]) == (b["stitch_id"], b["acc1"], b["acc5"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_loader_workers_split_the_shards_after_the_least_squares_pass(sources):
    """The least-squares pass reads the stream in this process; the training loader's two workers, forked later,
    must still each read their own shard: one epoch gives every training image once."""
    cfg = load_config("quickstart", ["data.dataset=wds", f"data.root={sources['wds']}", "data.batch_size=6",
                                     "data.workers=2"])
    init = build_datasets(cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)[2]
    assert len(list(First(init, 4))) == 4
    loader = make_train_loader(init, cfg.data, 1, 0, DistEnv(0, 1, 0, torch.device("cpu")))
    seen = sorted((int(y), hashlib.sha256(x.numpy().tobytes()).hexdigest())
                  for xs, ys in loader for x, y in zip(xs, ys))
    folder_cfg = load_config("quickstart", ["data.dataset=imagefolder", f"data.root={sources['imagefolder']}"])
    assert seen == contents(build_datasets(folder_cfg.data, cfg.augment, 32, (0.5,) * 3, (0.5,) * 3, False)[2])


def batches(cfg, seed: int = 0) -> tuple[object, list]:
    """The training loop's batches of one epoch, as ``fit`` reads them on the CPU, after seeding the augmentations'
    generators (torch's and Python's)."""
    from snnet.tasks import build_task

    task = build_task(cfg, progress=False)
    env = DistEnv(0, 1, 0, torch.device("cpu"))
    loader = task.training_batches(lambda dataset, collate: make_train_loader(dataset, cfg.data, 1, 0, env, collate),
                                   env.device)
    shuffled = loader.dataset if isinstance(loader.dataset, IterableDataset) else loader.sampler
    shuffled.set_epoch(0)
    torch.manual_seed(seed)
    random.seed(seed)
    return loader, list(loader)


def test_timms_prefetcher_gives_the_batches_normalised_on_the_device(sources):
    """data.prefetcher: uint8 images from the workers, normalised by timm's PrefetchLoader: the same batches as the
    workers' own normalisation (to float rounding), from a folder and from streamed shards; on by default on CUDA
    only; random erasing moves to the device."""
    from timm.data.loader import PrefetchLoader

    for source in ("imagefolder", "wds"):
        common = [f"data.dataset={source}", f"data.root={sources[source]}", "data.batch_size=4", "data.workers=0",
                  "augment.crop=simple", "augment.auto_augment=3a", "augment.reprob=0", "augment.mixup=0",
                  "augment.cutmix=0"]
        plain_loader, plain = batches(load_config("quickstart", common + ["data.prefetcher=false"]))
        auto_loader, auto = batches(load_config("quickstart", common))  # auto: the CPU keeps the plain loader
        loader, fetched = batches(load_config("quickstart", common + ["data.prefetcher=true"]))
        assert not isinstance(plain_loader, PrefetchLoader) and not isinstance(auto_loader, PrefetchLoader)
        assert isinstance(loader, PrefetchLoader) and len(loader) == len(plain_loader)
        assert len(fetched) == len(plain) == len(auto) >= 2
        for (x, y), (x_plain, y_plain), (x_auto, _) in zip(fetched, plain, auto):
            assert x.dtype == torch.float32 and x.shape == x_plain.shape and torch.equal(y, y_plain)
            assert torch.equal(x_auto, x_plain)
            assert (x - x_plain).abs().max() < 1e-6 and x.std() > 0.1, source  # real images, not zeros
    erased = ["data.dataset=imagefolder", f"data.root={sources['imagefolder']}", "data.batch_size=4",
              "data.workers=0", "augment.reprob=1", "data.prefetcher=true"]
    loader, fetched = batches(load_config("quickstart", erased))
    assert loader.random_erasing is not None
    # every image has its erased box: constant erasing sets it to zero after normalisation
    assert all(bool((x == 0).flatten(1).any(dim=1).all()) for x, _ in fetched)
    _, kept = batches(load_config("quickstart", erased[:-2] + ["augment.reprob=0", "data.prefetcher=true"]))
    assert not any(bool((x == 0).any()) for x, _ in kept)


def test_snnet_trains_through_the_prefetcher_and_resumes(tmp_path):
    cfg = write_config(tmp_path, data={"prefetcher": True}, augment={"reprob": 0.25},
                       train={"epochs": 1, "steps_per_epoch": 2, "init_images": 16})
    assert snnet("train", "--config", str(cfg)) == 0
    assert snnet("train", "--config", str(cfg), "train.epochs=2") == 0
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1] and all(np.isfinite(r["train_loss"]) for r in log)


def test_the_prefetcher_key_takes_auto_true_or_false():
    with pytest.raises(SNNetError) as e:
        load_config("quickstart", ["data.prefetcher=maybe"])
    assert str(e.value) == "config key 'data.prefetcher' must be auto, true or false, got 'maybe'"
    with pytest.raises(SNNetError, match=r"^config key 'data.prefetcher' belongs to classification: a depth run "):
        load_config("quickstart_depth", ["data.prefetcher=true"])
