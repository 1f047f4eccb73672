"""The packaged recipes do what the reference's runs did (issue 18; SPEC sections 8, 10-12), asserted on the
effective values the frameworks produced, not on the wording of the reference's config files."""
from __future__ import annotations

import math

import pytest
import torch
from timm.layers import DropPath

from snnet import AnchorConfig, SNNetError, create_anchor
from snnet.cli import main
from snnet.config import load_config
from snnet.training import create_optimizer
from snnet.tasks import build_model
from helpers import drop_path_rates, read_jsonl, write_config

IMAGENET = {"imagenet_deit3_s_l": (0.05, 0.4), "imagenet_deit3_s_b": (0.05, 0.15), "imagenet_deit3_b_l": (0.15, 0.4),
            "imagenet_deit3_s_b_l": (0.05, 0.15, 0.4)}
SEGMENTATION = ("ade20k_setr_deit3_s_l", "ade20k_setr_deit3_b_l", "coco_stuff10k_setr_deit3_s_l",
                "coco_stuff10k_setr_deit3_b_l")


def meta_model(name: str, *overrides: str):
    cfg = load_config(name, ["data.root=/x", *overrides])
    classes = None if cfg.task in ("classification", "depth") else 150
    return cfg, build_model(cfg, num_classes=classes, load_weights=False, device="meta")


def anchors_of(model):
    return getattr(model, "backbone", model).anchors


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_drop_path_is_the_same_in_every_block(name):
    """DeiT-3's models_v2.py: dpr = [drop_path_rate for i in range(depth)]; timm would ramp from 0."""
    _, model = meta_model(name)
    for anchor, rate in zip(anchors_of(model), IMAGENET[name]):
        assert drop_path_rates(anchor) == [rate] * len(anchor.blocks)
    layers = [*model.backbone.sl_layers, *model.backbone.ls_layers]
    assert layers and not any(isinstance(m, DropPath) for layer in layers for m in layer.modules())
    with pytest.raises(SNNetError, match="unknown drop-path rule 'ramp': expected one of linear, constant"):
        create_anchor(AnchorConfig("deit3_small_patch16_224", kwargs={"device": "meta"}, drop_path="ramp"))


@pytest.mark.parametrize("name,rates", [*((n, (0.1, 0.1)) for n in SEGMENTATION),
                                        ("coco_maskrcnn_deit3_s_l", (0.1, 0.4))])
def test_dense_recipes_ramp_drop_path_linearly_from_zero(name, rates):
    """mmseg's (and ViTDet's) rule: block i of d gets rate x i / (d - 1)."""
    _, model = meta_model(name)
    for anchor, rate in zip(anchors_of(model), rates):
        d = len(anchor.blocks)
        assert drop_path_rates(anchor) == pytest.approx([rate * i / (d - 1) for i in range(d)])


@pytest.mark.parametrize("name", IMAGENET)
def test_imagenet_lamb_as_apex_fusedlamb_ran(name):
    """eps 1e-8 (--opt-eps), betas (0.9, 0.999), decay 0.02 except on 1-D parameters and biases (timm 0.6.12's
    filter: the reference model defines no no_weight_decay, so position embeddings and class tokens decay)."""
    cfg, _ = meta_model(name)
    _, model = meta_model("imagenet_deit3_s_l", "model.anchors.0.kwargs.depth=2", "model.anchors.1.kwargs.depth=4",
                          "model.anchors.0.kwargs.embed_dim=60", "model.anchors.1.kwargs.embed_dim=128")
    model = model.to_empty(device="cpu")
    opt = create_optimizer(model, cfg.train, torch.device("cpu"))
    assert type(opt).__name__ == "Lamb"
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        assert g["eps"] == 1e-8 and g["betas"] == (0.9, 0.999) and g["lr"] == pytest.approx(3e-5)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert decay[id(p)] == (0.0 if p.ndim <= 1 or n.endswith(".bias") else 0.02), n
    assert {n.split(".")[-1] for n, p in model.named_parameters() if decay.get(id(p)) == 0.02} >= {"pos_embed",
                                                                                                   "cls_token"}


