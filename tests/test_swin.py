"""SN-Net's Swin networks (stitching_swin): the 41 stitches of Swin-T/S/B with the FLOPs and parameters of SN-Net's
shipped table, routes against timm's modules run by hand, the least-squares start, its checkpoint format."""
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml

from snnet import SNNet, SNNetError, from_pretrained, init_stitching_layers
from snnet.model import SNNetBackbone, StitchNet
from snnet.anchors import AnchorConfig
from snnet.checkpoint import load_official_checkpoint
from snnet.cli import main
from snnet.files import load_torch_checkpoint
from snnet.runtime import onnx_session
from snnet.stitch_space import stage_positions, swin_layer_stages, swin_space

DATA = Path(__file__).parent / "data"
SWIN = "swin_tiny_patch4_window7_224"
# Swin-T, -S and -B (depths and head counts), narrowed: 32x32 images in 2x2 patches, 4x4 windows
TINY_TSB = [((2, 2, 6, 2), 16, (1, 2, 2, 4)), ((2, 2, 18, 2), 16, (1, 2, 2, 4)), ((2, 2, 18, 2), 24, (1, 2, 3, 6))]


def tiny_swin(depths, width, heads, seed, **kwargs):
    torch.manual_seed(seed)
    return timm.create_model(SWIN, img_size=32, patch_size=2, window_size=4, embed_dim=width, depths=depths,
                             num_heads=heads, **{"num_classes": 10, **kwargs}).eval()


@pytest.fixture(scope="module")
def anchors():
    return [tiny_swin(*spec, seed=i) for i, spec in enumerate(TINY_TSB)]


@pytest.fixture(scope="module")
def model(anchors):
    torch.manual_seed(3)
    return SNNet(anchors, version="sn-net").eval()


def images(n, seed=0):
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_41_stitches_of_swin_t_s_b_have_sn_nets_flops_and_params():
    """SN-Net's stitching_swin/results/stitches_res.txt (fvcore's FLOPs at 224, its get_model_size): every id."""
    names = ["swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"]
    model = SNNet([AnchorConfig(n, kwargs={"device": "meta"}) for n in names], version="sn-net")
    table = [json.loads(line) for line in (DATA / "sn_net_swin_stitches_res.txt").read_text().splitlines()]
    assert model.stitch_ids == [row["cfg_id"] for row in table] == list(range(41))
    assert [model.flops(row["cfg_id"]) for row in table] == [row["flops"] for row in table]
    assert [model.params(row["cfg_id"]) for row in table] == [row["params"] for row in table]
    # 3 anchors, then per stage (the last has none) the T->S and S->B stitches: 1 + 1, 1 + 1, 17 + 17
    kinds = [(s.segments[0].anchor, len(s.segments)) for s in model.stitches]
    assert kinds == [(0, 1), (1, 1), (2, 1)] + [(0, 2), (1, 2)] * 2 + [(0, 2)] * 17 + [(1, 2)] * 17
    assert [len(model.backbone.sl_layers), len(model.backbone.ls_layers)] == [8 + 19, 0]


def test_stage_positions_follow_sn_nets_paired_and_unpaired_rules():
    assert stage_positions(2, 2) == [(0, 1, 0)]
    assert stage_positions(4, 4) == [(0, 1, 0), (1, 2, 1), (2, 3, 2)]
    # 6 -> 18 blocks: end block k maps to front block k // 3; the n-th position takes layer (n // 3)
    assert stage_positions(6, 18) == [
        (0, 1, 0), (0, 2, 0), (1, 3, 0), (1, 4, 1), (1, 5, 1), (2, 6, 1), (2, 7, 2), (2, 8, 2), (3, 9, 2),
        (3, 10, 3), (3, 11, 3), (4, 12, 3), (4, 13, 4), (4, 14, 4), (5, 15, 4), (5, 16, 5), (5, 17, 5)]
    stages = [(2, 2, 6, 2), (2, 2, 18, 2), (2, 2, 18, 2)]
    assert swin_layer_stages(stages, 0) == [0, 1] + [2] * 6 and swin_layer_stages(stages, 1) == [0, 1] + [2] * 17
    # stage 2 of T -> S: front T block 2 + j (global 4 + j) to S block 4 + k
    s = swin_space(stages)[8]
    assert s.describe() == "A[0-4] -AB2-> B[6-23]"


