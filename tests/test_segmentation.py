"""Segmentation: SETR heads on every stitch, sliding windows, metrics, data layouts, released-checkpoint format."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reference_impl import reference_configs, reference_seg_logits
from helpers.segmentation import (CHANNELS, CLASSES, DEPTHS, HEADS, IMG, OUT, PATCH, RANK, WIDTHS, reference_state_dict,
                                   write_layout, write_mmengine_checkpoint)

from snnet import SNNet, SNNetBackbone, SNNetError, build_model, load_config, load_official_checkpoint
from snnet.anchors import AnchorConfig
from snnet.stitch_space import route_taps, stitch_space
from snnet.tasks.segmentation import SegmentationModel
from snnet.tasks.segmentation.data import SegmentationFolder, prepare_label, rescale_size
from snnet.tasks.segmentation.metrics import area_sums, summarize



def tiny_segmentation(rel_pos: bool = True, aux_weight: float = 0.4, img: int = IMG) -> SegmentationModel:
    anchors = [AnchorConfig("deit3_small_patch16_224", rel_pos_bias=rel_pos, kwargs=dict(
        img_size=img, patch_size=PATCH, embed_dim=w, depth=d, num_heads=h, num_classes=0, final_norm=False,
        dynamic_img_size=True)) for d, w, h in zip(DEPTHS, WIDTHS, HEADS)]
    torch.manual_seed(0)
    return SegmentationModel(SNNetBackbone(anchors, lora_rank=RANK, out_indices=OUT), CLASSES, CHANNELS, aux_weight)


def randomize(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if t.is_floating_point():
                scale = 0.1 if name.endswith("gamma") else 0.3
                t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5 if "running_var" in name
                        else torch.randn(t.shape, generator=g) * scale)
    return model


# ---- model ---------------------------------------------------------------------------------------
def test_every_stitch_gives_logits_at_the_input_size_and_training_outputs_per_head():
    model = randomize(tiny_segmentation()).eval()
    x = torch.randn(2, 3, IMG, IMG)
    assert len(model.stitch_ids) == len(stitch_space(*DEPTHS))
    for sid in model.stitch_ids:
        out = model.select(sid)(x)
        assert out.shape == (2, CLASSES, IMG, IMG) and torch.isfinite(out).all(), sid
    model.train()
    outs = model(x)
    # decode head x4, auxiliary heads (two stages) x16 of the 4x4 token grid
    assert [tuple(o.shape) for o in outs] == [(2, CLASSES, 16, 16)] + [(2, CLASSES, 64, 64)] * (len(OUT) - 1)


def test_sliding_window_equals_whole_image_when_one_window_covers_it():
    model = randomize(tiny_segmentation()).eval().select(7)
    x = torch.randn(2, 3, IMG, IMG)
    torch.testing.assert_close(model.slide_inference(x, IMG, 21), model(x), rtol=0, atol=1e-6)


def test_sliding_windows_average_overlaps_as_mmsegmentation():
    """Windows at stride steps, the last of each axis moved back to the border; overlaps averaged."""
    model = randomize(tiny_segmentation(rel_pos=False)).eval().select(5)
    x = torch.randn(1, 3, 48, 80)
    expected = torch.zeros(1, CLASSES, 48, 80)
    count = torch.zeros(1, 1, 48, 80)
    for y1 in (0, 16):  # rows: (48 - 32 + 20) // 21 + 1 = 2, the second moved back to end at 48
        for x1 in (0, 21, 42, 48):  # columns: (80 - 32 + 20) // 21 + 1 = 4, the last ending at 80
            expected[..., y1:y1 + 32, x1:x1 + 32] += model(x[..., y1:y1 + 32, x1:x1 + 32])
            count[..., y1:y1 + 32, x1:x1 + 32] += 1
    torch.testing.assert_close(model.slide_inference(x, 32, 21), expected / count, rtol=0, atol=1e-5)


def test_other_sizes_run_whole_without_relative_position_bias_and_must_fit_the_patch():
    model = randomize(tiny_segmentation(rel_pos=False)).eval()
    assert model(torch.randn(1, 3, 48, 40)).shape == (1, CLASSES, 48, 40)
    with pytest.raises(SNNetError, match="images are 33x33, not a multiple of the anchors' 8x8 patches"):
        model(torch.randn(1, 3, 33, 33))


def test_relative_position_bias_is_tied_to_its_grid():
    model = tiny_segmentation().eval()
    with pytest.raises(SNNetError, match="run on their 4x4 token grid only"):
        model(torch.randn(1, 3, 48, 48))


def test_save_and_load_pretrained_round_trip(tmp_path):
    model = randomize(tiny_segmentation()).eval()
    model.save_pretrained(tmp_path / "m")
    again = SegmentationModel.from_pretrained(tmp_path / "m").eval()
    assert isinstance(again, SegmentationModel) and again.num_classes == CLASSES
    x = torch.randn(1, 3, IMG, IMG)
    for sid in (0, 1, 8):
        torch.testing.assert_close(again.select(sid)(x), model.select(sid)(x), rtol=0, atol=0)


def test_params_count_route_tap_projections_and_decode_head():
    model = tiny_segmentation()
    head = sum(p.numel() for p in model.decode_head.parameters())
    layer = model.backbone.sl_layers[0]
    sl = layer.in_features * layer.out_features + layer.out_features  # merged: its low-rank matrices are not kept
    assert sum(p.numel() for p in layer.parameters()) > sl
    # the small anchor alone projects its taps at blocks 0, 1, 2 through SL layers 0, 1, 2
    assert model.params(0) == model.backbone.params(0) + 3 * sl + head
    assert model.params(1) == model.backbone.params(1) + head
    # what the deployed stitch holds (the low-rank matrices of the tap projections were counted before)
    assert model.params(0) == sum(p.numel() for p in model.deployable(0).parameters())


# ---- FLOPs against the published table ---------------------------------------------------------------
def test_flops_match_the_published_ade20k_table_but_two_tap_projections():
    """Large anchor and every stitch without small taps at blocks 7 and 9 are exact; the published table
    leaves out the SL projections of those two taps (1025 tokens x 384 x 1024 MACs each), which we count."""
    import json
    cfg = load_config("ade20k_setr_deit3_s_l")
    model = build_model(cfg, load_weights=False, device="meta")
    published = {r["stitch_id"]: r["flops"] for r in map(json.loads, (Path(__file__).parent / "data" / "ade20k_setr_deit3_s_l.jsonl").open())}
    assert sorted(published) == model.stitch_ids
    projection = 1025 * 384 * 1024
    from snnet.stitch_space import route_taps
    exact = 0
    for s in model.stitches:
        uncounted = sum(1 for a, b in route_taps(s, (9, 14, 19, 23), 12, 24) if a == 0 and b in (7, 9))
        assert model.flops(s.id) - published[s.id] == uncounted * projection, s.id
        exact += uncounted == 0
    assert exact == 47


# ---- metrics -------------------------------------------------------------------------------------
def test_metrics_on_a_hand_computed_case():
    # 3 classes; 255 ignored. label / prediction per pixel:
    label = torch.tensor([[0, 0, 1, 1], [1, 255, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [0, 2, 0, 0]])
    a = area_sums(pred, label, 3)
    # class 0: labelled 3 (px 0,1,7), predicted 3 (px 0,4,7), hit 2 -> IoU 2/4; class 1: labelled 3 (2,3,4),
    # predicted 3 (1,2,3), hit 2 -> 2/4; class 2: predicted only at an ignored pixel -> absent
    assert a.tolist() == [[2, 2, 0], [4, 4, 0], [3, 3, 0], [3, 3, 0]]
    m = summarize(a)
    assert m["mIoU"] == pytest.approx(50.0) and m["mAcc"] == pytest.approx(100 * 2 / 3)
    assert m["aAcc"] == pytest.approx(100 * 4 / 6) and m["iou_per_class"] == [50.0, 50.0, None]


def test_a_class_predicted_but_never_labelled_counts_zero_iou_and_no_accuracy():
    label = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 1, 1])
    m = summarize(area_sums(pred, label, 2))
    assert m["iou_per_class"] == [50.0, 0.0] and m["mIoU"] == pytest.approx(25.0)
    assert m["mAcc"] == pytest.approx(50.0)  # class 1 has no labelled pixel: left out of mAcc


def test_sums_over_batches_equal_one_pass():
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 4, (6, 8, 8), generator=g)
    label[label == 3] = 255
    pred = torch.randint(0, 4, (6, 8, 8), generator=g)
    split = sum(area_sums(pred[i], label[i], 4) for i in range(6))
    assert torch.equal(split, area_sums(pred, label, 4))


def test_reduce_zero_label_is_mmsegmentations():
    label = np.array([[0, 1, 2], [150, 255, 3]])
    out = prepare_label(label, 150, True, 255)
    assert out.tolist() == [[255, 0, 1], [149, 255, 2]]
    with pytest.raises(SNNetError, match="class id 151, outside 0..150 \\(reduce_zero_label\\)"):
        prepare_label(np.array([[151]]), 150, True, 255, "x.png")


def test_keep_ratio_rescale_is_mmcvs():
    assert rescale_size(384, 512, 2048, 512) == (512, 683)  # the short side becomes 512
    assert rescale_size(300, 1500, 2048, 512) == (410, 2048)  # the long side reaches 2048 first


# ---- data layouts ------------------------------------------------------------------------------------
@pytest.mark.parametrize("dataset,splits,suffix,classes,reduce", [
    ("ade20k", ("training", "validation"), ".png", 150, True),
    ("coco_stuff10k", ("train2014", "test2014"), "_labelTrainIds.png", 171, True),
    ("segfolder", ("train", "val"), ".png", 3, False),
])
def test_dataset_layouts(tmp_path, dataset, splits, suffix, classes, reduce):
    for split in splits:
        write_layout(tmp_path, split, ["a", "b"], suffix, values=(0, 1, 2, 255))
    overrides = [f"data.dataset={dataset}", f"data.root={tmp_path}"]
    if dataset == "segfolder":
        overrides.append("model.head.num_classes=3")
    cfg = load_config("quickstart_segmentation", overrides)
    from snnet.tasks import build_task
    task = build_task(cfg, progress=False)
    assert task.num_classes == classes and len(task.train_set) == len(task.val_set) == 2
    raw = np.asarray(Image.open(tmp_path / "annotations" / splits[1] / f"a{suffix}")).astype(np.int64)
    image, label = task.val_set[0]
    expected = prepare_label(raw, classes, reduce, 255)
    assert image.shape == (3, 12, 10) and label.as_subclass(torch.Tensor).tolist() == expected.tolist()
    img, mask = task.train_set[1]
    assert img.shape == (3, 32, 32) and mask.shape == (32, 32)  # cropped, then padded to the crop


def test_scenes_give_background_plus_shape_classes():
    cfg = load_config("quickstart_segmentation", ["data.shapes.num_train=4", "data.shapes.num_val=2"])
    from snnet.tasks import build_task
    from snnet.data import render_scene
    task = build_task(cfg, progress=False)
    assert task.num_classes == 11
    _, label = task.val_set[1]
    assert np.array_equal(label.numpy(), render_scene(cfg.data.shapes.scene_config(), "val", 1).semantic)


@pytest.mark.parametrize("case,message", [
    ("range", "has class id 7, outside 0..2"),
    ("size", "is 12x10 but its image a.jpg is 10x12"),
    ("missing", "label file missing for"),
    ("rgb", "is not a single-channel PNG (mode RGB)"),
])
def test_bad_labels_are_one_line_errors(tmp_path, case, message):
    write_layout(tmp_path, "train", ["a"])
    lab = tmp_path / "annotations" / "train" / "a.png"
    if case == "range":
        Image.fromarray(np.full((12, 10), 7, np.uint8)).save(lab)
    elif case == "size":
        Image.fromarray(np.zeros((10, 12), np.uint8)).save(lab)
    elif case == "missing":
        lab.unlink()
    elif case == "rgb":
        Image.fromarray(np.zeros((12, 10, 3), np.uint8)).save(lab)
    with pytest.raises(SNNetError) as e:
        SegmentationFolder(tmp_path, "train", ".png", 3)[0]
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- the reference's checkpoint format -------------------------------------------------------------
def test_a_reference_checkpoint_loads_and_every_stitch_matches_an_independent_forward(tmp_path):
    sd = reference_state_dict()
    path = tmp_path / "iter_160000.pth"
    write_mmengine_checkpoint(path, sd)
    assert {"mmengine.logging.history_buffer.HistoryBuffer", "builtins.getattr"} <= set(
        torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    with pytest.raises(Exception):  # what torch's safe loader says of it
        torch.load(path, weights_only=True)
    model = load_official_checkpoint(tiny_segmentation(), path).eval()
    assert "mmengine" not in sys.modules  # nothing was imported, no code of the file ran
    x = torch.randn(2, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))
    assert len(reference_configs(*DEPTHS)) == len(model.stitch_ids) + 1
    for sid in model.stitch_ids:
        expected = reference_seg_logits(sd, sid, x, DEPTHS, HEADS, OUT)
        torch.testing.assert_close(model.select(sid)(x), expected, rtol=0, atol=1e-4, msg=f"stitch {sid}")


def test_a_checkpoint_with_other_objects_is_refused_naming_them(tmp_path):
    import os
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "hook": os.system}, path)
    with pytest.raises(SNNetError, match=r"beyond weights and mmengine's logging state \(posix.system\)"):
        load_official_checkpoint(tiny_segmentation(), path)


def test_a_checkpoint_of_another_head_size_is_a_one_line_error(tmp_path):
    sd = reference_state_dict()
    sd["decode_head.conv_seg.weight"] = torch.zeros(7, CHANNELS, 1, 1)
    path = tmp_path / "other.pth"
    write_mmengine_checkpoint(path, sd)
    with pytest.raises(SNNetError) as e:
        load_official_checkpoint(tiny_segmentation(), path)
    assert "decode_head.conv_seg.weight (7x16x1x1 in file, 5x16x1x1 in model)" in str(e.value)
    assert "\n" not in str(e.value)


def test_build_model_dispatches_on_task():
    seg = build_model(load_config("ade20k_setr_deit3_s_l"), load_weights=False, device="meta")
    assert isinstance(seg, SegmentationModel) and seg.num_classes == 150
    assert len(seg.auxiliary_head) == 3 and seg.decode_head.channels == 256
    cls = build_model(load_config("imagenet_deit3_s_l"), load_weights=False, device="meta")
    assert isinstance(cls, SNNet)
    assert math.isclose(seg.flops(1) / 1e9, 363.157291008)


def test_test_resize_scales_images_and_keeps_labels_at_full_size(tmp_path):
    write_layout(tmp_path, "validation", ["a"], size=(40, 56))
    write_layout(tmp_path, "training", ["a"], size=(40, 56))
    cfg = load_config("quickstart_segmentation", ["data.dataset=ade20k", f"data.root={tmp_path}",
                                                  "data.test_resize=[64, 32]"])
    from snnet.tasks import build_task
    image, label = build_task(cfg, progress=False).val_set[0]
    # short side 40 -> 32 unless the long side would pass 64: factor min(64/56, 32/40) = 0.8
    assert image.shape == (3, 32, 45) and label.shape == (40, 56)


def test_random_crop_avoids_crops_dominated_by_one_class():
    from torchvision import tv_tensors

    from snnet.tasks.segmentation.data import CatMaxRandomCrop
    mask = torch.zeros(64, 64, dtype=torch.long)
    # a 32x32 corner of class 1: a 32x32 crop has both classes under 75 % with probability 0.357, so 11
    # draws find one with probability 0.992 (a fixed seed makes the counts below exact anyway)
    mask[32:, 32:] = 1
    mask[:8, :] = 255  # ignored pixels do not count
    crop = CatMaxRandomCrop(32, 0.75, 255)
    torch.manual_seed(0)
    shares = []
    for _ in range(50):
        _, m = crop(tv_tensors.Image(torch.zeros(3, 64, 64)), tv_tensors.Mask(mask))
        assert m.shape == (32, 32)
        counts = torch.bincount(m[m != 255].flatten(), minlength=2).double()
        shares.append((counts.max() / counts.sum()).item())
    plain = []
    for _ in range(50):  # the same crops without the class rule, for comparison
        _, m = CatMaxRandomCrop(32, 1.0, 255)(tv_tensors.Image(torch.zeros(3, 64, 64)), tv_tensors.Mask(mask))
        counts = torch.bincount(m[m != 255].flatten(), minlength=2).double()
        plain.append((counts.max() / counts.sum()).item())
    assert sum(s < 0.75 for s in shares) >= 45 and sum(s < 0.75 for s in plain) <= 28


def test_eval_mode_projects_only_the_tap_the_decode_head_reads():
    """The small anchor's taps are all small-anchor blocks: with every tap (training's) each goes through its SL
    layer, in eval mode only the last one (the decode head's); the logits are the same."""
    model = randomize(tiny_segmentation()).select(0).eval()
    calls = []
    for i, layer in enumerate(model.backbone.sl_layers):
        layer.register_forward_hook(lambda m, args, out, i=i: calls.append(i))
    x = torch.randn(2, 3, IMG, IMG)
    taps = [b for _, b in route_taps(model.backbone.stitch(0), tuple(OUT), *model.backbone.depths)]
    with torch.no_grad():
        read = model(x)
        assert calls == [taps[-1]]
        calls.clear()
        model.inference_taps = None  # an instance attribute over the class's: every tap
        every = model(x)
        assert calls == taps and len(set(taps)) > 1
    torch.testing.assert_close(read, every, rtol=0, atol=0)
