"""SN-Net's own space (CVPR 2023, SPEC section 13) over three anchors: ids and FLOPs against its published table."""
import json
from pathlib import Path

import pytest
import timm

from snnet.anchors import anchor_shape
from snnet.flops import anchor_flops, stitch_flops
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
