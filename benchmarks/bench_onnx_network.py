"""Every stitch in one ONNX file (``snnet export --stitch all``) against one file per stitch: bytes, and each
stitch's ONNX Runtime latency in the one file over its own file's, side by side.

  quickstart - the quickstart's anchors (packaged weights, 6/12 blocks, 8x8 patches at 32x32): 37 stitches;
  deit3_s_l  - DeiT3-S/L-shaped random anchors (12/24 blocks, widths 384/1024, 16x16 patches): 134 stitches,
               at ``--deit-size`` (default 224; the weights and graph do not depend on it, the latency does).

Bytes: the file (and its .data) against the float32 bytes of the network's parameters, and against the sum of the
one-stitch files (estimated from the stitches' deployed parameters where they are not all written). Latency: for
``--stitches`` (default: the anchors and the first stitch of each kind), both sessions run the same input, the two
interleaved, median of ``--repeats``; every stitch's outputs are compared too.

    .venv/bin/python benchmarks/bench_onnx_network.py [quickstart] [deit3_s_l] [--batches 1 8] [--threads 2]
"""
import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from snnet import build_model
from snnet.config import load_config
from snnet.export import export_network, export_stitch
from snnet.runtime import onnx_session

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("shapes", nargs="*", default=["quickstart"], choices=["quickstart", "deit3_s_l"])
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--repeats", type=int, default=30)
parser.add_argument("--deit-size", type=int, default=224)
parser.add_argument("--stitches", type=int, nargs="*", help="stitch ids to time (default: anchors, one per kind)")
parser.add_argument("--no-prepacking", action="store_true",
                    help="also time each stitch's own file with ONNX Runtime's weight pre-packing off, which the one "
                         "file's shared weights (read by If branches from the outer graph) do without")
args = parser.parse_args()
torch.set_num_threads(args.threads)


def network(shapes: str):
    """(model, input size): the quickstart's anchors with their packaged weights, or DeiT3-S/L-shaped random ones."""
    if shapes == "quickstart":
        cfg = load_config("quickstart")
        return build_model(cfg).eval(), (32, 32)
    size = args.deit_size
    cfg = load_config("imagenet_deit3_s_l", [f"model.anchors.{i}.{k}" for i in (0, 1) for k in (
        "pretrained=false", f"kwargs.img_size={size}")] + [f"data.input_size={size}"])
    torch.manual_seed(0)
    return build_model(cfg, load_weights=False).eval(), (size, size)


def paired_ms(sessions: list, feeds: list[dict]) -> list[float]:
    """Median milliseconds of each session on its feed, the runs interleaved so drift falls on all alike."""
    for s, f in zip(sessions, feeds):
        for _ in range(3):
            s.run(None, f)
    times = [[] for _ in sessions]
    for _ in range(args.repeats):
        for s, f, t in zip(sessions, feeds, times):
            start = time.perf_counter()
            s.run(None, f)
            t.append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


def bench(shapes: str) -> None:
    model, size = network(shapes)
    net = model.backbone
    param_bytes = sum(p.numel() * 4 for p in net.parameters())
    ids = args.stitches or [s.id for s in net.stitches if s.kind == "anchor"] + [
        next(s.id for s in net.stitches if s.kind == k) for k in ("SL", "LS", "LSL", "SLS")]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "net.onnx"
        start = time.perf_counter()
        written = export_network(model, out, size, progress=True)
        seconds = time.perf_counter() - start
        file_bytes = sum(p.stat().st_size for p in written if p.suffix != ".json")
        one_each = sum(model.params(s.id) * 4 for s in net.stitches)  # the one-stitch files' weights, about
        print(f"\n{shapes}: {len(net.stitches)} stitches at {size[0]}x{size[1]}; exported in {seconds:.0f} s")
        print(f"  one file {file_bytes / 1e6:.1f} MB = {file_bytes / param_bytes:.3f}x the network's float32 "
              f"parameters ({param_bytes / 1e6:.1f} MB); one file per stitch: about {one_each / 1e6:.1f} MB of "
              f"weights ({one_each / file_bytes:.1f}x the one file)")
        every = onnx_session(out, args.threads)
        print(f"  ONNX Runtime, {args.threads} threads, median of {args.repeats}, interleaved")
        print(f"  {'id':>4} {'kind':<6} {'GFLOPs':>7} " + " ".join(
            f"{'b' + str(b) + ' own':>9}" + (f" {'unpacked':>9}" if args.no_prepacking else "")
            + f" {'one file':>9} {'ratio':>6}" for b in args.batches) + "  max |diff|")
        worst = {b: 0.0 for b in args.batches}
        for sid in ids:
            own_path = export_stitch(model, sid, "onnx", Path(tmp) / f"s{sid}.onnx", size)[0]
            own = onnx_session(own_path, args.threads)
            unpacked = onnx_session(own_path, args.threads, prepacking=False) if args.no_prepacking else None
            cells, diff = [], 0.0
            for b in args.batches:
                x = torch.randn(b, 3, *size).numpy()
                feeds = [{own.get_inputs()[0].name: x}, {"images": x, "stitch_id": np.array(sid, np.int64)}]
                a, c = own.run(None, feeds[0])[0], every.run(None, feeds[1])[0]
                diff = max(diff, float(np.abs(a - c).max()))
                timed = paired_ms([own, every] + ([unpacked] if unpacked else []), feeds + feeds[:1])
                t_own, t_every = timed[:2]
                worst[b] = max(worst[b], t_every / t_own)
                cells.append(f"{t_own:9.3f}" + (f" {timed[2]:9.3f}" if unpacked else "")
                             + f" {t_every:9.3f} {t_every / t_own:6.3f}")
            print(f"  {sid:>4} {net.stitch(sid).kind:<6} {model.flops(sid, size) / 1e9:7.3f} " + " ".join(cells)
                  + f"  {diff:.1e}")
            own_path.unlink()
        print("  worst ratio: " + ", ".join(f"batch {b} {r:.3f}x" for b, r in worst.items()))


for shapes in args.shapes:
    bench(shapes)
