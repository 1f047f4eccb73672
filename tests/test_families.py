"""Anchor families (issue 32): plain ViT, SigLIP (attention-pooled, no class token) and Eva (EVA02, DINOv3: rotary
embeddings, registers, SwiGLU) stitched by one route runner; their FLOPs against timm's published counts."""
import csv
import json
from pathlib import Path

import huggingface_hub
import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from snnet import SNNet, SNNetError, from_pretrained, init_stitching_layers
from snnet.anchors import AnchorConfig, anchor_shape, create_anchor
from snnet.cli import main
from snnet.families import FAMILIES, EvaFamily, SigLIPFamily, SwinFamily, ViTFamily, family_of, register_family
from snnet.flops import stitch_flops
from snnet.runtime import onnx_session
from snnet.tasks.depth.heads import DPTHead
from snnet.tasks.depth.model import fit_to_patches
from snnet.stitch_space import LayerRef, Segment, Stitch, route_steps

DATA = Path(__file__).parent / "data"
IMG = 32
# (timm name, kwargs of the small anchor, of the large one): tiny random networks of each family
SMALL, LARGE = dict(embed_dim=32, depth=3, num_heads=2), dict(embed_dim=48, depth=6, num_heads=3)
FAMILY_PAIRS = {
    "eva02": ("eva02_tiny_patch14_224", SMALL, LARGE),
    "dinov3": ("vit_small_patch16_dinov3", SMALL, LARGE),
    "siglip": ("vit_base_patch16_siglip_224", SMALL, LARGE),
}


def build(name: str, seed: int, **kwargs) -> torch.nn.Module:
    """A tiny anchor of a timm architecture with random, non-trivial weights (norms and layer scales away from
    their identity start)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, img_size=IMG, patch_size=8, num_classes=10, **kwargs)
    with torch.no_grad():
        for key, p in model.named_parameters():
            if key.endswith(("gamma", "gamma_1", "gamma_2")):
                p.uniform_(0.1, 0.3)
            elif "norm" in key and key.endswith("weight"):
                p.uniform_(0.5, 1.5)
            elif key.endswith("bias") or key.endswith(("cls_token", "reg_token")):
                p.normal_(0, 0.02)
    return model.eval()


def pair(family: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    name, small, large = FAMILY_PAIRS[family]
    return build(name, 1, **small), build(name, 2, **large)


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("family,expected", [("eva02", EvaFamily), ("dinov3", EvaFamily), ("siglip", SigLIPFamily)])
def test_each_anchor_stitch_equals_timms_own_forward(family, expected):
    small, large = pair(family)
    assert family_of(small) is family_of(large) is expected
    model = SNNet([small, large]).eval()
    x = images()
    ids = {s.last_anchor: s.id for s in model.backbone.stitches if s.kind == "anchor"}
    with torch.no_grad():
        torch.testing.assert_close(model.select(ids[0])(x), small(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.select(ids[1])(x), large(x), rtol=1e-5, atol=1e-5)


def by_hand(model: SNNet, sid: int, anchors, x: torch.Tensor) -> torch.Tensor:
    """One stitch run from timm's own pieces: each anchor's embedding and rotary embedding as timm computes them,
    its blocks in route order, the stitching layers as linears, the last anchor's norm and head."""
    s = model.backbone.stitch(sid)
    ropes = {}
    h = None
    for step in route_steps(s):
        if step.kind == "embed":
            a = anchors[step.part]
            out = a._pos_embed(a.patch_embed(x))
            h = out[0] if isinstance(out, tuple) else out
        elif step.kind == "block":
            a = anchors[step.part]
            if getattr(a, "rope", None) is not None:
                rope = ropes.setdefault(step.part, a._pos_embed(a.patch_embed(x))[1])
                h = a.blocks[step.index](h, rope=rope)
            else:
                h = a.blocks[step.index](h)
        else:
            layer = model.backbone.stitching_layer(LayerRef(step.part, step.index, step.pair))
            h = torch.nn.functional.linear(h, layer.effective_weight(), layer.bias)
    last = anchors[s.last_anchor]
    return last.forward_head(last.norm(h) if s.final_norm else h)


@pytest.mark.parametrize("family", ["eva02", "dinov3", "siglip"])
def test_every_stitch_equals_its_modules_run_by_hand(family):
    small, large = pair(family)
    model = SNNet([small, large], lora_rank=2).eval()
    with torch.no_grad():
        for layer in [*model.backbone.sl_layers, *model.backbone.ls_layers]:
            layer.weight.normal_(0, 0.2)
            layer.lora_B.normal_(0, 0.1)
        x = images(2)
        assert model.stitch_ids == [0, 1, 2, 3, 5, 6, 7, 8]  # SN-Netv2's space for depths 3 and 6
        for sid in model.stitch_ids:
            torch.testing.assert_close(model.select(sid)(x), by_hand(model, sid, [small, large], x),
                                       rtol=1e-5, atol=1e-5, msg=f"stitch {sid}")