def route_outputs(anchors, layer, stitch, x) -> dict:
    """(anchor, block) -> its output on the route, with timm's modules called directly: the front anchor to its
    block j (no patch merging after it), the stitching ``layer``, the end anchor from block k (patch merging at the
    start of each later stage); SN-Net's forward_until / forward_from in timm's layout."""
    front, out = stitch.segments[0], {}
    a = anchors[front.anchor]
    h, b = a.patch_embed(x), 0
    for stage in a.layers:
        if b > front.last:
            break
        h = stage.downsample(h)
        for blk in stage.blocks:
            if b <= front.last:
                h = out[front.anchor, b] = blk(h)
            b += 1
    if len(stitch.segments) == 1:
        return out
    h = layer(h)
    end = stitch.segments[1]
    e, b = anchors[end.anchor], 0
    for stage in e.layers:
        if b + len(stage.blocks) <= end.first:
            b += len(stage.blocks)
            continue
        if b >= end.first:  # a later stage than the stitch's
            h = stage.downsample(h)
        for blk in stage.blocks:
            if b >= end.first:
                h = out[end.anchor, b] = blk(h)
            b += 1
    return out


def run_by_hand(anchors, model, stitch, x):
    """A route's logits by ``route_outputs``: the last block's output through its anchor's norm and head."""
    layer = model.backbone.stitching_layer(stitch.layers[0]) if stitch.layers else None
    h = list(route_outputs(anchors, layer, stitch, x).values())[-1]
    e = anchors[stitch.last_anchor]
    return e.forward_head(e.norm(h))


def test_every_stitch_equals_timms_modules_run_by_hand(anchors, model):
    x = images(2)
    with torch.no_grad():
        for i, a in enumerate(anchors):
            assert torch.equal(model.select(i)(x), a(x))
        for s in model.stitches:
            torch.testing.assert_close(model.select(s.id)(x), run_by_hand(anchors, model, s, x), rtol=0, atol=1e-5)
        for sid in (3, 8, 30):  # a stitch as a network of its own
            torch.testing.assert_close(model.deployable(sid)(x), model.select(sid)(x), rtol=0, atol=1e-6)


def block_outputs(anchor, x):
    """Every block's output of a timm Swin, numbered across its stages."""
    h, out = anchor.patch_embed(x), []
    for stage in anchor.layers:
        h = stage.downsample(h)
        for blk in stage.blocks:
            h = blk(h)
            out.append(h)
    return out


def test_least_squares_averages_each_layers_fits_over_the_positions_it_serves(anchors):
    torch.manual_seed(4)
    model = SNNet(anchors, version="sn-net").eval()
    x = images(16, seed=1)
    assert init_stitching_layers(model, [x], progress=False) == 16
    with torch.no_grad():
        feats = [block_outputs(a, x) for a in anchors]
    layer = model.backbone.stitching_layer(model.stitch(7).layers[0])  # T -> S, stage 2, layer 0
    served = [s for s in model.stitches if s.layers and s.layers[0] == model.stitch(7).layers[0]]
    assert [(s.segments[0].last, s.segments[1].first) for s in served] == [(4, 5), (4, 6), (5, 7)]
    sols = []
    for s in served:
        src = feats[0][s.segments[0].last].reshape(-1, 64).double()
        dst = feats[1][s.segments[1].first - 1].reshape(-1, 64).double()
        sol = torch.linalg.lstsq(torch.cat([src, torch.ones(len(src), 1, dtype=torch.float64)], 1), dst).solution
        sols.append(sol)
    mean = torch.stack(sols).mean(0)
    torch.testing.assert_close(layer.weight.double(), mean[:-1].T, rtol=0, atol=2e-4)
    torch.testing.assert_close(layer.bias.double(), mean[-1], rtol=0, atol=2e-4)


def sn_net_layout(anchors, model) -> dict:
    """The network's weights as SN-Net's stitching_swin saves them: the original Swin layout in each anchor (patch
    merging at the end of a stage, a bare classifier, masks and indices as buffers), ``stitch_layers.stage.pair.k``."""
    state = {}
    for i, a in enumerate(anchors):
        weights = {**a.state_dict(), **{k: v for k, v in a.named_buffers()
                                        if k.endswith(("relative_position_index", "attn_mask"))}}
        for key, value in weights.items():
            key = re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", key)
            state[f"anchors.{i}.{key.replace('head.fc.', 'head.')}"] = value.clone()
    for pair in range(len(anchors) - 1):
        stages = swin_layer_stages(model.backbone.stages, pair)
        for n, stage in enumerate(stages):
            layer = model.backbone.sl_layers[model.backbone.layer_offsets["SL"][pair] + n]
            k = n - stages.index(stage)
            for param in ("weight", "bias"):
                state[f"stitch_layers.{stage}.{pair}.{k}.transform.{param}"] = getattr(layer, param).detach().clone()
    return state


