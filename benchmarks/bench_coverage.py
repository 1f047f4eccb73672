"""How densely one network covers the FLOPs range: SN-Netv2 over DeiT3-S/L, S/B, B/L (two anchors) and the chain
S/B/L (three), at 224x224, from the pure stitch space and FLOPs functions (no weights, anchors on the meta device).

Per network: stitch count, FLOPs range, distinct FLOPs levels (GFLOPs rounded to ``--resolution``), the largest
gap between neighbouring levels, stitches per GFLOPs between 4.6 and 14 GFLOPs (where DeiT3-S/L has no stitch
cheaper than the middle of the range), and the FLOPs bound of prefix-shared evaluation: every stitch run one at a
time over the route tree's (``snnet.route_tree``) per image.

    .venv/bin/python benchmarks/bench_coverage.py [--resolution 0.1]
"""
import argparse

import timm

from snnet.anchors import anchor_shape
from snnet.flops import prefix_shared_flops, stitch_flops
from snnet.stitch_space import chain_space

NAMES = {"S": "deit3_small_patch16_224", "B": "deit3_base_patch16_224", "L": "deit3_large_patch16_224"}
parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--resolution", type=float, default=0.1, help="GFLOPs that count as one level")
parser.add_argument("--window", type=float, nargs=2, default=(4.6, 14.0), metavar=("LO", "HI"))
args = parser.parse_args()
shapes = {k: anchor_shape(timm.create_model(name, device="meta")) for k, name in NAMES.items()}

print(f"224x224, levels at {args.resolution} GFLOPs; window {args.window[0]}-{args.window[1]} GFLOPs")
print(f"{'network':<8}{'stitches':>9}{'GFLOPs range':>16}{'levels':>8}{'largest gap':>13}{'in window':>11}"
      f"{'per GFLOP':>11}{'shared eval':>13}")
for network in ("SL", "SB", "BL", "SBL"):
    chain = [shapes[k] for k in network]
    space = chain_space([c.depth for c in chain])
    gflops = sorted(stitch_flops(s, chain) / 1e9 for s in space)
    levels = sorted({round(g / args.resolution) * args.resolution for g in gflops})
    gap = max(b - a for a, b in zip(levels, levels[1:]))
    inside = sum(args.window[0] <= g <= args.window[1] for g in gflops)
    print(f"{'/'.join(network):<8}{len(gflops):>9}{gflops[0]:>8.2f}-{gflops[-1]:<7.2f}{len(levels):>8}{gap:>13.2f}"
          f"{inside:>11}{inside / (args.window[1] - args.window[0]):>11.2f}"
          f"{sum(gflops) * 1e9 / prefix_shared_flops(space, chain):>12.2f}x")
