"""How long the DeiT3-S/L FLOPs table takes, and whether it matches the published one.

Measures, over ``--repeats`` runs (best and median wall time):
  anchors - creating the two timm anchors on the meta device (no memory);
  wrap    - ``SNNet([small, large])`` around them (shapes, stitch space, 23 stitching layers);
  table   - ``model.flops_table()``: FLOPs of all 134 stitches from the anchors' shapes;
  single  - one ``model.flops(id)`` call (table time / 134 for comparison).
Then counts how many of the 134 entries equal tests/data/imagenet_deit3_s_l.jsonl exactly.
Target: the whole table well under 1 s (it is pure integer arithmetic; expect about a millisecond).

    .venv/bin/python benchmarks/bench_flops_table.py [--repeats 20]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import timm

from snnet import SNNet

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=20)
parser.add_argument("--small", default="deit3_small_patch16_224")
parser.add_argument("--large", default="deit3_large_patch16_224")
parser.add_argument("--reference", default=str(ROOT / "tests/data/imagenet_deit3_s_l.jsonl"))
args = parser.parse_args()


def anchors() -> list:
    return [timm.create_model(args.small, device="meta"), timm.create_model(args.large, device="meta")]


def timed(fn, repeats: int) -> tuple[list[float], object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


SNNet(anchors())  # warm-up: imports, timm registry, first-call caches
anchors_t, pair = timed(anchors, args.repeats)
wrap_t, model = timed(lambda: SNNet(pair), args.repeats)
table_t, table = timed(model.flops_table, args.repeats)
one_t, _ = timed(lambda: model.flops(model.stitch_ids[-1]), args.repeats)

print(f"{args.small} + {args.large}: {len(table)} stitches, repeats={args.repeats}")
print(f"{'what':<22}{'best ms':>10}{'median ms':>12}")
for name, t in [("timm anchors (meta)", anchors_t), ("SNNet(anchors)", wrap_t), ("flops_table()", table_t), ("flops(one id)", one_t)]:
    print(f"{name:<22}{min(t) * 1e3:>10.3f}{statistics.median(t) * 1e3:>12.3f}")

rows = [json.loads(line) for line in Path(args.reference).read_text().splitlines() if line.strip()]
ref = {r["stitch_id"]: r["flops"] for r in rows}
exact = sum(table.get(i) == f for i, f in ref.items())
print(f"matches {Path(args.reference).name}: {exact}/{len(ref)} exact "
      f"(ids equal: {sorted(ref) == sorted(table)})")
for i in sorted(ref):
    if table.get(i) != ref[i]:
        print(f"  mismatch id {i}: snnet {table.get(i)} vs reference {ref[i]}")
