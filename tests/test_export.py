"""Deployment: one stitch as a standalone network and its files, latency profiles, choosing by milliseconds."""
import json
import subprocess
import sys
import time

import onnxruntime as ort
import pytest
import torch
import yaml

from snnet import SNNet, build_model, load_config
from snnet.cli import main
from snnet.errors import SNNetError
from snnet.export import export_stitch, load_exported
from snnet.model import StitchNet
from helpers import ENV, read_jsonl, write_config

FORMATS = ("safetensors", "torchscript", "onnx")


@pytest.fixture
def lora_model(pair_s_l):
    model = SNNet(list(pair_s_l), lora_rank=4).eval()
    torch.manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name:  # a trained-looking low-rank update on every stitching layer
                p.normal_(0, 0.1)
    return model


def run_file(path, fmt: str, x: torch.Tensor) -> torch.Tensor:
    """The exported file run the way a user would: snnet.load_exported, torch.jit.load, or ONNX Runtime."""
    if fmt == "safetensors":
        with torch.no_grad():
            return load_exported(path)(x)
    if fmt == "torchscript":
        with torch.no_grad():
            return torch.jit.load(str(path))(x)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def one_of_each_kind(model) -> list[int]:
    return [next(s.id for s in model.stitches if s.kind == k) for k in ("anchor", "SL", "LS", "LSL", "SLS")] + [1]


def test_stitchnet_keeps_only_its_stitch_and_equals_it(lora_model, images):
    for s in lora_model.stitches:
        net = lora_model.deployable(s.id)  # the backbone's StitchNet ending in the last anchor's classifier
        dense = StitchNet(lora_model.backbone, s.id, dense=True).eval()
        with torch.no_grad():
            assert torch.equal(net(images), lora_model.select(s.id)(images)), s.id
            for a, b in zip(dense.forward_intermediates(images), lora_model.forward_intermediates(images)):
                assert torch.equal(a, b), s.id
        assert sum(p.numel() for p in net.parameters()) == lora_model.params(s.id), s.id
        assert not any("lora" in k for k in net.state_dict())  # merged


@pytest.mark.parametrize("fmt", FORMATS)
def test_exported_files_equal_the_stitch(lora_model, images, tmp_path, fmt):
    x = torch.cat([images, images.flip(0)])  # batch 6; exported with batch 2
    for sid in one_of_each_kind(lora_model):
        path = tmp_path / f"{sid}.{fmt}"
        written = export_stitch(lora_model, sid, fmt, path, (32, 32), batch=2,
                                info={"mean": [0.5] * 3, "std": [0.5] * 3, "class_names": list("abcdefghij")})
        assert written == [path, tmp_path / f"{sid}.{fmt}.json"]
        with torch.no_grad():
            expected = lora_model.select(sid)(x)
        got = run_file(path, fmt, x)
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() <= 1e-5, (sid, fmt)
        side = json.loads(written[1].read_text())
        s = lora_model.stitch(sid)
        assert (side["stitch_id"], side["route"], side["kind"], side["input_size"]) == (sid, s.describe(), s.kind, [32, 32])
        assert side["flops"] == lora_model.flops(sid) and side["class_names"] == list("abcdefghij")
        assert side["batch"] == ("dynamic" if fmt == "onnx" else 2)


def test_the_onnx_and_torchscript_files_run_without_snnet(lora_model, tmp_path):
    export_stitch(lora_model, 5, "onnx", tmp_path / "s.onnx", (32, 32))
    export_stitch(lora_model, 5, "onnx", tmp_path / "q.onnx", (32, 32), quantize="int8")
    export_stitch(lora_model, 5, "torchscript", tmp_path / "s.pt", (32, 32))
    code = ("import sys, numpy as np, torch, onnxruntime as ort\n"
            "sys.modules['snnet'] = None; sys.modules['timm'] = None  # importing either would fail\n"
            f"x = np.ones((3, 3, 32, 32), np.float32)\n"
            f"s = ort.InferenceSession('{tmp_path / 's.onnx'}')\n"
            "a = s.run(None, {s.get_inputs()[0].name: x})[0]\n"
            f"q = ort.InferenceSession('{tmp_path / 'q.onnx'}')\n"
            "c = q.run(None, {q.get_inputs()[0].name: x})[0]\n"
            f"b = torch.jit.load('{tmp_path / 's.pt'}')(torch.from_numpy(x)).detach().numpy()\n"
            "print(a.shape, c.shape, float(np.abs(a - b).max()), sep='|')\n")
    done = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shape, int8_shape, diff = done.stdout.strip().split("|")
    assert shape == int8_shape == "(3, 10)" and float(diff) <= 1e-5


