"""Detection: the stitched ViTDet pyramid under torchvision's Mask R-CNN, COCO data and evaluation, the CLI."""
from __future__ import annotations

import json

import pytest
import torch
import yaml
from timm.layers import LayerNorm2d
from torch import nn

from snnet import SNNetBackbone, SNNetError, load_config
from snnet.anchors import AnchorConfig
from snnet.cli import main
from snnet.data import SceneConfig, write_coco_dataset
from snnet.tasks.detection import DetectionModel, SimpleFeaturePyramid, StageFeaturePyramid


def tiny_detector(out_indices=(5,)) -> DetectionModel:
    anchors = [AnchorConfig("deit3_small_patch16_224", kwargs=dict(
        img_size=64, patch_size=8, embed_dim=w, depth=d, num_heads=h, num_classes=0, final_norm=False,
        dynamic_img_size=True)) for d, w, h in ((3, 32, 2), (6, 48, 3))]
    torch.manual_seed(0)
    return DetectionModel(SNNetBackbone(anchors, lora_rank=4, out_indices=list(out_indices)), num_classes=3, channels=16,
                          image_size=64)


def targets() -> list[dict]:
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 5:20, 5:30] = 1
    masks[1, 30:60, 10:40] = 1
    return [{"boxes": torch.tensor([[5.0, 5, 30, 20], [10, 30, 40, 60]]), "labels": torch.tensor([1, 2]), "masks": masks},
            {"boxes": torch.tensor([[1.0, 1, 20, 20]]), "labels": torch.tensor([3]), "masks": masks[:1]}]


def test_pyramid_levels_for_every_stitch():
    model = tiny_detector().eval()
    x = torch.randn(2, 3, 64, 96)
    for sid in model.stitch_ids:
        maps = model.select(sid).detector.backbone(x)
        assert list(maps) == ["0", "1", "2", "3", "pool"]
        # the stride-8 token grid (8x12) at strides 2, 4, 8, 16 and 32 of it
        assert [tuple(m.shape) for m in maps.values()] == [(2, 16, 32, 48), (2, 16, 16, 24), (2, 16, 8, 12),
                                                           (2, 16, 4, 6), (2, 16, 2, 3)], sid


def test_training_losses_are_finite_and_reach_every_part():
    model = tiny_detector().train()
    torch.manual_seed(1)
    for _ in range(3):  # each call trains a ROS-sampled stitch
        losses = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)], targets())
        assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "loss_rpn_box_reg"}
        total = sum(losses.values())
        assert torch.isfinite(total)
        model.zero_grad()
        total.backward()
        assert model.detector.backbone.pyramid.stages[0][0].weight.grad.abs().sum() > 0
        assert model.detector.roi_heads.mask_predictor.mask_fcn_logits.weight.grad.abs().sum() > 0


def test_eval_gives_boxes_labels_scores_and_masks_per_image():
    model = tiny_detector().eval().select(7)
    out = model([torch.rand(3, 64, 64), torch.rand(3, 48, 64)])
    assert len(out) == 2 and out[1]["masks"].shape[-2:] == (48, 64)
    assert set(out[0]) == {"boxes", "labels", "scores", "masks"}


def test_only_the_last_block_is_tapped():
    with pytest.raises(SNNetError, match=r"taps the last block only: set model.out_indices to \[5\]"):
        tiny_detector(out_indices=(2, 5))


def test_pyramid_flops_equal_a_count_of_the_modules_that_run():
    """Multiply-adds of every conv (transposed: per input position) and 5 per LayerNorm element, counted
    with hooks on a forward, against the closed form."""
    pyramid = SimpleFeaturePyramid(48, 16)
    counted = []

    def hook(module, inputs, output):
        x = inputs[0]
        if isinstance(module, nn.ConvTranspose2d):
            counted.append(x.shape[-2] * x.shape[-1] * module.in_channels * module.out_channels * 4)
        elif isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            counted.append(output.shape[-2] * output.shape[-1] * module.in_channels * module.out_channels * k)
        elif isinstance(module, LayerNorm2d):
            counted.append(5 * output.numel())

    for m in pyramid.modules():
        m.register_forward_hook(hook)
    pyramid([torch.randn(1, 48, 8, 12)])
    assert pyramid.flops([(8, 12)]) == sum(counted)


