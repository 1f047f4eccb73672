"""Choosing stitches to deploy from per-stitch results: the Pareto frontier and budgets. Pure."""
from __future__ import annotations


def pareto_frontier(flops: dict[int, int], metric: dict[int, float], higher_is_better: bool = True) -> list[int]:
    """Stitches no other stitch beats on both FLOPs and metric, by ascending FLOPs.

    Only stitches present in both tables count. Along the result, FLOPs and metric both rise
    (or the metric falls when ``higher_is_better`` is False).
    """
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
    sign = 1.0 if higher_is_better else -1.0
    fits = [i for i in metric if i in flops and flops[i] <= max_flops]
    if not fits:
        return None
    return min(fits, key=lambda i: (-sign * metric[i], flops[i], i))
