"""Bad input, table-driven: exit code 2, one `snnet: error:` line naming the key or file, no traceback,
and not one file of an existing run directory changed. Then the API's one-line SNNetErrors."""
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from snnet import (SNNet, SNNetError, best_under_budget, init_stitching_layers, load_official_checkpoint, ros_groups,
                   stitch_space)
from snnet.cli import main
from helpers import ENV, TINY, read_jsonl, snapshot, tiny_vit

QUICK = {"data": {"shapes": {"image_size": 32, "num_train": 32, "num_val": 8}},
         "train": {"epochs": 1, "init_images": 8}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished tiny run: config, checkpoint, log, model, results, plot; and its config file."""
    root = tmp_path_factory.mktemp("bad")
    cfg = json.loads(json.dumps(TINY))
    for section, values in QUICK.items():
        cfg[section].update(values)
    cfg["output_dir"] = str(root / "run")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    return root / "run", path


@contextmanager
def _no_warnings():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    assert not caught, [str(w.message) for w in caught]


def _files(tmp: Path, run_dir: Path) -> dict[str, Path]:
    """Bad files the cases point at, made on demand."""
    corrupt = tmp / "corrupt.pth"  # a checkpoint cut off half way, as by a full disk or a broken copy
    whole = (run_dir / "checkpoint.pt").read_bytes()
    corrupt.write_bytes(whole[: len(whole) // 2])
    evil = tmp / "evil.pth"
    torch.save({"model": {}, "f": os.system}, evil, _use_new_zipfile_serialization=False)  # legacy format
    torch.save({"model": {}, "f": os.system}, tmp / "evil_zip.pth")
    not_dict = tmp / "list.pth"
    torch.save([1, 2, 3], not_dict)
    bad_st = tmp / "corrupt.safetensors"
    bad_st.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    afile = tmp / "afile"
    afile.write_text("I am a file")
    bad_yaml = tmp / "bad.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    list_yaml = tmp / "list.yaml"
    list_yaml.write_text("- a\n- b\n")
    empty_dir = tmp / "empty"
    empty_dir.mkdir(exist_ok=True)
    rows = read_jsonl(run_dir / "results.jsonl")[:3]
    results = {}
    for name, lines in {
        "nonutf8": [json.dumps(rows[0]).encode(), b'{"stitch_id": 1, "flops": 1, "gflops": \xff}'],
        "nofield": [json.dumps(rows[0]).encode(), json.dumps({k: v for k, v in rows[1].items() if k != "flops"}).encode()],
        "textmetric": [json.dumps(rows[0]).encode(), json.dumps(rows[1]).encode(), json.dumps({**rows[2], "acc1": "high"}).encode()],
        "badjson": [json.dumps(rows[0]).encode(), b"{oops"],
        "twice": [json.dumps(rows[0]).encode(), json.dumps(rows[0]).encode()],
        # hand edits of what a budget reads: costs, times and the int8 columns profile and eval --quantize write
        "nan8": [json.dumps({**r, "acc1@int8": float("nan") if i == 2 else 1.0}).encode() for i, r in enumerate(rows)],
        "negflops": [json.dumps({**r, "flops": -5} if i == 1 else r).encode() for i, r in enumerate(rows)],
        "nanlatency": [json.dumps({**r, "latency_ms": float("nan") if i == 2 else 1.0}).encode() for i, r in enumerate(rows)],
        "neglatency8": [json.dumps({**r, "acc1@int8": 1.0, "latency_ms@int8": -1.0}).encode() for r in rows],
        "untimed8": [json.dumps({**r, "acc1@int8": 1.0, "latency_ms": 1.0}).encode() for r in rows],
    }.items():
        results[name] = tmp / f"{name}.jsonl"
        results[name].write_bytes(b"\n".join(lines) + b"\n")
    badcfg = tmp / "badcfg"  # a run whose config.yaml was edited into broken YAML
    badcfg.mkdir(exist_ok=True)
    (badcfg / "results.jsonl").write_bytes((run_dir / "results.jsonl").read_bytes())
    (badcfg / "config.yaml").write_text("model: [unclosed\n")
    saved = tmp / "saved"
    if not saved.exists():
        SNNet.from_pretrained(run_dir / "model").save_pretrained(saved)
    for name, edit in {"wrongtype": lambda c: c.update(lora_rank="four"),
                       "badkwarg": lambda c: c["anchors"][0]["kwargs"].update(depth_of_field=3)}.items():
        target = tmp / f"saved_{name}"
        target.mkdir(exist_ok=True)
        (target / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
        config = json.loads((saved / "config.json").read_text())
        edit(config)
        (target / "config.json").write_text(json.dumps(config))
    return {"corrupt": corrupt, "evil": evil, "evil_zip": tmp / "evil_zip.pth", "list": not_dict, "bad_st": bad_st, "afile": afile,
            "bad_yaml": bad_yaml, "list_yaml": list_yaml, "empty": empty_dir, "small": Path(__file__).parent.parent
            / "src/snnet/assets/quickstart/small_p4.safetensors", **results,
            "saved": saved, "badcfg": badcfg, **{f"saved_{n}": tmp / f"saved_{n}" for n in ("wrongtype", "badkwarg")}}


@pytest.fixture(scope="module")
def sidecars(run, tmp_path_factory) -> dict[str, Path]:
    """Stitch 3 of the run exported to ONNX once, beside copies whose sidecars were edited by hand."""
    run_dir, _ = run
    tmp = tmp_path_factory.mktemp("sidecars")
    assert main(["export", "--checkpoint", str(run_dir), "--stitch", "3", "--format", "onnx", "--output",
                 str(tmp / "s3.onnx")]) == 0
    info = json.loads((tmp / "s3.onnx.json").read_text())
    files = {"onnx_one": tmp / "s3.onnx"}
    for name, edit in {"int4": {"precision": "int4"}, "noprecision": {"precision": None},
                       "quantlist": {"precision": "int8", "quantization": ["static"]},
                       "int8by": {"precision": "int8", "quantization": {"method": "qat"}},
                       "mean": {"mean": [0.485, 0.456, 0.406]}, "shortmean": {"mean": [0.5]}}.items():
        files[f"onnx_{name}"] = tmp / f"{name}.onnx"
        shutil.copyfile(tmp / "s3.onnx", files[f"onnx_{name}"])
        (tmp / f"{name}.onnx.json").write_text(json.dumps({**info, **edit, "file": f"{name}.onnx"}))
    return files


T, E = "train", "eval"
CASES = [  # (command, extra args, text the one error line must hold)
    # the schema: types, ranges, choices, unknown keys
    (T, ["train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (T, ["trian.epochs=3"], "unknown config key 'trian' (did you mean 'train'?)"),
    (T, ["bogus.x=1"], "unknown config key 'bogus' (known: task, model, data, augment, train, eval, output_dir)"),
    (T, ["model.anchors.0.nmae=x"], "unknown config key 'model.anchors.0.nmae' (did you mean 'model.anchors.0.name'?)"),
    (T, ["train.lr=fast"], "config key 'train.lr' must be a number, got 'fast'"),
    (T, ["train.lr=-1"], "config key 'train.lr' must be greater than 0, got -1"),
    (T, ["train.lr=0"], "config key 'train.lr' must be greater than 0"),
    (T, ["train.lr=true"], "config key 'train.lr' must be a number, got True"),
    (T, ["train.lr=.nan"], "config key 'train.lr' must be a finite number"),
    (T, ["train.min_lr=-1e-5"], "config key 'train.min_lr' must be greater than or equal to 0"),
    (T, ["train.weight_decay=-0.1"], "config key 'train.weight_decay'"),
    (T, ["train.scheduler_lag=2"], "config key 'train.scheduler_lag' must be 0 or 1, got 2"),
    (T, ["train.scheduler_lag=1", "train.iterations=10"], "config key 'train': sets iterations and scheduler_lag"),
    (T, ["train.init_transform=val"], "config key 'train.init_transform' must be 'train' or 'eval', got 'val'"),
    (T, ["train.opt_betas=[0.9]"], "config key 'train.opt_betas' must hold at least 2 items, got [0.9]"),
    (T, ["train.opt_betas=[0.9,1.5]"], "config key 'train.opt_betas.1' must be less than 1, got 1.5"),
    (T, ["train.opt_eps=0"], "config key 'train.opt_eps' must be greater than 0"),
    (T, ["model.anchors.0.drop_path=ramp"], "config key 'model.anchors.0.drop_path' must be 'linear' or 'constant', got 'ramp'"),
    (T, ["model.head.min_depth=20"], "config key 'model.head' belongs to segmentation, depth and detection: a "
                                     "classification run does not read it"),
    (T, ["augment.rotation=5"], "config key 'augment.rotation' belongs to depth: a classification run does not read it"),
    (T, ["data.max_depth=20"], "config key 'data.max_depth' belongs to depth: a classification run does not read it"),
    (T, ["train.momentum=1.5"], "config key 'train.momentum' must be less than 1"),
    (T, ["data.batch_size=0"], "config key 'data.batch_size' must be greater than or equal to 1, got 0"),
    (T, ["data.batch_size=2.5"], "config key 'data.batch_size' must be an integer, got 2.5"),
    (T, ["data.eval_batch_size=0"], "config key 'data.eval_batch_size'"),
    (T, ["data.workers=-1"], "config key 'data.workers' must be greater than or equal to 0, got -1"),
    (T, ["train.epochs=-1"], "config key 'train.epochs' must be greater than or equal to 0"),
    (T, ["train.warmup_epochs=-2"], "config key 'train.warmup_epochs'"),
    (T, ["augment.hflip=1.5"], "config key 'augment.hflip' must be less than or equal to 1, got 1.5"),
    (T, ["augment.reprob=-0.1"], "config key 'augment.reprob' must be greater than or equal to 0"),
    (T, ["augment.label_smoothing=1"], "config key 'augment.label_smoothing' must be less than 1"),
    (T, ["augment.cutmix=-1"], "config key 'augment.cutmix'"),
    (T, ["augment.eval_crop_ratio=0"], "config key 'augment.eval_crop_ratio' must be greater than 0"),
    (T, ["train.ros_gap=-1"], "config key 'train.ros_gap' must be greater than or equal to 0"),
    (T, ["train.ros_k=0"], "config key 'train.ros_k' must be greater than 0"),
    (T, ["train.ros_anchor_share=0.7"], "config key 'train.ros_anchor_share' must be less than or equal to 0.5"),
    (T, ["train.clip_grad=0"], "config key 'train.clip_grad' must be greater than 0"),
    (T, ["train.init_images=0"], "config key 'train.init_images' must be greater than or equal to 1"),
    (T, ["data.mean=[0.5,0.5]"], "config key 'data.mean' must hold at least 3 items, got [0.5, 0.5]"),
    (T, ["data.std=[0.5,0,0.5]"], "config key 'data.std.1' must be greater than 0, got 0"),
    (T, ["data.mean=gray"], "config key 'data.mean' must be a list, got 'gray'"),
    (T, ["train.optimizer=adamx"], "config key 'train.optimizer': 'adamx' is not a timm optimizer (did you mean 'adamax'?)"),
    (T, ["train.scheduler=plateau"], "config key 'train.scheduler' must be 'cosine', 'tanh', 'step', 'multistep', 'poly' or 'onecycle'"),
    (T, ["data.interpolation=cubic"], "config key 'data.interpolation' must be 'nearest', 'bilinear', 'bicubic'"),
    (T, ["augment.auto_augment=bogus"], "config key 'augment.auto_augment': 'bogus' is not a timm auto-augment policy"),
    (T, ["augment.crop=center"], "config key 'augment.crop' must be 'rrc', 'simple' or 'none', got 'center'"),
    (T, ["model.version=v3"], "config key 'model.version' must be 'v1', 'v2' or 'sn-net', got 'v3'"),
    (T, ["model.lora_rank=-1"], "config key 'model.lora_rank' must be greater than or equal to 0, got -1"),
    (T, ["model.lora_rank=8.5"], "config key 'model.lora_rank' must be an integer, got 8.5"),
    (T, ["model.lora_alpha=0"], "config key 'model.lora_alpha' must be greater than 0"),
    (T, ["model.anchors.1.name=vit_nonsense_patch3"], "config key 'model.anchors.1.name': unknown timm model 'vit_nonsense_patch3'"),
    (T, ["model.anchors.1.pretrained=maybe"], "config key 'model.anchors.1.pretrained' must be true or false, got 'maybe'"),
    (T, ["model.anchors=[]"], "config key 'model.anchors' must list at least two anchors, got 0"),
    (T, ["model.anchors.2.name=x"], "override 'model.anchors.2.name': '2' is not an index of a list of 2"),
    (T, ["train=3"], "config key 'train' must be a mapping, got 3"),
    (T, ["train.epochs.x=3"], "override 'train.epochs.x': 'train.epochs' is not a section"),
    (T, ["train.lr"], "override 'train.lr' must look like section.key=value"),
    (T, ["eval.stitches=[1,1,2]"], "config key 'eval.stitches': repeats stitch ids [1]"),
    (T, ["eval.stitches=[]"], "config key 'eval.stitches' must hold at least 1 items"),
    (T, ["eval.max_images=0"], "config key 'eval.max_images' must be greater than or equal to 1"),
    (T, ["data.dataset=coco"], "config: data.dataset 'coco' is not a classification dataset (choose imagefolder, shapes, tar, hfds, wds)"),
    (T, ["data.dataset=cocoa"], "config key 'data.dataset' must be 'imagefolder', 'shapes', 'tar', 'hfds', 'wds', 'ade20k', 'coco_stuff10k', 'segfolder', 'nyuv2', 'depthfolder' or 'coco', got 'cocoa'"),
    (T, ["data.shapes.num_classes=1"], "config key 'data.shapes.num_classes' must be greater than or equal to 2"),
    (T, ["data.shapes.num_classes=99"], "config key 'data.shapes': scene: num_classes must be in [2, "),
    (T, ["data.shapes.scene.glitter=1"], "config key 'data.shapes': scene: SceneConfig.__init__() got an unexpected keyword argument 'glitter'"),
    (T, ["output_dir="], "config key 'output_dir' must be a string, got None"),
    # checked on the model built on the meta device, before any data
    (T, ["model.anchors.0.kwargs.depth_of_field=3"], "unexpected keyword argument 'depth_of_field'"),
    (T, ["model.anchors.0.kwargs.num_heads=5"], "timm cannot build anchor 'deit3_small_patch16_224'"),
    (T, ["model.anchors.1.kwargs.patch_size=16"], "patch sizes differ"),
    (T, ["model.anchors.1.kwargs.depth=5"], "depth ratio 5/3 is not an integer"),
    (T, ["model.anchors.1.name=convnext_atto", "model.anchors.1.kwargs={{}}"],
     "anchor convnext_atto is a ConvNeXt that no anchor family stitches: vit ("),
    (T, ["model.out_indices=[99]"], "out_indices [99] must be distinct large-anchor blocks in 0..5"),
    (T, ["eval.stitches=[0,999]"], "config key 'eval.stitches': unknown stitch id 999: valid ids are 0..8 except 4"),
    (T, ["data.input_size=48"], "data.input_size 48 differs from the anchors' 32x32 input"),
    (T, ["model.anchors.0.kwargs.dynamic_img_size=true", "model.anchors.1.kwargs.dynamic_img_size=true",
         "data.input_size=36"], "data.input_size 36 is not a multiple of the anchors' patch size 8"),
    # the data against the model
    (T, ["model.anchors.0.kwargs.num_classes=10", "model.anchors.1.kwargs.num_classes=10", "data.shapes.num_classes=12",
         "--no-resume"], "the data has 12 classes but anchor 0 (deit3_small_patch16_224) has a 10-class head: set model.replace_head=true"),
    (T, ["model.anchors.0.kwargs.num_classes=10", "model.anchors.1.kwargs.num_classes=10", "data.shapes.num_classes=5",
         "--no-resume"], "the data has 5 classes but anchor 0 (deit3_small_patch16_224) has a 10-class head"),
    (T, ["data.dataset=imagefolder", "data.root=/nonexistent/imagenet"], "data folder not found: /nonexistent/imagenet/train"),
    (T, ["data.dataset=imagefolder"], "config key 'data.root' is not set"),
    (T, ["data.shapes.num_train=8"], "8 training images make no full batch of data.batch_size=16 on 1 process(es)"),
    # anchor weights
    (T, ["model.anchors.0.checkpoint_path={corrupt}", "--no-resume"], "cannot read checkpoint {corrupt}: truncated or not a torch checkpoint"),
    (T, ["model.anchors.0.checkpoint_path={bad_st}", "--no-resume"], "cannot read anchor checkpoint {bad_st}"),
    (T, ["model.anchors.0.checkpoint_path={small}", "--no-resume"], "checkpoint {small} does not fit deit3_small_patch16_224 (depth 3, width 32"),
    (T, ["model.anchors.0.checkpoint_path=/nonexistent.pth", "--no-resume"], "anchor checkpoint not found: /nonexistent.pth"),
    (T, ["model.anchors.0.checkpoint_path={evil}", "--no-resume"], "refusing to load {evil}: it pickles objects beyond weights (posix.system)"),
    # files and places
    (T, ["--output-dir", "{afile}"], "run directory {afile} is a file"),
    (T, ["--output-dir", "/proc/snnet-run"], "run directory /proc/snnet-run is not writable"),
    (T, ["--resume", "/nonexistent/checkpoint.pt"], "checkpoint to resume not found: /nonexistent/checkpoint.pt"),
    (T, ["--resume", "{corrupt}"], "cannot read checkpoint {corrupt}"),
    (T, ["--device", "tpu"], "--device must be cpu or cuda"),
    (E, ["--checkpoint", "{corrupt}"], "cannot read checkpoint {corrupt}: truncated or not a torch checkpoint"),
    (E, ["--checkpoint", "{evil}"], "refusing to load {evil}: it pickles objects beyond weights (posix.system)"),
    (E, ["--checkpoint", "{evil_zip}"], "refusing to load {evil_zip}: it pickles objects beyond weights (posix.system)"),
    (E, ["--checkpoint", "{list}"], "checkpoint {list} holds a list, not a state dict"),
    (E, ["--checkpoint", "/nonexistent/model"], "nothing to evaluate at /nonexistent/model"),
    (E, ["--checkpoint", "{empty}"], "no trained model in {empty}"),
    (E, ["--checkpoint", "{saved_wrongtype}"], "{saved_wrongtype}/config.json: config key 'lora_rank' must be an integer, got 'four'"),
    (E, ["--checkpoint", "{saved_badkwarg}"], "unexpected keyword argument 'depth_of_field'"),
    (E, ["--stitches", "0,x"], "--stitches takes stitch ids separated by commas, got '0,x'"),
    (E, ["--stitches", "1,1"], "--stitches repeats stitch ids [1]"),
    (E, ["--stitches", "0,999"], "unknown stitch id 999: valid ids are 0..8 except 4"),
    (E, ["data.shapes.num_classes=5"], "the data has 5 classes but the trained heads have 10"),
    (E, ["--device", "quantum"], "--device must be cpu or cuda"),
    (E, ["--config", "{bad_yaml}"], "cannot parse {bad_yaml}"),
    (E, ["--config", "{list_yaml}"], "{list_yaml} must hold a mapping of sections"),
    (E, ["--config", "/nonexistent.yaml"], "config not found: /nonexistent.yaml"),
    # the command line itself
    (T, ["--epochs", "3"], "unrecognized arguments: --epochs"),
    (None, ["train"], "the following arguments are required: --config"),
    (None, ["frobnicate"], "argument command: invalid choice: 'frobnicate'"),
    (None, ["flops", "--config", "{cfg}", "--img-size", "33"], "image size 33x33 is not a positive multiple of the patch size 8x8"),
    (None, ["flops", "--config", "{cfg}", "--img-size", "x"], "argument --img-size: must be an integer, got 'x'"),
    (None, ["select", "--results", "{nonutf8}", "--max-gflops", "1"], "{nonutf8} line 2: not UTF-8 text"),
    (None, ["select", "--results", "{nofield}", "--max-gflops", "1"], "{nofield} line 2: no 'flops'"),
    (None, ["select", "--results", "{textmetric}", "--max-gflops", "1"], "{textmetric} line 3: acc1 is 'high', not a number"),
    (None, ["select", "--results", "{badjson}", "--max-gflops", "1"], "{badjson} line 2: not a JSON row"),
    (None, ["select", "--results", "{twice}", "--max-gflops", "1"], "{twice} line 2: stitch 0 again (first on line 1)"),
    (None, ["select", "--results", "{run}", "--max-gflops", "1", "--metric", "top1"], "results.jsonl line 1: no 'top1'"),
    (None, ["select", "--results", "{run}", "--max-gflops", "nan"], "the FLOPs budget is nan, not a finite number"),
    (None, ["select", "--results", "{run}", "--max-gflops", "-1"], "no stitch fits -1.0 GFLOPs"),
    (None, ["select", "--results", "/nonexistent/results.jsonl", "--max-gflops", "1"], "results file not found: /nonexistent/results.jsonl"),
    (None, ["select", "--results", "{run}", "--max-gflops", "1", "stray"], "unrecognized arguments: stray"),
    # profile, export and demo options: one line before any work
    (None, ["profile", "--run", "{run}", "--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    (None, ["profile", "--run", "{run}", "--threads", "two"], "argument --threads: must be an integer, got 'two'"),
    (None, ["profile", "--run", "{run}", "--batch", "0"], "argument --batch: must be an integer >= 1, got 0"),
    (None, ["profile", "--run", "{run}", "--batch", "-1"], "argument --batch: must be an integer >= 1, got -1"),
    (None, ["profile", "--run", "{run}", "--img-size", "-4", "-4"], "argument --img-size: must be an integer >= 1, got -4"),
    (None, ["profile", "--run", "{run}", "--repeats", "0"], "argument --repeats: must be an integer >= 1, got 0"),
    (None, ["profile", "--run", "{run}", "--warmup", "-1"], "argument --warmup: must be an integer >= 0, got -1"),
    (None, ["profile", "--run", "{run}", "--device", "tpu"], "--device must be cpu or cuda"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "onnx", "--output", "{run}/x.onnx",
            "--batch", "0"], "argument --batch: must be an integer >= 1, got 0"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "onnx", "--output", "{run}/x.onnx",
            "--img-size", "0", "32"], "argument --img-size: must be an integer >= 1, got 0"),
    (None, ["demo", "--run", "{run}", "--port", "0"], "argument --port: must be an integer >= 1, got 0"),
    (None, ["demo", "--run", "{run}", "--port", "-1"], "argument --port: must be an integer >= 1, got -1"),
    (None, ["demo", "--run", "{run}", "--port", "70000"], "argument --port: must be a TCP port 1..65535, got 70000"),
    (None, ["demo", "--run", "{run}", "--host", "300.1.1.1"], "argument --host: must be an IP address or a host name, got '300.1.1.1'"),
    (None, ["demo", "--run", "{run}", "--host", "no-such-host.invalid"], "--host no-such-host.invalid: not an address of this machine"),
    (None, ["demo", "--run", "{run}", "--device", "tpu"], "--device must be cpu or cuda"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "safetensors", "--output",
            "{run}/config.yaml/s.safetensors"], "cannot write {run}/config.yaml/s.safetensors"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "onnx", "--output", "{run}/s.onnx",
            "--img-size", "33", "33"], "33x33 is not a positive multiple of the patch size"),
    (None, ["train", "--config", "quickstart_segmentation", "eval.mode=slide", "eval.stride=64", "--output-dir",
            "{run}"], "eval.stride 64 is larger than the 32x32 sliding window"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "999", "--format", "onnx", "--output", "{run}/x.onnx"],
     "unknown stitch id 999: valid ids are 0..8 except 4"),
    (None, ["export", "--checkpoint", "{run}", "--max-gflops", "0.000001", "--format", "onnx", "--output",
            "{run}/x.onnx"], "no stitch fits 1e-06 GFLOPs"),
    (None, ["export", "--checkpoint", "{run}", "--max-latency-ms", "5", "--format", "onnx", "--output",
            "{run}/x.onnx"], "the results have no latency_ms: run `snnet profile` on the run first"),
    (None, ["export", "--checkpoint", "{run}", "--max-gflops", "1", "--metric", "top1", "--format", "onnx",
            "--output", "{run}/x.onnx"], "results.jsonl line 1: no 'top1'"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "zip", "--output", "{run}/x.zip"],
     "argument --format: invalid choice: 'zip'"),
    (None, ["export", "--checkpoint", "/nonexistent", "--stitch", "0", "--format", "onnx", "--output", "{run}/x.onnx"],
     "no saved model at /nonexistent: give a run directory (with model/) or a saved model directory"),
    (None, ["profile", "--run", "{run}", "--stitches", "999"], "unknown stitch id 999: valid ids are 0..8 except 4"),
    (None, ["profile", "--run", "{run}", "--stitches", "0,x"], "--stitches takes stitch ids separated by commas, got '0,x'"),
    (None, ["profile", "--run", "{empty}"], "no saved model at {empty}"),
    (None, ["select", "--results", "{run}", "--max-latency-ms", "5"], "the results have no latency_ms"),
    (None, ["select", "--results", "{run}", "--max-gflops", "1", "--higher-is-better", "--lower-is-better"],
     "argument --lower-is-better: not allowed with argument --higher-is-better"),
    (None, ["demo", "--run", "{empty}"], "no saved model at {empty}: give a run directory (with model/)"),
    (None, ["demo", "--run", "{run}", "--port", "http"], "argument --port: must be an integer, got 'http'"),
]
CASES += [  # the surfaces added since 2026-12-01: int8 columns, ONNX evaluation, select across precisions
    (E, ["--calibration-images", "4"], "--calibration-images calibrates static quantisation: add --quantize-method static"),
    (E, ["--quantize-method", "static"], "--quantize-method applies to --quantize int8"),
    (E, ["--checkpoint", "{saved}"], "{run} is the run of another model ({run}/model): the results of {saved} would "
                                     "replace its table; choose another --output-dir"),
    (E, ["--onnx", "{onnx_int4}"], "{onnx_int4}.json: precision 'int4' is none snnet writes (fp32, int8 by dynamic or "
                                   "static quantisation)"),
    (E, ["--onnx", "{onnx_noprecision}"], "{onnx_noprecision}.json: precision None is none snnet writes"),
    (E, ["--onnx", "{onnx_int8by}"], "{onnx_int8by}.json: precision 'int8' by 'qat' is none snnet writes"),
    (E, ["--onnx", "{onnx_quantlist}"], "{onnx_quantlist}.json: quantization is ['static'], not a mapping"),
    (E, ["--onnx", "{onnx_mean}"], "{onnx_mean} takes images normalised with mean [0.485, 0.456, 0.406], the config's "
                                   "data with [0.5, 0.5, 0.5]: evaluate it with its own run's config"),
    (E, ["--onnx", "{onnx_shortmean}"], "{onnx_shortmean} takes images normalised with mean [0.5]"),
    (None, ["train", "--config", "quickstart_segmentation", "model.replace_head=true", "--output-dir", "{run}"],
     "config key 'model.replace_head' belongs to classification: a segmentation run does not read it"),
    (None, ["select", "--results", "{run}", "--max-latency-ms", "nan"], "the latency budget is nan, not a finite number"),
    (None, ["select", "--results", "{untimed8}", "--max-latency-ms", "1", "--precision", "int8"],
     "the results have no latency_ms@int8: run `snnet profile --onnx --quantize int8` on the run first"),
    (None, ["select", "--results", "{nan8}", "--max-gflops", "1", "--precision", "int8"],
     "{nan8} line 3: acc1@int8 is nan, not a number"),
    (None, ["select", "--results", "{nan8}", "--max-gflops", "1", "--precision", "any", "--frontier"],
     "{nan8} line 3: acc1@int8 is nan, not a number"),
    (None, ["select", "--results", "{negflops}", "--max-gflops", "1"], "{negflops} line 2: flops is -5, below 0"),
    (None, ["select", "--results", "{nanlatency}", "--max-latency-ms", "1"], "{nanlatency} line 3: latency_ms is nan, not a number"),
    (None, ["select", "--results", "{neglatency8}", "--max-latency-ms", "1", "--precision", "int8"],
     "{neglatency8} line 1: latency_ms@int8 is -1.0, below 0"),
    (None, ["select", "--results", "{badcfg}", "--max-gflops", "1"], "cannot parse {badcfg}/config.yaml"),
    (None, ["export", "--checkpoint", "{run}", "--stitch", "0", "--format", "onnx", "--output", ""],
     "--output is empty: give a file name"),
    (None, ["serve", "--checkpoint", "{run}", "--slo-ms", "nan"], "--slo-ms must be a positive number, got nan"),
    (None, ["serve", "--checkpoint", "{run}", "--slo-ms", "0"], "--slo-ms must be a positive number, got 0"),
    (None, ["serve", "--checkpoint", "{run}", "--max-wait-ms", "-1"], "--max-wait-ms must be a non-negative number, got -1"),
    (None, ["serve", "--checkpoint", "{run}", "--max-body-mb", "inf"], "--max-body-mb must be a positive number, got inf"),
    (None, ["serve", "--checkpoint", "{run}", "--slo-headroom", "1.5"], "--slo-headroom must be in (0, 1], got 1.5"),
    (None, ["serve", "--checkpoint", "{run}", "--max-batch", "0"], "argument --max-batch: must be an integer >= 1, got 0"),
    (None, ["serve", "--checkpoint", "{run}", "--port", "70000"], "argument --port: must be a TCP port 1..65535"),
    (None, ["serve", "--checkpoint", "/nonexistent"], "no saved model at /nonexistent"),
    (None, ["serve", "--checkpoint", "{run}", "--onnx", "{onnx_one}"], "{onnx_one} is not this network's one-file "
     "export: export it with snnet export --checkpoint {run} --stitch all --format onnx"),
    (None, ["serve", "--checkpoint", "{run}", "--onnx", "{onnx_int4}"], "{onnx_int4}.json: precision 'int4'"),
    (None, ["select", "--results", "{run}/r\udcffsults.jsonl", "--max-gflops", "1"],
     "argument '{run}/r\\xffsults.jsonl' is not UTF-8 text: snnet records paths in UTF-8 files"),
]
if not torch.cuda.is_available():
    CASES.append((T, ["--device", "cuda"], "--device cuda: no CUDA device is available to this process"))
    CASES.append((None, ["profile", "--run", "{run}", "--device", "cuda"], "--device cuda: no CUDA device is available"))
    CASES.append((None, ["demo", "--run", "{run}", "--device", "cuda"], "--device cuda: no CUDA device is available"))


@pytest.mark.parametrize("command,extra,message", CASES, ids=[f"{c}:{' '.join(a)}"[:60] for c, a, _ in CASES])
def test_bad_input_is_one_line_and_changes_nothing(run, sidecars, tmp_path, capsys, command, extra, message):
    run_dir, cfg = run
    names = {k: str(v) for k, v in {**_files(tmp_path, run_dir), **sidecars}.items()}
    names.update(run=str(run_dir), cfg=str(cfg))
    extra = [a.format(**names) for a in extra]
    message = message.format(**names)
    if command is None:
        argv = extra
    else:
        argv = [command, "--config", str(cfg), "--no-progress", *extra]
        if command == E and "--checkpoint" not in extra:
            argv += ["--checkpoint", str(run_dir)]
        if "--output-dir" not in extra:
            argv += ["--output-dir", str(run_dir)]
    before = snapshot(run_dir)
    capsys.readouterr()
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("snnet: error: "), err
    assert message in err, err
    assert "Traceback" not in out + err
    assert snapshot(run_dir) == before


def test_a_second_run_into_a_busy_directory_refuses_to_start(run, tmp_path, capsys):
    run_dir, cfg = run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run_dir / ".snnet.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(run_dir)
        for command in ("train", "eval"):
            assert main([command, "--config", str(cfg), "--no-progress"]) == 2
            assert capsys.readouterr().err == (f"snnet: error: run directory {run_dir} is in use by process {holder.pid} "
                                               f"(wait for it to finish, or choose another --output-dir)\n")
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, the next evaluation takes it over and removes it when done
    assert main(["eval", "--config", str(cfg), "--no-progress", "--output-dir", str(tmp_path / "e"),
                 "--checkpoint", str(run_dir)]) == 0
    (tmp_path / "e" / ".snnet.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
    assert main(["eval", "--config", str(cfg), "--no-progress", "--output-dir", str(tmp_path / "e"),
                 "--checkpoint", str(run_dir), "--stitches", "0"]) == 0
    assert f"took over the lock of process {holder.pid}, which is no longer running" in capsys.readouterr().out
    assert not (tmp_path / "e" / ".snnet.lock").exists()


def test_two_real_trainings_into_one_directory(tmp_path):
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["shapes"].update(num_train=320, num_val=8)
    cfg["train"].update(epochs=50)
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    first = subprocess.Popen([sys.executable, "-m", "snnet.cli", "train", "--config", str(path), "--no-progress"],
                             env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while not (tmp_path / "run" / ".snnet.lock").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.05)
        second = subprocess.run([sys.executable, "-m", "snnet.cli", "train", "--config", str(path), "--no-progress"],
                                env=ENV, capture_output=True, text=True, timeout=120)
    finally:
        first.kill()
        first.wait()
    assert second.returncode == 2
    assert second.stderr == (f"snnet: error: run directory {tmp_path / 'run'} is in use by process {first.pid} "
                             f"(wait for it to finish, or choose another --output-dir)\n")


def test_evaluating_a_subset_keeps_the_full_table(run, tmp_path, capsys):
    run_dir, cfg = run
    full = (run_dir / "results.jsonl").read_bytes()
    assert main(["eval", "--config", str(cfg), "--no-progress", "--checkpoint", str(run_dir),
                 "--output-dir", str(run_dir), "--stitches", "1,0"]) == 0
    assert (run_dir / "results.jsonl").read_bytes() == full
    subset = read_jsonl(run_dir / "results_subset.jsonl")
    assert [r["stitch_id"] for r in subset] == [1, 0]
    by_id = {r["stitch_id"]: r for r in read_jsonl(run_dir / "results.jsonl")}
    assert all(r["acc1"] == by_id[r["stitch_id"]]["acc1"] for r in subset)
    assert "results_subset.jsonl, results_subset.csv, pareto_subset.png" in capsys.readouterr().out
    for name in ("results_subset.jsonl", "results_subset.csv", "pareto_subset.png"):
        (run_dir / name).unlink()


def test_damaged_log_line_is_skipped_on_resume(run, tmp_path, capsys):
    run_dir, cfg = run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("checkpoint.pt", "log.jsonl", "config.yaml"):
        (copy / name).write_bytes((run_dir / name).read_bytes())
    with open(copy / "log.jsonl", "ab") as f:
        f.write(b'{"epoch": 1, "train_lo\xff\n')
    assert main(["train", "--config", str(cfg), "--no-progress", "--output-dir", str(copy), "train.epochs=2"]) == 0
    assert f"{copy / 'log.jsonl'} line 2 is damaged; dropped from the log" in capsys.readouterr().out
    assert [r["epoch"] for r in read_jsonl(copy / "log.jsonl")] == [0, 1]


def test_closed_stdout_ends_quietly_and_training_goes_on(run, tmp_path):
    _, cfg = run
    head = subprocess.run(f"{sys.executable} -m snnet.cli flops --config imagenet_deit3_s_l | head -2",
                          shell=True, env=ENV, capture_output=True, text=True, timeout=120)
    assert head.stdout.count("\n") == 2 and head.stderr == ""
    # a reader that goes away at once: the run still finishes and writes its results
    proc = subprocess.Popen([sys.executable, "-m", "snnet.cli", "train", "--config", str(cfg), "--no-progress",
                             "--output-dir", str(tmp_path / "piped")], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0, proc.stderr.read()
    assert proc.stderr.read() == b""
    assert len(read_jsonl(tmp_path / "piped" / "results.jsonl")) == 8


def test_overrides_anywhere_on_the_line(run, tmp_path):
    _, cfg = run
    argv = ["train", "train.epochs=0", "--config", str(cfg), "--no-progress", "eval.stitches=[0,1]",
            "--output-dir", str(tmp_path / "o"), "train.init_images=4"]
    assert main(argv) == 0
    assert [r["stitch_id"] for r in read_jsonl(tmp_path / "o" / "results_subset.jsonl")] == [0, 1]
    saved = yaml.safe_load((tmp_path / "o" / "config.yaml").read_text())
    assert (saved["train"]["epochs"], saved["train"]["init_images"]) == (0, 4)


def test_a_full_disk_is_one_line_and_keeps_the_old_file(run, tmp_path, capsys):
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        run_dir, cfg = run
        (mount / "results.jsonl").write_text("old\n")  # one page of the 16
        (mount / "filler").write_bytes(b"x" * 14 * 4096)  # leaves one page: the lock takes it
        assert main(["eval", "--config", str(cfg), "--no-progress", "--checkpoint", str(run_dir),
                     "--output-dir", str(mount)]) == 2
        err = capsys.readouterr().err
        assert err == f"snnet: error: cannot write {mount / 'results.jsonl'}: No space left on device\n"
        assert (mount / "results.jsonl").read_text() == "old\n"
        assert not list(mount.glob(".*.tmp"))
    finally:
        subprocess.run(["umount", str(mount)])


@contextmanager
def _full_disk(tmp_path: Path, run_dir: Path):
    """A copy of the run on a small tmpfs filled to the last byte."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        shutil.copytree(run_dir, mount / "run", ignore=shutil.ignore_patterns("tensorboard", "checkpoint.pt"))
        with open(mount / "filler", "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"x" * 4096)
            except OSError:
                pass
        yield mount / "run"
    finally:
        subprocess.run(["umount", str(mount)])


@pytest.mark.parametrize("command", ["eval", "profile"])
def test_a_full_disk_at_the_lock_is_one_line_and_leaves_no_lock(run, tmp_path, capsys, command):
    run_dir, cfg = run
    with _full_disk(tmp_path, run_dir) as full:
        before = snapshot(full)
        argv = (["eval", "--config", str(cfg), "--checkpoint", str(full), "--output-dir", str(full), "--no-progress"]
                if command == "eval" else ["profile", "--run", str(full), "--repeats", "1", "--no-progress"])
        assert main(argv) == 2
        assert capsys.readouterr().err == (f"snnet: error: cannot lock run directory {full}: writing .snnet.lock failed "
                                           f"(No space left on device; is the disk full?)\n")
        assert not (full / ".snnet.lock").exists() and snapshot(full) == before


def test_an_anchor_share_beyond_every_step_is_a_config_error(run, tmp_path, capsys):
    """Three anchors can each have at most a third of the steps: 0.5 each is one line, before any data."""
    _, cfg = run
    three = yaml.safe_load(cfg.read_text())
    small, large = three["model"]["anchors"]
    middle = json.loads(json.dumps(small))
    middle["kwargs"].update(embed_dim=40, num_heads=2)
    three["model"]["anchors"] = [small, middle, large]
    path = tmp_path / "three.yaml"
    path.write_text(yaml.safe_dump(three))
    for share in ("0.5", "0.34"):
        assert main(["train", "--config", str(path), f"train.ros_anchor_share={share}", "--output-dir",
                     str(tmp_path / "run"), "--no-progress"]) == 2
        assert capsys.readouterr().err == (f"snnet: error: config key 'train.ros_anchor_share': {share} for each of 3 "
                                           f"anchors is more than every step (at most 1/3 = 0.3333)\n")
    assert not (tmp_path / "run").exists()
    model = SNNet([tiny_vit(3, 32), tiny_vit(3, 40, heads=2), tiny_vit(6, 48, heads=3)])
    with pytest.raises(SNNetError, match=r"^anchor share 0.4 for 3 anchors is not a share of the steps \(0 to 0.333333\)$"):
        model.configure_sampling(anchor_share=0.4)


# ---- the Python API ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return SNNet([tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)], lora_rank=2).eval()


API_CASES = [
    ("SNNet(None)", lambda m, t: SNNet(None), "anchors must be a list of timm ViTs"),
    ("SNNet(name)", lambda m, t: SNNet("deit3_small_patch16_224"), "anchors must be a list of timm ViTs"),
    ("SNNet(ints)", lambda m, t: SNNet([1, 2]), "an anchor must be a timm ViT module, a model name or an AnchorConfig, got int"),
    ("lora_rank str", lambda m, t: SNNet(list(m.backbone.anchors), lora_rank="8"), "lora_rank must be an integer >= 0, got '8'"),
    ("lora_rank float", lambda m, t: SNNet(list(m.backbone.anchors), lora_rank=2.5), "lora_rank must be an integer >= 0, got 2.5"),
    ("lora_rank bool", lambda m, t: SNNet(list(m.backbone.anchors), lora_rank=True), "lora_rank must be an integer >= 0, got True"),
    ("lora_rank neg", lambda m, t: SNNet(list(m.backbone.anchors), lora_rank=-1), "lora_rank must be an integer >= 0, got -1"),
    ("lora_alpha", lambda m, t: SNNet(list(m.backbone.anchors), lora_alpha=0), "lora_alpha must be a number > 0, got 0"),
    ("version", lambda m, t: SNNet(list(m.backbone.anchors), version="v3"), "unknown SN-Net version 'v3'"),
    ("select(1.5)", lambda m, t: m.select(1.5), "unknown stitch id 1.5: valid ids are 0..8 except 4"),
    ("select('3')", lambda m, t: m.select("3"), "unknown stitch id '3'"),
    ("select(True)", lambda m, t: m.select(True), "unknown stitch id True"),
    ("select(99)", lambda m, t: m.select(99), "unknown stitch id 99: valid ids are 0..8 except 4"),
    ("flops(size)", lambda m, t: m.flops(0, (30, 30)), "image size 30x30 is not a positive multiple of the patch size 8x8"),
    ("model(list)", lambda m, t: m(t.tolist()), "expected an image tensor (B, 3, H, W), got list"),
    ("model(numpy)", lambda m, t: m.forward_intermediates(t.numpy()), "expected an image tensor (B, 3, H, W), got ndarray"),
    ("model(uint8)", lambda m, t: m((t * 255).to(torch.uint8)), "expected float images (normalised as the anchors were trained), got torch.uint8"),
    ("model(2 channels)", lambda m, t: m(t[:, :2]), "expected images of shape (B, 3, H, W), got (2, 2, 32, 32)"),
    ("model(3d)", lambda m, t: m(t[0]), "expected images of shape (B, 3, H, W), got (3, 32, 32)"),
    ("model(size)", lambda m, t: m(torch.randn(1, 3, 40, 40)), "images are 40x40, the anchors take 32x32"),
    ("init num_images", lambda m, t: init_stitching_layers(m, [t], num_images=-1), "num_images must be an integer >= 1, got -1"),
    ("init num_images float", lambda m, t: init_stitching_layers(m, [t], num_images=2.5), "num_images must be an integer >= 1, got 2.5"),
    ("best_under_budget text", lambda m, t: best_under_budget({0: 1, 1: 2}, {0: "high", 1: 0.5}, 5),
     "metric of stitch 0 is 'high', not a finite number"),
    ("best_under_budget nan", lambda m, t: m.best_under_budget({0: float("nan")}, 1e9), "metric of stitch 0 is nan"),
    ("pareto text", lambda m, t: m.pareto_frontier({0: None}), "metric of stitch 0 is None, not a finite number"),
    ("anchor share nan", lambda m, t: m.configure_sampling(anchor_share=float("nan")), "anchor share must be a number, got nan"),
    ("anchor share text", lambda m, t: m.configure_sampling(anchor_share="0.1"), "anchor share must be a number, got '0.1'"),
    ("ros k zero", lambda m, t: m.configure_sampling(k=0), "the ROS k must be a number > 0 (or None: groups drawn uniformly), got 0"),
    ("ros gap nan", lambda m, t: m.configure_sampling(gap_gflops=float("nan")), "the ROS gap must be a number of GFLOPs >= 0, got nan"),
    ("ros_groups flops", lambda m, t: ros_groups({0: 5, 1: float("inf")}, 0.1), "FLOPs of stitch 1 is inf, not a count"),
    ("stitch_space text", lambda m, t: stitch_space("3", 6), "depths must be integers, got d0='3', d1=6"),
    ("stitch_space zero", lambda m, t: stitch_space(0, 6), "depths must satisfy 0 < d0 <= d1, got d0=0, d1=6"),
]


@pytest.mark.parametrize("name,call,message", API_CASES, ids=[c[0] for c in API_CASES])
def test_api_bad_input_raises_one_line(model, name, call, message):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(SNNetError) as info:
        call(model, images)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_api_files(model, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(SNNetError, match=f"^cannot save the model into {afile}: it is a file, not a directory$"):
        model.save_pretrained(afile)
    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "f": os.system}, evil, _use_new_zipfile_serialization=False)
    with _no_warnings():
        with pytest.raises(SNNetError, match=r"^refusing to load .*evil.pth: it pickles objects beyond weights \(posix.system\)$"):
            load_official_checkpoint(model, evil)
    plain = tmp_path / "plain.pth"
    plain.write_bytes(pickle.dumps({"a": 1}, protocol=4))  # torch would warn twice about the protocol
    with _no_warnings():
        with pytest.raises(SNNetError, match="not a torch checkpoint"):
            load_official_checkpoint(model, plain)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_inputs_are_cast_to_the_weights(model, dtype):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    model.select(5)
    expected = model(images.to(dtype).float())
    torch.testing.assert_close(model(images.to(dtype)), expected, rtol=0, atol=0)
    assert np.isfinite(expected.detach().numpy()).all()


def test_demo_on_a_port_in_use_is_one_line(run, capsys):
    import socket
    run_dir, _ = run
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--run", str(run_dir), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"snnet: error: cannot serve on 127.0.0.1:{port}: ") and err.count("\n") == 1, err


def test_profile_refuses_a_run_another_process_holds(run, capsys):
    """profile rewrites results.*: not beside a training, an evaluation or another profile of the run."""
    run_dir, _ = run
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (run_dir / ".snnet.lock").write_text(f"{holder.pid} {socket.gethostname()}\n")
        before = snapshot(run_dir)
        assert main(["profile", "--run", str(run_dir), "--repeats", "1", "--warmup", "0", "--no-progress"]) == 2
        assert f"is in use by process {holder.pid}" in capsys.readouterr().err
        assert snapshot(run_dir) == before
    finally:
        holder.kill()
        (run_dir / ".snnet.lock").unlink()


# `snnet ...` killed the moment it starts drawing its first plot: the table's temp files are written by then
KILLED_IN_PLOT = ("import os, signal, sys, matplotlib.figure\n"
                  "matplotlib.figure.Figure.savefig = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
                  "from snnet.cli import main\nmain(sys.argv[1:])")


@pytest.mark.parametrize("command", [
    ["eval", "--config", "{run}/config.yaml", "--checkpoint", "{run}", "--output-dir", "{run}"],
    ["profile", "--run", "{run}", "--stitches", "0,3", "--repeats", "2", "--warmup", "0"]])
def test_a_command_killed_mid_write_leaves_every_file_as_it_was(run, tmp_path, command):
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    argv = [a.format(run=copy) for a in command] + ["--no-progress"]
    before = snapshot(copy)
    killed = subprocess.run([sys.executable, "-c", KILLED_IN_PLOT, *argv], env=ENV, capture_output=True, text=True,
                            timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    temps = [p.name for p in copy.glob(".*.tmp")]  # killed mid-write: the table written, a plot begun
    assert any(t.startswith(".results.jsonl.") for t in temps) and any(t.startswith(".pareto") for t in temps), temps
    assert {k: v for k, v in snapshot(copy).items() if not k.startswith(".")} == before
    assert main(argv) == 0  # the next writer takes the dead process's lock and clears its temp files
    assert not list(copy.glob(".*")) and snapshot(copy) != before


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("command", [
    ["flops", "--config", "{cfg}"],
    ["select", "--results", "{run}", "--max-gflops", "1", "--frontier"],
    ["eval", "--config", "{cfg}", "--checkpoint", "{run}", "--output-dir", "{run}", "--no-progress"],
    ["profile", "--run", "{run}", "--stitches", "0", "--repeats", "1", "--warmup", "0", "--no-progress"],
    ["export", "--checkpoint", "{run}", "--stitch", "3", "--format", "safetensors", "--output", "{run}/s.safetensors"]])
def test_standard_output_on_a_full_disk_is_one_line_and_changes_nothing(run, tmp_path, command):
    copy = tmp_path / "run"
    shutil.copytree(run[0], copy)
    assert main(["export", "--checkpoint", str(copy), "--stitch", "0", "--format", "safetensors",
                 "--output", str(copy / "s.safetensors")]) == 0  # an earlier export the failed one must keep
    before = snapshot(copy)
    argv = [a.format(run=copy, cfg=run[1]) for a in command]
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, "-m", "snnet.cli", *argv], env=ENV, stdout=full, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    assert (done.returncode, done.stderr) == (2, "snnet: error: cannot write to standard output: No space left on device\n")
    assert snapshot(copy) == before
