"""Depth: DPT on every stitch, FLOPs against the published table, loss, metrics, data, the command line."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from snnet import SNNetBackbone, SNNetError, build_model, load_config
from snnet.anchors import AnchorConfig
from snnet.cli import main
from snnet.tasks.depth import DepthModel
from snnet.tasks.depth.metrics import image_metrics, sig_loss, summarize, valid_mask

DATA = Path(__file__).parent / "data"
DEPTHS, WIDTHS, HEADS = (4, 8), (32, 48), (2, 3)
OUT = (1, 3, 5, 7)  # small taps 0, 1, 2, 3: four on every route


def tiny_depth(channels: int = 16) -> DepthModel:
    anchors = [AnchorConfig("deit3_small_patch16_224", kwargs=dict(
        img_size=32, patch_size=8, embed_dim=w, depth=d, num_heads=h, num_classes=0, final_norm=False,
        dynamic_img_size=True)) for d, w, h in zip(DEPTHS, WIDTHS, HEADS)]
    torch.manual_seed(0)
    return DepthModel(SNNetBackbone(anchors, lora_rank=4, out_indices=OUT), channels, input_size=(48, 80),
                      reassemble_channels=(8, 16, 24, 32))


# ---- model -------------------------------------------------------------------------------------------
def test_every_stitch_gives_positive_depth_at_a_non_square_input_size():
    model = tiny_depth().eval()
    x = torch.randn(2, 3, 48, 80)
    for sid in model.stitch_ids:
        d = model.select(sid)(x)
        assert d.shape == (2, 1, 48, 80) and (d >= 1e-3).all() and torch.isfinite(d).all(), sid


def test_flip_test_is_the_mean_of_two_forwards():
    model = tiny_depth().eval().select(7)
    x = torch.randn(1, 3, 48, 80)
    expected = (model(x) + model(x.flip(-1)).flip(-1)) / 2
    torch.testing.assert_close(model.flip_inference(x), expected, rtol=0, atol=0)


def test_position_embeddings_are_resized_bicubically_without_antialiasing():
    model = tiny_depth()
    a = model.backbone.anchors[0]
    x = torch.randn(1, 3, 48, 80)
    tokens = model.backbone.embed(x, 0)
    patches = F.conv2d(x, a.patch_embed.proj.weight, a.patch_embed.proj.bias, stride=8).flatten(2).transpose(1, 2)
    pos = F.interpolate(a.pos_embed.reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(6, 10), mode="bicubic",
                        align_corners=False).permute(0, 2, 3, 1).reshape(1, 60, -1)
    torch.testing.assert_close(tokens, torch.cat([a.cls_token, patches + pos], 1), rtol=0, atol=1e-6)


def test_save_and_load_keep_the_head_and_the_flops_size(tmp_path):
    model = tiny_depth().eval()
    model.save_pretrained(tmp_path / "d")
    again = DepthModel.from_pretrained(tmp_path / "d").eval()
    assert again.img_size == (48, 80) and again.flops(3) == model.flops(3)
    x = torch.randn(1, 3, 48, 80)
    torch.testing.assert_close(again.select(3)(x), model.select(3)(x), rtol=0, atol=0)


@pytest.mark.parametrize("config,pair", [("nyuv2_dpt_deit3_s_l", "deit3_s_l"), ("nyuv2_dpt_deit3_b_l", "deit3_b_l")])
def test_flops_equal_the_published_table_for_every_stitch(config, pair):
    model = build_model(load_config(config), load_weights=False, device="meta")
    published = {int(k): v for k, v in json.loads((DATA / "nyuv2_dpt_flops.json").read_text())[pair].items()}
    assert sorted(published) == model.stitch_ids and model.img_size == (480, 640)
    assert {sid: model.flops(sid) for sid in model.stitch_ids} == published


# ---- loss and metrics ----------------------------------------------------------------------------------
def test_loss_is_the_scale_invariant_log_loss_with_its_warm_up():
    pred = torch.tensor([[1.0, 2.0], [4.0, 0.5]])
    gt = torch.tensor([[2.0, 2.0], [0.0, 1.0]])  # the 0 is no ground truth
    g = [math.log(1.001) - math.log(2.001), math.log(2.001) - math.log(2.001), math.log(0.501) - math.log(1.001)]
    mean = sum(g) / 3
    var = sum((v - mean) ** 2 for v in g) / 2  # unbiased
    assert sig_loss(pred, gt).item() == pytest.approx(math.sqrt(var + 0.15 * mean ** 2), rel=1e-6)
    assert sig_loss(pred, gt, warm_up=True).item() == pytest.approx(math.sqrt(0.15 * mean ** 2), rel=1e-6)


def test_metrics_of_one_image_by_hand():
    gt = torch.tensor([1.0, 2.0, 4.0])
    pred = torch.tensor([1.0, 2.6, 2.0])
    m = dict(zip(("a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"),
                 image_metrics(pred, gt).tolist()))
    # ratios 1, 1.3, 2: under 1.25 one pixel; under 1.5625 two; under 1.953 two
    assert (m["a1"], m["a2"], m["a3"]) == pytest.approx((1 / 3, 2 / 3, 2 / 3))
    assert m["abs_rel"] == pytest.approx((0 + 0.3 + 0.5) / 3)
    assert m["sq_rel"] == pytest.approx((0 + 0.36 / 2 + 4 / 4) / 3)
    assert m["rmse"] == pytest.approx(math.sqrt((0 + 0.36 + 4) / 3))
    e = [0.0, math.log(1.3), math.log(0.5)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(v * v for v in e) / 3))
    assert m["log10"] == pytest.approx(sum(abs(v) for v in e) / math.log(10) / 3)
    assert m["silog"] == pytest.approx(100 * math.sqrt(sum(v * v for v in e) / 3 - (sum(e) / 3) ** 2))


def test_valid_pixels_are_in_range_and_inside_the_crop():
    gt = torch.full((6, 8), 5.0)
    gt[0, 0], gt[2, 3], gt[3, 4] = 0.0, 12.0, 1e-4  # no depth, too far, too near
    mask = valid_mask(gt, 1e-3, 10.0, (1, 5, 2, 7))  # rows 1..4, columns 2..6
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[1:5, 2:7] = True
    expected[2, 3] = expected[3, 4] = False
    assert torch.equal(mask, expected)


def test_metrics_average_over_images():
    sums = torch.zeros(10, dtype=torch.float64)
    for pred, gt in ((torch.tensor([1.0]), torch.tensor([1.0])), (torch.tensor([2.0]), torch.tensor([1.0]))):
        sums[:-1] += image_metrics(pred, gt)
        sums[-1] += 1
    m = summarize(sums)
    assert m["rmse"] == pytest.approx(0.5) and m["a1"] == pytest.approx(0.5) and m["abs_rel"] == pytest.approx(0.5)


# ---- data -----------------------------------------------------------------------------------------------
def write_depth_png(path: Path, metres: np.ndarray, scale: float = 1000.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((metres * scale).astype(np.uint16)).save(path)


def write_rgb(path: Path, h: int, w: int, seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def nyu_tree(root: Path, h: int = 48, w: int = 64) -> Path:
    for split, scenes in (("train", ["b_0002", "a_0001"]), ("test", ["c_0003"])):
        lines = []
        for s in scenes:
            write_rgb(root / "sync" / s / "rgb_00001.jpg", h, w)
            write_depth_png(root / "sync" / s / "sync_depth_00001.png", np.full((h, w), 2.5))
            lines.append(f"/sync/{s}/rgb_00001.jpg /sync/{s}/sync_depth_00001.png 518.8579")
        lines.append("/sync/x/rgb_00009.jpg None 518.8579")  # no depth: skipped, as the reference does
        (root / f"nyu_{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_nyu_split_files_as_the_reference_reads_them(tmp_path):
    from snnet.tasks.depth.data import nyu_pairs
    nyu_tree(tmp_path)
    pairs = nyu_pairs(tmp_path, "nyu_train.txt")
    assert [p[0].parent.name for p in pairs] == ["a_0001", "b_0002"]  # sorted, "None" skipped


@pytest.mark.parametrize("dataset", ["nyuv2", "depthfolder", "shapes"])
def test_depth_layouts(tmp_path, dataset):
    overrides = [f"data.dataset={dataset}", "data.input_size=[32, 48]"]
    if dataset == "nyuv2":
        nyu_tree(tmp_path)
    elif dataset == "depthfolder":
        for split in ("train", "val"):
            write_rgb(tmp_path / "images" / split / "a.png", 40, 56)
            write_depth_png(tmp_path / "depths" / split / "a.png", np.full((40, 56), 0.75), 256.0)
        overrides.append("data.depth_scale=256")
    if dataset != "shapes":
        overrides.append(f"data.root={tmp_path}")
    from snnet.tasks import build_task
    task = build_task(load_config("quickstart_depth", overrides + ["data.shapes.num_train=2",
                                                                   "data.shapes.num_val=2"]), progress=False)
    image, depth = task.train_set[0]
    assert image.shape == (3, 32, 48) and depth.shape == (1, 32, 48)
    image, depth = task.val_set[0]
    if dataset == "nyuv2":
        assert image.shape == (3, 48, 64) and torch.allclose(depth, torch.tensor(2.5))
    elif dataset == "depthfolder":
        assert image.shape == (3, 40, 56) and torch.allclose(depth, torch.tensor(0.75))
    else:
        from snnet.data import render_scene
        scene = render_scene(task.cfg.data.shapes.scene_config(), "val", 0)
        assert np.allclose(depth[0].numpy(), scene.depth)


def test_joint_augmentation_keeps_image_and_depth_aligned():
    """A horizontal ramp in the image's red channel and in the depth: after NYU crop, rotation, flip and
    crop, the depth at a pixel still equals the ramp value of the image there."""
    from snnet.tasks.depth.data import _apply, build_transforms
    cfg = load_config("quickstart_depth", ["data.precrop=[2, 62, 4, 76]", "augment.color_prob=0",
                                           "data.mean=[0, 0, 0]", "data.std=[1, 1, 1]"])
    train, _, _ = build_transforms(cfg.data, cfg.augment, (40, 48), cfg.data.mean, cfg.data.std)
    ramp = np.tile(np.arange(80, dtype=np.float64), (64, 1))  # column index
    image = np.zeros((64, 80, 3), np.uint8)
    image[..., 0] = (ramp * 3).astype(np.uint8)
    torch.manual_seed(0)
    flips = set()
    for _ in range(12):
        img, depth = _apply(train, image, ramp + 1)  # +1: 0 means "no depth"
        red, d = img[0].as_subclass(torch.Tensor) * 255 / 3, depth[0].as_subclass(torch.Tensor)
        valid = d > 0
        assert (red[valid] - (d[valid] - 1)).abs().mean() < 0.6  # nearest vs bilinear under a small rotation
        flips.add(bool(d[20, 0] > d[20, -1]))
    assert flips == {True, False}  # both orientations were drawn


@pytest.mark.parametrize("case,message", [
    ("8bit", "is not a 16-bit single-channel PNG (mode L)"),
    ("rgb", "is not a 16-bit single-channel PNG (mode RGB)"),
    ("size", "is 40x30 but its image a.png is 56x40"),
])
def test_bad_depth_files_are_one_line_errors(tmp_path, case, message):
    from snnet.tasks.depth.data import DepthPairs
    write_rgb(tmp_path / "a.png", 40, 56)
    d = tmp_path / "d.png"
    if case == "8bit":
        Image.fromarray(np.zeros((40, 56), np.uint8)).save(d)
    elif case == "rgb":
        Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(d)
    else:
        write_depth_png(d, np.ones((30, 40)))
    with pytest.raises(SNNetError) as e:
        DepthPairs([(tmp_path / "a.png", d)], 1000.0)[0]
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_split_file_naming_missing_files_is_a_one_line_error(tmp_path):
    from snnet.tasks.depth.data import nyu_pairs
    nyu_tree(tmp_path)
    (tmp_path / "sync" / "a_0001" / "sync_depth_00001.png").unlink()
    with pytest.raises(SNNetError, match=r"nyu_train.txt line 2 names a missing file: .*a_0001/sync_depth_00001.png"):
        nyu_pairs(tmp_path, "nyu_train.txt")


# ---- command line ---------------------------------------------------------------------------------------
TINY = {
    "task": "depth",
    "model": {"anchors": [
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2}},
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 8, "num_heads": 3}},
    ], "lora_rank": 4, "out_indices": list(OUT), "head": {"channels": 8, "reassemble_channels": [8, 8, 16, 16],
                                                                 "max_depth": 25.0}},
    "data": {"dataset": "shapes", "input_size": 32, "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
             "shapes": {"image_size": 32, "num_train": 16, "num_val": 5}},
    "train": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3, "scheduler": "onecycle", "warmup_epochs": 0,
              "no_decay_keys": ["pos_embed", "cls_token", "norm"], "backbone_lr_scale": 0.1, "clip_grad": 35.0,
              "init_images": 8, "ros_gap": 0.0001},
    "eval": {"visualize": 2},
}


def test_train_then_eval_through_the_cli(tmp_path, capsys):
    cfg = dict(TINY, output_dir=str(tmp_path / "run"))
    path = tmp_path / "tiny_depth.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "Pareto frontier (rmse, lower is better)" in out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    model = DepthModel.from_pretrained(run / "model")
    assert [r["stitch_id"] for r in rows] == model.stitch_ids and all(r["images"] == 5 for r in rows)
    for name in ("pareto.png", "pareto_a1.png", "predictions.png"):
        assert (run / name).stat().st_size > 1000
    assert main(["select", "--results", str(run), "--max-gflops", "1", "--metric", "rmse", "--lower-is-better"]) == 0
    best = min(rows, key=lambda r: r["rmse"])
    assert f"{best['rmse']:8.2f}" in capsys.readouterr().out


def test_parameter_groups_and_one_cycle_are_what_the_reference_ran(tmp_path):
    """mmcv 1.x ran the NYUv2 config with one learning rate for every group (the one-cycle hook overrides the
    backbone's lr_mult 0.1) and weight decay 0 only on names holding pos_embed or cls_token (norms decayed)."""
    from snnet.training import OneCycle, create_optimizer
    cfg = load_config("nyuv2_dpt_deit3_s_l", ["data.root=/x"])
    model = tiny_depth()
    opt = create_optimizer(model, cfg.train, torch.device("cpu"))
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen and all("_layers." in n and n.endswith(".weight") for n in frozen)  # stitching layers' W
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".norm1." in n for n in names) and any(n.endswith(".bias") for n in names)
    for name, p in model.named_parameters():
        if not p.requires_grad:  # the least-squares weights under LoRA
            continue
        g = by_param[id(p)]
        assert g["lr"] == pytest.approx(2e-5), name
        no_decay = "pos_embed" in name or "cls_token" in name
        assert g["weight_decay"] == (0.0 if no_decay else 0.01), name
    sched = OneCycle(opt, total_steps=100)
    assert all(g["lr"] == pytest.approx(2e-5 / 25) for g in opt.param_groups)
    assert all(g["betas"][0] == pytest.approx(0.95) for g in opt.param_groups)
    opt.step()  # (no gradients: nothing changes) as training calls it, before the schedule moves
    sched.step_update(29)  # the peak: 30 % of the steps
    assert all(g["lr"] == pytest.approx(2e-5) and g["betas"][0] == pytest.approx(0.85) for g in opt.param_groups)
    sched.step_update(99)
    assert all(g["lr"] == pytest.approx(2e-5 / 2500, rel=1e-3) for g in opt.param_groups)