def expected_cosine_lr(t: int, epochs: int, warmup: int, lr: float, warmup_lr: float, min_lr: float) -> float:
    """timm's CosineLRScheduler at epoch t, written out by hand (warm-up not a prefix)."""
    if t < warmup:
        return warmup_lr + t * (lr - warmup_lr) / warmup
    return min_lr + 0.5 * (lr - min_lr) * (1 + math.cos(math.pi * t / epochs))


@pytest.mark.parametrize("lag", [0, 1])
def test_epoch_learning_rates_with_the_reference_lag(tmp_path, monkeypatch, lag):
    """main.py calls lr_scheduler.step(epoch) after epoch `epoch`: epoch e >= 1 trains at lr(e - 1), epochs 0 and
    1 both at the warm-up start; timm's convention (lag 0) steps to e + 1. A run stopped and resumed keeps it."""
    import snnet.training as training
    train = {"epochs": 4, "warmup_epochs": 2, "lr": 1e-3, "warmup_lr": 1e-5, "min_lr": 1e-5, "scheduler_lag": lag}
    cfg = write_config(tmp_path, train=train, data={"shapes": {"image_size": 32, "num_train": 32, "num_val": 8}})
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    got = [line["lr"] for line in read_jsonl(tmp_path / "run" / "log.jsonl")]
    want = [expected_cosine_lr(max(e - lag, 0), 4, 2, 1e-3, 1e-5, 1e-5) for e in range(4)]
    assert got == pytest.approx(want, rel=1e-9)

    save = training.save_checkpoint

    def stop_after_epoch_1(path, model, optimizer, scheduler, scaler, epoch, *args):
        save(path, model, optimizer, scheduler, scaler, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    resumed = tmp_path / "resumed"
    monkeypatch.setattr(training, "save_checkpoint", stop_after_epoch_1)
    assert main(["train", "--config", str(cfg), "--no-progress", f"output_dir={resumed}"]) == 130  # interrupted
    monkeypatch.setattr(training, "save_checkpoint", save)
    assert main(["train", "--config", str(cfg), "--no-progress", f"output_dir={resumed}"]) == 0
    assert [line["lr"] for line in read_jsonl(resumed / "log.jsonl")] == pytest.approx(want, rel=1e-9)
    assert {n: load_config(n).train.scheduler_lag for n in IMAGENET} == dict.fromkeys(IMAGENET, 1)


def kaiming_fan_out_std(w: torch.Tensor) -> float:
    return math.sqrt(2.0 / (w.shape[0] * w[0, 0].numel()))


def assert_mmcv_conv_module(conv, name):
    """Kaiming normal, fan_out, ReLU gain (std sqrt(2 / fan_out), mean 0); bias 0."""
    w = conv.weight.detach()
    assert w.std().item() == pytest.approx(kaiming_fan_out_std(w), rel=0.05), name
    assert abs(w.mean().item()) < 0.05 * kaiming_fan_out_std(w), name
    assert conv.bias is None or (conv.bias == 0).all(), name


def assert_torch_default(layer, name):
    """PyTorch's own: uniform within 1/sqrt(fan_in), non-zero biases."""
    w = layer.weight.detach()
    bound = 1 / math.sqrt(w[0].numel())  # torch's fan_in: dimension 1 times the kernel (transposed convs too)
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound, name
    assert (layer.bias != 0).all(), name


def test_setr_heads_are_initialised_as_mmseg_does():
    from snnet.tasks.segmentation.heads import SETRUpHead
    torch.manual_seed(0)
    for num_convs in (1, 2):  # the decode head, an auxiliary head
        head = SETRUpHead(1024, 256, 150, num_convs)
        w = head.conv_seg.weight.detach()
        assert w.std().item() == pytest.approx(0.01, rel=0.05) and (head.conv_seg.bias == 0).all()
        assert (head.norm.weight == 1).all() and (head.norm.bias == 0).all()
        for k, stage in enumerate(head.up_convs):
            assert_mmcv_conv_module(stage[0].conv, f"up_convs.{k}")
            assert (stage[0].bn.weight == 1).all() and (stage[0].bn.bias == 0).all()


def test_dpt_head_is_initialised_as_the_depth_toolbox_does():
    """ConvModules (Kaiming at construction) where the reference builds them, PyTorch's defaults elsewhere."""
    from snnet.tasks.depth.heads import DPTHead
    torch.manual_seed(0)
    head = DPTHead((1024,) * 4, 256)
    modules = {}
    for name, m in head.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.Linear)):
            modules[name] = m
    conv_modules = {n for n in modules if n.endswith((".project", ".conv1", ".conv2")) or n.startswith("convs.")
                    or n == "conv"}
    assert len(conv_modules) == 4 + 4 + 2 * 7 + 4 + 1  # projections, level convs, residual units, fusions, final
    for name, m in modules.items():
        if name in conv_modules:
            assert_mmcv_conv_module(m, name)
        else:
            assert_torch_default(m, name)
    assert {n for n in modules if n not in conv_modules} == {
        *(f"reassemble.{i}.readout.0" for i in range(4)), "reassemble.0.resize", "reassemble.1.resize",
        "reassemble.3.resize", "depth_conv1", "depth_conv2", "depth_conv3"}


