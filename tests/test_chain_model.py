"""SNNet over three and four anchors (issue 20): every route equal to the anchors' modules run by hand, FLOPs and
parameters by rule, least squares per neighbour pair, save/load and export; bad chains as one-line errors."""
import pytest
import torch
from conftest import tiny_vit

from snnet import SNNet, SNNetError
from snnet.export import deployable
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
        for layer in [*model.sl_layers, *model.ls_layers]:
            for p in layer.parameters():
                p.normal_(0, 0.05)
    return model


def by_hand(model: SNNet, stitch, x: torch.Tensor) -> torch.Tensor:
    """The route's modules called one by one: first anchor's embedding, blocks, merged stitching layers, last
    anchor's norm and head."""
    h = None
    for step in route_steps(stitch):
        if step.kind == "embed":
            a = model.anchors[step.part]
            h = a._pos_embed(a.patch_embed(x))
            h = a.norm_pre(a.patch_drop(h))
        elif step.kind == "block":
            h = model.anchors[step.part].blocks[step.index](h)
        else:
            ref = LayerRef(step.part, step.index, step.pair)
            layer = model.stitching_layer(ref)
            assert (layer.in_features, layer.out_features) == (model.widths[ref.source], model.widths[ref.target])
            h = layer(h)
    last = model.anchors[stitch.last_anchor]
    return last.forward_head(last.norm(h))


@pytest.mark.parametrize("spec", [THREE, FOUR])
def test_every_route_equals_its_modules_run_by_hand(spec, images):
    model = chain(spec)
    assert [a.embed_dim for a in model.anchors] == [w for _, w, _ in spec]
    assert model.stitches == chain_space([d for d, _, _ in spec])
    with torch.no_grad():
        for s in model.stitches:
            torch.testing.assert_close(model.select(s.id)(images), by_hand(model, s, images), rtol=0, atol=0)


def test_layers_per_pair_flops_and_params():
    model = chain(THREE)
    g = 3
    assert len(model.sl_layers) == 2 * g and len(model.ls_layers) == 2 * (g - 1)
    assert [(l.in_features, l.out_features) for l in model.sl_layers] == [(32, 48)] * g + [(48, 64)] * g
    assert model.flops_table() == {s.id: stitch_flops(s, model.shapes) for s in model.stitches}
    up = next(s for s in model.stitches if s.kind == "SML")
    a, b, c = model.anchors
    blocks = lambda anchor, seg: sum(p.numel() for i in range(seg.first, seg.last + 1)
                                     for p in anchor.blocks[i].parameters())
    layers = sum(model.stitching_layer(r).in_features * model.stitching_layer(r).out_features
                 + model.stitching_layer(r).out_features for r in up.layers)
    embed = sum(p.numel() for n, p in a.named_parameters() if n.split(".")[0] in ("patch_embed", "cls_token",
                                                                                    "pos_embed"))
    tail = sum(p.numel() for n, p in c.named_parameters() if n.split(".")[0] in ("norm", "head"))
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
        for a, anchor in enumerate(model.anchors):
            h, per_block = model.embed(images, a), []
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
            got = model.stitching_layer(ref)(x.float()).double()
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-3)


def test_save_load_and_export_round_trip(tmp_path, images):
    model = chain(FOUR)
    model.save_pretrained(tmp_path / "m")
    again = SNNet.from_pretrained(tmp_path / "m").eval()
    assert again.stitch_ids == model.stitch_ids and len(again.anchors) == 4
    with torch.no_grad():
        for kind in ("anchor", "SL", "LS", "LSL", "SLS", "SML", "LMS"):
            s = next(s for s in model.stitches if s.kind == kind)
            expected = model.select(s.id)(images)
            torch.testing.assert_close(again.select(s.id)(images), expected, rtol=0, atol=0)
            torch.testing.assert_close(deployable(model, s.id)(images), expected, rtol=1e-5, atol=1e-6)


def test_bad_chains_and_dense_taps_are_one_line_errors():
    with pytest.raises(SNNetError, match="at least two anchors, got 1"):
        SNNet([tiny_vit(2, 32)])
    with pytest.raises(SNNetError, match="depth ratio 3/2 is not an integer"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(3, 48)])
    with pytest.raises(SNNetError, match="patch sizes differ"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(4, 48, patch_size=4)])
    with pytest.raises(SNNetError, match="v1 baseline stitches two anchors, got 3"):
        SNNet([tiny_vit(2, 32), tiny_vit(2, 40), tiny_vit(4, 48)], version="v1")
    model = chain(THREE)
    with pytest.raises(SNNetError, match="dense taps over 3 anchors are not supported yet"):
        model.forward_features(torch.zeros(1, 3, 32, 32))


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