@pytest.mark.parametrize("config", ["quickstart_segmentation", "quickstart_depth"])
def test_dense_models_export_with_their_inference_heads(config, tmp_path):
    model = build_model(load_config(config), load_weights=False).eval()
    full = sum(p.numel() for p in model.parameters())
    for sid in (1, 20):  # the large anchor (large taps only) and an LSL stitch (small taps projected)
        net = model.deployable(sid)
        assert sum(p.numel() for p in net.parameters()) < full
        assert not any(k.startswith("auxiliary_head") for k in net.state_dict())
        for fmt in FORMATS:
            path = tmp_path / f"{sid}.{fmt}"
            export_stitch(model, sid, fmt, path, (32, 32), batch=1 if fmt == "onnx" else 3)
            # the ONNX batch is dynamic whatever the example's (a batch of 1 was once baked in)
            for x in ((torch.randn(1, 3, 32, 32), torch.randn(3, 3, 32, 32)) if fmt == "onnx" else (torch.randn(3, 3, 32, 32),)):
                with torch.no_grad():
                    expected = model.select(sid)(x)
                assert (run_file(path, fmt, x) - expected).abs().max().item() <= 1e-5, (config, sid, fmt, len(x))


def test_export_errors_are_one_line(lora_model, tmp_path):
    export_stitch(lora_model, 3, "onnx", tmp_path / "s.onnx", (32, 32))
    with pytest.raises(SNNetError, match="s.onnx is onnx: load it with onnxruntime or torch.jit.load"):
        load_exported(tmp_path / "s.onnx")
    with pytest.raises(SNNetError, match="is not an exported stitch: expected it and its sidecar"):
        load_exported(tmp_path / "missing.safetensors")
    with pytest.raises(SNNetError, match="unknown stitch id 40"):
        export_stitch(lora_model, 40, "onnx", tmp_path / "x.onnx", (32, 32))
    with pytest.raises(SNNetError, match="unknown export format 'tflite'"):
        export_stitch(lora_model, 3, "tflite", tmp_path / "x.tflite", (32, 32))


def test_profile_then_select_and_export_by_milliseconds(tmp_path, capsys):
    """A run trained for zero epochs (least squares only) is profiled, then chosen from by budget."""
    cfg = write_config(tmp_path, train={"epochs": 0, "init_images": 16})
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    assert main(["profile", "--run", str(run), "--batch", "8", "--repeats", "15", "--no-progress"]) == 0
    rows = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    assert all(r["latency_ms"] > 0 and r["latency_iqr_ms"] >= 0 for r in rows.values())
    assert rows[0]["latency_ms"] < rows[1]["latency_ms"]  # the small anchor is faster than the large one
    assert rows[0]["latency_setting"].startswith("batch 8, 32x32, cpu")
    assert (run / "pareto_latency.png").stat().st_size > 0
    assert main(["profile", "--run", str(run), "--stitches", "0,1", "--batch", "8", "--repeats", "3", "--onnx",
                 "--no-progress"]) == 0
    timed = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl") if "latency_onnx_ms" in r}
    assert sorted(timed) == [0, 1] and all(r["latency_onnx_ms"] > 0 for r in timed.values())
    assert main(["profile", "--run", str(run), "--stitches", "0", "--batch", "8", "--repeats", "3", "--no-progress"]) == 0
    rows = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    # PyTorch re-timed in the same setting: the ONNX figure of that setting stays (issue 28: it was deleted)
    assert rows[0]["latency_onnx_ms"] == timed[0]["latency_onnx_ms"] and rows[1]["latency_onnx_ms"] > 0
    capsys.readouterr()
    budget_ms = sorted(r["latency_ms"] for r in rows.values())[len(rows) // 2]
    for flag, value in (("--max-latency-ms", budget_ms), ("--max-gflops", rows[1]["gflops"] * 0.7)):
        assert main(["select", "--results", str(run), flag, str(value)]) == 0
        chosen = int(capsys.readouterr().out.splitlines()[2].split()[0])
        out = tmp_path / f"chosen{flag}.safetensors"
        assert main(["export", "--checkpoint", str(run), flag, str(value), "--format", "safetensors",
                     "--output", str(out)]) == 0
        capsys.readouterr()
        side = json.loads((tmp_path / f"chosen{flag}.safetensors.json").read_text())
        assert side["stitch_id"] == chosen
        assert side["mean"] == [0.5] * 3 and side["class_names"][:2] == ["circle", "square"]
        assert (rows[chosen]["latency_ms"] <= value) if flag == "--max-latency-ms" else (rows[chosen]["gflops"] <= value)


def test_select_by_milliseconds_needs_a_profile(tmp_path, capsys):
    rows = [{"stitch_id": 0, "flops": 1e9, "gflops": 1.0, "acc1": 50.0}, {"stitch_id": 1, "flops": 2e9, "gflops": 2.0, "acc1": 60.0}]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["select", "--results", str(tmp_path), "--max-latency-ms", "5"]) == 2
    assert "the results have no latency_ms: run `snnet profile` on the run first" in capsys.readouterr().err


