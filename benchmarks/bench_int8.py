"""int8 against float32 ONNX Runtime latency of stitches, side by side, and the accuracy int8 costs a trained run.

  deit3_s_l - DeiT3-S/L-shaped random anchors at 224: one stitch of every kind exported to ONNX, float32 and
              int8 (dynamic, snnet.quantize), each timed by ONNX Runtime at ``--batches`` (median of ``--repeats``,
              the two files of a stitch one after the other).
  --run DIR - a trained, evaluated run (e.g. runs/quickstart): every stitch's accuracy through ONNX Runtime in
              int8 dynamic and static (``snnet eval --quantize int8``, into the run's results as acc1@int8 and
              acc1@int8-static), then their latency (``snnet profile --onnx --quantize int8``), and the frontier
              over milliseconds across precisions.

    .venv/bin/python benchmarks/bench_int8.py [--batches 1 8] [--threads 2] [--run runs/quickstart]
"""
import argparse
import os
import tempfile
from pathlib import Path

import timm
import torch

from snnet import SNNet
from snnet.cli import main
from snnet.export import export_stitch
from snnet.latency import onnx_latency
from snnet.results import format_table, frontier, read_results
from snnet.selection import precision_rows

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--repeats", type=int, default=10)
parser.add_argument("--no-deit", action="store_true", help="skip the DeiT3-S/L latency part")
parser.add_argument("--run", help="a trained run to measure int8's accuracy cost on")
args = parser.parse_args()
torch.set_num_threads(args.threads)


def bench_deit3() -> None:
    torch.manual_seed(0)
    model = SNNet([timm.create_model("deit3_small_patch16_224"), timm.create_model("deit3_large_patch16_224")]).eval()
    picked = [next(s for s in model.stitches if s.kind == k) for k in ("anchor", "SL", "LS", "LSL", "SLS")]
    picked.insert(1, model.stitches[1])  # the large anchor
    print(f"DeiT3-S/L at 224, ONNX Runtime, {args.threads} threads, median of {args.repeats}")
    print(f"{'id':>4} {'kind':<6} {'GFLOPs':>7} " + " ".join(f"{'b' + str(b) + ' fp32':>10} {'int8':>8} {'x':>5}"
                                                      for b in args.batches) + "  route")
    with tempfile.TemporaryDirectory() as tmp:
        for s in picked:
            files = [export_stitch(model, s.id, "onnx", Path(tmp) / f"{s.id}_{q}.onnx", (224, 224),
                                   quantize=q if q == "int8" else None)[0] for q in ("fp32", "int8")]
            cells = []
            for b in args.batches:
                fp32, int8 = (onnx_latency(str(f), b, (224, 224), args.threads, args.repeats)[0] for f in files)
                cells.append(f"{fp32:10.1f} {int8:8.1f} {fp32 / int8:5.2f}")
            print(f"{s.id:>4} {s.kind:<6} {model.flops(s.id) / 1e9:7.2f} " + " ".join(cells) + f"  {s.describe()}")


def bench_run(run: Path) -> None:
    cfg = str(run / "config.yaml")
    for method in ("dynamic", "static"):
        assert main(["eval", "--config", cfg, "--checkpoint", str(run), "--quantize", "int8", "--quantize-method",
                     method, "--no-progress"]) == 0
    assert main(["profile", "--run", str(run), "--onnx", "--quantize", "int8", "--threads", str(args.threads),
                 "--no-progress"]) == 0
    rows = read_results(run / "results.jsonl")
    print(f"\n{'id':>4} {'GFLOPs':>8} {'fp32':>6} {'dyn':>6} {'static':>6} {'ms fp32':>8} {'ms int8':>8}  route")
    for r in rows:
        print(f"{r['stitch_id']:>4} {r['gflops']:8.4f} {r['acc1']:6.2f} {r['acc1@int8']:6.2f} "
              f"{r['acc1@int8-static']:6.2f} {r['latency_onnx_ms']:8.3f} {r['latency_ms@int8']:8.3f}  {r['route']}")
    for method, col in (("dynamic", "acc1@int8"), ("static", "acc1@int8-static")):
        cost = [r["acc1"] - r[col] for r in rows]
        over = [r["stitch_id"] for r, c in zip(rows, cost) if c > 0.5]
        print(f"int8 {method}: accuracy cost mean {sum(cost) / len(cost):.2f}, max {max(cost):.2f} points; "
              f"above 0.5 points: {len(over)} of {len(rows)} stitches {over}")
    both = precision_rows(rows, "acc1", "any")
    print("\nfrontier over ONNX Runtime milliseconds, float32 and int8 (dynamic) files:")
    print(format_table(frontier(both, "acc1", True, "latency_ms"), ("acc1", "latency_ms", "precision")))


if not args.no_deit:
    bench_deit3()
if args.run:
    bench_run(Path(args.run))