def test_test_predictions_are_clamped_before_the_flip_average():
    model = tiny_depth().eval()
    with torch.no_grad():
        model.decode_head.depth_conv3.bias.fill_(50.0)  # far beyond max_depth everywhere
        x = torch.randn(2, 3, 32, 48)
        assert model(x).max().item() == pytest.approx(10.0)
        assert model.flip_inference(x).max().item() == pytest.approx(10.0)
        model.decode_head.depth_conv3.bias.fill_(-50.0)  # ReLU + min_depth: the lower bound holds by itself
        assert model(x).min().item() == pytest.approx(1e-3)
        model.decode_head.depth_conv3.bias.fill_(50.0)
        model.train()
        assert model(x).min().item() > 10.0  # training sees the raw prediction, as the reference's loss
    with pytest.raises(SNNetError, match="min_depth 20.0 must be below max_depth 10.0"):
        load_config("nyuv2_dpt_deit3_s_l", ["model.head.min_depth=20"])


@pytest.mark.parametrize("overrides,message,before_data", [
    (["data.depth_scale=-1"], "config key 'data.depth_scale' must be greater than 0", True),
    (["model.head.min_depth=30"], "config key 'model.head': min_depth 30.0 must be below max_depth 25.0", True),
    # the key's earlier name moves to today's
    (["data.min_depth=30"], "config key 'model.head': min_depth 30.0 must be below max_depth 25.0", True),
    (["data.max_depth=20", "model.head.max_depth=25"], "config keys 'data.max_depth' (20) and 'model.head.max_depth' "
                                                       "(25) differ: 'data.max_depth' is now 'model.head.max_depth'", True),
    (["augment.mixup=0.8"], "config key 'augment.mixup' belongs to classification: a depth run does not read it", True),
    (["data.eval_crop=[10,5,0,8]"], "eval_crop [10, 5, 0, 8] must be [top, bottom, left, right] with top < bottom", True),
    (["data.precrop=[0,8,9,9]"], "precrop [0, 8, 9, 9] must be [top, bottom, left, right]", True),
    (["data.dataset=ade20k"], "data.dataset 'ade20k' is not a depth dataset", True),
    (["data.dataset=nyuv2", "data.root=/nonexistent"], "split file not found: /nonexistent/nyu_train.txt", True),
    # crops outside the maps once trained and reported rmse 0.0 (no valid pixel) with exit 0: now the first
    # image read stops the run before training
    (["data.eval_crop=[0,40,0,40]"], "data.eval_crop [0, 40, 0, 40] reaches outside a 32x32 depth map", False),
    (["data.precrop=[0,40,0,30]", "data.input_size=[16,16]"], "data.precrop [0, 40, 0, 30] reaches outside a 32x32 image",
     False),
])
def test_depth_config_errors_are_one_line(tmp_path, capsys, overrides, message, before_data):
    path = tmp_path / "tiny_depth.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, output_dir=str(tmp_path / "run"))))
    assert main(["train", "--config", str(path), "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    run = tmp_path / "run"
    assert not run.exists() if before_data else not (run / "checkpoint.pt").exists() and not (run / "results.jsonl").exists()


def test_torchrun_two_processes_match_one(tmp_path):
    from helpers import torchrun_then_single
    path = tmp_path / "tiny_depth.yaml"
    path.write_text(yaml.safe_dump(dict(TINY, output_dir=str(tmp_path / "run"))))
    dist_rows, single = torchrun_then_single(path, tmp_path / "single")
    assert all(r["images"] == 5 for r in dist_rows)
    for a, b in zip(dist_rows, single):  # per-image sums summed over ranks
        assert a["stitch_id"] == b["stitch_id"]
        for m in ("a1", "a2", "a3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"):
            assert a[m] == pytest.approx(b[m], rel=1e-6), m  # float32 forwards in other batch shapes


@pytest.mark.parametrize("config", ["quickstart_segmentation", "quickstart"])
def test_a_depth_model_evaluated_with_another_tasks_config_says_both(tmp_path, capsys, config):
    tiny_depth().save_pretrained(tmp_path / "model")
    assert main(["eval", "--config", config, "--checkpoint", str(tmp_path / "model"), "--no-progress",
                 f"output_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err
    task = load_config(config).task
    assert err.count("\n") == 1 and f"holds a depth model but the config's task is {task}" in err, err
    assert not (tmp_path / "out").exists()


def test_a_runs_own_config_evaluates_an_nyuv2_run_again(tmp_path):
    """The saved split defaults were once read as user-set names over NYUv2's nyu_train.txt / nyu_test.txt."""
    nyu_tree(tmp_path / "nyu")
    cfg = dict(TINY, output_dir=str(tmp_path / "run"), data={**TINY["data"], "dataset": "nyuv2",
                                                             "root": str(tmp_path / "nyu"), "batch_size": 2})
    path = tmp_path / "tiny_nyu.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress", "train.init_images=2", "eval.visualize=0"]) == 0
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train_split"] is None and saved["data"]["val_split"] is None
    assert main(["eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--no-progress",
                 "--output-dir", str(tmp_path / "again")]) == 0
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert all(r["images"] == 1 for r in rows)  # nyu_test.txt's one image with a depth
    assert [json.loads(line) for line in (tmp_path / "again" / "results.jsonl").read_text().splitlines()] == rows