def test_swins_fpn_flops_are_its_convolutions_counted_on_a_forward():
    """The FPN over four stage ends (Swin's): each lateral 1x1 and output 3x3 conv counted by a hook, against the
    closed form; five levels out, the last max-pooled."""
    pyramid = StageFeaturePyramid([8, 16, 32, 64], 16)
    counted = []

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        counted.append(output.shape[-2] * output.shape[-1] * module.in_channels * module.out_channels * k)

    for m in pyramid.modules():
        if isinstance(m, nn.Conv2d):
            m.register_forward_hook(hook)
    grids = [(16, 24), (8, 12), (4, 6), (2, 3)]
    maps = pyramid([torch.randn(1, c, h, w) for c, (h, w) in zip([8, 16, 32, 64], grids)])
    assert [tuple(m.shape) for m in maps.values()] == [(1, 16, h, w) for h, w in grids] + [(1, 16, 1, 2)]
    assert list(maps) == ["0", "1", "2", "3", "pool"] and pyramid.flops(grids) == sum(counted)


# ---- COCO data and evaluation ---------------------------------------------------------------------------
TINY = {
    "task": "detection",
    "model": {"anchors": [
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}},
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 64, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 3}},
    ], "lora_rank": 4, "out_indices": [5], "head": {"channels": 16}},
    "data": {"dataset": "shapes", "input_size": 64, "batch_size": 4, "workers": 0, "mean": [0.5] * 3,
             "std": [0.5] * 3, "shapes": {"image_size": 64, "num_classes": 4, "num_train": 8, "num_val": 4}},
    "train": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3, "scheduler": "step", "warmup_epochs": 0,
              "init_images": 8, "ros_gap": 0.0001},
    "eval": {"visualize": 2},
}


@pytest.fixture
def tiny_config(tmp_path) -> str:
    path = tmp_path / "tiny_det.yaml"
    path.write_text(yaml.safe_dump(TINY))
    return str(path)


def scenes_task(tmp_path, config: str):
    from snnet.tasks import build_task
    root = write_coco_dataset(tmp_path / "coco", SceneConfig(image_size=64, num_classes=4), 4, 4)
    cfg = load_config(config, ["data.dataset=coco", f"data.root={root}", "data.train_split=train",
                               "data.val_split=val"])
    return build_task(cfg, progress=False)


def perfect_predictions(task, jitter: float = 0.0) -> list[tuple]:
    """COCO records built from the ground truth (boxes moved by ``jitter`` pixels), scored 1."""
    coco, records = task.val_set.coco, []
    for image_id in task.val_set.ids:
        records.append(("image", image_id))
        for a in coco.imgToAnns[image_id]:
            x, y, w, h = a["bbox"]
            common = {"image_id": image_id, "category_id": a["category_id"], "score": 1.0}
            records.append(("bbox", {**common, "bbox": [x + jitter, y + jitter, w, h]}))
            records.append(("segm", {**common, "segmentation": a["segmentation"]}))
    return records


def test_coco_evaluation_of_the_ground_truth_is_perfect_and_of_shifted_boxes_is_not(tmp_path, tiny_config):
    task = scenes_task(tmp_path, tiny_config)
    exact = task.finalize(perfect_predictions(task))
    assert exact["bbox_AP"] == pytest.approx(100.0) and exact["segm_AP"] == pytest.approx(100.0)
    assert exact["images"] == 4
    shifted = task.finalize(perfect_predictions(task, jitter=3.0))
    assert shifted["bbox_AP"] < 90.0 and shifted["segm_AP"] == pytest.approx(100.0)  # masks were not moved
    assert task.finalize([("image", i) for i in task.val_set.ids])["bbox_AP"] == 0.0  # no detections


