"""SN-Net (CVPR 2023, SPEC section 13) over three anchors: its space's ids, FLOPs and params against its published
table; the network's least-squares start; its released checkpoint format against a forward written from it."""
import argparse
import json
from pathlib import Path

import pytest
import timm
import torch
import yaml
from helpers import IMG, anchor_flops, tiny_vit
from reference_impl import sn_net_logits
from torch import nn

from snnet import SNNet, SNNetError, init_stitching_layers, load_official_checkpoint
from snnet.anchors import anchor_shape
from snnet.cli import main
from snnet.flops import stitch_flops
from snnet.stitch_space import LayerRef, Segment, paired_positions, sn_net_space

TABLE = Path(__file__).parent / "data" / "sn_net_deit_ti_s_b.jsonl"  # its results/stitches_res.txt


def test_paired_positions_of_twelve_blocks():
    positions = paired_positions(12)
    assert len(positions) == 34 and len({layer for _, _, layer in positions}) == 11
    assert positions[:7] == [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (1, 2, 1), (2, 1, 1), (2, 2, 1)]
    assert positions[-3:] == [(10, 11, 10), (11, 10, 10), (11, 11, 10)]


def test_ids_and_routes():
    space = sn_net_space((12, 12, 12))
    assert [s.id for s in space] == list(range(71))
    assert [s.kind for s in space[:3]] == ["anchor"] * 3 and all(s.final_norm for s in space[:3])
    assert space[3].segments == (Segment(0, 0, 0), Segment(1, 0, 11)) and space[3].layers == (LayerRef("SL", 0, 0),)
    assert space[4].describe() == "A[0-0] -AB0-> B[1-11]"
    assert space[37].describe() == "B[0-0] -BC0-> C[0-11]" and space[70].describe() == "B[0-11] -BC10-> C[11-11]"
    assert not any(s.final_norm for s in space[3:])


def test_flops_equal_the_published_deit_ti_s_b_table():
    shapes = [anchor_shape(timm.create_model(f"deit_{size}_patch16_224", device="meta"))
              for size in ("tiny", "small", "base")]
    published = {r["cfg_id"]: r["flops"] for r in map(json.loads, TABLE.read_text().splitlines())}
    mine = {s.id: stitch_flops(s, shapes) for s in sn_net_space([s.depth for s in shapes])}
    assert mine == published  # 71 of 71
    assert [mine[a] for a in range(3)] == [anchor_flops(s) for s in shapes]


def test_unequal_depths_are_refused():
    with pytest.raises(ValueError, match="equal depth, got 12, 24"):
        sn_net_space((12, 24))


# ---- the network: SNNet(version="sn-net") -------------------------------------------------------------------
def test_network_params_and_flops_equal_the_published_table():
    anchors = [timm.create_model(f"deit_{size}_patch16_224", device="meta") for size in ("base", "tiny", "small")]
    model = SNNet(anchors, version="sn-net")
    rows = {r["cfg_id"]: r for r in map(json.loads, TABLE.read_text().splitlines())}
    assert model.stitch_ids == sorted(rows) and model.widths == (192, 384, 768)
    assert {i: model.params(i) for i in model.stitch_ids} == {i: r["params"] for i, r in rows.items()}  # 71 of 71
    assert model.flops_table() == {i: r["flops"] for i, r in rows.items()}
    assert len(model.backbone.sl_layers) == 2 * 11 and len(model.backbone.ls_layers) == 0
    assert model.sampler.groups == [model.stitch_ids]  # uniform over all 71, as SN-Net trains


def deit(depth, width, heads, seed):
    return tiny_vit(depth, width, heads=heads, arch="deit_tiny_patch16_224", seed=seed)


DEPTH, HEADS = 3, (2, 2, 3)


@pytest.fixture
def three():
    return [deit(DEPTH, w, h, seed) for w, h, seed in zip((32, 40, 48), HEADS, (1, 2, 3))]


def test_least_squares_is_the_mean_of_the_fits_of_each_layers_positions(three):
    model = SNNet(three, version="sn-net").eval()
    torch.manual_seed(5)
    images = torch.randn(8, 3, IMG, IMG)  # 8 x 17 token rows: more than any layer has inputs
    assert init_stitching_layers(model, [images], progress=False) == 8
    with torch.no_grad():
        outs = []  # per anchor: embedding, then every block's output, as token rows
        for a, anchor in enumerate(model.backbone.anchors):
            h = model.backbone.embed(images, a)
            outs.append([h])
            for blk in anchor.blocks:
                h = blk(h)
                outs[a].append(h)
        rows = lambda t: t.reshape(-1, t.shape[-1]).double()
        for p in range(2):
            for layer in range(2):
                fits = []
                for j, k, l in paired_positions(DEPTH):
                    if l == layer:
                        x, y = rows(outs[p][j + 1]), rows(outs[p + 1][k])  # front block j, end block k - 1
                        xa = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
                        fits.append(torch.linalg.pinv(xa) @ y)
                sol = torch.stack(fits).mean(0)
                got = model.backbone.sl_layers[p * 2 + layer]
                torch.testing.assert_close(got.weight.double(), sol[:-1].T, rtol=0, atol=1e-4)
                torch.testing.assert_close(got.bias.double(), sol[-1], rtol=0, atol=1e-4)


