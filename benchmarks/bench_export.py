"""CPU latency of exported stitches: eager PyTorch (the SNNet with the stitch selected) against the standalone
TorchScript and ONNX Runtime files ``snnet export`` writes, at batch 1 and 8 (DeiT3-S/L shapes, random weights).

For each stitch (both anchors and the median-FLOPs stitch of every other kind) the three run interleaved
(eager, TorchScript, ONNX Runtime, eager, ...) after one warm-up each; columns are medians over ``--repeats``.
Outputs are compared too (max abs difference against eager). Exporting costs a few seconds per file.

    .venv/bin/python benchmarks/bench_export.py [--repeats 5] [--batches 1 8] [--ids 0 1 40]
"""
import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import timm
import torch

from snnet import SNNet
from snnet.export import export_stitch

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--batches", type=int, nargs="*", default=[1, 8])
parser.add_argument("--ids", type=int, nargs="*", help="stitch ids (default: anchors + the median of each kind)")
parser.add_argument("--threads", type=int, default=os.cpu_count())
args = parser.parse_args()
warnings.filterwarnings("ignore", message="`torch.jit.load` is deprecated", category=FutureWarning)
torch.set_num_threads(args.threads)
torch.manual_seed(0)
model = SNNet([timm.create_model("deit3_small_patch16_224"), timm.create_model("deit3_large_patch16_224")]).eval()
flops = model.flops_table()
ids = args.ids or [0, 1] + [sorted((s.id for s in model.stitches if s.kind == k), key=flops.get)[
    sum(s.kind == k for s in model.stitches) // 2] for k in ("SL", "LS", "LSL", "SLS")]

print(f"{args.threads} threads, torch {torch.__version__}, onnxruntime {ort.__version__}; medians of {args.repeats}")
print(f"{'id':>4} {'kind':<6} {'GFLOPs':>7} {'batch':>5} {'eager ms':>9} {'TorchScript':>11} {'ONNX RT':>9} "
      f"{'max |diff|':>10}")
opts = ort.SessionOptions()
opts.intra_op_num_threads = args.threads
with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
    for sid in ids:
        ts_path, onnx_path = Path(tmp) / f"{sid}.pt", Path(tmp) / f"{sid}.onnx"
        with torch.inference_mode(False):
            export_stitch(model, sid, "torchscript", ts_path, (224, 224))
            export_stitch(model, sid, "onnx", onnx_path, (224, 224))
        scripted = torch.jit.load(str(ts_path))
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        model.select(sid)
        for b in args.batches:
            x = torch.randn(b, 3, 224, 224)
            runs = {"eager": lambda: model(x), "ts": lambda: scripted(x),
                    "ort": lambda: torch.from_numpy(session.run(None, {name: x.numpy()})[0])}
            outs = {k: f() for k, f in runs.items()}  # warm-up
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    times[k].append((time.perf_counter() - t0) * 1e3)
            med = {k: statistics.median(v) for k, v in times.items()}
            diff = max(float(np.abs((outs[k] - outs["eager"]).numpy()).max()) for k in ("ts", "ort"))
            s = model.stitch(sid)
            print(f"{sid:>4} {s.kind:<6} {flops[sid] / 1e9:7.2f} {b:>5} {med['eager']:9.1f} {med['ts']:11.1f} "
                  f"{med['ort']:9.1f} {diff:10.2e}", flush=True)
