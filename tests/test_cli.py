"""The snnet command end to end on tiny anchors and the built-in shapes data (CPU)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from snnet import SNNet
from snnet.cli import main
from helpers import ENV, TINY, read_jsonl, snnet, to_official, torchrun_then_single, write_config

def test_train_then_eval_end_to_end(tmp_path, capsys):
    cfg = write_config(tmp_path)
    assert snnet("train", "--config", str(cfg)) == 0
    out = capsys.readouterr().out
    run = tmp_path / "run"
    assert "Pareto frontier" in out and "least squares on 32 images" in out
    rows = read_jsonl(run / "results.jsonl")
    model = SNNet.from_pretrained(run / "model")
    assert [r["stitch_id"] for r in rows] == model.stitch_ids
    for r in rows:
        assert 0 <= r["acc1"] <= r["acc5"] <= 100 and r["loss"] > 0 and r["images"] == 40
        assert r["flops"] == model.flops(r["stitch_id"]) and r["params"] == model.params(r["stitch_id"])
    assert (run / "results.csv").read_text().splitlines()[0].startswith("stitch_id,kind,route,flops")
    assert (run / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = read_jsonl(run / "log.jsonl")
    assert [l["epoch"] for l in log] == [0] and log[0]["train_loss"] > 0
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/train_loss")] == [(0, pytest.approx(log[0]["train_loss"]))]
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 0 and yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 1

    # evaluating the saved model again gives the same numbers
    assert snnet("eval", "--config", str(cfg), "--output-dir", str(tmp_path / "again"), "--checkpoint", str(run)) == 0
    again = read_jsonl(tmp_path / "again" / "results.jsonl")
    assert [(r["acc1"], r["acc5"]) for r in again] == [(r["acc1"], r["acc5"]) for r in rows]

    # a released-format checkpoint of the same weights, evaluated on two stitches
    official = tmp_path / "snnetv2_tiny.pth"
    torch.save({"model": to_official(model)}, official)
    assert snnet("eval", "--config", str(cfg), "--output-dir", str(tmp_path / "off"), "--checkpoint", str(official),
                 "--stitches", "0,5") == 0
    off = read_jsonl(tmp_path / "off" / "results_subset.jsonl")  # a subset never replaces a full table
    assert not (tmp_path / "off" / "results.jsonl").exists()
    assert [(r["stitch_id"], r["acc1"]) for r in off] == [(r["stitch_id"], r["acc1"]) for r in rows if r["stitch_id"] in (0, 5)]

    capsys.readouterr()
    assert snnet("select", "--results", str(run), "--max-gflops", str(rows[0]["gflops"])) == 0
    assert "best stitch" in capsys.readouterr().out

    # resuming the run under another LoRA rank names the mismatch instead of loading half a model
    assert snnet("train", "--config", str(cfg), "model.lora_rank=2") == 2
    err = capsys.readouterr().err
    assert err.startswith(f"snnet: error: {run / 'checkpoint.pt'} (to start afresh: --no-resume or another "
                          f"--output-dir) does not match the model: ") and "sl_layers.0.lora_A (4x32 in file, 2x32 in model)" in err
    assert err.count("\n") == 1


def test_zero_epochs_evaluates_the_least_squares_start(tmp_path, capsys):
    cfg = write_config(tmp_path, train={"epochs": 0})
    assert snnet("train", "--config", str(cfg)) == 0
    run = tmp_path / "run"
    assert "least squares on 32 images" in capsys.readouterr().out
    assert len(read_jsonl(run / "results.jsonl")) == len(SNNet.from_pretrained(run / "model").stitch_ids)
    assert not (run / "checkpoint.pt").exists() and not (run / "log.jsonl").exists()


def test_flops_command_prints_the_published_table(capsys):
    assert snnet("flops", "--config", "imagenet_deit3_s_l", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    published = read_jsonl(Path(__file__).parent / "data" / "imagenet_deit3_s_l.jsonl")
    assert [r["stitch_id"] for r in rows] == [r["stitch_id"] for r in published]
    assert all(abs(a["gflops"] * 1e9 - b["flops"]) < 1 for a, b in zip(rows, published))


def test_select_with_hand_made_results(tmp_path, capsys):
    rows = [{"stitch_id": i, "kind": "SL", "route": "x", "flops": f, "gflops": f / 1e9, "params_m": 1.0, "acc1": a}
            for i, f, a in [(0, 1e9, 50.0), (1, 3e9, 80.0), (2, 2e9, 70.0), (3, 2.5e9, 65.0)]]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert snnet("select", "--results", str(tmp_path), "--max-gflops", "2.7") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[2].split()[0] == "2"
    assert snnet("select", "--results", str(tmp_path), "--max-gflops", "0.5") == 2
    assert "no stitch fits 0.5 GFLOPs (the cheapest needs 1.000)" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["train.epoch=3"], "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
    (["data.dataset=imagefolder", "data.root=/nonexistent/imagenet"], "data folder not found: /nonexistent/imagenet/train"),
    (["model.anchors.1.name=vit_giant_nonsense_patch3"],
     "config key 'model.anchors.1.name': unknown timm model 'vit_giant_nonsense_patch3'"),
    (["train.lr=fast"], "config key 'train.lr' must be a number, got 'fast'"),
])
def test_bad_input_gives_one_line_errors(tmp_path, capsys, args, message):
    cfg = write_config(tmp_path)
    assert snnet("train", "--config", str(cfg), *args) == 2
    err = capsys.readouterr().err
    assert err == f"snnet: error: {message}\n"


def test_corrupt_checkpoint_and_missing_config(tmp_path, capsys):
    cfg = write_config(tmp_path)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(os.urandom(1000))
    assert snnet("eval", "--config", str(cfg), "--checkpoint", str(bad)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"snnet: error: cannot read checkpoint {bad}: ") and "not a torch checkpoint" in err
    assert err.count("\n") == 1
    assert snnet("eval", "--config", str(tmp_path / "none.yaml")) == 2
    assert capsys.readouterr().err.startswith(f"snnet: error: config not found: {tmp_path / 'none.yaml'}")
    assert snnet("eval", "--config", str(cfg), "--checkpoint", str(bad), "--stitches", "0,x") == 2
    assert capsys.readouterr().err == "snnet: error: --stitches takes stitch ids separated by commas, got '0,x'\n"


def test_image_folder_data_and_unreadable_images(tmp_path, capsys):
    from snnet.data import SceneConfig, write_image_folder
    root = write_image_folder(tmp_path / "imgs", SceneConfig(image_size=32), num_train=40, num_val=20)
    (root / "train" / "README.txt").write_text("not an image, ignored")
    cfg = write_config(tmp_path, data={"dataset": "imagefolder", "root": str(root)}, train={"init_images": 16})
    assert snnet("train", "--config", str(cfg), "eval.stitches=[0,1]") == 0
    rows = read_jsonl(tmp_path / "run" / "results_subset.jsonl")
    assert [r["stitch_id"] for r in rows] == [0, 1] and rows[0]["images"] == 20
    first_class = sorted((root / "val").iterdir())[0]
    (first_class / "broken.png").write_bytes(b"\x89PNG not really")
    assert snnet("eval", "--config", str(cfg), "--checkpoint", str(tmp_path / "run")) == 2
    assert capsys.readouterr().err.strip() == f"snnet: error: cannot read image {first_class / 'broken.png'}: UnidentifiedImageError"


def _launch(cfg: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "snnet.cli", "train", "--config", str(cfg), "--no-progress", *extra],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    epochs = {"epochs": 3, "warmup_epochs": 1}
    data = {"shapes": {"image_size": 32, "num_train": 320, "num_val": 16}, "workers": 0}
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    cfg = write_config(straight_dir, train=epochs, data=data)
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0

    killed_dir = tmp_path / "killed"
    killed_dir.mkdir()
    cfg = write_config(killed_dir, train=epochs, data=data)
    run = killed_dir / "run"
    proc = _launch(cfg)
    deadline = time.time() + 240
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stdout.read()
    saved = torch.load(run / "checkpoint.pt", weights_only=True)  # intact, whatever the kill interrupted
    assert saved["epoch"] in (0, 1)

    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0  # resumes automatically
    assert not list(run.glob(".*.tmp"))  # a write the kill interrupted is cleaned up
    a = torch.load(straight_dir / "run" / "checkpoint.pt", weights_only=True)
    b = torch.load(run / "checkpoint.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 2
    for k in a["model"]:
        torch.testing.assert_close(b["model"][k], a["model"][k], rtol=0, atol=1e-6, msg=k)
    la, lb = read_jsonl(straight_dir / "run" / "log.jsonl"), read_jsonl(run / "log.jsonl")
    assert [l["epoch"] for l in lb] == [0, 1, 2]
    for x, y in zip(la, lb):
        assert x["train_loss"] == pytest.approx(y["train_loss"], abs=1e-6) and x["lr"] == y["lr"]
    assert a["rng"][0]["ros"] == b["rng"][0]["ros"]


def test_torchrun_matches_one_process_over_three_anchors(tmp_path):
    """A chain of three anchors (issue 20): least squares summed over both ranks, ROS with an anchor share, and the
    prefix-shared evaluation of every stitch equal to one process's."""
    small, large = TINY["model"]["anchors"]
    middle = {"name": small["name"], "kwargs": {**small["kwargs"], "embed_dim": 40}}
    cfg = write_config(tmp_path, model={"anchors": [large, small, middle]},
                       data={"shapes": {"image_size": 32, "num_train": 64, "num_val": 21}},
                       train={"ros_anchor_share": 0.1})
    dist_rows, single = torchrun_then_single(cfg, tmp_path / "single")
    assert len(dist_rows) == 17 and {r["kind"] for r in dist_rows} >= {"SML", "LMS"}
    assert all(r["images"] == 21 for r in dist_rows)
    for a, b in zip(dist_rows, single):
        assert (a["stitch_id"], a["acc1"], a["acc5"]) == (b["stitch_id"], b["acc1"], b["acc5"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_torchrun_two_processes_match_single_process_eval(tmp_path):
    cfg = write_config(tmp_path, data={"shapes": {"image_size": 32, "num_train": 64, "num_val": 37}})
    dist_rows, single = torchrun_then_single(cfg, tmp_path / "single")
    assert all(r["images"] == 37 for r in dist_rows)  # odd count: no padding, no duplicates
    for a, b in zip(dist_rows, single):
        assert (a["stitch_id"], a["acc1"], a["acc5"]) == (b["stitch_id"], b["acc1"], b["acc5"])
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)

def test_help_and_import_snnet_load_nothing_heavy():
    """``snnet --help`` and each ``snnet CMD --help`` build the parser only; ``import snnet`` resolves its names
    on first use (issue 31: the help under 1 s, benchmarks/bench_cli.py)."""
    probe = ("import sys\nimport snnet\nfrom snnet.cli import main\n"
             "for argv in ([], *([c] for c in sys.argv[1:])):\n"
             "    try:\n        main([*argv, '--help'])\n    except SystemExit as e:\n        assert e.code == 0, argv\n"
             "print('HEAVY', sorted(m for m in ('torch', 'timm', 'torchvision', 'numpy', 'matplotlib', 'pydantic', "
             "'snnet.model', 'snnet.config') if m in sys.modules))")
    commands = ["train", "eval", "flops", "select", "export", "profile", "serve", "cascade", "demo"]
    out = subprocess.run([sys.executable, "-c", probe, *commands], env=ENV, capture_output=True, text=True, check=True)
    assert out.stdout.splitlines()[-1] == "HEAVY []"
    assert all(f"usage: snnet {c} " in out.stdout for c in commands)
    # the names still resolve, each to its object
    import snnet
    from snnet.pretrained import load_pretrained
    from snnet.stitch_space import stitch_space
    assert snnet.SNNet is SNNet and snnet.from_pretrained is load_pretrained and snnet.stitch_space is stitch_space
    assert set(snnet.__all__) <= set(dir(snnet))
    with pytest.raises(AttributeError, match="module 'snnet' has no attribute 'nothing'"):
        snnet.nothing
