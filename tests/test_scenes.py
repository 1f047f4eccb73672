import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.datasets import ImageFolder

from snnet.data import SHAPES, Scene, SceneConfig, ShapesClassification, render_scene, write_image_folder
from snnet.data.scenes import _visible, render_all

CFG = SceneConfig()
FIELDS = ("image", "semantic", "depth", "boxes", "classes", "masks", "depths")


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return [render_scene(CFG, "train", i) for i in range(200)]


def test_deterministic():
    a, b = render_scene(CFG, "train", 7), render_scene(CFG, "train", 7)
    assert a.label == b.label
    for f in FIELDS:
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    others = [render_scene(CFG, "train", 8), render_scene(CFG, "val", 7), render_scene(SceneConfig(seed=1), "train", 7)]
    for o in others:
        assert not np.array_equal(a.image, o.image)


@pytest.mark.parametrize("size", [32, 64])
def test_fields(size):
    cfg = SceneConfig(image_size=size)
    for i in range(20):
        s = render_scene(cfg, "val", i)
        k = len(s.classes)
        assert 2 <= k <= 1 + cfg.max_distractors
        assert s.image.shape == (size, size, 3) and s.image.dtype == np.uint8
        assert s.semantic.shape == (size, size) and s.semantic.dtype == np.int64
        assert s.depth.shape == (size, size) and s.depth.dtype == np.float32 and (s.depth > 0).all()
        assert s.boxes.shape == (k, 4) and s.boxes.dtype == np.float32
        assert s.classes.dtype == np.int64 and ((s.classes >= 0) & (s.classes < cfg.num_classes)).all()
        assert s.masks.shape == (k, size, size) and s.masks.dtype == bool
        assert s.depths.shape == (k,) and (s.depths > 0).all()
        assert isinstance(s.label, int) and s.label == s.classes[0]
        assert s.image.std() > 5  # not blank


def test_masks_semantic_boxes_depth(scenes):
    for s in scenes:
        assert (s.masks.sum(0) <= 1).all()  # visible masks are disjoint
        union = s.masks.any(0)
        assert (s.semantic[~union] == 0).all()
        bg = s.depth[~union]
        for k, m in enumerate(s.masks):
            assert m.sum() >= CFG.min_pixels
            assert (s.semantic[m] == s.classes[k] + 1).all()
            assert np.allclose(s.depth[m], s.depths[k])
            assert (bg > s.depths[k]).all()  # the ground plane is behind every object
            rows, cols = np.nonzero(m)
            np.testing.assert_array_equal(s.boxes[k], [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1])


def test_nearest_object_wins():
    a = np.zeros((8, 8), bool)
    a[:, :5] = True
    b = np.zeros((8, 8), bool)
    b[:, 3:] = True
    near_a, near_b = _visible([a, b], [1.0, 2.0]), _visible([a, b], [2.0, 1.0])
    assert near_a[0][:, 3:5].all() and not near_a[1][:, 3:5].any()
    assert near_b[1][:, 3:5].all() and not near_b[0][:, 3:5].any()


def test_main_object_is_largest_and_classes_balanced(scenes):
    labels = np.array([s.label for s in scenes])
    for s in scenes:
        areas = s.masks.sum((1, 2))
        assert areas[0] == areas.max() and (areas[1:] < areas[0]).all()
        assert s.label not in s.classes[1:]  # distractors are of other classes
    freq = np.bincount(labels, minlength=CFG.num_classes) / len(labels)
    assert ((freq >= 0.05) & (freq <= 0.15)).all()
    inst = np.bincount(np.concatenate([s.classes for s in scenes]), minlength=CFG.num_classes)
    assert (inst / inst.sum() >= 0.05).all()


