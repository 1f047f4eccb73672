"""Per-stitch results: JSONL and CSV files, the frontier table, and the Pareto plot."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ._atomic import atomic_path, atomic_write_text
from .errors import SNNetError
from .selection import pareto_frontier

BASE_COLUMNS = ("stitch_id", "kind", "route", "gflops", "params_m")
KIND_COLORS = {"anchor": "black", "SL": "tab:blue", "LS": "tab:orange", "LSL": "tab:green", "SLS": "tab:red"}


def write_results(run_dir: str | Path, rows: list[dict]) -> tuple[Path, Path]:
    """``results.jsonl`` (a line per stitch) and ``results.csv``, both written atomically."""
    run_dir = Path(run_dir)
    jsonl = run_dir / "results.jsonl"
    atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0].keys()))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(run_dir / "results.csv", buf.getvalue())
    return jsonl, run_dir / "results.csv"


def read_results(path: str | Path) -> list[dict]:
    path = Path(path)
    if path.is_dir():
        path = path / "results.jsonl"
    if not path.is_file():
        raise SNNetError(f"results file not found: {path}")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as e:
        raise SNNetError(f"{path} is not a results.jsonl file (line {e.lineno}: {e.msg})") from None
    if not rows or not all(isinstance(r, dict) and "stitch_id" in r and "flops" in r for r in rows):
        raise SNNetError(f"{path} has no per-stitch rows with stitch_id and flops")
    return rows


def frontier(rows: list[dict], metric: str, higher_is_better: bool = True) -> list[dict]:
    """The rows on the metric-vs-FLOPs Pareto frontier, by ascending FLOPs."""
    if any(metric not in r for r in rows):
        raise SNNetError(f"metric {metric!r} is not in the results (columns: {', '.join(rows[0])})")
    by_id = {r["stitch_id"]: r for r in rows}
    ids = pareto_frontier({i: r["flops"] for i, r in by_id.items()}, {i: r[metric] for i, r in by_id.items()},
                          higher_is_better)
    return [by_id[i] for i in ids]


def format_table(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """A fixed-width table of rows: id, kind, GFLOPs, params, the metrics, the route."""
    header = f"{'id':>4} {'kind':<6} {'GFLOPs':>9} {'params(M)':>9} " + " ".join(f"{m:>8}" for m in metrics) + "  route"
    lines = [header]
    for r in rows:
        vals = " ".join(f"{r[m]:8.2f}" if isinstance(r[m], float) else f"{r[m]:>8}" for m in metrics)
        lines.append(f"{r['stitch_id']:>4} {r['kind']:<6} {r['gflops']:9.3f} {r['params_m']:9.2f} {vals}  {r['route']}")
    return "\n".join(lines)


def plot_pareto(rows: list[dict], path: str | Path, metric: str, higher_is_better: bool = True,
                title: str = "") -> Path:
    """Every stitch as a point (coloured by kind), the frontier as a line, the anchors marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, color in KIND_COLORS.items():
        pts = [r for r in rows if r["kind"] == kind and r["stitch_id"] > 1]
        if pts:
            ax.scatter([r["gflops"] for r in pts], [r[metric] for r in pts], s=14, color=color, alpha=0.7, label=kind)
    front = frontier(rows, metric, higher_is_better)
    ax.plot([r["gflops"] for r in front], [r[metric] for r in front], color="gray", lw=1.2, label="Pareto frontier")
    for r in rows:
        if r["kind"] == "anchor":
            ax.scatter([r["gflops"]], [r[metric]], marker="*", s=160, color="gold", edgecolor="black", zorder=5)
            ax.annotate("small anchor" if r["stitch_id"] == 0 else "large anchor", (r["gflops"], r[metric]),
                        textcoords="offset points", xytext=(6, -12 if r["stitch_id"] == 0 else 6), fontsize=8)
    ax.set_xlabel("GFLOPs")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs GFLOPs, {len(rows)} stitches")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path