def released_sn_net(tmp_path, anchors) -> tuple[Path, dict]:
    """``snnet_deit.pth`` as SN-Net's training script writes it: DeiT's ``save_on_master`` dict of the model (anchors
    and ``stitch_layers.{pair}.{layer}.transform``), optimizer, scheduler, epoch, scaler and args."""
    class Stitching(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.transform = nn.Linear(cin, cout)

    class Reference(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchors = nn.ModuleList(anchors)
            widths = [a.embed_dim for a in anchors]
            self.stitch_layers = nn.ModuleList(nn.ModuleList(Stitching(widths[p], widths[p + 1]) for _ in range(2))
                                               for p in range(2))

    net = Reference()
    torch.manual_seed(9)
    with torch.no_grad():
        for layer in net.stitch_layers.parameters():
            layer.normal_(0, 0.1)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    net.anchors[0](torch.randn(2, 3, IMG, IMG)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 10)
    path = tmp_path / "snnet_deit.pth"
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "lr_scheduler": scheduler.state_dict(),
                "epoch": 299, "scaler": torch.amp.GradScaler("cpu").state_dict(),
                "args": argparse.Namespace(model="deit_small_patch16_224", anchors=["tiny", "small", "base"],
                                           lr=5e-4, epochs=300)}, path)
    return path, {k: v.clone() for k, v in net.state_dict().items()}


def test_released_checkpoint_reproduces_every_id(tmp_path, three, images):
    path, sd = released_sn_net(tmp_path, three)
    fresh = SNNet([deit(DEPTH, w, h, seed + 10) for w, h, seed in zip((32, 40, 48), HEADS, (1, 2, 3))],
                  version="sn-net").eval()
    load_official_checkpoint(fresh, path)
    assert len(fresh.stitch_ids) == 3 + 2 * len(paired_positions(DEPTH))
    with torch.no_grad():
        for sid in fresh.stitch_ids:
            expected = sn_net_logits(sd, sid, images, DEPTH, HEADS)
            torch.testing.assert_close(fresh.select(sid)(images), expected, rtol=0, atol=1e-5)


def test_every_id_exports_equal_and_round_trips(tmp_path, three, images):
    model = SNNet(three, version="sn-net").eval()
    init_stitching_layers(model, [torch.randn(4, 3, IMG, IMG)], progress=False)
    model.save_pretrained(tmp_path / "m")
    again = SNNet.from_pretrained(tmp_path / "m").eval()
    assert again.config.version == "sn-net" and again.stitch_ids == model.stitch_ids
    with torch.no_grad():
        for sid in model.stitch_ids:
            expected = model.select(sid)(images)
            torch.testing.assert_close(again.select(sid)(images), expected, rtol=0, atol=0)
            torch.testing.assert_close(model.deployable(sid)(images), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(SNNetError, match="SN-Net's networks .* classify only"):
        model.forward_intermediates(images)


def test_snnet_eval_reads_the_released_checkpoint(tmp_path, three, capsys):
    path, sd = released_sn_net(tmp_path, three)
    anchors = [{"name": "deit_tiny_patch16_224", "kwargs": {"img_size": IMG, "patch_size": 8, "embed_dim": w,
                                                             "depth": DEPTH, "num_heads": h, "num_classes": 10}}
               for w, h in zip((32, 40, 48), HEADS)]
    config = tmp_path / "sn_net.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"anchors": anchors, "version": "sn-net"},
        "data": {"dataset": "shapes", "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
                 "shapes": {"image_size": IMG, "num_classes": 10, "num_train": 8, "num_val": 8}},
        "output_dir": str(tmp_path / "run")}))
    assert main(["eval", "--config", str(config), "--checkpoint", str(path), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == list(range(17))
    assert rows[3]["route"] == "A[0-0] -AB0-> B[0-2]" and rows[3]["kind"] == "SL"
    # the same weights saved as snnet's own files evaluate to the same table
    model = SNNet([deit(DEPTH, w, h, 0) for w, h in zip((32, 40, 48), HEADS)], version="sn-net")
    load_official_checkpoint(model, path)
    model.save_pretrained(tmp_path / "ours")
    assert main(["eval", "--config", str(config), "--checkpoint", str(tmp_path / "ours"), "--output-dir",
                 str(tmp_path / "again"), "--no-progress"]) == 0
    again = [json.loads(line) for line in (tmp_path / "again" / "results.jsonl").read_text().splitlines()]
    assert [(r["acc1"], r["loss"], r["params"]) for r in again] == [(r["acc1"], r["loss"], r["params"]) for r in rows]
    assert len({r["loss"] for r in rows}) > 1  # the ids differ


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.update({"stitch_layers.0.2.transform.weight": sd["stitch_layers.0.1.transform.weight"]}),
     "the checkpoint has stitch_layers.0.2.transform.weight, but the model's SN-Net network has 2 anchor pairs of 2 "
     "stitching layers (stitch_layers.0..1.0..1)"),
    (lambda sd: sd.update({"stitch_layers.2.0.transform.bias": sd["stitch_layers.1.0.transform.bias"]}),
     "the checkpoint has stitch_layers.2.0.transform.bias, but the model's SN-Net network has 2 anchor pairs"),
    (lambda sd: sd.update({k.replace("stitch_layers.0.", "stitch_layers."): sd.pop(k) for k in list(sd)
                           if k.startswith("stitch_layers.0.")}),
     "the checkpoint's stitch_layers.0.transform.weight is the SN-Netv2 code base's layout (stitch_layers.K), not "
     "SN-Net's (stitch_layers.PAIR.K): load it into a model.version v1 or v2 network"),
])
def test_a_released_file_of_another_layout_is_one_line(tmp_path, three, edit, message):
    """A layer the network has no place for is refused, not renamed into the next pair's layers."""
    path, sd = released_sn_net(tmp_path, three)
    edit(sd)
    torch.save({"model": sd}, path)
    fresh = SNNet([deit(DEPTH, w, h, seed) for w, h, seed in zip((32, 40, 48), HEADS, (1, 2, 3))], version="sn-net")
    with pytest.raises(SNNetError) as e:
        load_official_checkpoint(fresh, path)
    assert message in str(e.value) and "\n" not in str(e.value)
