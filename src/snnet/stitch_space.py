"""Where stitches are enumerated: the SN-Netv2 two-way space (over two anchors, or a chain of any number) and the
SN-Netv1 baseline.

Pure functions on block counts, no torch. Ids and order follow the reference implementation
(SPEC section 2); anchor 0 is the small anchor (depth ``d0``), anchor 1 the large one (``d1``). Over a chain of
anchors 0..N-1 (small to large) the same rules hold between neighbours (docs/anchors.md: the chain rule).
"""
from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence
from typing import NamedTuple

from .errors import SNNetError

SMALL, LARGE = 0, 1


def anchor_names(n: int) -> tuple[str, ...]:
    """How routes name anchors: S and L for two, A, B, C, ... (smallest first) for a chain."""
    if n == 2:
        return ("S", "L")
    if not 2 <= n <= 26:
        raise SNNetError(f"a stitchable network takes 2 to 26 anchors, got {n}")
    return tuple(chr(ord("A") + a) for a in range(n))


@dataclass(frozen=True)
class Segment:
    """Blocks ``first..last`` (inclusive) of one anchor."""

    anchor: int
    first: int
    last: int

    def describe(self, names: tuple[str, ...] = ("S", "L")) -> str:
        return f"{names[self.anchor]}[{self.first}-{self.last}]"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class LayerRef:
    """A stitching layer between neighbours ``pair`` and ``pair + 1`` of the chain: ``direction`` "SL" (up, to the
    larger anchor) or "LS" (down), and its index (the boundary it sits at, minus one)."""

    direction: str
    index: int
    pair: int = 0

    @property
    def source(self) -> int:
        return self.pair if self.direction == "SL" else self.pair + 1

    @property
    def target(self) -> int:
        return self.pair + 1 if self.direction == "SL" else self.pair

    def describe(self, names: tuple[str, ...] | None = None) -> str:
        """``SL3`` between two anchors; between chain anchors the letters of both ends, e.g. ``BC3`` (``names``:
        the network's, ``anchor_names``; default S, L for the first pair, the chain's letters beyond it)."""
        names = names or (("S", "L") if self.pair == 0 else anchor_names(self.pair + 2))
        return f"{names[self.source]}{names[self.target]}{self.index}"

    def __str__(self) -> str:
        return self.describe()


@dataclass(frozen=True)
class Stitch:
    """One configuration: segments run in order, ``layers[k]`` sits between segment k and k+1."""

    id: int
    kind: str
    segments: tuple[Segment, ...]
    layers: tuple[LayerRef, ...] = ()
    names: tuple[str, ...] = ("S", "L")  # of the network's anchors, smallest first (``anchor_names``)
    # the route ends in its last anchor's final norm before the head (SN-Net's stitched routes skip it: SPEC 13)
    final_norm: bool = True

    @property
    def first_anchor(self) -> int:
        return self.segments[0].anchor

    @property
    def last_anchor(self) -> int:
        return self.segments[-1].anchor

    def describe(self) -> str:
        """Readable route, e.g. ``S[0-3] -SL3-> L[8-23]`` (over a chain ``A[0-3] -AB3-> B[4-11]``)."""
        parts = [self.segments[0].describe(self.names)]
        for layer, seg in zip(self.layers, self.segments[1:]):
            parts.append(f"-{layer.describe(self.names)}-> {seg.describe(self.names)}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "segments": [[s.anchor, s.first, s.last] for s in self.segments],
            "layers": [[l.direction, l.index] + ([l.pair] if len(self.names) > 2 else []) for l in self.layers],
            "route": self.describe(),
        }


class Step(NamedTuple):
    """One operation of a route: ``("embed", anchor, 0)``, ``("block", anchor, b)`` or ``("layer", "SL"|"LS", i,
    pair)``."""

    kind: str
    part: int | str  # the anchor, or a stitching layer's direction
    index: int
    pair: int = 0  # a stitching layer's neighbour pair