def test_sn_nets_swin_checkpoint_loads_as_it_is(anchors, model, tmp_path):
    state = sn_net_layout(anchors, model)
    assert "anchors.0.layers.0.downsample.reduction.weight" in state and "anchors.2.head.weight" in state
    path = tmp_path / "snnet_swin.pth"
    torch.save({"model": state, "epoch": 49, "max_accuracy": 84.2}, path)
    fresh = SNNet([tiny_swin(*spec, seed=10 + i) for i, spec in enumerate(TINY_TSB)], version="sn-net").eval()
    load_official_checkpoint(fresh, path)
    x = images(2)
    with torch.no_grad():
        for sid in model.stitch_ids:
            assert torch.equal(fresh.select(sid)(x), model.select(sid)(x))
    # a layer the network has no place for
    bad = {**state, "stitch_layers.2.0.6.transform.weight": state["stitch_layers.2.0.5.transform.weight"]}
    torch.save({"model": bad}, path)
    with pytest.raises(SNNetError, match=r"^the checkpoint has stitch_layers\.2\.0\.6\.transform\.weight, but the "
                                         r"model's Swin network has no stitching layer 6 in stage 2 of anchor pair 0$"):
        load_official_checkpoint(fresh, path)


def test_swins_saved_yacs_config_reads_as_plain_data():
    """SN-Net's training checkpoints keep their yacs CfgNode: read as an OrderedDict, no yacs code run."""
    obj = load_torch_checkpoint(DATA / "sn_net_swin_config.pth")
    assert obj["config"] == {"MODEL": {"TYPE": "snnet", "NAME": "stitch_swin_ti_s_b"}, "TRAIN": {"EPOCHS": 50}}
    assert obj["epoch"] == 49


def test_a_saved_swin_network_loads_again(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    x = images(2)
    with torch.no_grad():
        for sid in (0, 4, 40):
            assert torch.equal(again.select(sid)(x), model.select(sid)(x))
    assert again.flops(40) == model.flops(40) and again.params(40) == model.params(40)


@pytest.mark.parametrize("build, message", [
    (lambda a: SNNet(a[:2], version="v2"),
     "hierarchical anchors (Swin) are stitched as SN-Net stitches them: set model.version to 'sn-net', not 'v2'"),
    (lambda a: SNNet([a[0], timm.create_model("deit3_small_patch16_224", img_size=32, patch_size=2, embed_dim=16,
                                              depth=2, num_heads=1)], version="sn-net"),
     "hierarchical anchors (swin) stitch with hierarchical anchors only"),
    (lambda a: SNNet(a[:2], version="sn-net").eval()(torch.randn(1, 3, 64, 64)),
     "images are 64x64, the anchors take 32x32"),
    (lambda a: SNNet(a[:2], version="sn-net").backbone.forward_intermediates(torch.randn(1, 3, 32, 32)),
     "this Swin network was built to classify: its dense taps need the tap layers of a dense backbone "
     "(SNNetBackbone(..., dense=True), as the dense tasks build it)"),
    (lambda a: SNNetBackbone(a, version="sn-net", dense="yes"), "dense must be True or False, got 'yes'"),
    (lambda a: SNNetBackbone(a, version="sn-net", dense=True, out_indices=[3, 20, 23]),
     "out_indices [3, 20, 23]: a Swin backbone taps the ends of its stages, blocks [1, 3, 21, 23] of the largest "
     "anchor"),
    (lambda a: SNNet([a[0], tiny_swin((2, 4, 4, 4), 16, (1, 2, 2, 4), 0)], version="sn-net"),
     "stage depths must not decrease along the anchors, got [2, 2, 6, 2] then [2, 4, 4, 4]"),
])
def test_what_swin_networks_refuse_is_one_line(anchors, build, message):
    with pytest.raises(SNNetError) as e:
        build(anchors)
    assert message in str(e.value) and "\n" not in str(e.value)


def swin_run(tmp_path, task="classification", widths=(16, 16), head=None, **data) -> Path:
    """``snnet train`` of tiny Swin-T/S-shaped anchors (stage depths 2, 2, 2, 2 and 2, 2, 4, 2; 32x32 images in 2x2
    patches, 4x4 windows) on the built-in scenes: the least-squares start and one epoch of 2 steps."""
    classes = {"num_classes": 10} if task == "classification" else {}
    anchors = [{"name": SWIN, "kwargs": dict(img_size=32, patch_size=2, window_size=4, embed_dim=w, depths=d,
                                             num_heads=[1, 2, 2, 4], **classes)}
               for d, w in zip(([2, 2, 2, 2], [2, 2, 4, 2]), widths)]
    cfg = {"task": task, "model": {"version": "sn-net", "anchors": anchors, **({"head": head} if head else {})},
           "data": {"dataset": "shapes", "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
                    "shapes": {"image_size": data.get("input_size", 32), "num_train": 16, "num_val": 8}, **data},
           "train": {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0, "init_images": 8, "init_batch_size": 8,
                     "optimizer": "adamw", "lr": 1e-3},
           "output_dir": str(tmp_path / "run")}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(tmp_path / "run.yaml"), "--no-progress"]) == 0
    return tmp_path / "run"


