"""Evaluating many stitches at once by sharing their routes' common prefixes.

The routes of a set of stitches form a tree of steps (embedding -> blocks -> stitching layers -> blocks):
SL(i) for every i share the small anchor's first blocks, LSL(j, i) share large blocks 0..j, and so on.
Run in depth-first order (routes sorted by their steps), each stitch resumes from the deepest activation
it shares with the stitches before it, so every tree node is computed once per input. Only activations at
branch points of the current path are kept: memory is bounded by the tree's depth, not its size.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .stitch_space import Step, Stitch, route_steps

if TYPE_CHECKING:  # pure Python: the FLOPs count the same tree without torch
    from torch import Tensor


def depth_first(stitches: Iterable[Stitch]) -> list[Stitch]:
    """The stitches in depth-first order of the route tree (a route comes before its extensions)."""
    return sorted(stitches, key=route_steps)


def tree_nodes(stitches: Iterable[Stitch]) -> set[tuple[Step, ...]]:
    """Every distinct route prefix: the steps a prefix-shared walk runs once per input."""
    return {steps[:k + 1] for s in stitches for steps in [route_steps(s)] for k in range(len(steps))}


def kept_depths(stitches: Iterable[Stitch]) -> dict[tuple[Step, ...], frozenset[int]]:
    """For each route, the steps after which a depth-first walk keeps the activation: the branch points,
    where another route leaves this one (or ends, with this one going on)."""
    routes = [route_steps(s) for s in stitches]
    nexts: dict[tuple[Step, ...], set[Step]] = {}
    ends = Counter(routes)
    for steps in routes:
        for k in range(len(steps) - 1):
            nexts.setdefault(steps[:k + 1], set()).add(steps[k + 1])
    return {steps: frozenset(k for k in range(len(steps) - 1)
                             if len(nexts[steps[:k + 1]]) + ends[steps[:k + 1]] >= 2)
            for steps in routes}


@dataclass
class _Walk:
    """The current path of the walk for one input: its steps and the activations kept along it."""

    x: Tensor
    key: tuple
    path: tuple[Step, ...] = ()
    stack: list[tuple[int, Tensor, tuple]] = field(default_factory=list)  # (depth, tokens, taps so far)


class PrefixCache:
    """The activations a depth-first walk over ``stitches`` keeps, for each distinct input it has seen.

    ``resume`` tells a route where to start; ``keep`` offers it each activation it computes. An input is
    matched by value (equal tensors), so tasks that re-create their inputs per stitch (sliding windows,
    flips, detection's resizing) still share; ``clear`` between batches frees everything.
    """

    def __init__(self, stitches: Iterable[Stitch]) -> None:
        self.kept = kept_depths(stitches)
        self.walks: list[_Walk] = []
        self.peak_kept = 0  # most activations held at once, over all inputs

    def clear(self) -> None:
        self.walks = []

    def _walk(self, x: Tensor, context: tuple) -> _Walk:
        key = (x.shape, x.dtype, x.device, *context)
        for w in self.walks:
            if w.key == key and w.x.equal(x):
                return w
        w = _Walk(x.detach().clone(), key)
        self.walks.append(w)
        return w

    def resume(self, x: Tensor, steps: tuple[Step, ...], context: tuple[Any, ...] = ()) -> tuple[_Walk, int, Tensor, list]:
        """(walk, first step to run, its input, taps so far) for the route ``steps`` on ``x``; routes share
        only with routes run on an equal input in an equal ``context`` (what else decides the arithmetic)."""
        w = self._walk(x, context)
        shared = 0
        for a, b in zip(w.path, steps):
            if a != b:
                break
            shared += 1
        while w.stack and w.stack[-1][0] >= shared:  # the walk left that branch
            w.stack.pop()
        w.path = steps
        if not w.stack:
            return w, 0, x, []
        depth, tokens, taps = w.stack[-1]
        return w, depth + 1, tokens, list(taps)

    def keep(self, w: _Walk, depth: int, tokens: Tensor, taps: list) -> None:
        """Hold the activation after step ``depth`` of the walk's route if a later route resumes from it."""
        if depth in self.kept.get(w.path, ()):
            w.stack.append((depth, tokens, tuple(taps)))
            self.peak_kept = max(self.peak_kept, sum(len(v.stack) for v in self.walks))