def test_the_exported_scenes_are_a_coco_dataset(tmp_path):
    import contextlib
    import io

    from pycocotools.coco import COCO
    root = write_coco_dataset(tmp_path, SceneConfig(image_size=48, num_classes=5), 3, 2)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(root / "annotations" / "instances_train.json"))
    assert sorted(coco.getImgIds()) == [1, 2, 3] and len(coco.cats) == 5
    from snnet.data import render_scene
    scene = render_scene(SceneConfig(image_size=48, num_classes=5), "train", 0)
    anns = coco.imgToAnns[1]
    assert len(anns) == len(scene.classes)
    for a, mask, cls in zip(anns, scene.masks, scene.classes):
        assert (coco.annToMask(a) == mask).all() and a["category_id"] == cls + 1


def test_dataset_items_move_boxes_and_masks_with_the_image(tmp_path, tiny_config):
    task = scenes_task(tmp_path, tiny_config)
    image, target = task.train_set[0]
    assert image.shape == (3, 64, 64)
    for box, mask in zip(target["boxes"], target["masks"]):
        ys, xs = torch.nonzero(mask, as_tuple=True)
        if len(ys):  # the mask lies inside its box after jitter, crop and flip
            assert xs.min() >= box[0] - 1 and xs.max() <= box[2] + 1 and ys.min() >= box[1] - 1 and ys.max() <= box[3] + 1


