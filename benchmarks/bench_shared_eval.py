"""Evaluating every stitch one at a time against the prefix-shared walk of the route tree, side by side.

  deit3_s_l - all 134 stitches of DeiT3-S/L (timm shapes, random weights; ``--deit s_b_l``: the 377 of one
              S/B/L network) on ``--deit-batches`` random batches of ``--deit-batch-size`` images at 224:
              ``model.select(id)(x)`` for every id, then the same ids in depth-first order inside
              ``model.sharing_prefixes``; logits compared with ``torch.equal``.
  <config>  - ``snnet.evaluation.evaluate_stitches`` with the config's real task, data and model (every stitch, the
              first ``--images`` validation images), ``share_prefixes`` off then on; metrics compared exactly.
Both print wall times, their ratio, and the analytic FLOPs ratio (SPEC section 4 counts: every route in full
against each distinct route prefix once; heads and tap projections once per stitch in both).

    .venv/bin/python benchmarks/bench_shared_eval.py [--configs quickstart quickstart_segmentation ...]
"""
import argparse
import os
import time

import timm
import torch

from snnet import SNNet, load_config
from snnet.distributed import init_distributed
from snnet.evaluation import evaluate_stitches, make_eval_loader
from snnet.flops import prefix_shared_flops, stitch_flops
from snnet.tasks import build_model, build_task

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--deit-batches", type=int, default=2)
parser.add_argument("--deit-batch-size", type=int, default=2)
parser.add_argument("--deit", default="s_l", choices=["s_l", "s_b_l"], help="the DeiT3 anchors")
parser.add_argument("--configs", nargs="*", default=["quickstart", "quickstart_segmentation", "quickstart_depth"])
parser.add_argument("--images", type=int, default=500, help="validation images per config")
parser.add_argument("--threads", type=int, default=os.cpu_count())
args = parser.parse_args()
torch.set_num_threads(args.threads)


def flops_ratio(net: SNNet, dense: bool) -> float:
    taps = tuple(net.out_indices) if dense else None
    separate = sum(stitch_flops(s, net.shapes, None, taps) for s in net.stitches)
    return separate / prefix_shared_flops(net.stitches, net.shapes, None, taps)


def report(name: str, n: int, plain: float, shared: float, ratio: float, same: bool) -> None:
    print(f"{name:<24} {n:>4} stitches  one at a time {plain:7.1f} s  shared {shared:7.1f} s  "
          f"speed-up {plain / shared:4.2f}x  FLOPs ratio {ratio:4.2f}x  identical: {same}")


def bench_deit3() -> None:
    torch.manual_seed(0)
    sizes = {"s": "small", "b": "base", "l": "large"}
    model = SNNet([timm.create_model(f"deit3_{sizes[a]}_patch16_224") for a in args.deit.split("_")]).eval()
    ids = model.stitch_ids
    plain = shared = 0.0
    same = True
    with torch.inference_mode():
        for _ in range(args.deit_batches):
            x = torch.randn(args.deit_batch_size, 3, 224, 224)
            t0 = time.perf_counter()
            ref = {sid: model.select(sid)(x) for sid in ids}
            t1 = time.perf_counter()
            with model.sharing_prefixes(ids):
                out = {sid: model.select(sid)(x) for sid in model.depth_first(ids)}
            t2 = time.perf_counter()
            plain, shared = plain + t1 - t0, shared + t2 - t1
            same &= all(torch.equal(out[i], ref[i]) for i in ids)
    report(f"deit3_{args.deit} {args.deit_batches}x{args.deit_batch_size} @224", len(ids), plain, shared,
           flops_ratio(model, dense=False), same)


def bench_config(name: str) -> None:
    cfg = load_config(name, ["data.shapes.num_train=64"] if "quickstart" in name else [])
    env = init_distributed("cpu")
    task = build_task(cfg, progress=False)
    model = build_model(cfg, task.num_classes).eval()
    loader = make_eval_loader(task.val_set, cfg.data.eval_batch_size or int(1.5 * cfg.data.batch_size),
                              cfg.data.workers, env, args.images, task.eval_collate)
    times, results = [], []
    for share in (False, True):
        t0 = time.perf_counter()
        results.append(evaluate_stitches(model, task, loader, model.stitch_ids, env, progress=False,
                                         share_prefixes=share))
        times.append(time.perf_counter() - t0)
    n_images = min(args.images, len(task.val_set))
    report(f"{name} ({n_images} images)", len(model.stitch_ids), *times,
           flops_ratio(model.backbone, dense=cfg.task != "classification"), results[0] == results[1])


print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
if args.deit_batches:
    bench_deit3()
for name in args.configs:
    bench_config(name)
