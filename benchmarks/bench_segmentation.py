"""Segmentation figures: the FLOPs table of ade20k_setr_deit3_s_l against the published one, and how long
evaluating one stitch takes at 512x512 on this machine.

  table  - building the config's model on the meta device and the FLOPs of all 134 stitches (backbone,
           tap projections and decode head), best and median of ``--repeats``;
  match  - how many stitches equal tests/data/ade20k_setr_deit3_s_l.jsonl, and the largest difference;
  eval   - one 512x512 image through the SETR model with DeiT3-S/L-shaped anchors (random weights, relative
           position bias, 150 classes), per stitch: the small anchor, a middle stitch and the large anchor.
           With the ADE20K test resize an image is about 512x683, i.e. two sliding windows of 512.

    .venv/bin/python benchmarks/bench_segmentation.py [--repeats 5] [--eval-repeats 2] [--threads N]
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from snnet import build_model, load_config

ROOT = Path(__file__).resolve().parents[1]
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--eval-repeats", type=int, default=2)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

cfg = load_config("ade20k_setr_deit3_s_l")
times = []
for _ in range(args.repeats):
    t0 = time.perf_counter()
    meta = build_model(cfg, load_weights=False, device="meta")
    table = meta.flops_table()
    times.append(time.perf_counter() - t0)
print(f"table: {len(table)} stitches in best {min(times) * 1e3:.0f} ms, median {statistics.median(times) * 1e3:.0f} ms "
      f"(model on the meta device + FLOPs)")
published = {r["stitch_id"]: r["flops"] for r in map(json.loads, (ROOT / "tests/data/ade20k_setr_deit3_s_l.jsonl").open())}
diff = {i: table[i] - published[i] for i in published}
rel = {i: d / published[i] for i, d in diff.items()}
worst = max(rel, key=rel.get)
print(f"match: {sum(d == 0 for d in diff.values())} of {len(diff)} exact; the rest differ by "
      f"{sorted({d // (1025 * 384 * 1024) for d in diff.values() if d})} x 1025x384x1024 MACs "
      f"(largest {rel[worst] * 100:.2f} % at stitch {worst})")

model = build_model(cfg, load_weights=False).eval()
x = torch.randn(1, 3, 512, 512)
ids = [0, sorted(table, key=table.get)[len(table) // 2], 1]
with torch.inference_mode():
    for sid in ids:
        model.select(sid)
        model(x)  # warm-up
        t = []
        for _ in range(args.eval_repeats):
            t0 = time.perf_counter()
            model(x)
            t.append(time.perf_counter() - t0)
        print(f"eval: stitch {sid:>3} ({table[sid] / 1e9:6.1f} GFLOPs): {min(t):.2f} s per 512x512 window "
              f"on {torch.get_num_threads()} threads")
