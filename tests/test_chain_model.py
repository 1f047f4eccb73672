"""SNNet over three and four anchors (issue 20): every route equal to the anchors' modules run by hand, FLOPs and
parameters by rule, least squares per neighbour pair, save/load and export; bad chains as one-line errors."""
import pytest
import torch
from helpers import tiny_vit

from snnet import SNNet, SNNetError
from snnet.flops import stitch_flops
from snnet.stitch_space import LayerRef, chain_space, route_steps

# G = 3: two inner boundaries, so every kind of route occurs
THREE = [(3, 32, 2), (3, 48, 3), (6, 64, 4)]
FOUR = [(3, 32, 2), (3, 40, 2), (6, 48, 3), (6, 64, 4)]


def chain(spec, seed: int = 0, **kw) -> SNNet:
    anchors = [tiny_vit(d, w, heads=h, seed=seed + i) for i, (d, w, h) in enumerate(spec)]
    torch.manual_seed(seed)
    model = SNNet(anchors[::-1], lora_rank=2, **kw).eval()  # given large first: ordered by depth, then width
    with torch.no_grad():
        for layer in [*model.backbone.sl_layers, *model.backbone.ls_layers]:
            for p in layer.parameters():
                p.normal_(0, 0.05)
    return model


def run_by_hand(model: SNNet, stitch, x: torch.Tensor, out_indices=()) -> tuple[torch.Tensor, dict]:
    """The route's modules called one by one: first anchor's embedding, blocks, merged stitching layers. Returns
    the last tokens and, per depth position ``t`` in ``out_indices`` (blocks of the largest anchor), the output of
    the route's block at that position (block ``t * d_a / d_last`` of anchor ``a``) taken up the chain by the SL
    layer of the boundary after it in every pair above ``a``."""
    g, top = model.depths[0], model.depths[-1]
    h, feats = None, {}
    for step in route_steps(stitch):
        if step.kind == "embed":
            a = model.backbone.anchors[step.part]
            h = a._pos_embed(a.patch_embed(x))
            h = a.norm_pre(a.patch_drop(h))
        elif step.kind == "block":
            a, b = step.part, step.index
            h = model.backbone.anchors[a].blocks[b](h)
            for t in out_indices:
                if t * model.depths[a] // top == b:
                    f = h
                    for p in range(a, len(model.backbone.anchors) - 1):
                        f = model.backbone.sl_layers[p * g + b * g // model.depths[a]](f)
                    feats[t] = f
        else:
            ref = LayerRef(step.part, step.index, step.pair)
            layer = model.backbone.stitching_layer(ref)
            assert (layer.in_features, layer.out_features) == (model.widths[ref.source], model.widths[ref.target])
            h = layer(h)
    return h, feats


def by_hand(model: SNNet, stitch, x: torch.Tensor) -> torch.Tensor:
    """``run_by_hand`` then the last anchor's norm and pooling, and its classifier (the model's head)."""
    h, _ = run_by_hand(model, stitch, x)
    last = model.backbone.anchors[stitch.last_anchor]
    return model.heads[stitch.last_anchor](last.forward_head(last.norm(h), pre_logits=True))


@pytest.mark.parametrize("spec", [THREE, FOUR])
def test_every_route_equals_its_modules_run_by_hand(spec, images):
    model = chain(spec)
    assert [a.embed_dim for a in model.backbone.anchors] == [w for _, w, _ in spec]
    assert model.stitches == chain_space([d for d, _, _ in spec])
    with torch.no_grad():
        for s in model.stitches:
            torch.testing.assert_close(model.select(s.id)(images), by_hand(model, s, images), rtol=0, atol=0)


def test_layers_per_pair_flops_and_params():
    model = chain(THREE)
    g = 3
    assert len(model.backbone.sl_layers) == 2 * g and len(model.backbone.ls_layers) == 2 * (g - 1)
    assert [(l.in_features, l.out_features) for l in model.backbone.sl_layers] == [(32, 48)] * g + [(48, 64)] * g
    assert model.flops_table() == {s.id: stitch_flops(s, model.shapes) for s in model.stitches}
    up = next(s for s in model.stitches if s.kind == "SML")
    a, b, c = model.backbone.anchors
    blocks = lambda anchor, seg: sum(p.numel() for i in range(seg.first, seg.last + 1)
                                     for p in anchor.blocks[i].parameters())
    layers = sum(model.backbone.stitching_layer(r).in_features * model.backbone.stitching_layer(r).out_features
                 + model.backbone.stitching_layer(r).out_features for r in up.layers)
    embed = sum(p.numel() for n, p in a.named_parameters() if n.split(".")[0] in ("patch_embed", "cls_token",
                                                                                    "pos_embed"))
    tail = sum(p.numel() for n, p in c.named_parameters() if n.split(".")[0] == "norm")
    tail += sum(p.numel() for p in model.heads[2].parameters())
    assert model.params(up.id) == embed + blocks(a, up.segments[0]) + blocks(b, up.segments[1]) + \
        blocks(c, up.segments[2]) + layers + tail


def test_least_squares_fits_each_pair_between_its_boundary_blocks():
    """Each layer equals the least-squares map (with bias) from its source anchor's block before its boundary to
    its target anchor's block before it, all anchors run once on the same images."""
    from snnet.least_squares import init_stitching_layers

    model = chain(THREE)
    torch.manual_seed(5)
    images = torch.randn(8, 3, 32, 32)  # 8 x 17 tokens: more rows than any layer has inputs
    assert init_stitching_layers(model, [images], progress=False) == 8
    with torch.no_grad():
        outs = []
        for a, anchor in enumerate(model.backbone.anchors):
            h, per_block = model.backbone.embed(images, a), []
            for blk in anchor.blocks:
                h = blk(h)
                per_block.append(h.reshape(-1, h.shape[-1]).double())
            outs.append(per_block)
        refs = sorted({r for s in model.stitches for r in s.layers}, key=lambda r: (r.pair, r.direction, r.index))
        assert len(refs) == 2 * (2 + 2)  # per pair: SL and LS at the two inner boundaries
        for ref in refs:
            k = ref.index + 1
            x = outs[ref.source][k * model.depths[ref.source] // 3 - 1]
            y = outs[ref.target][k * model.depths[ref.target] // 3 - 1]
            xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            expected = xa @ torch.linalg.lstsq(xa, y).solution
            got = model.backbone.stitching_layer(ref)(x.float()).double()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("spec, out", [(THREE, (1, 2, 4, 5)), (FOUR, (0, 3, 5))])
def test_dense_taps_reach_the_largest_width_up_the_chain(spec, out, images):
    """Every route's taps equal the hand-run rule; FLOPs add one projection per pair a tap climbs; a segmentation
    model over the chain exports every kind of stitch with equal logits."""
    from snnet.flops import head_flops
    from snnet.tasks.segmentation import SegmentationModel

    model = chain(spec, out_indices=out)
    tokens = 17  # 4 x 4 patches and the class token
    with torch.no_grad():
        for s in model.stitches:
            _, feats = run_by_hand(model, s, images, out)
            assert sorted(feats) == list(out), s.id  # every depth position is run by exactly one block
            maps = model.select(s.id).forward_intermediates(images)
            for t, m in zip(out, maps):
                expected = feats[t][:, 1:].reshape(3, 4, 4, -1).permute(0, 3, 1, 2)
                torch.testing.assert_close(m, expected, rtol=0, atol=0)
            projections = sum(tokens * model.widths[p] * model.widths[p + 1]
                              for seg in s.segments for t in out
                              if seg.first <= t * model.depths[seg.anchor] // model.depths[-1] <= seg.last
                              for p in range(seg.anchor, len(spec) - 1))
            last = model.shapes[s.last_anchor]
            assert model.backbone.flops(s.id, taps=True) == model.flops(s.id) - head_flops(last, tokens) + projections
    seg = SegmentationModel(model.backbone, num_classes=5, channels=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for kind in ("anchor", "SL", "LS", "LSL", "SLS", "SML", "LMS"):
            for s in [s for s in model.stitches if s.kind == kind][:3]:
                torch.testing.assert_close(seg.deployable(s.id)(x), seg.select(s.id)(x), rtol=1e-5, atol=1e-5)


def test_save_load_and_export_round_trip(tmp_path, images):
    model = chain(FOUR)
    model.save_pretrained(tmp_path / "m")
    again = SNNet.from_pretrained(tmp_path / "m").eval()
    assert again.stitch_ids == model.stitch_ids and len(again.backbone.anchors) == 4
    with torch.no_grad():
        for kind in ("anchor", "SL", "LS", "LSL", "SLS", "SML", "LMS"):
            s = next(s for s in model.stitches if s.kind == kind)
            expected = model.select(s.id)(images)
            torch.testing.assert_close(again.select(s.id)(images), expected, rtol=0, atol=0)
            torch.testing.assert_close(model.deployable(s.id)(images), expected, rtol=1e-5, atol=1e-6)


def test_bad_chains_are_one_line_errors():
    with pytest.raises(SNNetError, match="at least two anchors, got 1"):
        SNNet([tiny_vit(2, 32)])
    with pytest.raises(SNNetError, match="depth ratio 3/2 is not an integer"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(3, 48)])
    with pytest.raises(SNNetError, match="patch sizes differ"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(4, 48, patch_size=4)])
    with pytest.raises(SNNetError, match="v1 baseline stitches two anchors, got 3"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(4, 48)], version="v1")
    with pytest.raises(SNNetError, match="equal depth, got 2, 2, 4"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(4, 48)], version="sn-net")