def pixel(rgb):
    return torch.tensor(rgb, dtype=torch.uint8).reshape(3, 1, 1)


@pytest.mark.parametrize("draw,want", [
    # brightness +10.6 truncates to uint8 after the clip: (210.6, 110.6, 60.6) -> (210, 110, 60)
    (dict(brightness=10.6), (210, 110, 60)),
    # then contrast x1.5 after saturation/hue (mode 0): 315 clips to 255
    (dict(brightness=10.6, contrast=1.5), (255, 165, 90)),
    # (210, 110, 60) is OpenCV's H 10, S 182, V 210; S x0.5 -> 91; back: (210, 210(1 - 91/255 (1 - 1/3)),
    # 210 (1 - 91/255)) = (210, 160.04, 135.06)
    (dict(brightness=10.6, saturation=0.5), (210, 160, 135)),
    # H 10 + 17 = 27 (sector 0, f 0.9): (210, 210 (1 - 182/255 x 0.1), 210 (1 - 182/255)) = (210, 195.01, 60.12)
    (dict(brightness=10.6, hue=17), (210, 195, 60)),
    # H 10 - 17 wraps to 173 (sector 5, f 0.7667): (210, 60.12, 210 (1 - 182/255 x 0.7667)) = (210, 60.12, 95.09)
    (dict(brightness=10.6, hue=-17), (210, 60, 95)),
    # contrast first (mode 1): (300, 150, 75) -> (255, 150, 75), H = (75 x 683 + 2048) >> 12 = 13 (OpenCV's fixed
    # point for 60 x 75 / 180 / 2 = 12.5), S 180; + 5 -> 18 (sector 0, f 0.6): g = 255 (1 - 180/255 x 0.4) = 183.0
    (dict(contrast=1.5, contrast_first=True, hue=5), (255, 183, 75)),
])
def test_photometric_distortion_on_hand_computed_pixels(draw, want):
    """mmseg's PhotoMetricDistortion: uint8 after every step, OpenCV's 8-bit HSV for saturation and hue."""
    from snnet.tasks.segmentation.photometric import Distortion, distort
    out = distort(pixel((200, 100, 50)), Distortion(**draw))
    assert out.dtype == torch.uint8 and out.flatten().tolist() == list(want)


