"""The classification task: metric sums on a hand-computed case, and timm's training pipelines."""
import copy
import math

import pytest
import torch
from timm.data.auto_augment import RandAugment

from snnet.config import load_config
from snnet.errors import SNNetError
from snnet.tasks import build_task
from snnet.tasks.classification import ClassificationTask, build_transform


def tiny_config(*overrides: str):
    """The quickstart's anchors and 32x32 scenes, on a handful of images."""
    return load_config("quickstart", ["data.shapes.num_train=8", "data.shapes.num_val=4", *overrides])


def test_metric_sums_on_a_hand_computed_batch():
    task = build_task(tiny_config(), progress=False)
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0],    # target 0: top-1 and top-5
                           [5.0, 4, 3, 2, 1, 0],    # target 4: top-5 only
                           [0.0, 1, 2, 3, 4, 5]])   # target 0: neither
    targets = torch.tensor([0, 4, 0])
    sums = task.eval_batch(lambda x: logits, (torch.zeros(3, 3, 32, 32), targets), torch.device("cpu"))
    lse = math.log(sum(math.exp(v) for v in range(6)))
    assert sums.tolist() == pytest.approx([1, 2, (lse - 5) + (lse - 1) + (lse - 0), 3])
    # metrics of two such batches summed (as over batches and ranks)
    m = ClassificationTask.finalize(sums + sums)
    assert m["acc1"] == pytest.approx(100 / 3) and m["acc5"] == pytest.approx(200 / 3)
    assert m["loss"] == pytest.approx((3 * lse - 6) / 3)


@pytest.mark.parametrize("crop", ["rrc", "simple", "none"])
@pytest.mark.parametrize("auto_augment", ["3a", "rand-m9-mstd0.5-inc1", None])
def test_training_transforms(crop, auto_augment):
    cfg = tiny_config(f"augment.crop={crop}", "augment.reprob=0.25",
                      *([f"augment.auto_augment={auto_augment}"] if auto_augment else []))
    task = build_task(cfg, progress=False)
    image, target = task.train_set[0]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32 and 0 <= target < 10
    tf = build_transform(cfg.augment, cfg.data.interpolation, True, 32, (0.5,) * 3, (0.5,) * 3)
    has_rand = any(isinstance(t, RandAugment) for t in tf.transforms[1].transforms)
    assert has_rand == (auto_augment is not None and auto_augment.startswith("rand"))


def test_unknown_crop_is_a_one_line_error():
    with pytest.raises(SNNetError, match=r"^config key 'augment.crop' must be 'rrc', 'simple' or 'none', got 'center'$"):
        build_task(tiny_config("augment.crop=center"), progress=False)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_optimizers_run_torchs_fused_kernel_with_the_same_updates(name):
    from timm.optim import create_optimizer_v2

    from snnet.training import create_optimizer
    cfg = tiny_config(f"train.optimizer={name}", "train.weight_decay=0.05")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3))
    twin = copy.deepcopy(model)
    fused = create_optimizer(model, cfg.train, torch.device("cpu"))
    loop = create_optimizer_v2(twin, opt=name, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay, foreach=False)
    assert fused.defaults["fused"] and not loop.defaults["fused"]
    for _ in range(5):
        x = torch.randn(4, 8)
        for m, opt in ((model, fused), (twin, loop)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert not create_optimizer(model, tiny_config("train.optimizer=lamb").train, torch.device("cpu")).defaults.get("fused")


@pytest.mark.parametrize("config", ["quickstart", "quickstart_segmentation"])
def test_backbone_lr_scale_means_the_same_for_every_task(config):
    """Every task model holds the stitched backbone as ``backbone``: train.backbone_lr_scale scales its learning rate,
    and only its, for classification (whose heads are the anchors' classifiers) as for the dense tasks."""
    from snnet.tasks import build_model
    from snnet.training import create_optimizer

    cfg = load_config(config, ["train.backbone_lr_scale=0.1", "train.lr=0.001"])
    model = build_model(cfg, load_weights=False)
    groups = create_optimizer(model, cfg.train, torch.device("cpu")).param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    names = {n: p for n, p in model.named_parameters() if p.requires_grad}  # what the optimizer trains
    assert all(lr_of[id(p)] == pytest.approx(1e-4) for n, p in names.items() if n.startswith("backbone."))
    heads = [n for n in names if not n.startswith("backbone.")]
    assert heads and all(lr_of[id(names[n])] == pytest.approx(1e-3) for n in heads)
    if config == "quickstart":
        assert heads == ["heads.0.weight", "heads.0.bias", "heads.1.weight", "heads.1.bias"]
