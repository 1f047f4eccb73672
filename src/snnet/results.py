"""Per-stitch results: JSONL and CSV files, the frontier table, and the Pareto plot."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._atomic import atomic_path, atomic_write_text
from .errors import SNNetError
from .selection import IDENTITY_COLUMNS, is_number, pareto_frontier, precision_rows

KIND_COLORS = {"SL": "tab:blue", "LS": "tab:orange", "LSL": "tab:green", "SLS": "tab:red", "SML": "tab:purple",
               "LMS": "tab:brown"}  # anchors are stars
COUNT_COLUMNS = ("flops", "gflops", "params", "params_m")
ANCHOR_LABELS = {"S": "small anchor", "L": "large anchor"}  # chains: "anchor A", "anchor B", ...


def result_rows(model, metrics: dict[int, dict[str, float]]) -> list[dict]:
    """A row per stitch of ``model`` (a task model): id, kind, route, FLOPs, deployed parameters,
    then its ``metrics``."""
    rows = []
    for sid, m in metrics.items():
        s = model.stitch(sid)
        flops, params = model.flops(sid), model.params(sid)
        rows.append({"stitch_id": sid, "kind": s.kind, "route": s.describe(), "flops": flops,
                     "gflops": flops / 1e9, "params": params, "params_m": params / 1e6, **m})
    return rows


def write_results(run_dir: str | Path, rows: list[dict], stem: str = "results") -> tuple[Path, Path]:
    """``<stem>.jsonl`` (a line per stitch) and ``<stem>.csv``, both written atomically."""
    run_dir = Path(run_dir)
    jsonl, csv_path = run_dir / f"{stem}.jsonl", run_dir / f"{stem}.csv"
    atomic_write_text(jsonl, "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    columns = list(dict.fromkeys(k for r in rows for k in r))  # rows may differ (latency of a subset)
    writer = csv.DictWriter(buf, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(csv_path, buf.getvalue())
    return jsonl, csv_path


def read_results(path: str | Path, metric: str | None = None) -> list[dict]:
    """Rows of a ``results.jsonl`` (or a run directory's, else its ``results_subset.jsonl``), checked:
    a one-line error with the line number for bytes that are not UTF-8 or JSON, a row without a numeric
    stitch_id, flops and gflops, a repeated stitch id, a missing or non-numeric ``metric``, or a count or time
    that is not a number or below 0."""
    path = Path(path)
    if path.is_dir():
        path = next((p for p in (path / "results.jsonl", path / "results_subset.jsonl") if p.is_file()),
                    path / "results.jsonl")
    if not path.is_file():
        raise SNNetError(f"results file not found: {path}")
    rows, seen = [], {}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise SNNetError(f"{path} line {number}: not UTF-8 text") from None
        except json.JSONDecodeError as e:
            raise SNNetError(f"{path} line {number}: not a JSON row ({e.msg})") from None
        if not isinstance(row, dict):
            raise SNNetError(f"{path} line {number}: not a JSON object")
        for key in ("stitch_id", "flops", "gflops", *((metric,) if metric else ())):
            if key not in row:
                raise SNNetError(f"{path} line {number}: no {key!r} (columns: {', '.join(row)})")
            if not is_number(row[key]) or (key == "stitch_id" and not isinstance(row[key], int)):
                raise SNNetError(f"{path} line {number}: {key} is {row[key]!r}, not a number")
        _check_measures(row, metric, f"{path} line {number}")
        if row["stitch_id"] in seen:
            raise SNNetError(f"{path} line {number}: stitch {row['stitch_id']} again (first on line {seen[row['stitch_id']]})")
        seen[row["stitch_id"]] = number
        rows.append(row)
    if not rows:
        raise SNNetError(f"{path} has no per-stitch rows")
    return rows


def carry_over(path: Path, rows: list[dict]) -> str | None:
    """A new evaluation's ``rows`` take the table at ``path``'s timings of the same stitches (latency depends on the
    architecture and the setting, not the weights), and its figures of exported files (``acc1@int8``) where the
    stitch's PyTorch figures came out the same (the same weights on the same images); the rest is dropped, said in
    the returned note."""
    if not path.is_file():
        return None
    try:
        old = {r["stitch_id"]: r for r in read_results(path)}
    except SNNetError:  # a damaged table is replaced whole
        return None
    dropped: set[str] = set()
    for row in rows:
        before = old.get(row["stitch_id"])
        if before is None or (before.get("route"), before.get("flops")) != (row["route"], row["flops"]):
            continue
        row.update({k: v for k, v in before.items() if k.startswith("latency_")})
        exported = {k: v for k, v in before.items() if "@" in k and not k.startswith("latency_")}
        same = all(k in before and is_number(before[k]) and math.isclose(before[k], v, rel_tol=1e-6, abs_tol=1e-9)
                   for k, v in row.items() if k not in IDENTITY_COLUMNS and k != "images" and "@" not in k
                   and not k.startswith("latency_") and is_number(v)) and before.get("images") == row.get("images")
        if same:
            row.update(exported)
        else:
            dropped.update(exported)
    if not dropped:
        return None
    return (f"note: the PyTorch figures changed (new weights or images), so the earlier figures of exported files "
            f"({', '.join(sorted(dropped)[:4])}{', ...' if len(dropped) > 4 else ''}) are dropped: evaluate those "
            f"files again (snnet eval --quantize int8 or --onnx)")


def merge_latency(rows: list[dict], timed: dict[int, tuple[float, float]],
                  extra: dict[tuple[str, str], dict[int, tuple[float, float]]], setting: str) -> int:
    """Put measured latencies into a results table in place: ``timed`` {stitch: (median ms, IQR)}, ``extra``
    {(median column, IQR column): {stitch: (median, IQR)}} (ONNX, int8), all measured in ``setting``. One table holds
    one setting: another setting's figures go; this setting's that were not measured again stay. Returns how many
    rows lost figures of another setting without new ones."""
    stale = 0
    for r in rows:
        retimed = r["stitch_id"] in timed
        if r.get("latency_setting", setting) != setting:
            stale += not retimed
            for key in [k for k in r if k.startswith("latency_")]:
                del r[key]
        if retimed:
            r["latency_ms"], r["latency_iqr_ms"] = timed[r["stitch_id"]]
            r["latency_setting"] = setting
            for (ms, iqr), by_id in extra.items():
                r[ms], r[iqr] = by_id[r["stitch_id"]]
    return stale


def _check_measures(row: dict, metric: str | None, where: str) -> None:
    """What a hand edit can break beyond the required columns, in the columns a budget reads: a count or a time
    that is not a number or below 0, the ``metric`` of another precision (``acc1@int8``) that is not a number."""
    for key, value in row.items():
        cost = key in COUNT_COLUMNS or (key.startswith("latency_") and key != "latency_setting")
        if cost or (metric is not None and key.startswith(f"{metric}@")):
            if not is_number(value):
                raise SNNetError(f"{where}: {key} is {value!r}, not a number")
            if cost and value < 0:
                raise SNNetError(f"{where}: {key} is {value!r}, below 0")


def frontier(rows: list[dict], metric: str, higher_is_better: bool = True, cost: str = "flops") -> list[dict]:
    """The rows on the metric-vs-cost Pareto frontier (cost: ``flops`` or ``latency_ms``), by ascending cost."""
    for key in (metric, cost):
        if any(key not in r for r in rows):
            raise SNNetError(f"{key!r} is not in the results (columns: {', '.join(rows[0])})")
    by_id = dict(enumerate(rows))  # a stitch may have a row per precision (selection.precision_rows)
    ids = pareto_frontier({i: r[cost] for i, r in by_id.items()}, {i: r[metric] for i, r in by_id.items()},
                          higher_is_better)
    return [by_id[i] for i in ids]


def format_table(rows: list[dict], metrics: tuple[str, ...]) -> str:
    """A fixed-width table of rows: id, kind, GFLOPs, params, the metrics, the route."""
    header = f"{'id':>4} {'kind':<6} {'GFLOPs':>9} {'params(M)':>9} " + " ".join(f"{m:>8}" for m in metrics) + "  route"
    lines = [header]
    for r in rows:
        vals = " ".join(f"{r[m]:8.2f}" if isinstance(r[m], float) else f"{str(r[m]):>8}" for m in metrics)
        params = f"{r['params_m']:9.2f}" if is_number(r.get("params_m")) else f"{'?':>9}"
        lines.append(f"{r['stitch_id']:>4} {str(r.get('kind', '?')):<6} {r['gflops']:9.3f} {params} {vals}  "
                     f"{r.get('route', '')}")
    return "\n".join(lines)


COST_LABELS = {"gflops": "GFLOPs", "latency_ms": "latency (ms)"}


def plot_pareto(rows: list[dict], path: str | Path, metric: str, higher_is_better: bool = True,
                title: str = "", cost: str = "gflops") -> Path:
    """Every stitch as a point (coloured by kind) at its ``cost`` (gflops or latency_ms), the frontier as a
    line, the anchors marked."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for kind, color in KIND_COLORS.items():
        pts = [r for r in rows if r["kind"] == kind]
        if pts:
            ax.scatter([r[cost] for r in pts], [r[metric] for r in pts], s=14, color=color, alpha=0.7, label=kind)
    front = frontier(rows, metric, higher_is_better, "flops" if cost == "gflops" else cost)
    ax.plot([r[cost] for r in front], [r[metric] for r in front], color="gray", lw=1.2, label="Pareto frontier")
    int8 = [r for r in rows if f"{metric}@int8" in r and "latency_ms@int8" in r] if cost == "latency_ms" else []
    if int8:  # the int8 ONNX files (snnet profile / eval --quantize int8), and the frontier over both precisions
        onnx = [r for r in rows if "latency_onnx_ms" in r]  # the float32 files, which that frontier then times
        if onnx:
            ax.scatter([r["latency_onnx_ms"] for r in onnx], [r[metric] for r in onnx], s=26, marker="+",
                       color="tab:purple", alpha=0.8, label="fp32 (ONNX Runtime)")
        ax.scatter([r["latency_ms@int8"] for r in int8], [r[f"{metric}@int8"] for r in int8], s=22, marker="x",
                   color="black", alpha=0.7, label="int8 (ONNX Runtime)")
        both = [r for r in precision_rows(rows, metric, "any") if "latency_ms" in r]
        front = frontier(both, metric, higher_is_better, "latency_ms")
        ax.plot([r["latency_ms"] for r in front], [r[metric] for r in front], color="black", lw=1.2, ls="--",
                label="frontier over fp32 and int8")
    for r in rows:
        if r["kind"] == "anchor":
            ax.scatter([r[cost]], [r[metric]], marker="*", s=160, color="gold", edgecolor="black", zorder=5)
            letter = r["route"].split("[")[0]
            ax.annotate(ANCHOR_LABELS.get(letter, f"anchor {letter}"), (r[cost], r[metric]),
                        textcoords="offset points", xytext=(6, -12 if letter in ("S", "A") else 6), fontsize=8)
    label = COST_LABELS.get(cost, cost)
    ax.set_xlabel(label)
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric} vs {label}, {len(rows)} stitches")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    return path
