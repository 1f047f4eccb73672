"""``snnet profile``: Every stitch's measured latency on this device, into the run's results."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from .._atomic import together
from ..distributed import local_device
from ..errors import SNNetError
from ..export import export_stitch
from ..latency import onnx_latency, stitch_latency
from ..pretrained import load_pretrained
from ..quantize import quantize_onnx
from ..results import merge_latency, plot_pareto, read_results, write_results
from ..rundir import RunLock, run_of
from ..tasks import TASKS
from .options import parse_stitch_ids


def run(args) -> int:
    model_dir, run = run_of(args.run)
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError(f"no results.jsonl beside {model_dir}: evaluate the run first (snnet eval)")
    device = local_device(args.device, "auto")
    with RunLock(run):  # it rewrites the run's results: no training, evaluation or other profile beside it
        return _profile(args, run, model_dir, device)


def _profile(args, run: Path, model_dir: Path, device) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_pretrained(model_dir).to(device)
    rows = read_results(run / "results.jsonl")
    ids = parse_stitch_ids(args.stitches) or [r["stitch_id"] for r in rows]
    for sid in ids:
        model.stitch(sid)
    size = tuple(args.img_size) if args.img_size else model.img_size
    timed = stitch_latency(model, ids, size, args.batch, args.repeats, args.warmup, progress=not args.no_progress)
    where = f"{device.type}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    # ONNX Runtime on the CPU, each stitch's float32 file and its int8 file side by side:
    # (median column, IQR column) -> {stitch: (median, IQR)}
    extra: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    if args.onnx or args.quantize:

        model = model.cpu()
        with tempfile.TemporaryDirectory() as tmp:
            for sid in ids:
                fp32 = export_stitch(model, sid, "onnx", Path(tmp) / f"{sid}.onnx", size, args.batch)[0]
                files = {("latency_onnx_ms", "latency_onnx_iqr_ms"): fp32} if args.onnx else {}
                if args.quantize:
                    files[("latency_ms@int8", "latency_iqr_ms@int8")] = int8 = Path(tmp) / f"{sid}_int8.onnx"
                    quantize_onnx(fp32, int8)  # dynamic, as snnet export --quantize int8 by default
                for columns, path in files.items():
                    extra.setdefault(columns, {})[sid] = onnx_latency(str(path), args.batch, size,
                                                                      torch.get_num_threads(), args.repeats,
                                                                      args.warmup)
    setting = f"batch {args.batch}, {size[0]}x{size[1]}, {where}"
    stale = merge_latency(rows, timed, extra, setting)
    if stale:
        print(f"dropped the latency of {stale} stitches measured in another setting")
    task = TASKS[model.task]
    profiled = [r for r in rows if "latency_ms" in r]
    with together():  # the table, its latency plot and the printed figures: all of them or none
        write_results(run, rows)
        plot = plot_pareto(profiled, run / "pareto_latency.png", task.primary_metric, task.higher_is_better,
                           title=f"{task.primary_metric} vs latency ({setting})", cost="latency_ms")
        heads = {"latency_onnx_ms": "onnx ms", "latency_ms@int8": "int8 ms"}
        print(f"{'id':>4} {'GFLOPs':>9} {'ms':>9} {'IQR':>7}" + "".join(f" {heads[c[0]]:>9}" for c in extra)
              + "  route")
        for sid in ids:
            r = next(r for r in rows if r["stitch_id"] == sid)
            onnx = "".join(f" {r[c[0]]:9.2f}" for c in extra)
            print(f"{sid:>4} {r['gflops']:9.3f} {r['latency_ms']:9.2f} {r['latency_iqr_ms']:7.2f}{onnx}  "
                  f"{r.get('route', '')}")
        print(f"latency of {len(ids)} stitches ({setting}) written to {run / 'results.jsonl'}; plot {plot}")
        sys.stdout.flush()
    return 0
