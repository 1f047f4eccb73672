"""Every stitch in one ONNX file (issue 29, point 1): a stitch_id input, each stitch equal to eager PyTorch, the
weights stored once, int8, dense tasks, and the one-line refusals."""
import json

import numpy as np
import onnx
import pytest
import torch

from snnet import SNNetError, from_pretrained
from snnet.runtime import OnnxStitch, onnx_session
from helpers import read_jsonl, segmentation, snnet, write_config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny least-squares-initialised run (S/L depths 3/6, 8 stitches) with its results table."""
    tmp = tmp_path_factory.mktemp("net")
    assert snnet("train", "--config", str(write_config(tmp, train={"epochs": 0}))) == 0
    return tmp / "run"


@pytest.fixture(scope="module")
def network(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("file") / "net.onnx"
    assert snnet("export", "--checkpoint", str(run), "--stitch", "all", "--format", "onnx", "--output", str(out),
                 "--no-progress") == 0
    return out


def _params_bytes(model) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def test_every_stitch_of_one_file_equals_eager(run, network):
    model = from_pretrained(run / "model").eval()
    session = onnx_session(network)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("images", "tensor(float)"),
                                                                  ("stitch_id", "tensor(int64)")]
    torch.manual_seed(0)
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        for sid in model.stitch_ids:
            with torch.no_grad():
                expected = model.select(sid)(x).numpy()
            for given in (np.array(sid, np.int64), np.array([sid], np.int64)):  # a scalar or shape [1]
                got = session.run(None, {"images": x.numpy(), "stitch_id": given})[0]
                np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    with pytest.raises(Exception, match="unknown_stitch_id"):  # an id the network lacks fails; never another stitch
        session.run(None, {"images": x.numpy(), "stitch_id": np.array(4, np.int64)})
    assert OnnxStitch(network, stitch_id=7)(x).shape == (3, 10)
    with pytest.raises(SNNetError, match="holds every stitch of a network: say which"):
        OnnxStitch(network)


def test_the_weights_are_stored_once_and_the_sidecar_lists_every_stitch(run, network):
    """Identical tensors of several stitches are one initializer: the unique weights are the network's float32
    parameters less the LoRA factors (merged into their stitching layers) and the heads of the small anchor,
    which no stitch ends in."""
    model = from_pretrained(run / "model")
    proto = onnx.load(str(network))
    stored = []

    def collect(graph):
        stored.extend(graph.initializer)
        for node in graph.node:
            for a in node.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    collect(a.g)
    collect(proto.graph)
    names = [t.name for t in stored]
    assert len(names) == len(set(names))
    weights = sum(len(t.raw_data) for t in stored if len(t.raw_data) >= 1024)
    lora = sum(p.numel() * 4 for n, p in model.named_parameters() if "lora_" in n)
    small_head = sum(p.numel() * 4 for p in model.heads[0].parameters())
    assert weights <= _params_bytes(model) - lora - small_head
    assert weights >= 0.9 * (_params_bytes(model) - lora - small_head)
    assert network.stat().st_size < 1.25 * _params_bytes(model)  # a tiny graph's nodes weigh beside its weights
    side = json.loads(network.with_name("net.onnx.json").read_text())
    rows = read_jsonl(run / "results.jsonl")
    assert side["stitch_id"] == "all" and [s["stitch_id"] for s in side["stitches"]] == model.stitch_ids
    assert [(s["route"], s["acc1"]) for s in side["stitches"]] == [(r["route"], r["acc1"]) for r in rows]
    assert side["mean"] == [0.5] * 3 and side["precision"] == "fp32" and "external_data" not in side


def test_int8_applies_to_the_one_file(run, network, tmp_path):
    """The int8 network runs each stitch as that stitch's own int8 file does."""
    assert snnet("export", "--checkpoint", str(run), "--stitch", "all", "--format", "onnx", "--quantize", "int8",
                 "--output", str(tmp_path / "int8.onnx"), "--no-progress") == 0
    assert snnet("export", "--checkpoint", str(run), "--stitch", "5", "--format", "onnx", "--quantize", "int8",
                 "--output", str(tmp_path / "s5.onnx")) == 0
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    np.testing.assert_allclose(OnnxStitch(tmp_path / "int8.onnx", stitch_id=5)(x).numpy(),
                               OnnxStitch(tmp_path / "s5.onnx")(x).numpy(), rtol=0, atol=1e-5)
    side = json.loads((tmp_path / "int8.onnx.json").read_text())
    assert side["precision"] == "int8" and side["quantization"]["method"] == "dynamic"
    assert (tmp_path / "int8.onnx").stat().st_size < 0.6 * network.stat().st_size


@pytest.mark.parametrize("extra, message", [
    (["--format", "torchscript"], "--stitch all writes one ONNX file with a stitch_id input: give --format onnx, "
                                  "not torchscript"),
    (["--format", "safetensors"], "give --format onnx, not safetensors"),
])
def test_bad_network_exports_are_one_line(run, tmp_path, capsys, extra, message):
    assert snnet("export", "--checkpoint", str(run), "--stitch", "all", "--output", str(tmp_path / "x"), *extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("snnet: error: ") and message in err and err.count("\n") == 1
    assert not list(tmp_path.iterdir())


def test_eval_names_a_network_file_it_cannot_take(run, network, capsys):
    assert snnet("eval", "--config", str(run / "config.yaml"), "--onnx", str(network)) == 2
    assert capsys.readouterr().err == (f"snnet: error: {network} holds every stitch of its network: eval --onnx "
                                       f"takes files of one stitch (export them with --stitch ID), or use eval "
                                       f"--quantize int8\n")


@pytest.mark.parametrize("task", ["segmentation", "depth"])
def test_dense_networks_in_one_file(tmp_path, task):
    """Every stitch of a segmentation or depth model in one file, each equal to eager PyTorch."""
    from snnet.config import dump_config, load_config

    if task == "segmentation":
        cfg = segmentation.write_config(tmp_path, train={"iterations": 1, "checkpoint_interval": 1})
    else:
        cfg = tmp_path / "depth.yaml"
        cfg.write_text(dump_config(load_config("quickstart_depth", [
            "data.shapes.num_train=24", "data.shapes.num_val=6", "train.epochs=0", "train.init_images=8",
            "model.anchors.0.checkpoint_path=null", "model.anchors.1.checkpoint_path=null",
            "model.anchors.0.kwargs.depth=2", "model.anchors.1.kwargs.depth=4", "model.out_indices=[0,1,2,3]",
            f"output_dir={tmp_path / 'run'}"])))
    assert snnet("train", "--config", str(cfg)) == 0
    out = tmp_path / "net.onnx"
    assert snnet("export", "--checkpoint", str(tmp_path / "run"), "--stitch", "all", "--format", "onnx", "--output",
                 str(out), "--no-progress") == 0
    model = from_pretrained(tmp_path / "run" / "model").eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, *model.img_size)
    net = OnnxStitch(out, stitch_id=0)  # one session; the stitch is an input
    for sid in model.stitch_ids:
        with torch.no_grad():
            expected = model.select(sid)(x)
        net.stitch_id = sid
        np.testing.assert_allclose(net(x).numpy(), expected.numpy(), rtol=0, atol=1e-5)