def test_the_prefix_shared_walk_and_a_deployed_stitch_equal_the_model():
    small, large = pair("dinov3")
    model = SNNet([small, large]).eval()
    x = images(2)
    with torch.no_grad():
        alone = {sid: model.select(sid)(x) for sid in model.stitch_ids}
        with model.backbone.sharing_prefixes(model.stitch_ids):
            for sid in model.backbone.depth_first(model.stitch_ids):
                torch.testing.assert_close(model.select(sid)(x), alone[sid], rtol=0, atol=0)
        for sid in (2, 5, 7, 8):  # SL, LS, LSL, SLS: each runs both anchors' rotary embeddings
            torch.testing.assert_close(model.deployable(sid)(x), alone[sid], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", ["eva02", "dinov3", "siglip"])
def test_least_squares_fits_each_familys_activations(family):
    """Each stitching layer equals lstsq on the activations its two anchors give (rotary embeddings included),
    the blocks run from timm's own pieces."""
    small, large = pair(family)
    model = SNNet([small, large])
    x = images(6)
    init_stitching_layers(model, [x], progress=False)
    with torch.no_grad():
        def outputs(a):
            h = a._pos_embed(a.patch_embed(x))
            h, rope = h if isinstance(h, tuple) else (h, None)  # Eva's gives its rotary embedding too
            h = a.norm_pre(h)
            outs = []
            for blk in a.blocks:
                h = blk(h) if rope is None else blk(h, rope=rope)
                outs.append(h.reshape(-1, h.shape[-1]).double())
            return outs

        s_out, l_out = outputs(small), outputs(large)
        # SL0 maps the small anchor's block 0 output onto the large anchor's block 1 output
        xs = torch.cat([s_out[0], torch.ones(s_out[0].shape[0], 1, dtype=torch.float64)], dim=1)
        sol = torch.linalg.lstsq(xs, l_out[1]).solution
        layer = model.backbone.stitching_layer(LayerRef("SL", 0))
        torch.testing.assert_close(layer.weight.double(), sol[:-1].T, rtol=1e-3, atol=1e-4)
        torch.testing.assert_close(layer.bias.double(), sol[-1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("family", ["eva02", "dinov3", "siglip"])
def test_a_network_of_a_family_saves_and_loads(tmp_path, family):
    name, small, large = FAMILY_PAIRS[family]
    configs = [AnchorConfig(name, kwargs=dict(img_size=IMG, patch_size=8, num_classes=10, **kw))
               for kw in (small, large)]
    torch.manual_seed(0)
    model = SNNet(configs, lora_rank=2).eval()
    model.save_pretrained(tmp_path / "m")
    again = from_pretrained(tmp_path / "m").eval()
    x = images(2)
    with torch.no_grad():
        for sid in model.stitch_ids:
            torch.testing.assert_close(again.select(sid)(x), model.select(sid)(x), rtol=0, atol=0)


@pytest.mark.parametrize("a,b,message", [
    (("eva02_tiny_patch14_224", {}), ("vit_small_patch16_dinov3", {}),
     "prefix tokens differ (1 class and 0 register tokens against 1 and 4)"),
    (("vit_small_patch16_dinov3", {}), ("vit_small_patch16_dinov3", dict(patch_drop_rate=0.1)),
     "with patch dropout: its rotary embeddings would follow the kept tokens"),
    (("vit_base_patch16_siglip_224", {}), ("vit_base_patch16_siglip_224", dict(global_pool="avg")),
     "pooled by 'avg' must classify from one class token"),
])
def test_anchors_a_family_cannot_stitch_are_one_line_errors(a, b, message):
    small, large = build(a[0], 1, **SMALL, **a[1]), build(b[0], 2, **LARGE, **b[1])
    with pytest.raises(SNNetError) as e:
        SNNet([small, large])
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_convnext_is_no_family():
    convnext = timm.create_model("convnext_atto", num_classes=10)
    with pytest.raises(SNNetError, match=r"^anchor convnext_atto is a ConvNeXt that no anchor family stitches: "
                                         r"vit \(.*\); siglip \(.*\); eva \(.*\); swin \(.*\)$"):
        SNNet([build("deit3_small_patch16_224", 1, embed_dim=32, depth=2, num_heads=2), convnext])
    assert [f.name for f in FAMILIES] == ["vit", "siglip", "eva", "swin"]


def published_gmacs() -> list[dict]:
    with open(DATA / "timm_benchmark_gmacs.csv", encoding="utf-8") as f:
        return [row for row in csv.DictReader(line for line in f if not line.startswith("#"))]


@pytest.mark.parametrize("row", published_gmacs(), ids=lambda r: r["model"])
def test_anchor_flops_equal_timms_published_gmacs(row):
    """timm's benchmark (results/benchmark-infer-amp-nchw-pt291-cu128-4090.csv) at its resolution, within 1 %
    (its figures have two decimals)."""
    size = int(row["infer_img_size"])
    model = timm.create_model(row["model"], device="meta", img_size=size)
    family = {"vit": ViTFamily, "siglip": SigLIPFamily, "eva": EvaFamily, "swin": SwinFamily}[row["family"]]
    assert family_of(model) is family
    s = anchor_shape(model)
    gmacs = stitch_flops(Stitch(0, "anchor", (Segment(0, 0, s.depth - 1),)), [s]) / 1e9
    assert gmacs == pytest.approx(float(row["infer_gmacs"]), rel=0.01, abs=0.006)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(float(row["param_count"]), abs=0.006)


def family_run(tmp_path: Path, name: str, task: str = "classification", **sections) -> Path:
    """``snnet train`` of two tiny anchors of timm's ``name`` on the built-in scenes (the least-squares start and
    ``train.epochs`` epochs of 2 steps); returns the run directory."""
    classes = {"num_classes": 10} if task == "classification" else {}
    anchors = [{"name": name, "kwargs": dict(img_size=IMG, patch_size=8, embed_dim=w, depth=d, num_heads=h, **classes)}
               for w, d, h in ((32, 3, 2), (48, 6, 3))]
    cfg = {"task": task, "model": {"anchors": anchors, "lora_rank": 2},
           "data": {"dataset": "shapes", "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
                    "shapes": {"image_size": IMG, "num_train": 16, "num_val": 8}},
           "train": {"epochs": 0, "steps_per_epoch": 2, "warmup_epochs": 0, "init_images": 8, "init_batch_size": 8,
                     "optimizer": "adamw", "lr": 1e-3, "ros_gap": 0.0},
           "output_dir": str(tmp_path / "run")}
    for key, values in sections.items():
        cfg.setdefault(key, {}).update(values)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(path), "--no-progress"]) == 0
    return tmp_path / "run"


def test_a_dinov3_network_in_one_onnx_file_equals_eager_for_every_stitch(tmp_path):
    run = family_run(tmp_path, "vit_small_patch16_dinov3")
    model = from_pretrained(run / "model").eval()
    out = tmp_path / "net.onnx"
    assert main(["export", "--checkpoint", str(run), "--stitch", "all", "--format", "onnx", "--output", str(out),
                 "--no-progress"]) == 0
    session = onnx_session(out)
    x = images(2)
    for sid in model.stitch_ids:
        with torch.no_grad():
            expected = model.select(sid)(x).numpy()
        got = session.run(None, {"images": x.numpy(), "stitch_id": np.array(sid, np.int64)})[0]
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)


