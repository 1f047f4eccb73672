"""Dense-task figures: a config's FLOPs table against the published one (where there is one), and how long one
stitch takes on one input at the size FLOPs are reported at (segmentation: a 512x512 window; depth: a 480x640
image; detection: a 1024x1024 image through backbone, pyramid, RPN and RoI heads).

  table  - building the config's model on the meta device and the FLOPs of all its stitches (backbone, tap
           projections, head), best and median of ``--repeats``;
  match  - how many stitches equal the published table (tests/data/), and what the rest differ by;
  eval   - one forward of the model with the config's anchor shapes (random weights) per stitch: the small
           anchor, the median stitch by FLOPs and the large anchor. Depth's flip test runs two of them per
           image; an ADE20K image after the test resize is about two sliding windows.

    .venv/bin/python benchmarks/bench_dense.py --config ade20k_setr_deit3_s_l
    .venv/bin/python benchmarks/bench_dense.py --config nyuv2_dpt_deit3_s_l      [--repeats 5] [--eval-repeats 2]
    .venv/bin/python benchmarks/bench_dense.py --config coco_maskrcnn_deit3_s_l --eval-repeats 1
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from snnet import build_model, load_config

ROOT = Path(__file__).resolve().parents[1]
PUBLISHED = {  # config -> (file, its per-stitch FLOPs)
    "ade20k_setr_deit3_s_l": lambda d: {r["stitch_id"]: r["flops"] for r in map(
        json.loads, (d / "ade20k_setr_deit3_s_l.jsonl").open())},
    "nyuv2_dpt_deit3_s_l": lambda d: {int(k): v for k, v in json.loads((d / "nyuv2_dpt_flops.json").read_text())["deit3_s_l"].items()},
    "nyuv2_dpt_deit3_b_l": lambda d: {int(k): v for k, v in json.loads((d / "nyuv2_dpt_flops.json").read_text())["deit3_b_l"].items()},
}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="ade20k_setr_deit3_s_l",
                    choices=sorted([*PUBLISHED, "coco_maskrcnn_deit3_s_l"]))
parser.add_argument("--repeats", type=int, default=5)
parser.add_argument("--eval-repeats", type=int, default=2)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

cfg = load_config(args.config)
times = []
for _ in range(args.repeats):
    t0 = time.perf_counter()
    meta = build_model(cfg, load_weights=False, device="meta")
    table = meta.flops_table()
    times.append(time.perf_counter() - t0)
print(f"table: {len(table)} stitches in best {min(times) * 1e3:.0f} ms, median {statistics.median(times) * 1e3:.0f} ms "
      f"(model on the meta device + FLOPs)")
if args.config in PUBLISHED:
    published = PUBLISHED[args.config](ROOT / "tests" / "data")
    diff = {i: table[i] - published[i] for i in published}
    rel = {i: abs(d) / published[i] for i, d in diff.items()}
    worst = max(rel, key=rel.get)
    print(f"match: {sum(d == 0 for d in diff.values())} of {len(diff)} exact; differences "
          f"{sorted(set(diff.values()))[:6]} FLOPs (largest {rel[worst] * 100:.2f} % at stitch {worst})")

model = build_model(cfg, load_weights=False).eval()
h, w = model.img_size
x = [torch.randn(3, h, w)] if cfg.task == "detection" else torch.randn(1, 3, h, w)
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
        print(f"eval: stitch {sid:>3} ({table[sid] / 1e9:6.1f} GFLOPs): {min(t):.2f} s per {h}x{w} forward "
              f"on {torch.get_num_threads()} threads")