def test_raw_pixels_do_not_reveal_class(scenes):
    # colours and textures are independent of class: nearest class-centroid on raw pixels is near chance
    x = np.stack([s.image for s in scenes]).reshape(len(scenes), -1).astype(np.float32)
    y = np.array([s.label for s in scenes])
    centroids = np.stack([x[y == c].mean(0) for c in range(CFG.num_classes)])
    val = [render_scene(CFG, "val", i) for i in range(200)]
    xv = np.stack([s.image for s in val]).reshape(len(val), -1).astype(np.float32)
    pred = ((xv[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (pred == np.array([s.label for s in val])).mean() < 0.25


def test_config_validation():
    with pytest.raises(ValueError):
        SceneConfig(num_classes=len(SHAPES) + 1)
    s = render_scene(SceneConfig(num_classes=len(SHAPES), image_size=32), "train", len(SHAPES) - 1)
    assert s.label == len(SHAPES) - 1


def test_classification_dataset():
    ds = ShapesClassification("val", 12)
    assert len(ds) == 12 and ds.classes == list(SHAPES[:10])
    img, label = ds[3]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (64, 64)
    assert isinstance(label, int) and label == ds.targets[3] == render_scene(CFG, "val", 3).label
    np.testing.assert_array_equal(np.asarray(img), render_scene(CFG, "val", 3).image)
    assert ds[-1][1] == ds[11][1]
    with pytest.raises(IndexError):
        ds[12]
    tds = ShapesClassification("val", 12, SceneConfig(image_size=32), transform=transforms.ToTensor())
    x, y = tds[0]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    xb, yb = next(iter(torch.utils.data.DataLoader(tds, batch_size=4)))
    assert xb.shape == (4, 3, 32, 32) and yb.tolist() == tds.targets[:4]


def test_preloading_in_worker_processes_renders_the_same_scenes(monkeypatch):
    import multiprocessing
    pools, get_context = [], multiprocessing.get_context
    monkeypatch.setattr(multiprocessing, "get_context", lambda m: pools.append(m) or get_context(m))
    cfg = SceneConfig(image_size=16)
    n = 2000  # the smallest set rendered by a pool of worker processes
    serial = [render_scene(cfg, "train", i) for i in range(n)]
    maps = render_all(cfg, "train", n, ("image", "depth"), progress=False)
    assert len(maps) == n and pools == (["fork"] if len(os.sched_getaffinity(0)) > 1 else [])
    for s, (img, depth) in zip(serial, maps):
        np.testing.assert_array_equal(img, s.image)
        np.testing.assert_array_equal(depth, s.depth)
    ds = ShapesClassification("train", n, cfg, preload=True, progress=False)
    assert all(np.array_equal(np.asarray(ds[i][0]), serial[i].image) for i in range(n))


def test_write_image_folder(tmp_path):
    cfg = SceneConfig(image_size=32)
    root = write_image_folder(tmp_path / "shapes", cfg, num_train=20, num_val=10)
    assert not list(root.rglob("*.tmp"))
    for split, n in (("train", 20), ("val", 10)):
        folder = ImageFolder(str(root / split))
        ds = ShapesClassification(split, n, cfg)
        assert len(folder) == n and len(folder.classes) == cfg.num_classes
        assert [c.split("_", 1)[1] for c in folder.classes] == ds.classes
        # files are sorted by name = index within each class folder; match them back to rendered scenes
        for path, target in folder.samples:
            index = int(Path(path).stem)
            assert target == ds.targets[index]
            np.testing.assert_array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(ds[index][0]))


@pytest.mark.parametrize("config", ["quickstart", "quickstart_segmentation", "quickstart_depth", "quickstart_detection"])
def test_an_evaluation_task_leaves_the_training_split_unread(monkeypatch, config):
    """`snnet eval` builds its task with train=False: no training scene is rendered, the validation set is
    the same as a training run's."""
    from snnet.config import load_config
    from snnet.data import scenes
    from snnet.tasks import build_task
    rendered = []

    def spy(config, split, index):
        rendered.append(split)
        return render_scene(config, split, index)
    monkeypatch.setattr(scenes, "render_scene", spy)  # every view of the scenes renders through it
    cfg = load_config(config, ["data.shapes.num_train=3", "data.shapes.num_val=2"])
    full = build_task(cfg, progress=False)
    assert rendered.count("train") == 3 and rendered.count("val") == 2
    rendered.clear()
    task = build_task(cfg, progress=False, train=False)
    assert rendered == ["val", "val"] and task.train_set is None and task.init_set is None
    assert len(task.val_set) == 2 and getattr(task, "num_classes", None) == getattr(full, "num_classes", None)
    for a, b in zip(full.val_set[1], task.val_set[1]):
        for x, y in zip(*((v.values() if isinstance(v, dict) else [v]) for v in (a, b))):
            assert torch.equal(torch.as_tensor(x), torch.as_tensor(y))