def route_steps(stitch: Stitch) -> tuple[Step, ...]:
    """The operations a stitch's route runs, in order: embedding, blocks, and a stitching layer at each switch."""
    steps = [Step("embed", stitch.first_anchor, 0)]
    for k, seg in enumerate(stitch.segments):
        steps += [Step("block", seg.anchor, b) for b in range(seg.first, seg.last + 1)]
        if k < len(stitch.layers):
            layer = stitch.layers[k]
            steps.append(Step("layer", layer.direction, layer.index, layer.pair))
    return tuple(steps)


def check_depths(d0: int, d1: int) -> int:
    """Validate a depth pair and return the integer ratio ``r = d1 / d0``."""
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in (d0, d1)):
        raise SNNetError(f"depths must be integers, got d0={d0!r}, d1={d1!r}")
    if not 0 < d0 <= d1:
        raise SNNetError(f"depths must satisfy 0 < d0 <= d1, got d0={d0}, d1={d1}")
    if d1 % d0:
        raise SNNetError(f"depth ratio must be an integer, got d1/d0 = {d1}/{d0}")
    return d1 // d0


def ls_sources(d0: int, d1: int) -> list[int]:
    """Large blocks after which an LS stitch may switch to the small anchor.

    The reference keeps odd ``j`` when ``d0 != d1`` and every ``j`` when ``d0 == d1``. Both are the
    case ``r = 1, 2`` of the general rule used here: large blocks ``0..j`` cover whole small blocks,
    i.e. ``(j + 1) % r == 0``; only then does every route see each depth position exactly once.
    """
    r = check_depths(d0, d1)
    return [j for j in range(d1 - 1) if (j + 1) % r == 0]


def num_stitching_layers(d0: int, d1: int, version: str = "v2") -> tuple[int, int]:
    """(number of SL layers, number of LS layers) of a pair (SN-Net's: the layers of its paired positions)."""
    check_depths(d0, d1)
    if version == "sn-net":
        return len({layer for _, _, layer in paired_positions(d0)}), 0
    return d0, (len(ls_sources(d0, d1)) if version == "v2" else 0)


def layer_counts(depths: Sequence[int], version: str = "v2", stages: Sequence[Sequence[int]] | None = None,
                 dense: bool = False) -> list[tuple[int, int]]:
    """(SL layers, LS layers) of each neighbour pair of a network (``stages``: each anchor's stage depths, for
    hierarchical anchors): a layer per boundary of the smallest depth, as between two anchors of that depth; SN-Net's
    paired layers; SN-Net's Swin layers, stage by stage (``dense``: and a tap layer per stage)."""
    if is_hierarchical(stages):
        check_stages(stages, version)
        return [(len(swin_layer_stages(stages, p, dense)), 0) for p in range(len(stages) - 1)]
    return [num_stitching_layers(depths[0], depths[0], version)] * (len(depths) - 1)


def is_hierarchical(stages: Sequence[Sequence[int]] | None) -> bool:
    """Whether anchors of these stage depths are hierarchical (Swin: more than one stage)."""
    return stages is not None and any(len(s) > 1 for s in stages)


def check_stages(stages: Sequence[Sequence[int]], version: str = "sn-net") -> None:
    """Hierarchical anchors (small to large) SN-Net can stitch: version "sn-net", two or more anchors of the same
    number of stages, each stage at least as deep as the smaller anchor's."""
    if version != "sn-net":
        raise SNNetError(f"hierarchical anchors (Swin) are stitched as SN-Net stitches them: set model.version to "
                         f"'sn-net', not {version!r}")
    if len(stages) < 2:
        raise SNNetError(f"a stitchable network needs at least two anchors, got {len(stages)}")
    if len({len(s) for s in stages}) != 1:
        raise SNNetError(f"hierarchical anchors must have the same number of stages, got stage depths "
                         f"{'; '.join(map(str, map(list, stages)))}")
    for a, (lo, hi) in enumerate(zip(stages, stages[1:])):
        if any(f > e for f, e in zip(lo, hi)):
            raise SNNetError(f"stage depths must not decrease along the anchors, got {list(lo)} then {list(hi)} "
                             f"(anchors {a}, {a + 1})")