def assert_stitch_file_answers(run, model, x, sid, path, atol):
    """``snnet export --stitch sid``: the stitch's ONNX file answers as the model does."""
    assert main(["export", "--checkpoint", str(run), "--stitch", str(sid), "--format", "onnx", "--output", str(path),
                 "--no-progress"]) == 0
    with torch.no_grad():
        np.testing.assert_allclose(onnx_session(path).run(None, {"images": x.numpy()})[0],
                                   model.select(sid)(x).numpy(), rtol=0, atol=atol)


def test_snnet_train_eval_and_export_a_swin_network(tmp_path):
    """The commands on tiny Swin-T/S-shaped anchors: least squares, training, every stitch evaluated, one stitch
    and the whole network exported to ONNX, each equal to eager; int8 export, profile and the demo's answer."""
    run = swin_run(tmp_path)
    model = from_pretrained(run / "model").eval()
    # stages 0 and 1: one stitch each; stage 2 (2 -> 4 blocks, unpaired): 3
    assert model.stitch_ids == list(range(7))
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == model.stitch_ids
    assert [(r["flops"], r["params"]) for r in rows] == [(model.flops(i), model.params(i)) for i in model.stitch_ids]
    assert all(0 <= r["acc1"] <= 100 for r in rows)
    x = images(2)
    assert_stitch_file_answers(run, model, x, 5, tmp_path / "s5.onnx", atol=1e-5)
    every = tmp_path / "net.onnx"
    assert main(["export", "--checkpoint", str(run), "--stitch", "all", "--format", "onnx", "--output", str(every),
                 "--no-progress"]) == 0
    session = onnx_session(every)
    for sid in model.stitch_ids:
        with torch.no_grad():
            expected = model.select(sid)(x).numpy()
        got = session.run(None, {"images": x.numpy(), "stitch_id": np.array(sid, np.int64)})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    # int8 (dynamic) of a stitch: its file near the float32 stitch; profile times every stitch (each int8 export
    # takes seconds here: their timing, as the demo's int8 answer, runs the same export)
    int8 = tmp_path / "s5_int8.onnx"
    assert main(["export", "--checkpoint", str(run), "--stitch", "5", "--format", "onnx", "--output", str(int8),
                 "--quantize", "int8", "--no-progress"]) == 0
    with torch.no_grad():
        fp32 = model.select(5)(x).numpy()
    q = onnx_session(int8).run(None, {"images": x.numpy()})[0]
    assert np.linalg.norm(q - fp32) < 0.1 * np.linalg.norm(fp32)
    assert main(["profile", "--run", str(run), "--repeats", "2", "--warmup", "1", "--no-progress"]) == 0
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == model.stitch_ids and all(r["latency_ms"] > 0 for r in rows)
    # the demo's answer: the top-5 classes of the stitch it chose, its probabilities
    from PIL import Image

    from snnet.demo import DemoRun

    demo = DemoRun(run)
    image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
    answer = demo.predict(image, 4)
    with torch.no_grad():
        probs = model.select(4)(demo.transform(image)[None]).softmax(-1)[0]
    top = probs.topk(5)
    assert list(answer) == [demo.classes[i] for i in top.indices]
    np.testing.assert_allclose(list(answer.values()), top.values.numpy(), rtol=0, atol=1e-6)


