"""CPU latency of SNNet stitches against the same blocks run by hand (DeiT3-S/L shapes, random weights).

For each chosen stitch (both anchors, and per kind SL/LS/LSL/SLS the stitches of lowest, median and
highest FLOPs) two forwards of a (batch, 3, 224, 224) input run under ``torch.inference_mode()``:
  snnet    - ``model.select(id)(x)`` in eval mode;
  baseline - the same timm modules called directly: patch_embed + _pos_embed of the first anchor,
             the blocks of every segment, ``F.linear`` with the stitching layer's weight and bias at
             each switch, norm + forward_head of the last anchor. This is the irreducible work,
             stitching-layer matmuls included.
They are interleaved (A B A B ...) after a global warm-up; columns are medians over ``--repeats`` pairs.
  overhead  = (snnet - baseline) / baseline of the medians; 'paired' is the median of the per-pair
              ratios, which is steadier when other processes load the machine. Both already exclude
              the stitching layers' own matmuls (the baseline does them too): target <= 3 %.
  lin ms    = the stitching layers' F.linear calls alone (median of ``--lin-repeats``), and
  lin %     = their share of the baseline time; 'flops %' is the same share estimated from FLOPs.
Outputs of the two paths are also compared (they should be bit-identical).
Runtime: one round over the 14 default stitches is ~1.9 TMAC per path (DeiT3-L alone ~250 GMAC at
batch 4): 4 minutes with the defaults on 2 cores while another job used one of them.

    .venv/bin/python benchmarks/bench_latency.py [--repeats 3] [--batch-size 4] [--ids 0 1 40]
"""
import argparse
import os
import statistics
import time

# On a machine shared with other CPU jobs, libgomp's spinning worker threads slow 2-thread runs several-fold
# (measured: a DeiT3-S forward 4x, a 1025x1025 eigh 8x slower); passive waiting avoids it. Override freely.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import timm  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from snnet import SNNet  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--repeats", type=int, default=3, help="timed A/B pairs per stitch")
parser.add_argument("--warmup", type=int, default=0, help="untimed A/B pairs per stitch (after the global one)")
parser.add_argument("--batch-size", type=int, default=4)
parser.add_argument("--img-size", type=int, default=224)
parser.add_argument("--lin-repeats", type=int, default=20)
parser.add_argument("--ids", type=int, nargs="*", help="stitch ids to run (default: picked per kind)")
parser.add_argument("--threads", type=int, default=os.cpu_count())
args = parser.parse_args()

torch.set_num_threads(args.threads)
torch.manual_seed(0)
small = timm.create_model("deit3_small_patch16_224", pretrained=False)
large = timm.create_model("deit3_large_patch16_224", pretrained=False)
model = SNNet([small, large]).eval()
flops = model.flops_table()


