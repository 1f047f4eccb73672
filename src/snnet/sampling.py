"""Resource-constrained sampling (ROS): which stitch each training step trains (SPEC section 5)."""
from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from .errors import SNNetError
from .selection import is_number


def ros_groups(flops: dict[int, int], gap_gflops: float) -> list[list[int]]:
    """Group stitches by FLOPs: walking them in ascending order, a stitch more than ``gap_gflops``
    away from the first stitch of the current group starts a new group. Ids ascend in each group."""
    if not is_number(gap_gflops) or gap_gflops < 0:
        raise SNNetError(f"the ROS gap must be a number of GFLOPs >= 0, got {gap_gflops!r}")
    bad = next(((sid, f) for sid, f in flops.items() if not is_number(f) or f < 0), None)
    if bad is not None:
        raise SNNetError(f"FLOPs of stitch {bad[0]!r} is {bad[1]!r}, not a count")
    groups: list[list[int]] = []
    first = 0.0
    for sid, f in sorted(flops.items(), key=lambda kv: (kv[1], kv[0])):
        g = f / 1e9
        if not groups or abs(g - first) > gap_gflops:
            groups.append([])
            first = g
        groups[-1].append(sid)
    return [sorted(g) for g in groups]


def group_probabilities(num_groups: int, k: float | None = None) -> list[float]:
    """Uniform over groups, or ``∝ i/k + 1/G`` for group ``i`` of ``G`` (ascending FLOPs) when ``k`` is set."""
    if k is None:
        return [1.0 / num_groups] * num_groups
    w = [i / k + 1.0 / num_groups for i in range(num_groups)]
    total = sum(w)
    return [x / total for x in w]


class ROSSampler:
    """Draws a FLOPs group, then a stitch uniformly inside it, from its own seeded generator.

    With ``anchor_share`` each of the ``anchors`` is trained on at least that share of the steps: a step first
    picks one of them with probability ``len(anchors) * anchor_share``, and runs ROS otherwise (each anchor alone
    is one stitch of its group, so with many groups ROS alone gives it little)."""

    def __init__(self, groups: list[list[int]], k: float | None = None, seed: int = 0,
                 anchors: Sequence[int] = (), anchor_share: float = 0.0) -> None:
        if not groups or not all(groups):
            raise SNNetError("ROS needs at least one non-empty group")
        if k is not None and not (is_number(k) and k > 0):
            raise SNNetError(f"the ROS k must be a number > 0 (or None: groups drawn uniformly), got {k!r}")
        if not is_number(anchor_share):
            raise SNNetError(f"anchor share must be a number, got {anchor_share!r}")
        if anchor_share < 0 or len(anchors) * anchor_share > 1:
            raise SNNetError(f"anchor share {anchor_share} for {len(anchors)} anchors is not a share of the steps "
                             f"(0 to {1 / max(len(anchors), 1):g})")
        self.groups = [list(g) for g in groups]
        self.k = k
        self.probs = group_probabilities(len(groups), k)
        self.anchors, self.anchor_share = list(anchors), anchor_share
        self.rng = random.Random(seed)

    @classmethod
    def from_flops(cls, flops: dict[int, int], gap_gflops: float, k: float | None = None, seed: int = 0,
                   anchors: Sequence[int] = (), anchor_share: float = 0.0) -> "ROSSampler":
        return cls(ros_groups(flops, gap_gflops), k, seed, anchors, anchor_share)

    def sample(self) -> int:
        # no extra draw without a share: the ROS stream stays the reference's
        if self.anchor_share and self.rng.random() < len(self.anchors) * self.anchor_share:
            return self.rng.choice(self.anchors)
        group = self.rng.choices(self.groups, weights=self.probs)[0]
        return self.rng.choice(group)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
