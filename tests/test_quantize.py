"""int8 deployment (issue 22): ONNX Runtime's dynamic and static quantisation of exported stitches, their sidecars,
evaluation of ONNX files into the run's results beside the PyTorch figures, and the one-line errors."""
import json
import shutil
import sys

import pytest
import torch

from snnet.export import sidecar_path
from snnet.runtime import OnnxStitch
from helpers import read_jsonl, segmentation, snnet, write_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny least-squares-initialised run (S/L depths 3/6) with its results table."""
    tmp = tmp_path_factory.mktemp("q")
    assert snnet("train", "--config", str(write_config(tmp, train={"epochs": 0}))) == 0
    return tmp / "run"


def export(run, out, *extra):
    return snnet("export", "--checkpoint", str(run), "--stitch", "5", "--format", "onnx", "--output", str(out), *extra)


def test_int8_files_are_close_to_float32_and_say_how_they_were_made(run, tmp_path):
    """int8 rounds each quantised tensor to 255 levels of its range: per value at most half a step, about 0.4 % of
    the range, and typically far less (uniform rounding error, step / sqrt(12)). Through the five linear layers of
    stitch 5 the logits move by about 1 % (measured 0.8 %) of their norm; 5 % leaves a margin of six. A file that
    was not quantised would move by ~1e-7."""
    assert export(run, tmp_path / "fp32.onnx") == 0
    assert export(run, tmp_path / "dyn.onnx", "--quantize", "int8") == 0
    assert export(run, tmp_path / "st.onnx", "--quantize", "int8", "--quantize-method", "static",
                  "--calibration-images", "24") == 0
    torch.manual_seed(0)
    x = torch.randn(16, 3, 32, 32)
    ref = OnnxStitch(tmp_path / "fp32.onnx")(x)
    for name in ("dyn", "st"):
        out = OnnxStitch(tmp_path / f"{name}.onnx")(x)
        rel = float((out - ref).norm() / ref.norm())
        assert 1e-4 < rel < 0.05, (name, rel)
        assert (tmp_path / f"{name}.onnx").stat().st_size < 0.6 * (tmp_path / "fp32.onnx").stat().st_size
    fp32, dyn, st = (json.loads(sidecar_path(tmp_path / f"{n}.onnx").read_text()) for n in ("fp32", "dyn", "st"))
    assert fp32["precision"] == "fp32" and "quantization" not in fp32
    assert dyn["precision"] == "int8" and dyn["quantization"] == {
        "method": "dynamic", "pre_processing": "symbolic shape inference, graph optimisation",
        "ops": ["MatMul", "Gemm"], "weights": "int8, per tensor", "activations": "int8 at run time"}
    assert st["quantization"]["method"] == "static" and st["quantization"]["ops"] == ["MatMul", "Gemm", "Conv"]
    assert st["quantization"]["calibration"] == {"images": 24, "split": "train", "transform": "eval", "seed": 0,
                                                 "dataset": "shapes", "root": None}
    assert dyn["stitch_id"] == 5 and dyn["input_size"] == [32, 32]


def test_eval_of_onnx_files_fills_precision_columns(run, tmp_path):
    """A float32 ONNX file evaluates to the PyTorch stitch's metrics; int8 files add their own columns."""
    before = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    assert export(run, tmp_path / "fp32.onnx") == 0
    assert export(run, tmp_path / "dyn.onnx", "--quantize", "int8") == 0
    assert snnet("eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--onnx",
                 str(tmp_path / "fp32.onnx"), str(tmp_path / "dyn.onnx")) == 0
    rows = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    r = rows[5]
    for m in ("acc1", "acc5", "loss"):
        assert r[m] == before[5][m] and r[f"{m}@fp32"] == pytest.approx(r[m], abs=1e-6)
        assert f"{m}@int8" in r
    assert all(k in before[sid] for sid, row in rows.items() if sid != 5 for k in row)  # other rows unchanged
    header = (run / "results.csv").read_text().splitlines()[0].split(",")
    assert {"acc1@fp32", "acc1@int8"} <= set(header)
    # exporting on the fly: the same int8 figures
    assert snnet("eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--quantize", "int8",
                 "--stitches", "5") == 0
    again = {x["stitch_id"]: x for x in read_jsonl(run / "results.jsonl")}[5]
    assert again["loss@int8"] == pytest.approx(r["loss@int8"], abs=1e-6) and again["acc1@int8"] == r["acc1@int8"]


