"""Where stitches are enumerated: the SN-Netv2 two-way space and the SN-Netv1 baseline.

Pure functions on block counts, no torch. Ids and order follow the reference implementation
(SPEC section 2); anchor 0 is the small anchor (depth ``d0``), anchor 1 the large one (``d1``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

SMALL, LARGE = 0, 1
_ANCHOR_LETTER = {SMALL: "S", LARGE: "L"}
KINDS = ("anchor", "SL", "LS", "LSL", "SLS")


@dataclass(frozen=True)
class Segment:
    """Blocks ``first..last`` (inclusive) of one anchor."""

    anchor: int
    first: int
    last: int

    def __str__(self) -> str:
        return f"{_ANCHOR_LETTER[self.anchor]}[{self.first}-{self.last}]"


@dataclass(frozen=True)
class LayerRef:
    """A stitching layer: ``direction`` "SL" (small -> large width) or "LS", and its index."""

    direction: str
    index: int

    def __str__(self) -> str:
        return f"{self.direction}{self.index}"


@dataclass(frozen=True)
class Stitch:
    """One configuration: segments run in order, ``layers[k]`` sits between segment k and k+1."""

    id: int
    kind: str
    segments: tuple[Segment, ...]
    layers: tuple[LayerRef, ...] = ()

    @property
    def first_anchor(self) -> int:
        return self.segments[0].anchor

    @property
    def last_anchor(self) -> int:
        return self.segments[-1].anchor

    def describe(self) -> str:
        """Readable route, e.g. ``S[0-3] -SL3-> L[8-23]``."""
        parts = [str(self.segments[0])]
        for layer, seg in zip(self.layers, self.segments[1:]):
            parts.append(f"-{layer}-> {seg}")
        return " ".join(parts)

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "segments": [[s.anchor, s.first, s.last] for s in self.segments],
            "layers": [[l.direction, l.index] for l in self.layers],
            "route": self.describe(),
        }


class Step(NamedTuple):
    """One operation of a route: ``("embed", anchor, 0)``, ``("block", anchor, b)`` or ``("layer", "SL"|"LS", i)``."""

    kind: str
    part: int | str  # the anchor, or a stitching layer's direction
    index: int


def route_steps(stitch: Stitch) -> tuple[Step, ...]:
    """The operations a stitch's route runs, in order: embedding, blocks, and a stitching layer at each switch."""
    steps = [Step("embed", stitch.first_anchor, 0)]
    for k, seg in enumerate(stitch.segments):
        steps += [Step("block", seg.anchor, b) for b in range(seg.first, seg.last + 1)]
        if k < len(stitch.layers):
            steps.append(Step("layer", stitch.layers[k].direction, stitch.layers[k].index))
    return tuple(steps)


def small_block(j: int, d0: int, d1: int) -> int:
    """``m(j)``: the small block matching large block ``j`` (nearest-neighbour interpolation)."""
    return j * d0 // d1


def check_depths(d0: int, d1: int) -> int:
    """Validate a depth pair and return the integer ratio ``r = d1 / d0``."""
    if not 0 < d0 <= d1:
        raise ValueError(f"depths must satisfy 0 < d0 <= d1, got d0={d0}, d1={d1}")
    if d1 % d0:
        raise ValueError(f"depth ratio must be an integer, got d1/d0 = {d1}/{d0}")
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
    """(number of SL layers, number of LS layers)."""
    check_depths(d0, d1)
    return d0, (len(ls_sources(d0, d1)) if version == "v2" else 0)


def _sl_parts(i: int, d0: int, d1: int) -> tuple[Segment, LayerRef, int]:
    r = d1 // d0
    return Segment(SMALL, 0, i), LayerRef("SL", i), (i + 1) * r


