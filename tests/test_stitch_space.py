from collections import Counter

import pytest

from reference_impl import reference_v2_ids

from snnet.stitch_space import (LARGE, SMALL, LayerRef, Segment, all_configurations_v2, excluded_id_v2,
                                layer_fits, ls_sources, num_stitching_layers, route_taps, stitch_space)


@pytest.mark.parametrize("d0,d1", [(12, 24), (12, 12), (6, 12), (4, 8), (3, 3)])
def test_v2_matches_reference_enumeration(d0, d1):
    configs = all_configurations_v2(d0, d1)
    ref = reference_v2_ids(d0, d1)
    assert len(configs) == len(ref)
    for stitch, cfg in zip(configs, ref):
        assert stitch.kind == {"S": "anchor", "L": "anchor"}.get(cfg[0], cfg[0])
        if cfg[0] in ("SL", "LS"):
            (front, resume), = cfg[1:]
            assert stitch.segments[0].last == front and stitch.segments[1].first == resume
        if cfg[0] in ("LSL", "SLS"):
            (f1, r1), (f2, r2) = cfg[1:]
            assert [s.last for s in stitch.segments[:2]] == [f1, f2]
            assert [s.first for s in stitch.segments[1:]] == [r1, r2]


@pytest.mark.parametrize("d0,d1", [(12, 24), (12, 12)])
def test_134_stitches_for_published_pairs(d0, d1):
    space = stitch_space(d0, d1)
    assert len(space) == 134
    assert [s.id for s in space] == [i for i in range(135) if i != 13]
    assert Counter(s.kind for s in space) == {"anchor": 2, "SL": 11, "LS": 11, "LSL": 55, "SLS": 55}
    assert num_stitching_layers(d0, d1) == (12, 11)


def test_exclusion_follows_the_rule_not_block_11():
    assert excluded_id_v2(6) == 7
    ids = [s.id for s in stitch_space(6, 12)]
    assert 7 not in ids and 13 in ids
    excluded = all_configurations_v2(6, 12)[7]
    assert excluded.segments[0] == Segment(SMALL, 0, 5) and excluded.segments[1].first == 12


def test_sl_ls_routes_and_layers():
    space = {s.id: s for s in all_configurations_v2(12, 24)}
    assert space[0].segments == (Segment(SMALL, 0, 11),)
    assert space[1].segments == (Segment(LARGE, 0, 23),)
    assert space[2].describe() == "S[0-0] -SL0-> L[2-23]"
    assert space[14].describe() == "L[0-1] -LS0-> S[1-11]"
    assert space[24].layers == (LayerRef("LS", 10),)
    assert space[25].describe() == "L[0-1] -LS0-> S[1-1] -SL1-> L[4-23]"
    assert space[134].describe() == "S[0-9] -SL9-> L[20-21] -LS10-> S[11-11]"
    d = space[25].to_dict()
    assert d["kind"] == "LSL" and d["segments"] == [[1, 0, 1], [0, 1, 1], [1, 4, 23]]
    assert d["layers"] == [["LS", 0], ["SL", 1]]


def test_v1_space():
    space = stitch_space(12, 24, "v1")
    assert len(space) == 13 and [s.id for s in space] == list(range(13))
    assert space[0].segments == (Segment(LARGE, 0, 23),)
    assert space[12].describe() == "S[0-11] -SL11-> L[24-23]"
    assert num_stitching_layers(12, 24, "v1") == (12, 0)


def test_ls_rule_and_bad_depths():
    assert ls_sources(12, 24) == list(range(1, 23, 2))
    assert ls_sources(12, 12) == list(range(11))
    assert ls_sources(4, 12) == [2, 5, 8]  # large blocks 0..j cover whole small blocks
    with pytest.raises(ValueError, match="integer"):
        stitch_space(5, 12)
    with pytest.raises(ValueError, match="version"):
        stitch_space(12, 24, "v3")


@pytest.mark.parametrize("d0,d1,out", [(12, 24, (9, 14, 19, 23)), (12, 24, (4, 11, 17, 23)), (12, 12, (2, 5, 8, 11)),
                                       (4, 12, (3, 7, 11))])
def test_every_stitch_gives_one_tap_per_index(d0, d1, out):
    for s in stitch_space(d0, d1):
        taps = route_taps(s, out, d0, d1)
        assert len(taps) == len(out)
        for (anchor, block), idx in zip(taps, out):
            assert block == (idx if anchor == LARGE else idx * d0 // d1)  # m(j): SPEC section 3


def test_small_taps_of_published_heads():
    small = [t for t in route_taps(stitch_space(12, 24)[0], (9, 14, 19, 23), 12, 24)]
    assert small == [(SMALL, 4), (SMALL, 7), (SMALL, 9), (SMALL, 11)]
    small = route_taps(stitch_space(12, 24)[0], (4, 11, 17, 23), 12, 24)
    assert [b for _, b in small] == [2, 5, 8, 11]


def test_layer_fits_of_two_anchors():
    """SL layer i maps small block i to large block (i+1)r-1; LS layer k maps large block (k+1)r-1 (the ``j`` of
    LS(j)) back to small block k = m(j) (SPEC section 3)."""
    fits = layer_fits((12, 24))
    assert fits[0] == (LayerRef("SL", 0), (SMALL, 0), (LARGE, 1)) and fits[11] == (LayerRef("SL", 11), (SMALL, 11), (LARGE, 23))
    assert fits[12] == (LayerRef("LS", 0), (LARGE, 1), (SMALL, 0)) and fits[-1] == (LayerRef("LS", 10), (LARGE, 21), (SMALL, 10))
    assert len(layer_fits((12, 24), "v1")) == 12
