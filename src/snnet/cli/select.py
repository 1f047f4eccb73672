"""``snnet select``: The best stitch (or cascade) under a budget, from a run's results."""
from __future__ import annotations

from pathlib import Path

import yaml

from ..cascade import best_cascade, read_cascades
from ..config import DEFAULT_TASK
from ..errors import SNNetError, first_line
from ..results import format_table, frontier, read_results
from ..selection import choose_stitch, is_number, precision_rows
from ..tasks import TASKS
from .options import budget_rows


def run(args) -> int:
    if args.cascade:
        return _select_cascade(args)

    task = results_task(Path(args.results))
    rows, metric, higher = budget_rows(args, args.results, task)
    rows = precision_rows(rows, metric, args.precision)
    note = _untimed(rows, args.precision) if args.max_latency_ms is not None else None
    best = choose_stitch(rows, metric, higher, args.max_gflops, args.max_latency_ms)
    shown = (*TASKS[task].report_metrics, metric, "latency_ms") + (("precision",) if args.precision != "fp32" else ())
    metrics = tuple(dict.fromkeys(k for k in shown if k in best))
    budget = f"{args.max_gflops} GFLOPs" if args.max_gflops is not None else f"{args.max_latency_ms} ms"
    print(f"best stitch under {budget} by {metric} ({'higher' if higher else 'lower'} is better):")
    print(format_table([best], metrics))
    if args.frontier:
        cost, key, limit = (("flops", "gflops", args.max_gflops) if args.max_gflops is not None
                            else ("latency_ms", "latency_ms", args.max_latency_ms))
        print("frontier within the budget:")
        costed = [r for r in rows if cost in r and all(m in r for m in metrics)]
        print(format_table([r for r in frontier(costed, metric, higher, cost) if r[key] <= limit], metrics))
    if note:
        print(note)
    return 0


def _select_cascade(args) -> int:
    if args.max_gflops is None:
        raise SNNetError("a cascade's budget is its mean GFLOPs per image: give --max-gflops (latency varies per "
                         "image)")
    if args.metric not in (None, "acc1") or args.precision != "fp32":
        raise SNNetError("--cascade chooses by acc1 at float32: drop --metric and --precision")
    rows = read_cascades(Path(args.results))
    best = best_cascade(rows, args.max_gflops)
    print(f"best cascade under {args.max_gflops} GFLOPs on average by acc1:")
    print(f"  stitches {best['stitches']}, thresholds {[round(t, 4) for t in best['thresholds']]} "
          f"({best.get('confidence', 'max_prob')})")
    print(f"  {best['gflops']:.4f} GFLOPs per image on average, acc1 {best['acc1']:.2f}"
          + (f", acc5 {best['acc5']:.2f}" if is_number(best.get("acc5")) else "")
          + (f"; exits per stage {', '.join(f'{100 * x:.0f} %' for x in best['exit_share'])}"
             if isinstance(best.get("exit_share"), list) else ""))
    if args.frontier:
        print("cascades within the budget:")
        for r in sorted((r for r in rows if r["gflops"] <= args.max_gflops), key=lambda r: r["gflops"]):
            print(f"  {r['gflops']:8.4f} GFLOPs  acc1 {r['acc1']:6.2f}  stitches {r['stitches']} thresholds "
                  f"{[round(t, 4) for t in r['thresholds']]}")
    return 0


def _untimed(rows: list[dict], precision: str) -> str | None:
    """A latency budget chooses among timed rows only: a note of the rows without a time, or an error when
    ``--precision any`` has no float32 time from the runtime that timed the int8 files."""
    untimed = {p: sum(r["precision"] == p and "latency_ms" not in r for r in rows) for p in ("fp32", "int8")}
    if precision == "any" and untimed["fp32"] == sum(r["precision"] == "fp32" for r in rows):
        raise SNNetError("--precision any compares times of one runtime, and no float32 stitch was timed in ONNX "
                         "Runtime (latency_onnx_ms): run snnet profile --onnx --quantize int8 first")
    left = [f"{n} {p} {'row' if n == 1 else 'rows'}" for p, n in untimed.items() if n]
    if left:
        runtime = " in ONNX Runtime" if precision == "any" else ""
        verb = "has" if sum(untimed.values()) == 1 else "have"
        return f"note: {' and '.join(left)} of the results {verb} no latency{runtime}, left out"
    return None


def results_task(path: Path) -> str:
    """The task a results table belongs to: its run's config.yaml says, else the first task whose primary metric
    is a column (the table is read for that only)."""
    run = path if path.is_dir() else path.parent
    if (run / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SNNetError(f"cannot parse {run / 'config.yaml'}: {first_line(e)}") from None
        if isinstance(saved, dict) and saved.get("task", DEFAULT_TASK) in TASKS:
            return saved.get("task", DEFAULT_TASK)
    columns = read_results(path)[0]
    return next((name for name, t in TASKS.items() if t.primary_metric in columns), DEFAULT_TASK)
