"""Choosing stitches to deploy from per-stitch results: the Pareto frontier and budgets. Pure."""
from __future__ import annotations

import math
from numbers import Integral, Real

from .errors import SNNetError


def is_number(value: object) -> bool:
    """A finite real number (bools, NaN and infinities are not)."""
    return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: object) -> bool:
    """An integer (bools are not)."""
    return isinstance(value, Integral) and not isinstance(value, bool)


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


class ChoosesStitches:
    """The frontier and budget verbs of a model with a ``flops_table()`` (every task model)."""

    def flops_table(self) -> dict[int, int]:
        raise NotImplementedError

    def pareto_frontier(self, metric: dict[int, float], higher_is_better: bool = True) -> list[int]:
        """Stitches on the accuracy (or any metric) vs FLOPs frontier, by ascending FLOPs."""
        return pareto_frontier(self.flops_table(), metric, higher_is_better)

    def best_under_budget(self, metric: dict[int, float], max_flops: float, higher_is_better: bool = True) -> int | None:
        """Best stitch by ``metric`` with at most ``max_flops`` FLOPs (None when nothing fits)."""
        return best_under_budget(self.flops_table(), metric, max_flops, higher_is_better)


PRECISIONS = ("fp32", "int8")
IDENTITY_COLUMNS = ("stitch_id", "kind", "route", "flops", "gflops", "params", "params_m")  # not measurements


def precision_rows(rows: list[dict], metric: str, precision: str = "fp32") -> list[dict]:
    """The candidates of a results table at ``precision`` (fp32, int8 or any): a row per (stitch, precision) the
    table measured, each marked with its ``precision``. An int8 row holds the stitch's identity and its
    ``<column>@int8`` figures under their plain names (``acc1``, ``latency_ms``, ...): no float32 figure stands on
    it. Under ``any`` a float32 row's latency is its ONNX Runtime time (``latency_onnx_ms``), so both precisions are
    timed by one runtime; a float32 row without one has no latency there (timed in PyTorch, it compares with
    nothing the int8 files measured)."""
    if precision not in (*PRECISIONS, "any"):
        raise SNNetError(f"unknown precision {precision!r}: expected fp32, int8 or any")
    out = []
    if precision in ("fp32", "any"):
        for r in rows:
            out.append(dict(r, precision="fp32"))
            if precision == "any":
                out[-1].pop("latency_ms", None)
                if "latency_onnx_ms" in r:
                    out[-1]["latency_ms"] = r["latency_onnx_ms"]
    if precision in ("int8", "any"):
        for r in rows:
            if f"{metric}@int8" in r:
                q = {k: r[k] for k in IDENTITY_COLUMNS if k in r}
                q.update({k.removesuffix("@int8"): v for k, v in r.items() if k.endswith("@int8")})
                out.append(dict(q, precision="int8"))
        if not any(r["precision"] == "int8" for r in out):
            raise SNNetError(f"the results have no {metric}@int8: evaluate int8 files first "
                             f"(snnet eval --quantize int8)")
    return out


def choose_stitch(rows: list[dict], metric: str, higher_is_better: bool = True, max_gflops: float | None = None,
                  max_latency_ms: float | None = None) -> dict:
    """The results row with the best ``metric`` under a GFLOPs or a latency budget (exactly one is given); rows
    may hold a stitch more than once (at several precisions: ``precision_rows``)."""
    if (max_gflops is None) == (max_latency_ms is None):
        raise SNNetError("give one budget: a GFLOPs or a latency budget")
    by_id = dict(enumerate(rows))  # ties go to the earlier row: the lower id, fp32 before int8
    if max_gflops is not None:
        cost, budget, unit, key = {i: r["flops"] for i, r in by_id.items()}, max_gflops * 1e9, "GFLOPs", "gflops"
    else:
        if not is_number(max_latency_ms):
            raise SNNetError(f"the latency budget is {max_latency_ms!r}, not a finite number")
        timed = {i: r["latency_ms"] for i, r in by_id.items() if "latency_ms" in r}
        if not timed:
            if all(r.get("precision") == "int8" for r in rows):
                raise SNNetError("the results have no latency_ms@int8: run `snnet profile --onnx --quantize int8` on "
                                 "the run first")
            raise SNNetError("the results have no latency_ms: run `snnet profile` on the run first")
        cost, budget, unit, key = timed, max_latency_ms, "ms", "latency_ms"
    best = best_under_budget(cost, {i: r[metric] for i, r in by_id.items()}, budget, higher_is_better)
    if best is None:
        cheapest = min(by_id[i][key] for i in cost)
        raise SNNetError(f"no stitch fits {budget if unit == 'ms' else max_gflops} {unit} "
                         f"(the cheapest needs {cheapest:.3f})")
    return by_id[best]


def is_stitchable(model: object) -> bool:
    """A task model over a stitched backbone (the loop then does the least-squares start and ROS)."""
    return isinstance(model, ChoosesStitches)