def test_depth_on_dinov3_anchors_trains_and_its_taps_skip_the_registers(tmp_path):
    run = family_run(tmp_path, "vit_small_patch16_dinov3", task="depth", train={"epochs": 1},
                     model={"out_indices": [1, 3, 4, 5], "head": {"channels": 8, "max_depth": 25.0,
                                                                   "reassemble_channels": [8, 8, 16, 16]}})
    model = from_pretrained(run / "model").eval()
    assert [r["stitch_id"] for r in map(json.loads, (run / "results.jsonl").read_text().splitlines())] \
        == model.stitch_ids
    x = images(2)
    with torch.no_grad():
        maps = model.select(7).backbone.forward_intermediates(x, return_prefix_tokens=True)
        assert [(tuple(m.shape), tuple(p.shape)) for m, p in maps] == [((2, 48, 4, 4), (2, 5, 48))] * 4
        out = tmp_path / "s7.onnx"
        assert main(["export", "--checkpoint", str(run), "--stitch", "7", "--format", "onnx", "--output", str(out),
                     "--no-progress"]) == 0
        np.testing.assert_allclose(onnx_session(out).run(None, {"images": x.numpy()})[0], model.select(7)(x).numpy(),
                                   rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["eva02", "dinov3", "siglip"])
def test_local_weights_of_a_family_load_through_its_filter(tmp_path, family):
    """A safetensors file and a torch file (weights only, nested under "model" as training scripts save them) of
    an anchor load into the anchor its config builds, through the family's key filter."""
    name, small, _ = FAMILY_PAIRS[family]
    source = build(name, 3, **small)
    kwargs = dict(img_size=IMG, patch_size=8, num_classes=10, **small)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(tmp_path / "a.safetensors"))
    torch.save({"model": state}, tmp_path / "a.pth")
    x = images(2)
    for path in (tmp_path / "a.safetensors", tmp_path / "a.pth"):
        anchor = create_anchor(AnchorConfig(name, checkpoint_path=str(path), kwargs=kwargs)).eval()
        with torch.no_grad():
            torch.testing.assert_close(anchor(x), source(x), rtol=0, atol=0)