# ---- dense tasks over Swin: taps at the stage ends, brought up by a tap layer per stage and pair ----------------
ENDS = [[1, 3, 9, 11], [1, 3, 21, 23], [1, 3, 21, 23]]  # the last block of each stage of T, S and B
TAP_LAYERS = [range(8, 12), range(31, 35)]  # per pair, after SN-Net's 8 (T -> S) and 19 (S -> B) layers


def dense_backbone(seed=3):
    anchors = [tiny_swin(*spec, seed=i, num_classes=0, dynamic_img_size=True) for i, spec in enumerate(TINY_TSB)]
    torch.manual_seed(seed)
    return anchors, SNNetBackbone(anchors, version="sn-net", dense=True).eval()


def test_dense_swin_taps_are_stage_ends_brought_to_the_largest_width_by_tap_layers():
    """Every stitch's four maps, at a size the windows do not divide (48x80: timm pads), equal the route's
    stage ends run by hand through each pair's tap layer of that stage; the deployed stitch and the prefix-shared
    walk give the same."""
    anchors, net = dense_backbone()
    assert net.out_indices == [1, 3, 21, 23] and net.tap_widths == [24, 48, 96, 192]
    assert net.tap_grids((48, 80)) == [(24, 40), (12, 20), (6, 10), (3, 5)]
    assert len(net.sl_layers) == 8 + 4 + 19 + 4
    assert [(net.sl_layers[i].in_features, net.sl_layers[i].out_features) for r in TAP_LAYERS for i in r] == \
        [(16, 16), (32, 32), (64, 64), (128, 128), (16, 24), (32, 48), (64, 96), (128, 192)]
    x = torch.randn(2, 3, 48, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        timm_maps = anchors[2].forward_intermediates(x, intermediates_only=True)  # the largest anchor: timm's own
        assert all(torch.equal(a, b) for a, b in zip(net.select(2).forward_intermediates(x), timm_maps))
        for s in net.stitches:
            layer = net.stitching_layer(s.layers[0]) if s.layers else None
            out = route_outputs(anchors, layer, s, x)
            expected = []
            for stage in range(4):  # the first segment that ran its anchor's end of the stage
                a = next(seg.anchor for seg in s.segments if (seg.anchor, ENDS[seg.anchor][stage]) in out)
                f = out[a, ENDS[a][stage]]
                for p in range(a, 2):
                    f = net.sl_layers[TAP_LAYERS[p][stage]](f)
                expected.append(f.permute(0, 3, 1, 2))
            for got in (net.select(s.id).forward_intermediates(x),
                        StitchNet(net, s.id, dense=True).forward_intermediates(x)):
                assert [tuple(g.shape) for g in got] == [(2, c, h, w) for c, (h, w) in
                                                         zip(net.tap_widths, net.tap_grids((48, 80)))]
                for g, e in zip(got, expected):
                    torch.testing.assert_close(g, e, rtol=0, atol=1e-5)
        # the evaluation's walk: each stitch resumes from the prefix the stitches before it ran
        alone = {s.id: net.select(s.id).forward_intermediates(x) for s in net.stitches}
        with net.sharing_prefixes(net.stitch_ids):
            for sid in net.depth_first(net.stitch_ids):
                assert all(torch.equal(a, b) for a, b in zip(net.select(sid).forward_intermediates(x), alone[sid]))


def test_dense_swin_flops_count_the_window_padding_as_torch_counts_the_stitch():
    """At 48x80 every stitch's dense FLOPs, norms left out, are half torch's FlopCounterMode count (which counts a
    multiply-add as two, and no norm): timm pads each stage to whole windows, and attention runs on the padding."""
    from dataclasses import replace

    from torch.utils.flop_counter import FlopCounterMode

    from snnet.flops import stitch_flops

    _, net = dense_backbone()
    bare = [replace(s, embed_norm_elements=0, stages=tuple(replace(st, block_norm_elements=0, merge_norm_elements=0)
                                                           for st in s.stages)) for s in net.shapes]
    x = torch.randn(1, 3, 48, 80)
    with torch.no_grad():
        for s in net.stitches:
            with FlopCounterMode(display=False) as counter:
                net.select(s.id).forward_intermediates(x)
            assert counter.get_total_flops() == 2 * stitch_flops(s, bare, (48, 80), tuple(net.out_indices))
    # with the norms, one stitch by hand: its route's blocks and the tap projections
    assert net.flops(30, (48, 80), taps=True) > stitch_flops(net.stitch(30), bare, (48, 80), tuple(net.out_indices))


def test_least_squares_fits_each_tap_layer_from_stage_end_to_stage_end():
    from snnet import SegmentationModel

    anchors, net = dense_backbone()
    model = SegmentationModel(net, num_classes=3, channels=8).eval()
    x = images(16, seed=1)
    assert init_stitching_layers(model, [x], progress=False) == 16
    with torch.no_grad():
        feats = [block_outputs(a, x) for a in anchors]
    for pair, stage in ((0, 0), (1, 2), (1, 3)):
        src = feats[pair][ENDS[pair][stage]].flatten(0, 2).double()
        dst = feats[pair + 1][ENDS[pair + 1][stage]].flatten(0, 2).double()
        sol = torch.linalg.lstsq(torch.cat([src, torch.ones(len(src), 1, dtype=torch.float64)], 1), dst).solution
        layer = net.sl_layers[TAP_LAYERS[pair][stage]]
        torch.testing.assert_close(layer.weight.double(), sol[:-1].T, rtol=0, atol=2e-4)
        torch.testing.assert_close(layer.bias.double(), sol[-1], rtol=0, atol=2e-4)


@pytest.mark.parametrize("task, head", [
    ("segmentation", {"channels": 8}),
    ("depth", {"channels": 8, "reassemble_channels": [8, 8, 16, 16]}),
    ("detection", {"channels": 8, "roi_channels": 8, "detections": 10}),
])
def test_each_dense_task_trains_evaluates_and_exports_on_swin_anchors(tmp_path, task, head):
    """``snnet train`` of a dense task on tiny Swin-T/S-shaped anchors (least squares, ROS, every stitch evaluated
    with shared prefixes); the results' FLOPs and parameters are the model's; one stitch's ONNX file equals the
    model (detection: its detections on a square image and a 48x80 one); segmentation is profiled, and the demo's
    int8 answer of depth is near its float32 one (the whole network in one file: the classification test above)."""
    from PIL import Image

    from snnet.demo import DemoRun
    from snnet.export import export_stitch
    from snnet.runtime import OnnxStitch

    run = swin_run(tmp_path, task, (16, 24), head, **({"input_size": 64} if task == "detection" else {}))
    model = from_pretrained(run / "model").eval()
    assert model.out_indices == [1, 3, 7, 9] and model.stitch_ids == list(range(7))
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert sorted(r["stitch_id"] for r in rows) == model.stitch_ids
    assert all((r["flops"], r["params"]) == (model.flops(r["stitch_id"]), model.params(r["stitch_id"])) for r in rows)
    # parameters: what the deployed stitch holds (no final norm, every patch merging it runs)
    assert all(model.params(s) == sum(p.numel() for p in model.deployable(s).parameters()) for s in model.stitch_ids)
    if task == "detection":
        model.detector.roi_heads.score_thresh = 0.0  # every detection kept, to compare them all
        pictures = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # the second fitted and padded inside
        with torch.no_grad():
            expected = model.select(5)(pictures)
        path = export_stitch(model, 5, "onnx", tmp_path / "d.onnx", (48, 80))[0]
        for got, exp in zip(OnnxStitch(path)(pictures), expected):
            assert got["boxes"].shape == exp["boxes"].shape == (10, 4) and torch.equal(got["labels"], exp["labels"])
            for key in ("boxes", "scores", "masks"):
                torch.testing.assert_close(got[key], exp[key], atol=1e-4, rtol=0)
        return
    assert_stitch_file_answers(run, model, images(2), 5, tmp_path / "s5.onnx", atol=1e-4)
    if task == "segmentation":
        assert main(["profile", "--run", str(run), "--repeats", "2", "--warmup", "1", "--no-progress"]) == 0
        rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
        assert sorted(r["stitch_id"] for r in rows) == model.stitch_ids and all(r["latency_ms"] > 0 for r in rows)
    else:
        demo = DemoRun(run)
        image = Image.fromarray((np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8))
        shown, legend = demo.predict(image, 4)
        shown8, legend8 = demo.predict(image, 4, int8=True)
        assert shown.shape == shown8.shape == (384, 384, 3) and legend and legend8
        assert np.abs(shown - shown8).mean() < 0.05
