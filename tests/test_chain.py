"""SN-Netv2 over a chain of anchors (issue 20): the stitch space and FLOPs as pure functions, by rule."""
from collections import Counter
from fractions import Fraction

import pytest

from snnet.flops import AnchorShape, block_flops, embed_flops, head_flops, linear_flops, num_tokens, stitch_flops
from snnet.stitch_space import LayerRef, Segment, all_configurations_v2, chain_space, stitch_space

CHAINS = [(12, 12, 24), (4, 4, 8, 8), (2, 4, 6), (3, 6, 6, 12)]


def expected_counts(n: int, g: int) -> Counter:
    """By rule: per neighbour pair G-1 SL and LS routes and C(G-1, 2) excursions each way; per three neighbours
    C(G-1, 2) monotone routes each way."""
    comb2 = (g - 1) * (g - 2) // 2
    return Counter({"anchor": n, "SL": (n - 1) * (g - 1), "LS": (n - 1) * (g - 1), "LSL": (n - 1) * comb2,
                    "SLS": (n - 1) * comb2, "SML": (n - 2) * comb2, "LMS": (n - 2) * comb2})


@pytest.mark.parametrize("depths", CHAINS)
def test_counts_and_ids_by_rule(depths):
    space = chain_space(depths)
    n, g = len(depths), min(depths)
    assert Counter(s.kind for s in space) == +expected_counts(n, g)
    assert [s.segments for s in space[:n]] == [(Segment(a, 0, d - 1),) for a, d in enumerate(depths)]
    # ids are enumeration positions: one gap per pair, where its SL at the last boundary (no large block) was
    every = all_configurations_v2(*depths)
    gaps = sorted(set(range(len(every))) - {s.id for s in space})
    assert len(gaps) == n - 1 and all(every[i].kind == "SL" and every[i].segments[1].first == depths[p + 1]
                                      for p, i in enumerate(gaps))


def test_deit3_s_b_l_has_374_stitches_and_44_layers():
    space = chain_space((12, 12, 24))
    assert len(space) == 377 and sum(s.kind != "anchor" for s in space) == 374
    layers = {layer for s in space for layer in s.layers}
    assert len(layers) == 44
    assert layers == {LayerRef(d, i, p) for d in ("SL", "LS") for i in range(11) for p in (0, 1)}


@pytest.mark.parametrize("depths", CHAINS)
def test_every_route_covers_the_depth_once_and_switches_between_neighbours(depths):
    g = min(depths)
    for s in chain_space(depths):
        assert 1 <= len(s.segments) <= 3 and len(s.layers) == len(s.segments) - 1
        position = Fraction(0)  # depth covered so far, as a share of the whole
        for seg in s.segments:
            assert seg.first <= seg.last
            assert Fraction(seg.first, depths[seg.anchor]) == position  # resumes where the last one stopped
            position = Fraction(seg.last + 1, depths[seg.anchor])
            assert (position * g).denominator == 1 or seg is s.segments[-1]  # switches only at boundaries
        assert position == 1
        for layer, a, b in zip(s.layers, s.segments, s.segments[1:]):
            assert (layer.source, layer.target) == (a.anchor, b.anchor) and abs(a.anchor - b.anchor) == 1
            assert layer.index + 1 == Fraction(a.last + 1, depths[a.anchor]) * g  # the boundary it sits at


def test_two_anchors_are_the_reference_space():
    assert chain_space((12, 24)) == stitch_space(12, 24)
    assert [s.describe() for s in chain_space((12, 24))][:3] == ["S[0-11]", "L[0-23]", "S[0-0] -SL0-> L[2-23]"]


def test_routes_name_chain_anchors_by_letter():
    space = {s.id: s for s in chain_space((12, 12, 24))}
    assert space[3].describe() == "A[0-0] -AB0-> B[1-11]"
    sml = next(s for s in space.values() if s.kind == "SML")
    assert sml.describe() == "A[0-0] -AB0-> B[1-1] -BC1-> C[4-23]"
    assert sml.to_dict()["layers"] == [["SL", 0, 0], ["SL", 1, 1]]
    lms = [s for s in space.values() if s.kind == "LMS"][-1]
    assert lms.describe() == "C[0-19] -CB9-> B[10-10] -BA10-> A[11-11]"


@pytest.mark.parametrize("depths,message", [
    ((12,), "at least two anchors"), ((12, 24, 12), "must not decrease"), ((4, 6, 8), "not a multiple of the smallest"),
    ((5, 12), "depth ratio must be an integer")])
def test_bad_chains_are_one_line_errors(depths, message):
    with pytest.raises(ValueError, match=message):
        chain_space(depths)


def shape(width: int, depth: int) -> AnchorShape:
    return AnchorShape(embed_dim=width, depth=depth, patch_size=(8, 8), img_size=(32, 32), in_chans=3,
                       num_prefix_tokens=1, num_classes=10, block_linear_macs=12 * width * width,
                       block_norm_elements=2 * width, attn_dim=width)


def test_flops_of_three_anchor_routes_by_hand():
    shapes = [shape(32, 3), shape(48, 3), shape(64, 6)]
    space = chain_space([s.depth for s in shapes])
    n = num_tokens(shapes[0])
    a, b, c = (lambda k, i=i: k * block_flops(shapes[i], n) for i in range(3))
    up, down = next(s for s in space if s.kind == "SML"), next(s for s in space if s.kind == "LMS")
    assert up.describe() == "A[0-0] -AB0-> B[1-1] -BC1-> C[4-5]"
    assert stitch_flops(up, shapes) == (embed_flops(shapes[0]) + a(1) + linear_flops(n, 32, 48) + b(1)
                                        + linear_flops(n, 48, 64) + c(2) + head_flops(shapes[2], n))
    assert down.describe() == "C[0-1] -CB0-> B[1-1] -BA1-> A[2-2]"
    assert stitch_flops(down, shapes) == (embed_flops(shapes[2]) + c(2) + linear_flops(n, 64, 48) + b(1)
                                          + linear_flops(n, 48, 32) + a(1) + head_flops(shapes[0], n))


def test_neighbour_pairs_of_a_chain_are_their_two_anchor_spaces_at_its_boundaries():
    """The SL, LS, LSL and SLS routes of each neighbour pair are that pair's own two-anchor space (anchors
    renumbered, in the same order) where its smaller depth is the chain's G; otherwise the routes of that space
    which switch at the chain's G boundaries only. No route jumps over a neighbour."""
    depths = (4, 4, 8, 8)
    space = chain_space(depths)
    for p, (lo, hi) in enumerate(zip(depths, depths[1:])):
        own = [tuple((seg.anchor + p, seg.first, seg.last) for seg in s.segments)
               for s in stitch_space(lo, hi) if s.kind != "anchor"]
        mine = [tuple((seg.anchor, seg.first, seg.last) for seg in s.segments)
                for s in space if s.kind in ("SL", "LS", "LSL", "SLS") and {l.pair for l in s.layers} == {p}]
        if lo == min(depths):
            assert mine == own
        else:
            assert mine == [r for r in own if all((seg[2] + 1) % (lo // min(depths)) == 0 for seg in r[:-1])]
            assert len(mine) < len(own)
    for s in space:
        anchors = [seg.anchor for seg in s.segments]
        assert all(abs(x - y) == 1 for x, y in zip(anchors, anchors[1:]))