def test_a_depth_model_takes_images_that_are_no_multiple_of_its_patches(tmp_path):
    """NYUv2's 480x640 under 14-pixel patches: the model runs at the nearest multiple (here 8-pixel patches: 36x44 ->
    40x48) and answers at the input's size: its head's prediction on the resized image, resized back."""
    run = family_run(tmp_path, "vit_small_patch16_dinov3", task="depth",
                     model={"out_indices": [1, 3, 4, 5],
                            "head": {"channels": 8, "reassemble_channels": [8, 8, 16, 16]}})
    model = from_pretrained(run / "model").eval()
    assert fit_to_patches((36, 44), (8, 8)) == (40, 48) and fit_to_patches((480, 640), (14, 14)) == (476, 644)
    assert fit_to_patches((3, 20), (8, 8)) == (8, 24)
    x = torch.randn(2, 3, 36, 44, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model.select(7)(x)
        resized = torch.nn.functional.interpolate(x, size=(40, 48), mode="bilinear", align_corners=False)
        taps = model.features(resized, return_prefix_tokens=True)
        depth = model.decode_head([(f, prefix[:, 0]) for f, prefix in taps]).clamp(model.min_depth, model.max_depth)
        expected = torch.nn.functional.interpolate(depth, size=(36, 44), mode="bilinear", align_corners=False)
        assert out.shape == (2, 1, 36, 44)
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        torch.testing.assert_close(model.deployable(7)(x), out, rtol=1e-5, atol=1e-5)


def test_a_family_name_registered_twice_is_refused():
    other = type("OtherEva", (EvaFamily,), {})
    with pytest.raises(SNNetError, match="^anchor family 'eva' is registered twice: EvaFamily and OtherEva$"):
        register_family(other)
    assert register_family(EvaFamily) is EvaFamily and FAMILIES.count(EvaFamily) == 1  # the same class: a no-op


def test_a_relative_position_bias_is_the_vit_familys_only():
    config = AnchorConfig("vit_small_patch16_dinov3", rel_pos_bias=True,
                          kwargs=dict(img_size=IMG, patch_size=8, **SMALL))
    with pytest.raises(SNNetError, match=r"^anchor 'vit_small_patch16_dinov3' is of the eva family: rel_pos_bias adds "
                                         r"a relative position bias to the vit family's attention only "
                                         r"\(set rel_pos_bias: false\)$"):
        create_anchor(config)


@pytest.mark.parametrize("name", ["vit_small_patch14_reg4_dinov2.lvd142m", "vit_small_patch16_dinov3.lvd1689m",
                                  "eva02_tiny_patch14_224.mim_in22k", "vit_base_patch16_siglip_224.webli"])
def test_timms_pretrained_names_load_from_the_hub_cache_offline(tmp_path, monkeypatch, name):
    """``pretrained: true`` goes through timm's own loading (its hub download, read from the Hugging Face cache
    offline, and its key filter): weights of a tiny anchor of that architecture put where a download leaves them."""
    kwargs = dict(num_classes=0, **SMALL)  # at the architecture's own input size and patch size
    torch.manual_seed(4)
    source = timm.create_model(name.split(".")[0], **kwargs).eval()
    snapshot = tmp_path / "cache" / f"models--timm--{name}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(snapshot / "model.safetensors"))
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    assert huggingface_hub.constants.HF_HUB_OFFLINE
    anchor = create_anchor(AnchorConfig(name, pretrained=True, kwargs=kwargs)).eval()
    x = torch.randn(2, 3, *source.patch_embed.img_size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(anchor(x), source(x), rtol=0, atol=0)


def test_depth_on_siglip_anchors_reads_taps_without_a_class_token(tmp_path):
    """SigLIP has no class token: DPT reads its taps as they are (readout "ignore"), one readout linear fewer per
    tap in the parameters and FLOPs; the model trains, evaluates and exports."""
    head = {"channels": 8, "max_depth": 25.0, "reassemble_channels": [8, 8, 16, 16]}
    run = family_run(tmp_path, "vit_base_patch16_siglip_224", task="depth", train={"epochs": 1},
                     model={"out_indices": [1, 3, 4, 5], "head": head})
    model = from_pretrained(run / "model").eval()
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == model.stitch_ids and all(np.isfinite(r["rmse"]) for r in rows)
    dpt = model.decode_head
    assert dpt.readout is False and all(r.readout is None for r in dpt.reassemble)
    with_readout = DPTHead(dpt.widths, dpt.channels, dpt.min_depth, dpt.reassemble_channels)
    grid = (IMG // 8, IMG // 8)
    grids = [grid] * 4
    readouts = 4 * (2 * 48 * 48 + 48)  # a Linear(2C, C) per tap, C = 48
    assert sum(p.numel() for p in with_readout.parameters()) - sum(p.numel() for p in dpt.parameters()) == readouts
    assert with_readout.flops(grids) - dpt.flops(grids) == 4 * grid[0] * grid[1] * 2 * 48 * 48
    x, sid = images(2), model.stitch_ids[-1]
    out = tmp_path / "stitch.onnx"
    assert main(["export", "--checkpoint", str(run), "--stitch", str(sid), "--format", "onnx", "--output", str(out),
                 "--no-progress"]) == 0
    with torch.no_grad():
        np.testing.assert_allclose(onnx_session(out).run(None, {"images": x.numpy()})[0],
                                   model.select(sid)(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["eva02", "siglip"])
@pytest.mark.parametrize("task, model", [
    ("segmentation", {"out_indices": [1, 3, 4, 5], "head": {"channels": 8}}),
    ("detection", {"out_indices": [5], "head": {"channels": 8, "roi_channels": 8, "detections": 10}}),
])
def test_segmentation_and_detection_train_on_each_family(tmp_path, family, task, model):
    """Both tasks train and evaluate on EVA02 and SigLIP anchors; a detection stitch's ONNX file gives the model's
    detections (its position table resized once to the square the images are padded to: TorchScript's ONNX
    exporter cannot write timm's antialiased resize)."""
    from snnet.export import export_stitch
    from snnet.runtime import OnnxStitch

    data = {"input_size": 64} if task == "detection" else {}  # the task's default is 1024
    run = family_run(tmp_path, FAMILY_PAIRS[family][0], task=task, model=model, data=data)
    net = from_pretrained(run / "model").eval()
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == net.stitch_ids
    if task == "detection":
        net.detector.roi_heads.score_thresh = 0.0  # every detection kept, to compare them all
        torch.manual_seed(1)
        pictures = [torch.randn(3, 64, 64), torch.randn(3, 48, 80)]  # the second fitted and padded inside
        sid = net.stitch_ids[-1]
        with torch.no_grad():
            expected = net.select(sid)(pictures)
        # exported at an upload's size, as the demo's int8 answer does: the backbone still sees the 64x64 square
        path = export_stitch(net, sid, "onnx", tmp_path / "d.onnx", (48, 80))[0]
        for got, exp in zip(OnnxStitch(path)(pictures), expected):
            assert got["boxes"].shape == exp["boxes"].shape == (10, 4) and torch.equal(got["labels"], exp["labels"])
            for key in ("boxes", "scores", "masks"):
                torch.testing.assert_close(got[key], exp[key], atol=1e-4, rtol=0)


def test_fixing_a_stitch_to_one_input_size_takes_positive_sizes_only():
    """``StitchNet.fix_position``: a resized position table equal to the one the stitch computes per call, and a
    size that is no (height, width) in positive pixels one line."""
    name, small, large = FAMILY_PAIRS["siglip"]
    model = SNNet([build(name, 1, dynamic_img_size=True, **small), build(name, 2, dynamic_img_size=True, **large)])
    model.eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        expected = model.select(3)(x)
        net = model.deployable(3).fix_position((48, 48))
        assert tuple(net.embed.pos_embed.shape) == (1, 36, 32)  # the small anchor's table, on the 6x6 grid
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)
    for size in ((0, 32), (-8, 8), (32,), (32.0, 32), (True, 32)):
        with pytest.raises(SNNetError) as e:
            model.deployable(3).fix_position(size)
        assert str(e.value) == f"img_size must be (height, width) in positive pixels, got {tuple(size)}"