def test_a_three_anchor_config_trains_and_evaluates_through_the_cli(tmp_path, capsys):
    import json

    import yaml

    from snnet.cli import main

    anchors = [{"name": "deit3_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": w,
                                                               "depth": d, "num_heads": 2, "num_classes": 4}}
               for d, w in ((3, 32), (3, 48), (6, 64))]
    config = tmp_path / "three.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"anchors": anchors[::-1], "lora_rank": 2},
        "data": {"dataset": "shapes", "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
                 "shapes": {"image_size": 32, "num_classes": 4, "num_train": 16, "num_val": 8}},
        "train": {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0, "optimizer": "adamw", "init_images": 16,
                  "ros_gap": 0.0005, "ros_anchor_share": 0.1},
        "output_dir": str(tmp_path / "run")}))
    assert main(["flops", "--config", str(config)]) == 0
    assert "17 stitches (v2, classification)" in capsys.readouterr().out  # ids 0..18 less one per pair
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == [s.id for s in chain_space((3, 3, 6))]
    assert {r["kind"] for r in rows} == {"anchor", "SL", "LS", "LSL", "SLS", "SML", "LMS"}
    model = SNNet.from_pretrained(tmp_path / "run" / "model")
    assert model.depths == (3, 3, 6) and model.widths == (32, 48, 64)
    assert main(["eval", "--config", str(tmp_path / "run" / "config.yaml"), "--checkpoint", str(tmp_path / "run"),
                 "--no-progress"]) == 0
    again = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [(r["stitch_id"], r["acc1"]) for r in again] == [(r["stitch_id"], r["acc1"]) for r in rows]
    # deployment over the chain: profile, select by milliseconds, export that stitch, the demo's answer, the card
    sml = next(r["stitch_id"] for r in rows if r["kind"] == "SML")
    assert main(["profile", "--run", str(tmp_path / "run"), "--stitches", f"0,2,{sml}", "--repeats", "2",
                 "--warmup", "0", "--no-progress"]) == 0
    timed = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    budget = max(r["latency_ms"] for r in timed if "latency_ms" in r)
    capsys.readouterr()
    assert main(["select", "--results", str(tmp_path / "run"), "--max-latency-ms", str(budget)]) == 0
    chosen = int(capsys.readouterr().out.splitlines()[2].split()[0])
    assert chosen in (0, 2, sml)
    assert main(["export", "--checkpoint", str(tmp_path / "run"), "--max-latency-ms", str(budget), "--format",
                 "safetensors", "--output", str(tmp_path / "best.safetensors")]) == 0
    from snnet.export import load_exported
    from snnet.demo import DemoRun
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(load_exported(tmp_path / "best.safetensors")(x), model.eval().select(chosen)(x),
                                   rtol=1e-5, atol=1e-6)
    from PIL import Image
    answer = DemoRun(tmp_path / "run").predict(Image.new("RGB", (32, 32), (90, 30, 200)), sml)
    assert len(answer) == 4 and abs(sum(answer.values()) - 1) < 1e-5  # top-5 of 4 classes: all of them
    card = (tmp_path / "run" / "model" / "README.md").read_text()
    assert "over `deit3_small_patch16_224` (depth 3, width 32), `deit3_small_patch16_224` (depth 3, width 48)" in card
    assert "its 3 anchors, each a route through blocks of up to three neighbours" in card


def test_the_three_anchor_quickstart_ships_its_anchors():
    """quickstart_chain: the shipped small, medium and large anchors (scripts/train_quickstart_anchors.py), 83
    stitches over depths 6/6/12, the medium anchor's weights those of its file."""
    from safetensors.torch import load_file

    from snnet.config import PACKAGE_DIR, load_config
    from snnet.tasks import build_model

    model = build_model(load_config("quickstart_chain"), load_weights=True)
    assert model.depths == (6, 6, 12) and model.widths == (48, 72, 96) and len(model.stitch_ids) == 83
    assert {s.kind for s in model.stitches} == {"anchor", "SL", "LS", "LSL", "SLS", "SML", "LMS"}
    shipped = load_file(PACKAGE_DIR / "assets" / "quickstart" / "medium_p8.safetensors")
    own = {**model.backbone.anchors[1].state_dict(), **{f"head.{k}": v for k, v in model.heads[1].state_dict().items()}}
    assert all(torch.equal(own[k], v.float()) for k, v in shipped.items())