@pytest.mark.parametrize("extra, message", [
    (["--format", "torchscript", "--quantize", "int8"], "--quantize int8 takes --format onnx"),
    (["--format", "onnx", "--quantize-method", "static"], "--quantize-method applies to --quantize int8"),
    (["--format", "onnx", "--quantize", "int8", "--calibration-images", "8"],
     "--calibration-images calibrates static quantisation: add --quantize-method static"),
    (["--format", "onnx", "--quantize", "int8", "--quantize-method", "static", "--calibration-images", "97"],
     "--calibration-images 97 is not between 1 and the 96 training images"),
])
def test_bad_quantisation_input_is_one_line(run, tmp_path, capsys, extra, message):
    out = tmp_path / "x.onnx"
    assert snnet("export", "--checkpoint", str(run), "--stitch", "5", "--output", str(out), *extra) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and not out.exists() and not sidecar_path(out).exists()


def test_missing_onnxruntime_is_one_line(run, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if it were not installed
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)
    assert export(run, tmp_path / "q.onnx", "--quantize", "int8") == 2
    err = capsys.readouterr().err
    assert "int8 quantisation needs onnxruntime: pip install 'snnet[export]'" in err and err.count("\n") == 1
    assert not (tmp_path / "q.onnx").exists()


def test_select_chooses_a_stitch_and_a_precision(tmp_path, capsys):
    """Hand-made table: stitch 1 in int8 (59.5 % at 1.5 ms) beats stitch 0 in float32 (50 % at 2 ms)."""
    rows = [{"stitch_id": 0, "kind": "anchor", "route": "S", "flops": 1e9, "gflops": 1.0, "params_m": 1.0,
             "acc1": 50.0, "latency_ms": 2.0, "acc1@int8": 49.0, "latency_ms@int8": 1.0},
            {"stitch_id": 1, "kind": "anchor", "route": "L", "flops": 3e9, "gflops": 3.0, "params_m": 3.0,
             "acc1": 60.0, "latency_ms": 3.0, "acc1@int8": 59.5, "latency_ms@int8": 1.5},
            {"stitch_id": 2, "kind": "SL", "route": "SL", "flops": 2e9, "gflops": 2.0, "params_m": 2.0,
             "acc1": 55.0, "latency_ms": 2.4}]  # no int8 figures: never an int8 candidate
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    def best(*args) -> list[str]:
        assert snnet("select", "--results", str(tmp_path), *args) == 0
        return capsys.readouterr().out.splitlines()[2].split()

    assert best("--max-latency-ms", "2.5")[0] == "2"  # float32 only, as before
    # float32 timed in PyTorch only: no comparison with the int8 files' ONNX Runtime times
    assert snnet("select", "--results", str(tmp_path), "--max-latency-ms", "2.5", "--precision", "any") == 2
    assert capsys.readouterr().err == ("snnet: error: --precision any compares times of one runtime, and no float32 "
                                       "stitch was timed in ONNX Runtime (latency_onnx_ms): run snnet profile --onnx "
                                       "--quantize int8 first\n")
    for r, onnx in zip(rows, (1.8, 2.6, 2.2)):
        r["latency_onnx_ms"] = onnx  # the float32 files' times: stitch 1 in float32 (2.6 ms) misses 2.5 ms
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    picked = best("--max-latency-ms", "2.5", "--precision", "any")  # id kind GFLOPs params acc1 ms precision
    assert (picked[0], picked[4], picked[5], picked[6]) == ("1", "59.50", "1.50", "int8")
    assert best("--max-latency-ms", "2.3", "--precision", "any")[:7] == ["1", "anchor", "3.000", "3.00", "59.50",
                                                                          "1.50", "int8"]
    assert best("--max-latency-ms", "2.3", "--precision", "fp32")[0] == "0"  # PyTorch times: stitch 2's 2.4 misses
    del rows[2]["latency_onnx_ms"]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert snnet("select", "--results", str(tmp_path), "--max-latency-ms", "2.5", "--precision", "any") == 0
    assert capsys.readouterr().out.splitlines()[-1] == ("note: 1 fp32 row of the results has no latency in ONNX "
                                                       "Runtime, left out")
    assert best("--max-latency-ms", "1.2", "--precision", "int8")[0] == "0"
    assert best("--max-gflops", "3", "--precision", "any")[0] == "1"  # equal FLOPs: float32's 60 % wins
    assert snnet("select", "--results", str(tmp_path), "--max-latency-ms", "1.2") == 2
    assert "no stitch fits 1.2 ms (the cheapest needs 2.000)" in capsys.readouterr().err
    (tmp_path / "results.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if "@" not in k}) + "\n"
                                                    for r in rows))
    assert snnet("select", "--results", str(tmp_path), "--max-gflops", "3", "--precision", "int8") == 2
    assert "the results have no acc1@int8: evaluate int8 files first" in capsys.readouterr().err