def test_opencv_hsv_round_trip_and_the_transform_draws():
    from torchvision import tv_tensors
    from snnet.tasks.segmentation.photometric import PhotoMetricDistortion, hsv_to_rgb, rgb_to_hsv
    assert rgb_to_hsv(pixel((210, 110, 60))).flatten().tolist() == [10, 182, 210]
    assert rgb_to_hsv(pixel((0, 0, 0))).flatten().tolist() == [0, 0, 0]
    assert rgb_to_hsv(pixel((60, 110, 210))).flatten().tolist() == [110, 182, 210]  # 220 degrees / 2
    assert hsv_to_rgb(torch.tensor([77, 0, 128]).reshape(3, 1, 1)).flatten().tolist() == [128] * 3  # grey
    # (0, 1, 1) is v (1 - s) = 254/255/255 x 255 = 0.996 in green and blue: OpenCV's vectorised loop truncates it
    # (32 pixels at a time), its scalar loop over the rest of a row rounds it
    row = hsv_to_rgb(torch.tensor([0, 1, 1]).reshape(3, 1, 1).expand(3, 1, 33))
    assert row[:, 0, :32].T.tolist() == [[1, 0, 0]] * 32 and row[:, 0, 32].tolist() == [1, 1, 1]
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 64, 64), dtype=torch.uint8)
    t = PhotoMetricDistortion()
    draws = [t.make_params([])["d"] for _ in range(4000)]
    for field in ("brightness", "contrast", "saturation", "hue"):
        values = [getattr(d, field) for d in draws if getattr(d, field) is not None]
        assert 0.45 < len(values) / len(draws) < 0.55, field
    assert min(d.brightness for d in draws if d.brightness is not None) >= -32
    assert {d.hue for d in draws if d.hue is not None} == set(range(-18, 18))
    mask = tv_tensors.Mask(torch.zeros(64, 64, dtype=torch.int64))
    out, same = t(tv_tensors.Image(img), mask)
    assert out.dtype == torch.uint8 and same is mask


def init_images(*overrides: str):
    from snnet.distributed import DistEnv
    from snnet.training import init_batches
    from snnet.tasks import build_task
    cfg = load_config("quickstart", ["data.shapes.num_train=40", "data.shapes.num_val=4", "train.init_images=7",
                                     "train.init_batch_size=7", *overrides])
    torch.manual_seed(0)
    task = build_task(cfg, progress=False)
    images = torch.cat(list(init_batches(task, cfg.train, cfg.data.workers, DistEnv(0, 1, 0, torch.device("cpu")))))
    g = torch.Generator().manual_seed(cfg.train.seed)
    chosen = torch.randperm(len(task.train_set), generator=g)[:7].tolist()
    return images, torch.stack([task.init_set[i][0] for i in chosen])


def test_least_squares_images_come_through_the_training_pipeline_or_the_eval_transform():
    fitted, clean = init_images("train.init_transform=eval")
    assert torch.equal(fitted, clean)
    fitted, clean = init_images("train.init_transform=train", "augment.hflip=1.0")  # a deterministic pipeline
    assert torch.equal(fitted, clean.flip(-1))
    assert load_config("imagenet_deit3_s_l").train.init_transform == "train"


def test_least_squares_images_are_cutmixed_as_the_reference_fit_them():
    """The reference passes its init batch through mixup_fn (CutMix 1.0): image i takes a box of image n-1-i;
    an odd last image stays as it is."""
    fitted, clean = init_images("train.init_transform=train", "augment.hflip=0", "augment.cutmix=1.0")
    other = clean[:6].flip(0)
    assert ((fitted[:6] == clean[:6]) | (fitted[:6] == other)).all()
    assert (fitted[:6] == other).any() and not torch.equal(fitted[:6], clean[:6])
    assert torch.equal(fitted[6], clean[6])


