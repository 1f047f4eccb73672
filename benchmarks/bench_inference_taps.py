"""Dense inference computing only the taps its head reads (SETR-naive: the last; ViTDet: the last; DPT: all four)
against computing all four, side by side in one run: one eval-mode forward per stitch at the config's input size
(random weights), best of ``--repeats``, and the largest difference between the two outputs (0: bit-identical).

Stitches: the small anchor, the stitch with the most skipped projections among the rest ("skipped": small-anchor
taps the head does not read, whose projections to the large width are no longer computed) and the large anchor.

    .venv/bin/python benchmarks/bench_inference_taps.py                       # ade20k_setr_deit3_s_l, 512x512
    .venv/bin/python benchmarks/bench_inference_taps.py --config quickstart_segmentation --repeats 20
"""
import argparse
import time

import torch

from snnet import build_model, load_config
from snnet.stitch_space import SMALL, route_taps

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="ade20k_setr_deit3_s_l")
parser.add_argument("--repeats", type=int, default=2)
parser.add_argument("--threads", type=int, default=None)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)

cfg = load_config(args.config)
torch.manual_seed(0)
model = build_model(cfg, load_weights=False).eval()
b = model.backbone
read = {range(len(b.out_indices))[t] for t in (type(model).inference_taps or range(len(b.out_indices)))}
skipped = {s.id: sum(a == SMALL and i not in read for i, (a, _) in enumerate(route_taps(s, tuple(b.out_indices),
                                                                                      *b.depths)))
           for s in b.stitches}  # small-anchor taps the head does not read: projections no longer computed
middle = max((i for i in skipped if i not in (0, 1)), key=lambda i: (skipped[i], -i))
x = torch.randn(1, 3, *model.img_size)


def best_time(stitch: int) -> tuple[float, torch.Tensor]:
    times = []
    with torch.no_grad():
        model.select(stitch)(x)  # warm-up
        for _ in range(args.repeats):
            start = time.perf_counter()
            out = model.select(stitch)(x)
            times.append(time.perf_counter() - start)
    return min(times), out


print(f"{args.config}: {model.img_size[0]}x{model.img_size[1]}, {torch.get_num_threads()} threads, "
      f"inference taps {type(model).inference_taps}, best of {args.repeats}")
print(f"{'stitch':>6} {'skipped':>8} {'all taps ms':>12} {'read taps ms':>13} {'saved':>7} {'max |diff|':>11}")
for sid in (0, middle, 1):
    model.inference_taps = None  # an instance attribute over the class's: every tap, as before
    every, expected = best_time(sid)
    del model.inference_taps
    only, got = best_time(sid)
    print(f"{sid:>6} {skipped[sid]:>8} {every * 1e3:12.1f} {only * 1e3:13.1f} {1 - only / every:7.1%} "
          f"{(got - expected).abs().max().item():11.2e}")