@pytest.mark.parametrize("case,message", [
    ("json", "is not valid JSON"),
    ("image", "the file of image 2 is missing"),
    ("box", "annotation 1 has box [50.0, 50.0, 30.0, 30.0] outside its 64x64 image 1"),
    ("category", "annotation 1 has unknown category id 99"),
    ("no_bbox", "annotation 1 has 'bbox' None: expected [x, y, width, height] numbers"),
    ("bbox_text", "annotation 1 has 'bbox' '1 2 3 4': expected [x, y, width, height] numbers"),
    ("no_width", "image 1 has no integer 'width'"),
    ("no_segmentation", "annotation 1 has 'segmentation' 'None': expected polygons or an RLE"),
    ("no_area", "annotation 1 has no numeric 'area'"),
    ("no_categories", "no categories"),
    ("images_mapping", "'images' must be a list, got dict"),
])
def test_bad_annotation_files_are_one_line_errors(tmp_path, case, message):
    from snnet.tasks.detection.data import load_coco
    root = write_coco_dataset(tmp_path, SceneConfig(image_size=64, num_classes=4), 2, 1)
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    if case == "json":
        ann.write_text(ann.read_text()[:-20])
    else:
        if case == "image":
            (root / "train" / data["images"][1]["file_name"]).unlink()
        elif case == "box":
            data["annotations"][0]["bbox"] = [50.0, 50.0, 30.0, 30.0]
        elif case == "category":
            data["annotations"][0]["category_id"] = 99
        elif case == "no_bbox":
            del data["annotations"][0]["bbox"]
        elif case == "bbox_text":
            data["annotations"][0]["bbox"] = "1 2 3 4"
        elif case == "no_width":
            del data["images"][0]["width"]
        elif case == "no_segmentation":
            del data["annotations"][0]["segmentation"]
        elif case == "no_area":
            del data["annotations"][0]["area"]
        elif case == "no_categories":
            data["categories"] = []
        else:
            data["images"] = {str(im["id"]): im for im in data["images"]}
        ann.write_text(json.dumps(data))
    with pytest.raises(SNNetError) as e:
        load_coco(ann, root / "train")
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("categories, message", [
    (None, "is not a COCO instances file: it needs images, annotations and categories"),
    ([], "instances_val.json: no categories (the list of classes a COCO instances file names)"),
    ({"1": "circle"}, "instances_val.json: 'categories' must be a list, got dict"),
    ([{"name": "circle"}], "instances_val.json: category 0 has no integer 'id'"),
])
def test_annotations_without_categories_are_one_line_in_every_command(tmp_path, capsys, tiny_config, categories,
                                                                       message):
    """The class count is read from the validation file's categories before any data: train and flops alike."""
    root = write_coco_dataset(tmp_path / "coco", SceneConfig(image_size=64, num_classes=4), 4, 4)
    ann = root / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    if categories is None:
        del data["categories"]
    else:
        data["categories"] = categories
    ann.write_text(json.dumps(data))
    common = ["--config", tiny_config, "data.dataset=coco", f"data.root={root}", "data.train_split=train",
              "data.val_split=val"]
    for argv in (["train", *common, "--output-dir", str(tmp_path / "run"), "--no-progress"], ["flops", *common]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_train_then_eval_through_the_cli(tmp_path, capsys, tiny_config):
    assert main(["train", "--config", tiny_config, "--output-dir", str(tmp_path / "run"), "--no-progress"]) == 0
    assert "Pareto frontier (bbox_AP, higher is better)" in capsys.readouterr().out
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    model = DetectionModel.from_pretrained(run / "model")
    assert [r["stitch_id"] for r in rows] == model.stitch_ids and all(r["images"] == 4 for r in rows)
    assert all(0 <= r["bbox_AP"] <= 100 and 0 <= r["segm_AP"] <= 100 for r in rows)
    for name in ("pareto.png", "pareto_segm_AP.png", "predictions.png"):
        assert (run / name).stat().st_size > 1000
    assert main(["eval", "--config", tiny_config, "--output-dir", str(tmp_path / "again"), "--checkpoint", str(run),
                 "--no-progress", "--stitches", "0,1"]) == 0
    again = [json.loads(line) for line in (tmp_path / "again" / "results_subset.jsonl").read_text().splitlines()]
    assert [(r["bbox_AP"], r["segm_AP"]) for r in again] == [(r["bbox_AP"], r["segm_AP"]) for r in rows[:2]]


def test_torchrun_gathers_detections_to_the_same_ap(tmp_path, tiny_config):
    from helpers import torchrun_then_single
    cfg = yaml.safe_load(open(tiny_config))
    cfg["data"]["shapes"]["num_val"] = 5
    cfg["model"]["head"]["detections"] = 10  # fewer records to gather and score: the same check, faster
    cfg["eval"]["visualize"] = 0
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "det.yaml"
    path.write_text(yaml.safe_dump(cfg))
    dist_rows, single = torchrun_then_single(path, tmp_path / "single")
    assert all(r["images"] == 5 for r in dist_rows)
    for a, b in zip(dist_rows, single):
        assert a["stitch_id"] == b["stitch_id"]
        assert a["bbox_AP"] == pytest.approx(b["bbox_AP"], abs=1e-6) and a["segm_AP"] == pytest.approx(b["segm_AP"], abs=1e-6)


def test_polygon_masks_are_read_as_well_as_rle(tmp_path):
    from snnet.tasks.detection.data import CocoInstances, load_coco
    root = write_coco_dataset(tmp_path, SceneConfig(image_size=64, num_classes=4), 1, 1)
    ann = root / "annotations" / "instances_train.json"
    data = json.loads(ann.read_text())
    a = data["annotations"][0]
    a["bbox"], a["segmentation"] = [10.0, 10.0, 20.0, 10.0], [[10, 10, 30, 10, 30, 20, 10, 20]]  # a rectangle
    ann.write_text(json.dumps(data))
    coco = load_coco(ann, root / "train")
    from snnet.tasks.detection.data import _Folder
    _, target = CocoInstances(coco, _Folder(root / "train"))[0]
    mask = target["masks"][0]
    assert mask[12:18, 12:28].all() and not mask[:8].any() and not mask[:, 32:].any()


def test_the_coco_recipe_schedule_warms_up_then_steps_at_its_milestones():
    from snnet.training import Schedule, create_scheduler
    cfg = load_config("coco_maskrcnn_deit3_s_l", ["train.iterations=1000", "train.warmup_iterations=10",
                                                  "train.decay_milestones=[889, 963]"])
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = create_scheduler(opt, cfg.train, Schedule(cfg.train, loader_len=100))
    lr = {}  # the learning rate of update n (1-based): set after n - 1 completed updates
    for n in (1, 6, 11, 500, 888, 889, 962, 963, 1000):
        sched.step_update(num_updates=n - 1)
        lr[n] = opt.param_groups[0]["lr"]
    assert lr[1] == pytest.approx(1e-7) and lr[1] < lr[6] < lr[11]  # linear warm-up from warmup_lr
    assert lr[11] == lr[500] == lr[888] == pytest.approx(1e-4)
    assert lr[889] == lr[962] == pytest.approx(1e-5) and lr[963] == lr[1000] == pytest.approx(1e-6)


def test_missing_coco_folders_fail_before_the_run_directory_even_with_num_classes_set(tmp_path, capsys, tiny_config):
    out = tmp_path / "run"
    assert main(["train", "--config", tiny_config, "--output-dir", str(out), "--no-progress", "data.dataset=coco",
                 "data.root=/nonexistent", "model.head.num_classes=4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data folder not found: /nonexistent/train2017" in err, err
    assert not out.exists()


def test_images_are_fitted_and_padded_to_the_square_with_the_normalised_mean():
    """SPEC 12: evaluation images resized to fit image_size and padded to the square with 0 after normalisation."""
    model = tiny_detector().eval().select(0)
    seen = []
    model.detector.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model([torch.rand(3, 32, 48) + 1])  # positive everywhere
    x = seen[0]
    assert x.shape == (1, 3, 64, 64)  # 32x48 -> 42x64, then padded
    assert (x[:, :, 42:] == 0).all() and (x[:, :, :42] > 0).all()


def test_training_crops_are_padded_with_the_normalised_mean():
    from torchvision import tv_tensors
    from snnet.tasks.detection.data import build_transforms
    cfg = load_config("quickstart_detection", ["augment.ratio_range=[0.25,0.25]", "augment.hflip=0"])
    train, _, _ = build_transforms(cfg.augment, 64, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2))
    image = tv_tensors.Image(torch.full((3, 64, 64), 255, dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[0.0, 0, 64, 64]]), format="XYXY", canvas_size=(64, 64))
    out, target = train(image, {"boxes": boxes, "labels": torch.tensor([1])})
    assert out.shape == (3, 64, 64)
    inside = out[:, int(target["boxes"][0, 1]):int(target["boxes"][0, 3]), int(target["boxes"][0, 0]):int(target["boxes"][0, 2])]
    assert inside.shape[1:] == (16, 16)
    torch.testing.assert_close(inside, ((1 - torch.tensor([0.5, 0.4, 0.3])) / 0.2)[:, None, None].expand(3, 16, 16))
    assert (out == 0).sum() == 3 * (64 * 64 - 16 * 16)  # the padding: the mean, not black (which is -mean/std)


# ---- deployment: ONNX and safetensors files of a stitch, ONNX Runtime evaluation, int8 -------------------------
def test_an_exported_stitch_gives_the_detections_of_the_model(tmp_path):
    """ONNX (one image of any size in; boxes, labels, scores and masks out, run by ONNX Runtime) and safetensors
    files give the PyTorch stitch's detections, all 100 of each image (a zero score threshold keeps them all)."""
    from snnet.export import export_stitch, load_exported
    from snnet.runtime import OnnxStitch

    model = tiny_detector().eval()
    model.detector.roi_heads.score_thresh = 0.0
    torch.manual_seed(1)
    images = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # the second is fitted and padded inside
    sid = next(s.id for s in model.stitches if s.kind == "LSL")  # two stitching layers
    with torch.no_grad():
        ref = model.select(sid)(images)
    paths = [export_stitch(model, sid, fmt, tmp_path / f"{sid}.{fmt}", (64, 64))[0]
             for fmt in ("onnx", "safetensors")]
    info = json.loads((tmp_path / f"{sid}.onnx.json").read_text())
    assert info["outputs"] == ["boxes", "labels", "scores", "masks"] and info["batch"] == 1
    with torch.no_grad():
        saved = load_exported(paths[1])(images)
    for got, atol in ((OnnxStitch(paths[0])(images), 1e-4), (saved, 0)):
        for out, exp in zip(got, ref):
            assert out["boxes"].shape == (100, 4) == exp["boxes"].shape
            assert torch.equal(out["labels"], exp["labels"])
            for key in ("boxes", "scores", "masks"):
                torch.testing.assert_close(out[key], exp[key], atol=atol, rtol=0)


def test_onnx_detections_give_the_model_s_coco_records(tmp_path, tiny_config):
    """The evaluation path reads a detection ONNX file as it reads the model: the same COCO records (category,
    score, box; masks thresholded at 0.5 agree on all but a few pixels, values within 1e-6 of 0.5 may flip)."""
    from pycocotools import mask as mask_utils
    from snnet.export import export_stitch
    from snnet.runtime import OnnxStitch

    task = scenes_task(tmp_path, tiny_config)
    model = tiny_detector(out_indices=(5,)).eval()
    model.detector.roi_heads.score_thresh = 0.0
    batch = task.eval_collate([task.val_set[i] for i in range(2)])
    sid = next(s.id for s in model.stitches if s.kind == "LS")
    path = export_stitch(model, sid, "onnx", tmp_path / "s.onnx", (64, 64))[0]
    ref = task.eval_batch(model.select(sid), batch, torch.device("cpu"))
    got = task.eval_batch(OnnxStitch(path), batch, torch.device("cpu"))
    assert len(got) == len(ref) == 2 + 2 * 2 * 100
    pixels = differ = 0
    for (kind, a), (kind_ref, b) in zip(got, ref):
        assert kind == kind_ref
        if kind == "image":
            assert a == b
            continue
        assert a["category_id"] == b["category_id"] and a["score"] == pytest.approx(b["score"], abs=1e-5)
        if kind == "bbox":
            assert a["bbox"] == pytest.approx(b["bbox"], abs=1e-3)
        else:
            ma, mb = (mask_utils.decode(r["segmentation"]) for r in (a, b))
            pixels, differ = pixels + ma.size, differ + int((ma != mb).sum())
    assert differ <= 1e-4 * pixels


def test_detection_files_quantise_evaluate_and_profile_through_the_cli(tmp_path, capsys):
    """int8 (dynamic: the backbone's and box head's linear layers) of a detection stitch, its evaluation into the
    run's columns beside the float32 file's, which equals the model's, and its ONNX Runtime latency; TorchScript
    is refused in one line."""
    from snnet.export import sidecar_path
    from helpers import read_jsonl, snnet

    cfg = json.loads(json.dumps(TINY))
    cfg["train"]["epochs"], cfg["output_dir"] = 0, str(tmp_path / "run")
    cfg["eval"], cfg["data"]["shapes"]["num_val"] = {"visualize": 0}, 2  # a small table to add columns to
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert snnet("train", "--config", str(tmp_path / "c.yaml")) == 0
    run = tmp_path / "run"
    common = ["export", "--checkpoint", str(run), "--stitch", "7", "--format"]
    assert snnet(*common, "onnx", "--output", str(tmp_path / "fp32.onnx")) == 0
    assert snnet(*common, "onnx", "--output", str(tmp_path / "dyn.onnx"), "--quantize", "int8") == 0
    capsys.readouterr()
    assert snnet(*common, "torchscript", "--output", str(tmp_path / "s.pt")) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "snnet: error: a detection model exports as onnx or safetensors: its torchvision heads do not trace to TorchScript"]
    info = json.loads(sidecar_path(tmp_path / "dyn.onnx").read_text())
    assert info["precision"] == "int8" and info["quantization"]["ops"] == ["MatMul", "Gemm"]
    assert snnet("eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--onnx",
                 str(tmp_path / "fp32.onnx"), str(tmp_path / "dyn.onnx")) == 0
    r = {x["stitch_id"]: x for x in read_jsonl(run / "results.jsonl")}[7]
    assert r["bbox_AP@fp32"] == pytest.approx(r["bbox_AP"], abs=1e-6) and "segm_AP@int8" in r
    assert snnet("profile", "--run", str(run), "--onnx", "--quantize", "int8", "--stitches", "7", "--repeats",
                 "2", "--warmup", "1", "--no-progress") == 0
    r = {x["stitch_id"]: x for x in read_jsonl(run / "results.jsonl")}[7]
    assert r["latency_onnx_ms"] > 0 and r["latency_ms@int8"] > 0
