"""Choosing stitches to deploy from per-stitch results: the Pareto frontier and budgets. Pure."""
from __future__ import annotations

import math
from numbers import Real

from .errors import SNNetError


def is_number(value: object) -> bool:
    """A finite real number (bools, NaN and infinities are not)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_numbers(table: dict, what: str) -> None:
    bad = next(((k, v) for k, v in table.items() if not is_number(v)), None)
    if bad is not None:
        raise SNNetError(f"{what} of stitch {bad[0]!r} is {bad[1]!r}, not a finite number")


def pareto_frontier(flops: dict[int, int], metric: dict[int, float], higher_is_better: bool = True) -> list[int]:
    """Stitches no other stitch beats on both FLOPs and metric, by ascending FLOPs.

    Only stitches present in both tables count. Along the result, FLOPs and metric both rise
    (or the metric falls when ``higher_is_better`` is False).
    """
    _check_numbers(flops, "FLOPs")
    _check_numbers(metric, "metric")
    sign = 1.0 if higher_is_better else -1.0
    ids = sorted((i for i in metric if i in flops), key=lambda i: (flops[i], -sign * metric[i], i))
    frontier: list[int] = []
    best = float("-inf")
    for i in ids:
        score = sign * metric[i]
        if score > best:  # at equal FLOPs the best metric comes first, so ties never enter twice
            frontier.append(i)
            best = score
    return frontier


def best_under_budget(flops: dict[int, int], metric: dict[int, float], max_flops: float,
                      higher_is_better: bool = True) -> int | None:
    """The stitch with the best metric among those with at most ``max_flops``; None if none fits.
    Ties go to fewer FLOPs, then the lower id."""
    _check_numbers(flops, "FLOPs")
    _check_numbers(metric, "metric")
    if not is_number(max_flops):
        raise SNNetError(f"the FLOPs budget is {max_flops!r}, not a finite number")
    sign = 1.0 if higher_is_better else -1.0
    fits = [i for i in metric if i in flops and flops[i] <= max_flops]
    if not fits:
        return None
    return min(fits, key=lambda i: (-sign * metric[i], flops[i], i))
