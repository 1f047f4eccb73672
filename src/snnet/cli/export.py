"""``snnet export``: One stitch, or every stitch in one ONNX file, as a standalone model."""
from __future__ import annotations

import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from .._atomic import together
from ..config import load_config
from ..errors import SNNetError
from ..export import export_network, export_stitch, sidecar_path
from ..pretrained import load_pretrained
from ..results import read_results
from ..rundir import RunLock, check_output, run_info, run_of
from ..selection import choose_stitch
from ..tasks import build_task
from .options import budget_rows, calibration_batches, quantize_method


def run(args) -> int:
    model_dir, run = run_of(args.checkpoint)
    if not args.output.strip():
        raise SNNetError("--output is empty: give a file name")
    output = Path(args.output)
    data = [output.with_name(output.name + ".data")] if args.stitch == "all" else []  # weights past 1.8 GB
    check_output([output, sidecar_path(output), *data], model_dir, run)
    if args.quantize and args.format != "onnx":
        raise SNNetError(f"--quantize int8 takes --format onnx (ONNX Runtime runs it), not {args.format}")
    if args.stitch == "all" and args.format != "onnx":
        raise SNNetError(f"--stitch all writes one ONNX file with a stitch_id input: give --format onnx, not "
                         f"{args.format}")
    method = quantize_method(args)
    model = load_pretrained(model_dir)
    every = args.stitch == "all"
    sid = None if every else pick_stitch(args, model, run)
    size = tuple(args.img_size) if args.img_size else model.img_size
    quantized, calibrate = {}, None
    if args.quantize:
        quantized = {"quantize": args.quantize, "method": method}
        if method == "static":
            if run is None or not (run / "config.yaml").is_file():
                raise SNNetError("static quantisation calibrates on the run's training images: give --checkpoint "
                                 "a run directory with its config.yaml")

            task = build_task(load_config(str(run / "config.yaml")), progress=False)
            calibrate = partial(calibration_batches, task, args.calibration_images or 100, size)  # fresh batches per file
    into_run = run is not None and run.resolve() in output.resolve().parents
    how = f"{args.format}" + (f", int8 ({method})" if args.quantize else "")
    # a writer into the run holds it, as training does; the files are in place only once the line is printed
    with RunLock(run) if into_run else nullcontext(), together():
        if every:

            results = {r["stitch_id"]: r for r in read_results(run)} if run and (run / "results.jsonl").is_file() else {}
            written = export_network(model, output, size, args.batch, run_info(run, model), results, **quantized,
                                     calibrate=calibrate, progress=not args.no_progress)
            print(f"{len(model.stitch_ids)} stitches in one file, exported as {how}: {', '.join(map(str, written))}")
        else:
            written = export_stitch(model, sid, args.format, output, size, args.batch, run_info(run, model),
                                    **quantized, **(calibrate() if calibrate else {}))
            print(f"stitch {sid} ({model.describe(sid)}, {model.flops(sid, size) / 1e9:.3f} GFLOPs at "
                  f"{size[0]}x{size[1]}) exported as {how}: {', '.join(map(str, written))}")
        sys.stdout.flush()
    return 0


def pick_stitch(args, model, run: Path | None) -> int:
    """``--stitch``, or the best stitch of the run's results under ``--max-gflops`` / ``--max-latency-ms``."""
    if args.stitch is not None:
        return model.stitch(args.stitch).id
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError("a budget needs the run's results.jsonl: give a run directory, or --stitch")
    rows, metric, higher = budget_rows(args, run, model.task)
    return choose_stitch(rows, metric, higher, args.max_gflops, args.max_latency_ms)["stitch_id"]