def pick_stitches() -> list:
    """Both anchors, then the lowest, median and highest-FLOPs stitch of every other kind."""
    chosen = [model.stitch(0), model.stitch(1)]
    for kind in ("SL", "LS", "LSL", "SLS"):
        ranked = sorted((s for s in model.stitches if s.kind == kind), key=lambda s: flops[s.id])
        chosen += [ranked[0], ranked[len(ranked) // 2], ranked[-1]]
    return chosen


def baseline(x: torch.Tensor, stitch) -> torch.Tensor:
    """The stitch's work written out with plain timm modules and F.linear."""
    a = model.backbone.anchors[stitch.first_anchor]
    x = a._pos_embed(a.patch_embed(x))  # patch_drop and norm_pre are identities for DeiT3
    for k, seg in enumerate(stitch.segments):
        blocks = model.backbone.anchors[seg.anchor].blocks
        for b in range(seg.first, seg.last + 1):
            x = blocks[b](x)
        if k < len(stitch.layers):
            layer = model.backbone.stitching_layer(stitch.layers[k])
            x = F.linear(x, layer.weight, layer.bias)
    a = model.backbone.anchors[stitch.last_anchor]
    return model.heads[stitch.last_anchor](a.forward_head(a.norm(x), pre_logits=True))


def snnet(x: torch.Tensor, stitch) -> torch.Tensor:
    return model.select(stitch.id)(x)


def clock(fn, *a) -> tuple[float, torch.Tensor]:
    t0 = time.perf_counter()
    out = fn(*a)
    return time.perf_counter() - t0, out


def linear_ms(stitch, tokens: int) -> float:
    """Median time of the stitch's stitching-layer matmuls alone, on inputs of the right shape."""
    total = 0.0
    for ref in stitch.layers:
        layer = model.backbone.stitching_layer(ref)
        h = torch.randn(args.batch_size, tokens, layer.in_features)
        F.linear(h, layer.weight, layer.bias)
        total += statistics.median(clock(F.linear, h, layer.weight, layer.bias)[0] for _ in range(args.lin_repeats))
    return total * 1e3


stitches = [model.stitch(i) for i in args.ids] if args.ids else pick_stitches()
x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
tokens = small.patch_embed.num_patches + small.num_prefix_tokens
print(f"torch {torch.__version__}, timm {timm.__version__}, threads {torch.get_num_threads()}, "
      f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
      f"batch {args.batch_size}x3x{args.img_size}x{args.img_size}, repeats {args.repeats} (+{args.warmup} warm-up)")
head = (f"{'id':>4} {'kind':<8} {'route':<42} {'GFLOPs':>7} {'base ms':>9} {'snnet ms':>9} {'ovh %':>6} "
        f"{'paired %':>8} {'lin ms':>7} {'lin %':>6} {'flops %':>7} {'same':>5}")
print(head)
print("-" * len(head))
results = []
t_start = time.perf_counter()
with torch.inference_mode():
    # global warm-up: the S anchor and the cheapest LSL route touch every module type and tensor shape
    for s in (model.stitch(0), min((s for s in model.stitches if s.kind == "LSL"), key=lambda s: flops[s.id])):
        baseline(x, s), snnet(x, s)
    for s in stitches:
        for _ in range(args.warmup):
            baseline(x, s), snnet(x, s)
        tb, ts, same = [], [], True
        for _ in range(args.repeats):
            t, out_b = clock(baseline, x, s)
            tb.append(t)
            t, out_s = clock(snnet, x, s)
            ts.append(t)
            same &= torch.equal(out_b, out_s)
        b, m = statistics.median(tb) * 1e3, statistics.median(ts) * 1e3
        paired = statistics.median(100 * (q / p - 1) for p, q in zip(tb, ts))
        lin = linear_ms(s, tokens)
        lin_flops = sum(model.backbone.stitching_layer(r).in_features * model.backbone.stitching_layer(r).out_features for r in s.layers)
        kind = s.kind if s.kind != "anchor" else f"anchor {'SL'[s.first_anchor]}"
        results.append((b, m, lin))
        print(f"{s.id:>4} {kind:<8} {s.describe():<42} {flops[s.id] / 1e9:>7.2f} {b:>9.1f} {m:>9.1f} "
              f"{100 * (m - b) / b:>+6.2f} {paired:>+8.2f} {lin:>7.2f} {100 * lin / b:>6.2f} "
              f"{100 * tokens * lin_flops / flops[s.id]:>7.2f} {str(same):>5}", flush=True)

tb, ts = sum(r[0] for r in results), sum(r[1] for r in results)
print(f"all {len(results)} stitches: baseline {tb:.0f} ms, snnet {ts:.0f} ms, overhead {100 * (ts - tb) / tb:+.2f} %, "
      f"worst {max(100 * (r[1] - r[0]) / r[0] for r in results):+.2f} %; stitching layers "
      f"{100 * sum(r[2] for r in results) / tb:.2f} % of baseline time; wall {time.perf_counter() - t_start:.0f} s")