def test_an_onnx_file_must_be_the_stitch_its_sidecar_names(run, tmp_path, capsys):
    from snnet.export import export_stitch
    from snnet.pretrained import load_pretrained

    assert export(run, tmp_path / "s5.onnx") == 0
    info = json.loads(sidecar_path(tmp_path / "s5.onnx").read_text())
    shutil.copy(tmp_path / "s5.onnx", tmp_path / "liar.onnx")
    sidecar_path(tmp_path / "liar.onnx").write_text(json.dumps(dict(info, stitch_id=7)))
    shutil.copy(tmp_path / "s5.onnx", tmp_path / "sized.onnx")
    sidecar_path(tmp_path / "sized.onnx").write_text(json.dumps(dict(info, input_size="big")))
    other = load_pretrained(run / "model")
    with torch.no_grad():
        for p in other.parameters():
            p.add_(torch.randn_like(p))  # another run's weights
    export_stitch(other, 5, "onnx", tmp_path / "other.onnx", (32, 32))
    before = (run / "results.jsonl").read_bytes()
    common = ["eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run)]
    for files, extra, message in [
        (["liar.onnx"], [], "liar.onnx computes stitch 5 of this model, not the stitch 7 its sidecar names"),
        (["other.onnx"], [], "other.onnx is no stitch of this model: its outputs differ from every stitch's"),
        (["s5.onnx"], ["--stitches", "5"], "--stitches chooses the stitches --quantize int8 exports; each --onnx "
                                           "file is the stitch its sidecar names: give the files alone"),
        (["s5.onnx", "s5.onnx"], [], "s5.onnx are both stitch 5 in fp32: give one of them"),
        (["sized.onnx"], [], "sized.onnx.json: input_size is 'big', not [height, width]")]:
        assert snnet(*common, *extra, "--onnx", *(str(tmp_path / f) for f in files)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert (run / "results.jsonl").read_bytes() == before


def test_a_moved_run_is_evaluated_where_it_now_is(run, tmp_path, capsys):
    """Its config.yaml still names the old output_dir, where the original run still is: that one stays as it was."""
    from helpers import snapshot

    moved = tmp_path / "moved"
    shutil.copytree(run, moved)
    before = snapshot(run)
    assert snnet("eval", "--config", str(moved / "config.yaml"), "--quantize", "int8", "--stitches", "0") == 0
    assert f"is the run {moved}'s own config, whose output_dir {run} is elsewhere" in capsys.readouterr().out
    assert snapshot(run) == before and "acc1@int8" not in read_jsonl(run / "results.jsonl")[0]
    assert "acc1@int8" in read_jsonl(moved / "results.jsonl")[0]


def test_an_int8_row_shows_int8_figures_only(tmp_path, capsys):
    row = {"stitch_id": 0, "kind": "anchor", "route": "S", "flops": 1e9, "gflops": 1.0, "params_m": 1.0,
           "acc1": 50.0, "acc5": 80.0, "loss": 1.5, "latency_ms": 2.0, "acc1@int8": 49.0, "acc5@int8": 79.0,
           "loss@int8": 1.6, "latency_ms@int8": 1.0}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    assert snnet("select", "--results", str(tmp_path), "--max-gflops", "1", "--precision", "int8") == 0
    head, values = capsys.readouterr().out.splitlines()[1:3]
    assert head.split() == ["id", "kind", "GFLOPs", "params(M)", "acc1", "acc5", "loss", "latency_ms", "precision",
                            "route"]
    assert values.split() == ["0", "anchor", "1.000", "1.00", "49.00", "79.00", "1.60", "1.00", "int8", "S"]
    del row["acc5@int8"], row["loss@int8"]  # figures the int8 file was not measured for are not shown at all
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n")
    assert snnet("select", "--results", str(tmp_path), "--max-latency-ms", "1", "--precision", "int8") == 0
    head, values = capsys.readouterr().out.splitlines()[1:3]
    assert head.split() == ["id", "kind", "GFLOPs", "params(M)", "acc1", "latency_ms", "precision", "route"]
    assert values.split()[4:7] == ["49.00", "1.00", "int8"]


def test_profile_times_int8_files_beside_float32(run, tmp_path):
    assert snnet("profile", "--run", str(run), "--stitches", "0,5", "--onnx", "--quantize", "int8", "--repeats", "2",
                 "--warmup", "1", "--no-progress") == 0
    timed = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl") if "latency_ms@int8" in r}
    assert sorted(timed) == [0, 5]
    for r in timed.values():
        assert r["latency_ms@int8"] > 0 and r["latency_iqr_ms@int8"] >= 0 and r["latency_onnx_ms"] > 0
    # a plain profile of one of them in the same setting retimes PyTorch only: the ONNX and int8 figures stay
    assert snnet("profile", "--run", str(run), "--stitches", "5", "--repeats", "2", "--warmup", "1",
                 "--no-progress") == 0
    again = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    for sid in (0, 5):
        kept = {k: v for k, v in timed[sid].items() if k not in ("latency_ms", "latency_iqr_ms")}
        assert {k: again[sid][k] for k in kept} == kept
    assert again[0]["latency_ms"] == timed[0]["latency_ms"] and again[5]["latency_ms"] != timed[5]["latency_ms"]
    # another setting (batch 2) drops the figures of the old one, PyTorch's and ONNX Runtime's alike
    assert snnet("profile", "--run", str(run), "--stitches", "5", "--batch", "2", "--repeats", "2", "--warmup", "1",
                 "--no-progress") == 0
    again = {r["stitch_id"]: r for r in read_jsonl(run / "results.jsonl")}
    assert not any(k.startswith("latency") for k in again[0]) and "latency_ms@int8" not in again[5]
    assert (run / "pareto_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_a_new_evaluation_keeps_what_still_holds(run, tmp_path, capsys):
    """A full PyTorch evaluation replaces the table: the timings of the same stitches stay (they depend on the
    architecture, not the weights), and so do the int8 figures where the stitch's PyTorch figures came out the same;
    on other images those are dropped, with a note. An int8 evaluation on other images than the table's is refused."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    assert snnet("eval", "--config", str(copy / "config.yaml"), "--quantize", "int8", "--stitches", "0,5") == 0
    assert snnet("profile", "--run", str(copy), "--stitches", "0,5", "--onnx", "--quantize", "int8", "--repeats", "1",
                 "--warmup", "0", "--no-progress") == 0
    measured = {r["stitch_id"]: r for r in read_jsonl(copy / "results.jsonl")}
    assert snnet("eval", "--config", str(copy / "config.yaml")) == 0
    assert read_jsonl(copy / "results.jsonl") == list(measured.values())
    assert "dropped" not in capsys.readouterr().out
    assert snnet("eval", "--config", str(copy / "config.yaml"), "eval.max_images=16") == 0
    note = next(line for line in capsys.readouterr().out.splitlines() if "are dropped" in line)
    assert note.startswith("note: the PyTorch figures changed (new weights or images), so the earlier figures of "
                           "exported files (acc1@") and "acc1@int8" in note
    rows = {r["stitch_id"]: r for r in read_jsonl(copy / "results.jsonl")}
    assert rows[5]["images"] == 16 and not any(k.endswith("@int8") and "latency" not in k for k in rows[5])
    for sid in (0, 5):
        timings = {k: v for k, v in measured[sid].items() if k.startswith("latency_")}
        assert len(timings) == 7 and {k: rows[sid][k] for k in timings} == timings
    before = (copy / "results.jsonl").read_bytes()
    assert snnet("eval", "--config", str(copy / "config.yaml"), "--quantize", "int8", "--stitches", "5") == 2
    assert capsys.readouterr().err == (f"snnet: error: {copy / 'results.jsonl'} has stitch 5's figures on 16 images, "
                                       f"this evaluation reads 40 (eval.max_images): evaluate on the same images\n")
    assert (copy / "results.jsonl").read_bytes() == before


def test_the_demo_answers_with_the_int8_file(run):
    from PIL import Image

    from snnet.data.scenes import SceneConfig, render_scene
    from snnet.demo import DemoRun

    demo = DemoRun(run)
    assert demo.int8
    image = Image.fromarray(render_scene(SceneConfig(image_size=32), "val", 3).image)
    fp32, int8 = demo.predict(image, 5), demo.predict(image, 5, int8=True)
    assert set(int8) == set(fp32) and all(abs(int8[c] - fp32[c]) < 0.01 for c in fp32)
    assert demo.predict(image, 5, int8=True) == int8 and list(demo._int8_files) == [5]  # exported once
    assert "answering: its int8 ONNX file (dynamic quantisation, ONNX Runtime" in demo.caption(5, 1.0, True, int8=True)


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dense_stitches_evaluate_through_onnx_runtime(tmp_path, task, monkeypatch):
    """A float32 ONNX file of a dense stitch gives the PyTorch stitch's metrics; its static int8 file (the heads'
    convolutions quantised too) its own columns. Nothing lands in the working directory (ONNX Runtime's symbolic
    shape inference, which gives up on DPT's head, saves its partial model there)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    if task == "segmentation":
        cfg = segmentation.write_config(tmp_path, train={"iterations": 1, "checkpoint_interval": 1})
        metric = "mIoU"
    else:
        from snnet.config import load_config
        cfg = tmp_path / "depth.yaml"
        raw = load_config("quickstart_depth", ["data.shapes.num_train=24", "data.shapes.num_val=6", "train.epochs=0",
                                               "train.init_images=8", f"output_dir={tmp_path / 'run'}"])
        from snnet.config import dump_config
        cfg.write_text(dump_config(raw))
        metric = "rmse"
    assert snnet("train", "--config", str(cfg)) == 0
    run = tmp_path / "run"
    assert export(run, tmp_path / "fp32.onnx") == 0
    assert export(run, tmp_path / "st.onnx", "--quantize", "int8", "--quantize-method", "static",
                  "--calibration-images", "8") == 0
    info = json.loads(sidecar_path(tmp_path / "st.onnx").read_text())
    assert "Conv" in info["quantization"]["ops"] and list(cwd.iterdir()) == []
    assert info["quantization"]["pre_processing"].split()[0] == ("onnx" if task == "depth" else "symbolic")
    assert snnet("eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--onnx",
                 str(tmp_path / "fp32.onnx"), str(tmp_path / "st.onnx")) == 0
    r = {x["stitch_id"]: x for x in read_jsonl(run / "results.jsonl")}[5]
    assert r[f"{metric}@fp32"] == pytest.approx(r[metric], abs=1e-5) and f"{metric}@int8-static" in r