def test_a_runs_own_config_reloads(tmp_path):
    """config.yaml lists every key with its default; loading it back must not read those as settings."""
    for name in ("quickstart", "quickstart_segmentation"):
        cfg = load_config(name)
        path = tmp_path / f"{name}.yaml"
        from snnet.config import dump_config
        path.write_text(dump_config(cfg))
        assert load_config(path) == cfg
        assert yaml.safe_load(path.read_text())["train"]["warmup_iterations"] == 0


def _dataset_splits(cfg) -> tuple[str, str]:
    """The split names the task's data code reads for ``cfg``."""
    from snnet.tasks.depth.data import splits as depth_splits
    from snnet.tasks.detection.data import splits as detection_splits
    from snnet.tasks.segmentation.data import dataset_info
    if cfg.task == "segmentation":
        return dataset_info(cfg.data, cfg.model.head.num_classes)[2:4]
    if cfg.task == "classification":
        from snnet.tasks.classification import image_folder_roots
        return tuple(p.name for p in image_folder_roots(cfg.data))
    return (depth_splits if cfg.task == "depth" else detection_splits)(cfg.data)


@pytest.mark.parametrize("name,splits", [
    ("ade20k_setr_deit3_s_l", ("training", "validation")), ("coco_stuff10k_setr_deit3_s_l", ("train2014", "test2014")),
    ("nyuv2_dpt_deit3_s_l", ("nyu_train.txt", "nyu_test.txt")), ("coco_maskrcnn_deit3_s_l", ("train2017", "val2017")),
    ("imagenet_deit3_s_l", ("train", "val"))])
def test_a_runs_own_config_keeps_the_datasets_split_names(tmp_path, name, splits):
    """The saved defaults were once read as user-set split names (train/val over ADE20K's training/validation)."""
    from snnet.config import dump_config
    for split in splits:
        (tmp_path / split).mkdir()  # ImageFolder roots are checked on disk
    cfg = load_config(name, [f"data.root={tmp_path}"])
    path = tmp_path / "config.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and _dataset_splits(again) == splits
    (tmp_path / "mine").mkdir()
    assert _dataset_splits(load_config(path, ["data.train_split=mine"])) == ("mine", splits[1])


DEPTH_ROWS = [{"stitch_id": 0, "flops": 1e9, "gflops": 1.0, "rmse": 0.9, "a1": 0.70, "my_score": 5.0},
              {"stitch_id": 1, "flops": 2e9, "gflops": 2.0, "rmse": 0.5, "a1": 0.80, "my_score": 1.0},
              {"stitch_id": 2, "flops": 3e9, "gflops": 3.0, "rmse": 0.7, "a1": 0.95, "my_score": 3.0}]


