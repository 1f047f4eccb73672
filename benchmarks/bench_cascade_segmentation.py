"""Would a cascade pay for segmentation? Two-stage cascades over a trained segmentation run's frontier stitches,
an image leaving the first stage when its confidence reaches the threshold, against the static frontier (issue 30,
point 5). Confidence (``--confidence``): the top class probability averaged over the image's pixels (``mean``), or
over the pixels predicted as an object, not background (``objects``).

Every frontier stitch runs once on ``--calibration-images`` training images and on the validation images, keeping
each image's confidence and its per-class areas
(intersection, union, predicted, labelled), so a cascade's mIoU is exact: the summed areas of each image at its
exit stage. Thresholds (16 quantiles of the first stage's confidence) and pairs are chosen on the training images;
the chosen points are then scored on the validation images. FLOPs per image: the stages' backbones with shared
route prefixes once, and a head per stage run.

    .venv/bin/snnet train --config quickstart_segmentation      # runs/quickstart_segmentation, about 4 minutes
    .venv/bin/python benchmarks/bench_cascade_segmentation.py [--run runs/quickstart_segmentation]
"""
import argparse
import itertools
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Subset

from snnet import load_config
from snnet.cascade import threshold_grid
from snnet.flops import prefix_shared_flops
from snnet.pretrained import load_pretrained
from snnet.results import frontier, read_results
from snnet.selection import pareto_frontier
from snnet.tasks import build_task
from snnet.tasks.segmentation.metrics import area_sums, summarize

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", default="runs/quickstart_segmentation")
parser.add_argument("--calibration-images", type=int, default=1000)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--confidence", choices=["mean", "objects"], default="mean",
                    help="mean: the top class probability averaged over all pixels; objects: over the pixels not "
                         "predicted background (class 0), 1 where there are none")
args = parser.parse_args()
torch.set_num_threads(args.threads)
run = Path(args.run)


def per_image(model, task, dataset, ids: list[int]) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """For each stitch: every image's confidence (N,) and per-class areas (N, 4, K)."""
    out = {}
    for sid in ids:
        model.select(sid)
        conf, areas = [], []
        with torch.no_grad():
            for i in range(0, len(dataset), 32):
                images, labels = zip(*(dataset[j] for j in range(i, min(i + 32, len(dataset)))))
                logits = model(torch.stack(images)).float()
                top = logits.softmax(1).amax(1)
                if args.confidence == "mean":
                    conf.append(top.mean((1, 2)))
                else:
                    objects = logits.argmax(1) != 0
                    conf.append(torch.where(objects.any((1, 2)), (top * objects).sum((1, 2))
                                            / objects.sum((1, 2)).clamp(min=1), torch.ones(len(top))))
                for lg, lb in zip(logits, labels):
                    pred = F.interpolate(lg[None], size=lb.shape[-2:], mode="bilinear", align_corners=False)[0]
                    areas.append(area_sums(pred.argmax(0), lb.as_subclass(torch.Tensor), task.num_classes,
                                           task.ignore_index).numpy())
        out[sid] = (torch.cat(conf).numpy(), np.stack(areas))
    return out


def miou(areas: np.ndarray) -> float:
    return summarize(torch.from_numpy(areas.sum(0)))["mIoU"]


def cascade(scores: dict, a: int, b: int, t: float) -> tuple[np.ndarray, float]:
    """(summed areas, share leaving at a) of the cascade a -> b at threshold t."""
    leave = scores[a][0] >= t
    return np.where(leave[:, None, None], scores[a][1], scores[b][1]), float(leave.mean())


def main() -> None:
    cfg = load_config(str(run / "config.yaml"))
    cfg.data.shapes.preload = False
    task = build_task(cfg, progress=False, train=True)
    model = load_pretrained(run / "model").eval()
    static = read_results(run / "results.jsonl", "mIoU")
    front = frontier(static, "mIoU")
    ids = [r["stitch_id"] for r in front]
    backbone = model.backbone
    size = tuple(model.img_size)
    taps = tuple(backbone.out_indices)
    head = model.head_flops(size)

    def cost(stages: tuple[int, ...]) -> list[float]:
        return [(prefix_shared_flops([backbone.stitch(s) for s in stages[:k + 1]], backbone.shapes, size, taps)
                 + (k + 1) * head) / 1e9 for k in range(len(stages))]

    chosen = torch.randperm(len(task.init_set), generator=torch.Generator().manual_seed(cfg.train.seed))
    calibration = Subset(task.init_set, chosen[:args.calibration_images].tolist())
    cal = per_image(model, task, calibration, ids)
    val = per_image(model, task, task.val_set, ids)
    print(f"{run}: {len(static)} stitches, frontier {ids}; {len(calibration)} training images for the search, "
          f"{len(task.val_set)} validation images; confidence: {args.confidence}")
    for sid in ids:
        print(f"  stitch {sid:>2}: {model.flops(sid) / 1e9:.4f} GFLOPs, validation mIoU {miou(val[sid][1]):.2f} "
              f"(as the table: {next(r['mIoU'] for r in static if r['stitch_id'] == sid):.2f}), mean confidence "
              f"{val[sid][0].mean():.3f}")
    points = []
    for a, b in itertools.combinations(ids, 2):
        f = cost((a, b))
        for t in threshold_grid(cal[a][0], 16):
            areas, share = cascade(cal, a, b, t)
            points.append((share * f[0] + (1 - share) * f[1], miou(areas), a, b, float(t)))
    picked = [points[i] for i in pareto_frontier(dict(enumerate(p[0] for p in points)),
                                                 dict(enumerate(p[1] for p in points)))]
    xs, ys = [r["gflops"] for r in front], [r["mIoU"] for r in front]
    print(f"{'GFLOPs':>8} {'mIoU':>7} {'static':>7} {'gain':>6}  cascade (threshold) -> share leaving early")
    gains = []
    for _, _, a, b, t in picked:
        areas, share = cascade(val, a, b, t)
        f = cost((a, b))
        g = share * f[0] + (1 - share) * f[1]
        at = float(np.interp(g, xs, ys))
        gains.append(miou(areas) - at)
        print(f"{g:8.4f} {miou(areas):7.2f} {at:7.2f} {gains[-1]:+6.2f}  {a} ({t:.3f}) > {b} -> {100 * share:.0f} %")
    print(f"largest gain over the static frontier at equal mean GFLOPs on the validation images: {max(gains):+.2f} "
          f"mIoU; smallest {min(gains):+.2f}")


if __name__ == "__main__":
    main()