def test_head_init_choice_torch_resets_every_head_layer_but_not_the_backbone():
    """model.head.init: torch (the quickstarts' choice for short CPU runs) gives PyTorch's defaults everywhere."""
    cfg = load_config("quickstart_segmentation", ["model.head.init=torch"])
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False)
    for name, m in model.named_modules():
        if not name.startswith("backbone") and isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            if m.bias is not None:
                assert_torch_default(m, name)
            assert m.weight.abs().max().item() <= 1 / math.sqrt(m.weight[0].numel()), name
    assert load_config("ade20k_setr_deit3_s_l").model.head.init == "reference"
    assert load_config("nyuv2_dpt_deit3_s_l").model.head.init == "reference"


# ---- over three anchors (issue 20) ------------------------------------------------------------------------
def test_deit3_s_b_l_is_one_network_of_377_stitches_in_45_ros_groups():
    cfg, model = meta_model("imagenet_deit3_s_b_l")
    assert model.depths == (12, 12, 24) and model.widths == (384, 768, 1024)
    assert len(model.stitch_ids) == 377 and len(model.backbone.sl_layers) == 2 * 12 and len(model.backbone.ls_layers) == 2 * 11
    model.configure_sampling(cfg.train.ros_gap, cfg.train.ros_k, anchor_share=cfg.train.ros_anchor_share)
    assert len(model.sampler.groups) == 45 and sum(map(len, model.sampler.groups)) == 377


def test_sn_net_recipe_as_its_code_base_ran_it():
    """config/deit_stitching.json over params.py: AdamW eps 1e-8, decay 0.05 off 1-D parameters and biases, lr
    5e-5 x 1024 / 512, drop path 0.1 ramped, uniform sampling over SN-Net's 71 stitches, hard distillation."""
    cfg, model = meta_model("imagenet_sn_net_deit_ti_s_b")
    assert model.config.version == "sn-net" and model.stitch_ids == list(range(71))
    assert model.sampler.groups == [list(range(71))] and model.config.lora_rank == 0
    for anchor in model.backbone.anchors:
        assert drop_path_rates(anchor) == pytest.approx([0.1 * i / 11 for i in range(12)])
    _, small = meta_model("imagenet_sn_net_deit_ti_s_b", *(f"model.anchors.{i}.kwargs.depth=2" for i in range(3)))
    opt = create_optimizer(small.to_empty(device="cpu"), cfg.train, torch.device("cpu"))
    assert type(opt).__name__ == "AdamW"
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for g in opt.param_groups:
        assert g["eps"] == 1e-8 and g["lr"] == pytest.approx(1e-4)
    for n, p in small.named_parameters():
        assert decay[id(p)] == (0.0 if p.ndim <= 1 or n.endswith(".bias") else 0.05), n
    t, a = cfg.train, cfg.augment
    assert (t.epochs, t.warmup_epochs, t.warmup_lr, t.min_lr, t.scheduler_lag) == (50, 5, 1e-7, 1e-6, 1)
    assert (a.mixup, a.cutmix, a.label_smoothing, a.reprob, a.repeated_aug, a.eval_crop_ratio) == (
        0.8, 1.0, 0.1, 0.25, 3, 0.875)
    assert (t.distillation.teacher, t.distillation.kind, t.distillation.alpha) == ("regnety_160.deit_in1k", "hard", 0.5)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_distillation_loss_is_deits(tmp_path, kind):
    """(1 - alpha) x the mixed-target loss + alpha x the teacher's: cross-entropy against its top class (hard), or
    DeiT's summed KL at temperature tau x tau^2 / logits (soft), the teacher seeing the mixed images."""
    import numpy as np
    import torch.nn.functional as F
    from snnet.tasks import build_task

    teacher = {"teacher": "resnet10t", "pretrained": False, "kind": kind, "alpha": 0.3, "tau": 2.0}
    cfg = load_config(str(write_config(tmp_path, train={"distillation": teacher})))
    task = build_task(cfg, progress=False)
    model = build_model(cfg, num_classes=task.num_classes, load_weights=False).eval().select(5)  # one stitch
    batch = next(iter(torch.utils.data.DataLoader(task.train_set, batch_size=8)))
    np.random.seed(0), torch.manual_seed(0)
    loss = task.training_loss(model, [t.clone() for t in batch], torch.device("cpu"))  # timm mixes in place
    np.random.seed(0), torch.manual_seed(0)
    images, targets = task.mixup(*batch)
    logits = model(images)
    with torch.no_grad():
        t = task.teacher(images)
    base = torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    if kind == "hard":
        extra = F.cross_entropy(logits, t.argmax(1))
    else:
        p, q = F.softmax(t / 2, 1), F.log_softmax(logits / 2, 1)
        extra = (p * (torch.log(p) - q)).sum() * 4 / logits.numel()
    torch.testing.assert_close(loss, 0.7 * base + 0.3 * extra, rtol=1e-5, atol=1e-6)
    assert not any(p.requires_grad for p in task.teacher.parameters())