def stage_positions(front: int, end: int) -> list[tuple[int, int, int]]:
    """SN-Net's stitches inside one Swin stage whose blocks number ``front`` in the front anchor and ``end``
    (>= front) in the end anchor (stitching_swin's ``paired_stitching`` and ``unpaired_stitching``): (front block j,
    end block k, layer), the front anchor running blocks 0..j and the end anchor k..end-1, j < k.

    Equal depths: windows [i, i+1], one position and one layer each. Unequal: end block k maps to front block
    ``floor(k * front / end)`` (nearest interpolation); each front block j pairs with the end blocks mapped to it
    beyond j, and the n-th position takes the layer of the n-th end block's mapping (SN-Net's zip of the two lists:
    layers shared by position)."""
    if front == end:
        return [(i, i + 1, i) for i in range(front - 1)]
    mapped = [k * front // end for k in range(end)]
    pairs = [(j, k) for j in range(front) for k in range(end) if mapped[k] == j and j < k]
    return [(j, k, mapped[n]) for n, (j, k) in enumerate(pairs)]


def stage_layers(front: int, end: int) -> int:
    """Stitching layers SN-Net makes for one stage (some may serve no position): the windows' for equal depths,
    one per front block otherwise."""
    return max(front - 1, 0) if front == end else front


def check_chain(depths: Sequence[int]) -> int:
    """Validate the depths of a chain of anchors (small to large) and return ``G``, the smallest depth: every depth
    an integer multiple of it, in non-decreasing order. Two anchors keep ``check_depths``'s messages."""
    if len(depths) < 2:
        raise SNNetError(f"a stitchable network needs at least two anchors, got {len(depths)}")
    if len(depths) == 2:
        check_depths(*depths)
        return depths[0]
    g = depths[0]
    for a, (d, e) in enumerate(zip(depths, depths[1:])):
        if not 0 < d <= e:
            raise SNNetError(f"anchor depths must not decrease along the chain, got {d} then {e} (anchors {a}, {a + 1})")
    for a, d in enumerate(depths):
        if d % g:
            raise SNNetError(f"anchor {a}'s depth {d} is not a multiple of the smallest depth {g}")
    return g


def boundary_block(depth: int, g: int, k: int) -> int:
    """The last block before boundary ``k`` (1..G) of an anchor of ``depth`` blocks in a chain whose smallest
    depth is ``g``: ``k * depth / g - 1``."""
    return k * depth // g - 1


def all_configurations_v2(*depths: int) -> list[Stitch]:
    """Every v2 configuration over anchors of these depths (small to large) with its id, the excluded ones
    included. Boundary ``k`` (1..G) of anchor ``a`` follows its block ``k * d_a / G - 1``; a route switches
    between neighbours at one boundary, or at two (``k1 < k2``): an excursion to a neighbour and back, or on to
    the next anchor. With two anchors this is the reference's enumeration (SPEC section 2)."""
    g = check_chain(depths)
    names = anchor_names(len(depths))
    out: list[Stitch] = []

    def end(a: int, k: int) -> int:
        return boundary_block(depths[a], g, k)

    def last(a: int) -> int:
        return depths[a] - 1

    def add(kind: str, segments: list[Segment], layers: list[LayerRef]) -> None:
        out.append(Stitch(len(out), kind, tuple(segments), tuple(layers), names))

    def route(anchors: tuple[int, ...], ks: tuple[int, ...]) -> list[Segment]:
        """Segments of a route through ``anchors``, switching at boundaries ``ks``."""
        starts = [0] + [end(a, k) + 1 for a, k in zip(anchors[1:], ks)]
        ends = [end(a, k) for a, k in zip(anchors, ks)] + [last(anchors[-1])]
        return [Segment(a, f, e) for a, f, e in zip(anchors, starts, ends)]

    for a in range(len(depths)):
        add("anchor", [Segment(a, 0, last(a))], [])
    inner = range(1, g)  # boundaries strictly inside the smallest depth
    for p in range(len(depths) - 1):
        lo, hi = p, p + 1
        up = lambda k: LayerRef("SL", k - 1, p)
        down = lambda k: LayerRef("LS", k - 1, p)
        for k in range(1, g + 1):  # k = G: the small anchor whole, then the large head (excluded)
            add("SL", route((lo, hi), (k,)), [up(k)])
        for k in inner:
            add("LS", route((hi, lo), (k,)), [down(k)])
        for k1 in inner:
            for k2 in range(k1 + 1, g):
                add("LSL", route((hi, lo, hi), (k1, k2)), [down(k1), up(k2)])
        for k1 in inner:
            for k2 in range(k1 + 1, g):
                add("SLS", route((lo, hi, lo), (k1, k2)), [up(k1), down(k2)])
    for p in range(len(depths) - 2):
        for kind, anchors, direction in (("SML", (p, p + 1, p + 2), "SL"), ("LMS", (p + 2, p + 1, p), "LS")):
            pairs = (p, p + 1) if direction == "SL" else (p + 1, p)
            for k1 in inner:
                for k2 in range(k1 + 1, g):
                    add(kind, route(anchors, (k1, k2)),
                        [LayerRef(direction, k1 - 1, pairs[0]), LayerRef(direction, k2 - 1, pairs[1])])
    return out


def excluded_id_v2(d0: int) -> int:
    """Id of SL(d0-1): the small anchor feeding the large head through one projection."""
    return 2 + (d0 - 1)


VERSIONS = ("v1", "v2", "sn-net")  # the SN-Netv2 baseline, SN-Netv2, SN-Net (CVPR 2023)


def network_space(depths: Sequence[int], version: str = "v2",
                  stages: Sequence[Sequence[int]] | None = None) -> tuple[Stitch, ...]:
    """The stitches of a network over anchors of these depths (small to large): SN-Netv2's (over two anchors, or a
    chain), its v1 baseline's (two anchors) or SN-Net's (``stages``: each anchor's stage depths; hierarchical
    anchors take SN-Net's Swin space)."""
    if is_hierarchical(stages):
        return swin_space(stages, version)
    if version == "sn-net":
        return sn_net_space(depths)
    if version == "v1" and len(depths) != 2:
        raise SNNetError(f"the SN-Net v1 baseline stitches two anchors, got {len(depths)}")
    return stitch_space(*depths, version) if len(depths) == 2 else chain_space(depths)


def stitch_space(d0: int, d1: int, version: str = "v2") -> tuple[Stitch, ...]:
    """The trained and evaluated stitches, in reference id order.

    v2: all configurations except SL(d0-1). v1 (SN-Net baseline): id 0 = the large anchor,
    ids 1..d0 = SL(0..d0-1).
    """
    if version == "v2":
        return chain_space((d0, d1))
    if version == "v1":
        r = check_depths(d0, d1)
        stitches = [Stitch(0, "anchor", (Segment(LARGE, 0, d1 - 1),))]
        for i in range(d0):
            stitches.append(Stitch(i + 1, "SL", (Segment(SMALL, 0, i), Segment(LARGE, (i + 1) * r, d1 - 1)),
                                   (LayerRef("SL", i),)))
        return tuple(stitches)
    raise SNNetError(f"unknown stitch space version {version!r}: expected 'v1' or 'v2' (or network_space's 'sn-net')")


def chain_space(depths: Sequence[int]) -> tuple[Stitch, ...]:
    """The v2 stitches over anchors of these depths (small to large): every configuration but each neighbour pair's
    SL at the last boundary (its larger anchor runs no block: id ``excluded_id_v2`` for two anchors). Ids keep
    their enumeration positions, so they have one gap per pair."""
    return tuple(s for s in all_configurations_v2(*depths) if s.segments[-1].first <= s.segments[-1].last)


def paired_positions(depth: int) -> list[tuple[int, int, int]]:
    """SN-Net's paired stitching for two anchors of equal ``depth`` (SPEC section 13): (front block j, end block k,
    layer) for sliding windows [i, i+1], each window adding the (j, k) of its blocks not seen before and, when it
    adds any, one new layer: 34 positions on 11 layers for 12 blocks."""
    seen: set[tuple[int, int]] = set()
    out = []
    for i in range(depth):
        window = [b for b in (i, i + 1) if b < depth]
        new = [(j, k) for j in window for k in window if (j, k) not in seen]
        layer = len({l for _, _, l in out})
        seen.update(new)
        out += [(j, k, layer) for j, k in new]
    return out


def sn_net_space(depths: Sequence[int]) -> tuple[Stitch, ...]:
    """SN-Net's space (CVPR 2023, SPEC section 13) over anchors of equal depth, cheapest first: ids 0..N-1 the
    anchors, then per neighbour pair (cheaper in front) its paired positions in window order. A stitched route
    runs the front anchor's blocks 0..j, the pair's layer, the end anchor's blocks k..d-1 and its head without
    its final norm."""
    if len(depths) < 2:
        raise SNNetError(f"a stitchable network needs at least two anchors, got {len(depths)}")
    if len(set(depths)) != 1:
        raise SNNetError(f"SN-Net's paired stitching takes anchors of equal depth, got {', '.join(map(str, depths))}")
    d, names = depths[0], anchor_names(len(depths))
    out = [Stitch(a, "anchor", (Segment(a, 0, d - 1),), (), names) for a in range(len(depths))]
    for p in range(len(depths) - 1):
        for j, k, layer in paired_positions(d):
            out.append(Stitch(len(out), "SL", (Segment(p, 0, j), Segment(p + 1, k, d - 1)),
                              (LayerRef("SL", layer, p),), names, final_norm=False))
    return tuple(out)


def stage_offsets(stages: Sequence[int]) -> list[int]:
    """The global index of each stage's first block in an anchor of these stage depths."""
    return [sum(stages[:s]) for s in range(len(stages))]


def _swin_positions(stages: Sequence[Sequence[int]]) -> list[tuple[int, int, int, int, int]]:
    """(stage, pair, front block, end block, layer) of every SN-Net Swin stitch, in its id order; blocks are the
    anchors' global indices, layers numbered per pair across stages."""
    out = []
    used = [0] * (len(stages) - 1)  # per pair: layers of the stages before
    for s in range(len(stages[0]) - 1):  # SN-Net stitches no block of the last stage
        for p in range(len(stages) - 1):
            f, e = stages[p][s], stages[p + 1][s]
            lo, hi = stage_offsets(stages[p])[s], stage_offsets(stages[p + 1])[s]
            out += [(s, p, lo + j, hi + k, used[p] + layer) for j, k, layer in stage_positions(f, e)]
            used[p] += stage_layers(f, e)
    return out


def swin_layer_stages(stages: Sequence[Sequence[int]], pair: int, dense: bool = False) -> list[int]:
    """The stage of each SN-Net Swin stitching layer of neighbour pair ``pair``, in layer order; ``dense``: then
    one tap layer per stage, which brings the front anchor's stage end to the end anchor's width (not SN-Net's: it
    stitches for classification only)."""
    lo, hi = stages[pair], stages[pair + 1]
    sn_net = [s for s in range(len(lo) - 1) for _ in range(stage_layers(lo[s], hi[s]))]
    return sn_net + (list(range(len(lo))) if dense else [])


def stage_ends(stages: Sequence[int]) -> list[int]:
    """The last block of each stage of an anchor of these stage depths."""
    return [first + depth - 1 for first, depth in zip(stage_offsets(stages), stages)]


def swin_space(stages: Sequence[Sequence[int]], version: str = "sn-net") -> tuple[Stitch, ...]:
    """SN-Net's space over Swin anchors of these stage depths (small to large; stitching_swin's
    ``get_stitch_configs``): ids 0..N-1 the anchors, then stage by stage (the last excepted), neighbour pair by
    pair, the stage's positions. A route runs the front anchor to its block j, the pair's layer, then the end anchor
    from block k to its final norm and head. 41 stitches for Swin-T/S/B."""
    check_stages(stages, version)
    names = anchor_names(len(stages))
    totals = [sum(s) for s in stages]
    out = [Stitch(a, "anchor", (Segment(a, 0, totals[a] - 1),), (), names) for a in range(len(stages))]
    for _, p, j, k, layer in _swin_positions(stages):
        out.append(Stitch(len(out), "SL", (Segment(p, 0, j), Segment(p + 1, k, totals[p + 1] - 1)),
                          (LayerRef("SL", layer, p),), names))
    return tuple(out)


def route_taps(stitch: Stitch, out_indices: tuple[int, ...], *depths: int,
               stages: Sequence[Sequence[int]] | None = None) -> list[tuple[int, int]]:
    """(anchor, block) pairs that give a stitch's dense features, one per index in ``out_indices`` (blocks of the
    largest anchor; ``depths``: every anchor's, small to large).

    Index ``t`` is a depth position; the segment covering it supplies the tap: block ``t * d_a / d_last`` of its
    anchor ``a`` (two anchors: large block ``t`` itself, or small block ``floor(t * d0 / d1)``, SPEC section 6).
    Hierarchical anchors (``stages``: each anchor's stage depths) tap stage ends: ``t`` ends stage ``s`` of the
    largest anchor, and the first segment covering its anchor's end of stage ``s`` supplies the tap.
    """
    top = depths[-1]
    ends = [stage_ends(s) for s in stages] if is_hierarchical(stages) else None
    taps = []
    for t in sorted(out_indices):
        for seg in stitch.segments:
            b = ends[seg.anchor][ends[-1].index(t)] if ends else t * depths[seg.anchor] // top
            if seg.first <= b <= seg.last:
                taps.append((seg.anchor, b))
                break
    return taps


def tap_layers(anchor: int, block: int, *depths: int,
               stages: Sequence[Sequence[int]] | None = None) -> tuple[LayerRef, ...]:
    """The SL layers that bring a tap of ``anchor``'s ``block`` to the largest anchor's width, in order: those of
    the boundary right after the block, up the chain (two anchors: small block ``b`` through SL layer ``b``).
    Hierarchical anchors (``stages``): each pair's tap layer of the stage ``block`` ends (``swin_layer_stages``)."""
    if is_hierarchical(stages):
        s = stage_ends(stages[anchor]).index(block)
        return tuple(LayerRef("SL", len(swin_layer_stages(stages, p)) + s, p) for p in range(anchor, len(stages) - 1))
    g = depths[0]
    index = block * g // depths[anchor]  # the block lies before boundary index + 1
    return tuple(LayerRef("SL", index, p) for p in range(anchor, len(depths) - 1))


def layer_fits(depths: Sequence[int], version: str = "v2", stages: Sequence[Sequence[int]] | None = None,
               dense: bool = False) -> list[tuple[LayerRef, tuple[int, int], tuple[int, int]]]:
    """(layer, (anchor, block) whose output it maps, (anchor, block) whose output it is fitted to) for every
    stitching layer of a chain, pair by pair, SL layers first: a layer at boundary ``k`` maps between the two
    anchors' blocks before that boundary (SPEC section 3 for two anchors). SN-Net's layers have one fit per
    position they serve, front block ``j`` to end block ``k - 1`` (block -1: the embedding), to be averaged
    (SPEC section 13; its Swin layers likewise, ``stages`` given; ``dense``: each tap layer from the front anchor's
    stage end to the end anchor's)."""
    if is_hierarchical(stages):
        check_stages(stages, version)
        fits = [(LayerRef("SL", layer, p), (p, j), (p + 1, k - 1)) for _, p, j, k, layer in _swin_positions(stages)]
        ends = [stage_ends(s) for s in stages]
        taps = [(tap_layers(p, ends[p][s], stages=stages)[0], (p, ends[p][s]), (p + 1, ends[p + 1][s]))
                for p in range(len(stages) - 1) if dense for s in range(len(stages[p]))]
        return fits + taps
    if version == "sn-net":
        sn_net_space(depths)  # checks the depths
        return [(LayerRef("SL", layer, p), (p, j), (p + 1, k - 1))
                for p in range(len(depths) - 1) for j, k, layer in paired_positions(depths[0])]
    g = check_chain(depths)
    fits = []
    for p in range(len(depths) - 1):
        at = lambda a, k: (a, boundary_block(depths[a], g, k))
        fits += [(LayerRef("SL", k - 1, p), at(p, k), at(p + 1, k)) for k in range(1, g + 1)]
        if version == "v2":
            fits += [(LayerRef("LS", k - 1, p), at(p + 1, k), at(p, k)) for k in range(1, g)]
    return fits
