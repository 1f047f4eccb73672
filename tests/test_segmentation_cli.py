"""``snnet train/eval/flops`` for segmentation on tiny anchors (CPU): built-in scenes, an ADE20K-layout folder,
a released-format checkpoint, torchrun."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from helpers import read_jsonl, torchrun_then_single
from helpers.segmentation import (ANCHORS, CLASSES, TINY, reference_state_dict, write_config, write_layout,
                                   write_mmengine_checkpoint)

from snnet import SegmentationModel, load_config
from snnet.cli import main

def test_train_then_eval_through_the_cli(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "iterations 2/3" in out and "iterations 3/3" in out and "Pareto frontier" in out
    log = read_jsonl(run / "log.jsonl")
    assert [(r["epoch"], r["iteration"]) for r in log] == [(0, 2), (1, 3)]
    rows = read_jsonl(run / "results.jsonl")
    model = SegmentationModel.from_pretrained(run / "model")
    assert [r["stitch_id"] for r in rows] == model.stitch_ids
    for r in rows:
        assert r["images"] == 11 and 0 <= r["mIoU"] <= 100 and len(r["iou_per_class"]) == 5
        assert r["flops"] == model.flops(r["stitch_id"])
    assert (run / "predictions.png").stat().st_size > 1000 and (run / "pareto.png").is_file()
    # the saved model evaluates to the same numbers, by sliding windows of the training crop as well
    assert main(["eval", "--config", str(cfg), "--output-dir", str(tmp_path / "again"), "--no-progress",
                 "--checkpoint", str(run)]) == 0
    assert [(r["stitch_id"], r["mIoU"]) for r in read_jsonl(tmp_path / "again" / "results.jsonl")] == \
        [(r["stitch_id"], r["mIoU"]) for r in rows]
    assert main(["eval", "--config", str(cfg), "--output-dir", str(tmp_path / "slide"), "--no-progress",
                 "--checkpoint", str(run), "--stitches", "0,1", "eval.mode=slide", "eval.stride=16"]) == 0
    slide = read_jsonl(tmp_path / "slide" / "results_subset.jsonl")
    assert [r["mIoU"] for r in slide] == [rows[0]["mIoU"], rows[1]["mIoU"]]  # one window covers a 32x32 scene


def test_iteration_schedule_is_mmsegmentations_poly(tmp_path):
    from snnet.training import Schedule, create_scheduler
    cfg = load_config(write_config(tmp_path), ["train.iterations=10", "train.min_lr=1e-4", "train.lr=0.01",
                                              "train.optimizer=momentum"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    sched = create_scheduler(opt, cfg.train, Schedule(cfg.train, loader_len=3))
    for t in range(11):
        sched.step_update(num_updates=t)
        assert opt.param_groups[0]["lr"] == pytest.approx((0.01 - 1e-4) * (1 - t / 10) ** 0.9 + 1e-4), t


def released_on_ade20k(tmp_path: Path) -> tuple[Path, Path]:
    """(config, released-format checkpoint) over an ADE20K-layout folder of 40x56 images, evaluated by 32x32
    windows every 21 pixels."""
    for split in ("training", "validation"):
        write_layout(tmp_path / "ade", split, ["a", "b", "c"], size=(40, 56), values=(0, 1, 2, 3, 4, 5))
    ckpt = tmp_path / "released.pth"
    write_mmengine_checkpoint(ckpt, reference_state_dict())
    cfg = write_config(tmp_path, model={"anchors": ANCHORS, "lora_rank": 4, "out_indices": [1, 3, 5],
                                        "head": {"channels": 16, "num_classes": CLASSES}},
                       data={"dataset": "ade20k", "root": str(tmp_path / "ade"), "eval_batch_size": 2},
                       eval={"mode": "slide", "stride": 21, "visualize": 0})
    return cfg, ckpt


def test_eval_of_a_released_format_checkpoint_on_an_ade20k_folder(tmp_path):
    cfg, ckpt = released_on_ade20k(tmp_path)
    assert main(["eval", "--config", str(cfg), "--checkpoint", str(ckpt), "--no-progress"]) == 0
    rows = read_jsonl(tmp_path / "run" / "results.jsonl")
    assert len(rows) == 8 and all(r["images"] == 3 for r in rows)
    # windows of 40x56 images: sharing route prefixes across stitches gives the same table to the last digit
    assert main(["eval", "--config", str(cfg), "--checkpoint", str(ckpt), "--no-progress", "--no-share-prefixes",
                 "--output-dir", str(tmp_path / "plain")]) == 0
    assert read_jsonl(tmp_path / "plain" / "results.jsonl") == rows
    # the same numbers from the model loaded in Python and metrics computed here
    from snnet import load_official_checkpoint
    from snnet.tasks import build_model, build_task
    from snnet.tasks.segmentation.metrics import area_sums, summarize
    c = load_config(cfg)
    model = load_official_checkpoint(build_model(c, load_weights=False), ckpt).eval().select(rows[3]["stitch_id"])
    task = build_task(c, progress=False)
    areas = 0
    for i in range(3):
        image, label = task.val_set[i]
        logits = model.slide_inference(image[None].as_subclass(torch.Tensor), 32, 21)
        areas = areas + area_sums(logits[0].argmax(0), label.as_subclass(torch.Tensor), CLASSES)
    assert summarize(areas)["mIoU"] == pytest.approx(rows[3]["mIoU"], abs=1e-9)


@pytest.mark.parametrize("overrides,message", [
    (["train.epochs=3"], "config key 'train': sets iterations and epochs"),
    (["task=classification"], "config key 'augment.scale' belongs to segmentation: a classification run does not "
                              "read it"),
    (["augment.rotation=5"], "config key 'augment.rotation' belongs to depth: a segmentation run does not read it"),
    (["data.dataset=imagefolder"], "data.dataset 'imagefolder' is not a segmentation dataset"),
    (["data.dataset=segfolder", "data.root=/nonexistent"], "set model.head.num_classes"),
    (["data.dataset=ade20k", "data.root=/nonexistent"], "data folder not found: /nonexistent/images/training"),
    (["eval.mode=tiles"], "config key 'eval.mode' must be 'whole' or 'slide'"),
    (["model.anchors.0.kwargs.img_size=64", "model.anchors.1.kwargs.img_size=64"],
     "data.input_size 32 differs from the anchors' 64x64 input"),
])
def test_segmentation_config_errors_are_one_line(tmp_path, capsys, overrides, message):
    cfg = write_config(tmp_path)
    assert main(["train", "--config", str(cfg), "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_flops_command_prints_the_segmentation_table(capsys):
    assert main(["flops", "--config", "ade20k_setr_deit3_s_l"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "134 stitches (v2, segmentation)"
    assert out[2].split()[:3] == ["1", "anchor", "363.157"]


def test_torchrun_two_processes_match_one(tmp_path):
    dist_rows, single = torchrun_then_single(write_config(tmp_path), tmp_path / "single")
    assert all(r["images"] == 11 for r in dist_rows)
    for a, b in zip(dist_rows, single):  # per-class areas summed over ranks: the same metrics exactly
        assert (a["stitch_id"], a["mIoU"], a["aAcc"], a["iou_per_class"]) == \
            (b["stitch_id"], b["mIoU"], b["aAcc"], b["iou_per_class"])


def test_an_interrupted_iteration_run_resumes_to_the_same_weights(tmp_path, monkeypatch):
    import snnet.training as training
    cfg = write_config(tmp_path, train={**TINY["train"], "iterations": 4, "checkpoint_interval": 2})
    straight = tmp_path / "straight"
    assert main(["train", "--config", str(cfg), "--no-progress", "--output-dir", str(straight)]) == 0
    calls = []

    def interrupt_after_first_round():
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "barrier", interrupt_after_first_round)
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 130
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0  # resumes at iteration 2
    a = torch.load(straight / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    assert [r["iteration"] for r in read_jsonl(tmp_path / "run" / "log.jsonl")] == [2, 4]


def test_a_bad_label_stops_a_run_with_one_line(tmp_path, capsys):
    import numpy as np
    from PIL import Image
    for split in ("train", "val"):
        write_layout(tmp_path / "seg", split, ["a", "b", "c", "d"], size=(32, 32), values=(0, 1, 2))
    Image.fromarray(np.full((32, 32), 9, np.uint8)).save(tmp_path / "seg" / "annotations" / "val" / "c.png")
    cfg = write_config(tmp_path, data={**TINY["data"], "dataset": "segfolder", "root": str(tmp_path / "seg"),
                                       "batch_size": 2},
                       model={**TINY["model"], "head": {"channels": 16, "num_classes": 3}},
                       train={**TINY["train"], "iterations": 1})
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "c.png has class id 9, outside 0..2 and the ignore index 255" in err, err


@pytest.mark.parametrize("dataset,splits,suffix", [("ade20k", ("training", "validation"), ".png"),
                                                   ("coco_stuff10k", ("train2014", "test2014"), "_labelTrainIds.png")])
def test_a_runs_own_config_evaluates_the_run_again(tmp_path, dataset, splits, suffix):
    """`snnet eval --config <run>/config.yaml` once failed on the real layouts (the saved split defaults train/val
    were read as user-set names over ADE20K's training/validation); now it reproduces the run's results."""
    for split in splits:
        write_layout(tmp_path / "data", split, ["a", "b", "c", "d"], suffix, size=(40, 56), values=(0, 1, 2, 3, 4, 5))
    cfg = write_config(tmp_path, model={"anchors": ANCHORS, "lora_rank": 4, "out_indices": [1, 3, 5],
                                        "head": {"channels": 16, "num_classes": CLASSES}},
                       data={"dataset": dataset, "root": str(tmp_path / "data"), "input_size": 32, "batch_size": 2,
                             "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3},
                       train={"iterations": 2, "checkpoint_interval": 2, "optimizer": "adamw", "lr": 1e-3,
                              "init_images": 4, "ros_gap": 0.0001}, eval={"mode": "slide", "visualize": 0})
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    run = tmp_path / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["train_split"] is None and saved["data"]["val_split"] is None
    assert main(["eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--no-progress",
                 "--output-dir", str(tmp_path / "again")]) == 0
    assert read_jsonl(tmp_path / "again" / "results.jsonl") == read_jsonl(run / "results.jsonl")


def test_onnx_files_evaluate_by_sliding_windows(tmp_path, capsys):
    """The ADE20K recipe's evaluation (windows of the training crop over larger images) through ONNX Runtime: a
    float32 file gives the PyTorch stitch's mIoU, int8 its own column; whole images of another size are one line."""
    from snnet import load_official_checkpoint
    from snnet.export import export_stitch
    from snnet.tasks import build_model

    cfg, ckpt = released_on_ade20k(tmp_path)
    assert main(["eval", "--config", str(cfg), "--checkpoint", str(ckpt), "--no-progress"]) == 0
    model = load_official_checkpoint(build_model(load_config(cfg), load_weights=False), ckpt).eval()
    export_stitch(model, 3, "onnx", tmp_path / "s3.onnx", (32, 32))
    common = ["eval", "--config", str(cfg), "--checkpoint", str(ckpt), "--no-progress"]
    assert main([*common, "--onnx", str(tmp_path / "s3.onnx")]) == 0
    assert main([*common, "--quantize", "int8", "--stitches", "3"]) == 0
    row = {r["stitch_id"]: r for r in read_jsonl(tmp_path / "run" / "results.jsonl")}[3]
    assert row["mIoU@fp32"] == pytest.approx(row["mIoU"], abs=1e-6) and 0 <= row["mIoU@int8"] <= 100
    capsys.readouterr()
    assert main([*common, "--onnx", str(tmp_path / "s3.onnx"), "eval.mode=whole"]) == 2
    assert capsys.readouterr().err == (f"snnet: error: {tmp_path / 's3.onnx'} takes 32x32 images, not 40x56: resize "
                                       f"the input, or for segmentation evaluate with eval.mode=slide (windows of its "
                                       f"size)\n")