def all_configurations_v2(d0: int, d1: int) -> list[Stitch]:
    """Every v2 configuration with its reference id, the excluded SL(d0-1) included."""
    r = check_depths(d0, d1)
    last_small, last_large = d0 - 1, d1 - 1
    out: list[Stitch] = []

    def add(kind: str, segments: list[Segment], layers: list[LayerRef]) -> None:
        out.append(Stitch(len(out), kind, tuple(segments), tuple(layers)))

    add("anchor", [Segment(SMALL, 0, last_small)], [])
    add("anchor", [Segment(LARGE, 0, last_large)], [])
    sl = list(range(d0))
    ls = ls_sources(d0, d1)
    for i in sl:
        add("SL", [Segment(SMALL, 0, i), Segment(LARGE, (i + 1) * r, last_large)], [LayerRef("SL", i)])
    for j in ls:
        add("LS", [Segment(LARGE, 0, j), Segment(SMALL, small_block(j, d0, d1) + 1, last_small)],
            [LayerRef("LS", j // r)])
    for j in ls:
        resume = small_block(j, d0, d1) + 1
        for i in sl:
            if i != last_small and i >= resume:
                add("LSL", [Segment(LARGE, 0, j), Segment(SMALL, resume, i), Segment(LARGE, (i + 1) * r, last_large)],
                    [LayerRef("LS", j // r), LayerRef("SL", i)])
    for i in sl:
        for j in ls:
            if j >= (i + 1) * r:
                add("SLS", [Segment(SMALL, 0, i), Segment(LARGE, (i + 1) * r, j),
                            Segment(SMALL, small_block(j, d0, d1) + 1, last_small)],
                    [LayerRef("SL", i), LayerRef("LS", j // r)])
    return out


def excluded_id_v2(d0: int) -> int:
    """Id of SL(d0-1): the small anchor feeding the large head through one projection."""
    return 2 + (d0 - 1)


def stitch_space(d0: int, d1: int, version: str = "v2") -> tuple[Stitch, ...]:
    """The trained and evaluated stitches, in reference id order.

    v2: all configurations except SL(d0-1). v1 (SN-Net baseline): id 0 = the large anchor,
    ids 1..d0 = SL(0..d0-1).
    """
    if version == "v2":
        excluded = excluded_id_v2(d0)
        return tuple(s for s in all_configurations_v2(d0, d1) if s.id != excluded)
    if version == "v1":
        r = check_depths(d0, d1)
        stitches = [Stitch(0, "anchor", (Segment(LARGE, 0, d1 - 1),))]
        for i in range(d0):
            stitches.append(Stitch(i + 1, "SL", (Segment(SMALL, 0, i), Segment(LARGE, (i + 1) * r, d1 - 1)),
                                   (LayerRef("SL", i),)))
        return tuple(stitches)
    raise ValueError(f"unknown stitch space version {version!r}: expected 'v1' or 'v2'")


def route_taps(stitch: Stitch, out_indices: tuple[int, ...], d0: int, d1: int) -> list[tuple[int, int]]:
    """(anchor, block) pairs that give a stitch's dense features, one per large index in ``out_indices``.

    Large index ``t`` is a depth position; the segment covering it supplies the tap: large block
    ``t`` itself, or small block ``t // r`` (= ``floor(t * d0 / d1)``, SPEC section 6).
    """
    r = d1 // d0
    taps = []
    for t in sorted(out_indices):
        for seg in stitch.segments:
            scale = 1 if seg.anchor == LARGE else r
            if seg.first * scale <= t <= (seg.last + 1) * scale - 1:
                taps.append((seg.anchor, t // scale))
                break
    return taps


def fit_pairs(d0: int, d1: int, version: str = "v2") -> list[tuple[LayerRef, int, int]]:
    """(layer, small block, large block) whose outputs each stitching layer is fitted between.

    SL layer i maps small block i to large block (i+1)r-1; LS layer k maps large block (k+1)r-1
    (the ``j`` of LS(j)) back to small block k = m(j) (SPEC section 3).
    """
    r = check_depths(d0, d1)
    n_sl, n_ls = num_stitching_layers(d0, d1, version)
    pairs = [(LayerRef("SL", i), i, (i + 1) * r - 1) for i in range(n_sl)]
    return pairs + [(LayerRef("LS", k), k, (k + 1) * r - 1) for k in range(n_ls)]
