import json
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from helpers import anchor_flops, tiny_vit
from snnet import SNNet
from snnet.anchors import anchor_shape

DATA = Path(__file__).parent / "data"


def meta_pair(small: str, large: str) -> SNNet:
    """Full-size anchors without memory: FLOPs need shapes only."""
    return SNNet([timm.create_model(small, device="meta"), timm.create_model(large, device="meta")])


def test_published_imagenet_table_s_l():
    model = meta_pair("deit3_small_patch16_224", "deit3_large_patch16_224")
    rows = [json.loads(line) for line in (DATA / "imagenet_deit3_s_l.jsonl").read_text().splitlines()]
    assert [r["stitch_id"] for r in rows] == model.stitch_ids
    for r in rows:
        assert model.flops(r["stitch_id"]) == r["flops"], r["stitch_id"]


def test_anchor_flops_of_spec():
    s = anchor_shape(timm.create_model("deit3_small_patch16_224", device="meta"))
    l = anchor_shape(timm.create_model("deit3_large_patch16_224", device="meta"))
    assert anchor_flops(s) == 4_608_338_304
    assert anchor_flops(l) == 61_604_135_936


@pytest.mark.parametrize("pair", [("deit3_small_patch16_224", "deit3_base_patch16_224"),
                                  ("deit3_base_patch16_224", "deit3_large_patch16_224")])
def test_other_published_pairs_are_consistent(pair):
    model = meta_pair(*pair)
    s, l = model.shapes
    table = model.flops_table()
    assert table[0] == anchor_flops(s) and table[1] == anchor_flops(l)
    assert len(table) == 134 and all(table[0] < f < table[1] for i, f in table.items() if i > 1)


def _counted_macs(model: SNNet, x: torch.Tensor) -> int:
    """Multiply-adds as torch's own counter sees them (attention unfused so its matmuls count)."""
    for a in model.backbone.anchors:
        for blk in a.blocks:
            blk.attn.fused_attn = False
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


def _norm_flops(model: SNNet, sid: int, tokens: int) -> int:
    s = model.stitch(sid)
    per_block = sum((seg.last - seg.first + 1) * 2 * model.widths[seg.anchor] for seg in s.segments)
    return 5 * tokens * (per_block + model.widths[s.last_anchor])


@pytest.mark.parametrize("arch", ["deit3_small_patch16_224", "vit_small_patch16_224"])
def test_every_stitch_matches_torch_flop_counter(arch):
    """Any anchor pair: linear/conv/matmul MACs agree with torch's counter, norms add 5 per element."""
    model = SNNet([tiny_vit(2, 32, arch=arch, seed=1), tiny_vit(4, 48, heads=3, arch=arch, seed=2)], lora_rank=2)
    model.merge_lora().eval()  # the convention counts stitching layers merged
    x = torch.randn(1, 3, 32, 32)
    tokens = 17
    for sid in model.stitch_ids:
        model.select(sid)
        assert model.flops(sid) == _counted_macs(model, x) + _norm_flops(model, sid, tokens), sid


def test_flops_at_other_input_size():
    model = SNNet([tiny_vit(2, 32, seed=1), tiny_vit(4, 48, heads=3, seed=2, dynamic_img_size=True)])
    big = model.flops(1, img_size=(64, 64))
    s, l = model.shapes
    assert big == anchor_flops(l, (64, 64)) > model.flops(1)
