"""Which images should the least-squares start fit on: the training pipeline (the reference's) or the clean
evaluation transform? Measured side by side on one config (default: the quickstart), same images, same seed.

For each source the stitching layers are fitted from the anchors alone (``train.init_images`` training images,
``snnet.training.init_batches``), then measured on held-out clean validation images:
  residual - per layer, the fraction of the target's variance the fit leaves unexplained,
             ||X W^T + b - Y||^2 / ||Y - mean(Y)||^2, over ``--residual-images`` validation images (mean over
             the SL layers and over the LS layers);
  acc1     - every stitch's top-1 on the whole validation set right after the fit (no training).
Accuracy after training needs full runs: ``snnet train --config quickstart train.init_transform=train|eval``.

    .venv/bin/python benchmarks/bench_init_source.py [--config quickstart] [--residual-images 500] [key=value ...]
"""
import argparse
import statistics

import torch

from snnet.config import load_config
from snnet.distributed import DistEnv
from snnet.evaluation import evaluate_stitches, make_eval_loader
from snnet.run_state import seed_everything
from snnet.training import init_batches
from snnet.least_squares import init_stitching_layers
from snnet.stitch_space import LARGE, SMALL, layer_fits
from snnet.tasks import build_model, build_task

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--config", default="quickstart")
parser.add_argument("overrides", nargs="*", help="config overrides, e.g. augment.auto_augment=3a augment.cutmix=1.0")
parser.add_argument("--residual-images", type=int, default=500)
args = parser.parse_args()
env = DistEnv(0, 1, 0, torch.device("cpu"))


@torch.no_grad()
def block_outputs(model, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    outs = []
    for a in (SMALL, LARGE):
        x, blocks = model.backbone.embed(images, a), []
        for blk in model.backbone.anchors[a].blocks:
            x = blk(x)
            blocks.append(x)
        outs.append(blocks)
    return outs[0], outs[1]


@torch.no_grad()
def residuals(model, images: torch.Tensor) -> dict[str, list[float]]:
    small, large = block_outputs(model, images)
    out = {"SL": [], "LS": []}
    for ref, (_, src), (_, dst) in layer_fits(model.depths, model.config.version):  # (anchor, block) pairs
        x, y = (small[src], large[dst]) if ref.direction == "SL" else (large[src], small[dst])
        layer = model.backbone.stitching_layer(ref)
        pred = x @ layer.effective_weight().T + layer.bias
        y = y.reshape(-1, y.shape[-1]).double()
        err = (pred.reshape(y.shape).double() - y).pow(2).sum() / (y - y.mean(0)).pow(2).sum()
        out[ref.direction].append(err.item())
    return out


cfg0 = load_config(args.config, args.overrides)
seed_everything(cfg0.train.seed)
task = build_task(cfg0, progress=False)
held_out = torch.stack([task.val_set[i][0] for i in range(min(args.residual_images, len(task.val_set)))])
loader = make_eval_loader(task.val_set, 500, 0, env)
results = {}
for source in ("train", "eval"):
    cfg = load_config(args.config, [*args.overrides, f"train.init_transform={source}"])
    seed_everything(cfg.train.seed)  # the same augmentation draws would need the same generator state
    model = build_model(cfg, task.num_classes)
    n = init_stitching_layers(model.backbone, init_batches(task, cfg.train, cfg.data.workers, env), progress=False)
    res = residuals(model.backbone.eval(), held_out)
    acc = evaluate_stitches(model, task, loader, model.stitch_ids, env, progress=False)
    results[source] = (n, res, {sid: m[task.primary_metric] for sid, m in acc.items()})

anchors = set(range(2))
print(f"{args.config} {' '.join(args.overrides)}: least squares on {results['train'][0]} images; residual on {len(held_out)} held-out "
      f"clean images; {task.primary_metric} on {len(task.val_set)} validation images right after the fit")
print(f"{'source':8s} {'SL residual':>12s} {'LS residual':>12s} {'stitched mean':>14s} {'min':>7s} {'max':>7s}")
for source, (n, res, acc) in results.items():
    stitched = [v for sid, v in acc.items() if sid not in anchors]
    print(f"{source:8s} {statistics.mean(res['SL']):12.4f} {statistics.mean(res['LS']):12.4f} "
          f"{statistics.mean(stitched):14.2f} {min(stitched):7.2f} {max(stitched):7.2f}")
train, clean = results["train"][2], results["eval"][2]
ids = [sid for sid in train if sid not in anchors]
better = sum(train[s] > clean[s] for s in ids)
worse = sum(train[s] < clean[s] for s in ids)
print(f"training-pipeline fit better on {better} of {len(ids)} stitches, worse on {worse}, "
      f"mean difference {statistics.mean(train[s] - clean[s] for s in ids):+.2f}")
