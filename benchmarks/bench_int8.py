"""int8 against float32 ONNX Runtime latency of stitches, side by side, and the accuracy int8 costs a trained run.

  the CPU's model and int8 extensions (AVX2, AVX-512 VNNI, AVX-VNNI, AMX), then
  gemm      - the ceiling: one linear layer of DeiT3-S's and -L's MLP shape, float32 against dynamic int8;
  deit3_s_l - DeiT3-S/L-shaped random anchors at 224: one stitch of every kind exported to ONNX, float32 and
              int8 (dynamic, snnet.quantize), timed by ONNX Runtime at ``--batches`` (median of ``--repeats``,
              the two files' runs interleaved).
  --run DIR - a trained, evaluated run of any task (e.g. runs/quickstart): every stitch's primary metric through
              ONNX Runtime in int8 dynamic and static (``snnet eval --quantize int8``, into the run's results as
              e.g. acc1@int8 and acc1@int8-static, bbox_AP@int8), then their latency (``snnet profile --onnx --quantize int8``), and the frontier
              over milliseconds across precisions.

    .venv/bin/python benchmarks/bench_int8.py [--batches 1 8] [--threads 2] [--run runs/quickstart]
"""
import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import timm
import torch

from snnet import SNNet
from snnet.cli import main
from snnet.config import load_config
from snnet.export import export_stitch
from snnet.runtime import onnx_session
from snnet.results import format_table, frontier, read_results
from snnet.selection import precision_rows
from snnet.tasks import TASKS

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--repeats", type=int, default=20)
parser.add_argument("--no-deit", action="store_true", help="skip the DeiT3-S/L latency part")
parser.add_argument("--run", help="a trained run to measure int8's accuracy cost on")
args = parser.parse_args()
torch.set_num_threads(args.threads)


def cpu() -> str:
    """The CPU's model and the int8 dot-product extensions it has (VNNI: 4 int8 products per lane and step)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown CPU"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{name} ({', '.join(isa) or 'no AVX2'})"


def paired_ms(files: list[Path], x) -> list[float]:
    """Median milliseconds of each ONNX file on input ``x``, the files' runs interleaved (a, b, a, b, ...) so that
    the machine's drift falls on both alike."""
    import numpy as np

    sessions = [onnx_session(f, args.threads) for f in files]
    for s in sessions:
        for _ in range(2):
            s.run(None, {s.get_inputs()[0].name: x})
    times = [[] for _ in files]
    for _ in range(args.repeats):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            s.run(None, {s.get_inputs()[0].name: x})
            t.append(time.perf_counter() - start)
    return [1000 * float(np.median(t)) for t in times]


def bench_gemm() -> None:
    """The ceiling: one linear layer alone (tokens x in -> out, DeiT3-S's and -L's MLP shapes), float32 MatMul
    against ONNX Runtime's dynamic int8 one, side by side. A network's int8 speed-up is below its GEMMs'."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    print(f"one linear layer, ONNX Runtime, {args.threads} threads, median of {args.repeats}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for name, cin, cout in (("S fc1", 384, 1536), ("L fc1", 1024, 4096)):
            w = numpy_helper.from_array((rng.standard_normal((cin, cout)) / cin ** 0.5).astype(np.float32), "w")
            graph = helper.make_graph([helper.make_node("MatMul", ["images", "w"], ["output"])], "linear",
                                      [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", cin])],
                                      [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", cout])], [w])
            fp32, int8 = Path(tmp) / f"{cin}.onnx", Path(tmp) / f"{cin}_int8.onnx"
            onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(fp32))
            quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8)
            cells = []
            for b in args.batches:
                times = paired_ms([fp32, int8], rng.standard_normal((197 * b, cin), dtype=np.float32))
                cells.append(f"b{b} ({197 * b} tokens) {times[0]:7.2f} -> {times[1]:7.2f} ms {times[0] / times[1]:5.2f}x")
            print(f"  {name} {cin}->{cout}: " + "   ".join(cells))


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
                fp32, int8 = paired_ms(files, torch.randn(b, 3, 224, 224).numpy())
                cells.append(f"{fp32:10.1f} {int8:8.1f} {fp32 / int8:5.2f}")
            print(f"{s.id:>4} {s.kind:<6} {model.flops(s.id) / 1e9:7.2f} " + " ".join(cells) + f"  {s.describe()}")


def bench_run(run: Path) -> None:
    cfg = str(run / "config.yaml")
    task = TASKS[load_config(cfg).task]
    m, higher = task.primary_metric, task.higher_is_better
    for method in ("dynamic", "static"):
        assert main(["eval", "--config", cfg, "--checkpoint", str(run), "--quantize", "int8", "--quantize-method",
                     method, "--no-progress"]) == 0
    assert main(["profile", "--run", str(run), "--onnx", "--quantize", "int8", "--threads", str(args.threads),
                 "--no-progress"]) == 0
    rows = read_results(run / "results.jsonl")
    print(f"\n{m}: {'id':>4} {'GFLOPs':>8} {'fp32':>6} {'dyn':>6} {'static':>6} {'ms fp32':>8} {'ms int8':>8}  route")
    for r in rows:
        print(f"{r['stitch_id']:>4} {r['gflops']:8.4f} {r[m]:6.2f} {r[m + '@int8']:6.2f} "
              f"{r[m + '@int8-static']:6.2f} {r['latency_onnx_ms']:8.3f} {r['latency_ms@int8']:8.3f}  {r['route']}")
    for method, col in (("dynamic", m + "@int8"), ("static", m + "@int8-static")):
        cost = [(r[m] - r[col]) * (1 if higher else -1) for r in rows]
        over = [r["stitch_id"] for r, c in zip(rows, cost) if c > 0.5]
        print(f"int8 {method}: {m} cost mean {sum(cost) / len(cost):.2f}, max {max(cost):.2f} points; "
              f"above 0.5 points: {len(over)} of {len(rows)} stitches {over}")
    both = precision_rows(rows, m, "any")
    print("\nfrontier over ONNX Runtime milliseconds, float32 and int8 (dynamic) files:")
    print(format_table(frontier(both, m, higher, "latency_ms"), (m, "latency_ms", "precision")))


print(cpu())
if not args.no_deit:
    bench_gemm()
    bench_deit3()
if args.run:
    bench_run(Path(args.run))