@pytest.mark.parametrize("config,extra,chosen", [
    ("depth", [], 1),  # the task's metric, rmse, lower is better
    ("depth", ["--metric", "a1"], 2),  # threshold accuracy: higher is better
    ("depth", ["--metric", "rmse", "--lower-is-better"], 1),
    ("depth", ["--metric", "my_score", "--lower-is-better"], 1),
    ("depth", ["--metric", "my_score", "--higher-is-better"], 0),
    (None, [], 1),  # no config.yaml: the columns say depth (rmse)
])
def test_select_knows_each_metrics_direction(tmp_path, capsys, config, extra, chosen):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DEPTH_ROWS))
    if config:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump({"task": config}))
    assert main(["select", "--results", str(tmp_path), "--max-gflops", "3", *extra]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[2].split()[0] == str(chosen), out


@pytest.mark.parametrize("extra,message", [
    (["--metric", "rmse", "--higher-is-better"], "--metric rmse is lower-is-better: drop --higher-is-better"),
    (["--metric", "a1", "--lower-is-better"], "--metric a1 is higher-is-better: drop --lower-is-better"),
    (["--metric", "my_score"], "--metric my_score is no metric snnet writes: say --higher-is-better or --lower-is-better"),
    (["--metric", "acc1"], "results.jsonl line 1: no 'acc1'"),
    (["--higher-is-better", "--lower-is-better"], "not allowed with argument"),
])
def test_select_metric_errors_are_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DEPTH_ROWS))
    assert main(["select", "--results", str(tmp_path), "--max-gflops", "3", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_export_and_select_choose_by_one_rule(tmp_path):
    """A depth model's budget export picks the stitch select prints (rmse, lower is better)."""
    import argparse
    from snnet.cli.export import pick_stitch
    from snnet.cli.options import budget_rows

    class DepthLike:
        task = "depth"

    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DEPTH_ROWS))
    args = argparse.Namespace(stitch=None, metric=None, higher_is_better=False, lower_is_better=False,
                              max_gflops=3.0, max_latency_ms=None)
    assert pick_stitch(args, DepthLike(), tmp_path) == 1
    assert budget_rows(args, tmp_path, "depth")[1:] == ("rmse", False)


def _hashes(paths) -> dict:
    import hashlib
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_a_failed_export_keeps_the_earlier_pair(lora_model, tmp_path):
    """A size the patches do not tile, or one the anchors refuse, fails before anything is written."""
    out = tmp_path / "s.onnx"
    pair = export_stitch(lora_model, 3, "onnx", out, (32, 32))
    before = _hashes(pair)
    with pytest.raises(SNNetError, match="33x33 is not a positive multiple of the patch size"):
        export_stitch(lora_model, 5, "onnx", out, (33, 33))
    with pytest.raises(SNNetError, match="images are 64x64, the anchors take 32x32"):  # fixed-size anchors
        export_stitch(lora_model, 5, "onnx", out, (64, 64))
    assert _hashes(pair) == before and sorted(p.name for p in tmp_path.iterdir()) == ["s.onnx", "s.onnx.json"]


def test_an_export_killed_mid_write_keeps_the_earlier_pair(tmp_path):
    cfg = write_config(tmp_path, train={"epochs": 0, "init_images": 16})
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    out = tmp_path / "s.onnx"
    argv = ["export", "--checkpoint", str(run), "--stitch", "3", "--format", "onnx", "--output", str(out)]
    assert main(argv) == 0
    before = _hashes([out, tmp_path / "s.onnx.json"])
    argv[4] = "5"
    proc = subprocess.Popen([sys.executable, "-m", "snnet.cli", *argv], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list(tmp_path.glob(".s.onnx.*.tmp")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the export ended before it was killed"
    proc.kill()
    proc.wait()
    assert _hashes([out, tmp_path / "s.onnx.json"]) == before


def test_export_refuses_to_overwrite_the_runs_own_files(tmp_path, capsys):
    import hashlib
    cfg = write_config(tmp_path, train={"epochs": 0, "init_images": 16})
    run = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    for name in ("model/model.safetensors", "model/config.json", "results.jsonl", "results.csv", "config.yaml",
                 "checkpoint.pt", "pareto.png"):
        target = run / name  # checkpoint.pt: a run of zero epochs has none yet, the name is refused all the same
        before = hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(run), "--stitch", "0", "--format", "safetensors",
                     "--output", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"would overwrite the run's own {target.name}" in err and err.count("\n") == 1, err
        assert (hashlib.sha256(target.read_bytes()).hexdigest() if target.exists() else None) == before
    assert main(["export", "--checkpoint", str(run), "--stitch", "0", "--format", "safetensors",
                 "--output", str(run / "exports" / "s0.safetensors")]) == 0  # elsewhere in the run: fine