def test_distillation_and_repeated_augmentation_errors_and_sampler(tmp_path):
    from snnet.distributed import DistEnv
    from snnet.training import make_train_loader

    with pytest.raises(SNNetError, match="'nope_net' is not a timm model"):
        load_config(str(write_config(tmp_path, train={"distillation": {"teacher": "nope_net"}})))
    with pytest.raises(SNNetError, match="^config key 'train.distillation' belongs to classification: a segmentation "
                                         "run does not read it$"):
        load_config("quickstart_segmentation", ["train.distillation.teacher=resnet10t"])
    # DeiT's RASampler: a shuffled list of each image three times, dealt to the ranks in turn, each rank keeping
    # floor(N / 256) x 256 / ranks of them: 256 of 512 images, the 171 first of the shuffle
    cfg = load_config(str(write_config(tmp_path, augment={"repeated_aug": 3})))
    ranks = [list(make_train_loader(list(range(512)), cfg.data, cfg.augment.repeated_aug, cfg.train.seed,
                                    DistEnv(r, 2, r, torch.device("cpu"))).sampler)
             for r in (0, 1)]
    assert [len(r) for r in ranks] == [256, 256] and len(set(ranks[0]) | set(ranks[1])) == 171
    assert all(ranks[0].count(i) + ranks[1].count(i) == 3 for i in set(ranks[0][:80]))


def test_dinov2_depth_recipe_has_depth_anything_v2s_encoders_taps_and_optimizer():
    """nyuv2_dpt_dinov2_s_b_l (docs/recipes.md): DINOv2-S/B/L in one network, ViT-L's taps and head widths, Depth
    Anything V2's AdamW and per-iteration poly decay; NYUv2's 480x640 counted at the nearest multiple of 14."""
    cfg = load_config("nyuv2_dpt_dinov2_s_b_l")
    model = build_model(cfg, load_weights=False, device="meta")
    assert [a.name for a in cfg.model.anchors] == [f"vit_{s}_patch14_dinov2.lvd142m"
                                                   for s in ("small", "base", "large")]
    assert model.depths == (12, 12, 24) and model.widths == (384, 768, 1024) and len(model.stitch_ids) == 377
    assert model.out_indices == [4, 11, 17, 23] and model.img_size == (476, 644)
    assert (model.decode_head.channels, cfg.model.head.reassemble_channels) == (256, [256, 512, 1024, 1024])
    t = cfg.train
    assert (t.optimizer, t.lr, t.backbone_lr_scale, t.weight_decay, t.weight_decay_all) == \
        ("adamw", 5e-5, 0.1, 0.01, True)
    assert (t.scheduler, t.poly_power, t.warmup_iterations, t.clip_grad, t.amp) == ("poly", 0.9, 0, None, False)
    assert cfg.data.input_size == [420, 560] and all(s % 14 == 0 for s in cfg.data.input_size)
    assert round(model.flops(0) / 1e9, 1) == 304.7 and round(model.flops(2) / 1e9, 1) == 836.0
