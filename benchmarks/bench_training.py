"""Training throughput and per-stitch evaluation time of SN-Netv2 on small anchors (CPU).

Builds the quickstart's anchor shapes (random weights; speed does not depend on them) and measures, on the
same synthetic batches:
  - training images/s of SN-Netv2 steps (ROS draws a stitch per step, LoRA rank 8) with AdamW's per-tensor
    loop and with its fused kernel (what ``snnet train`` uses), for the quickstart's 8x8-patch anchors and
    the dense quickstarts' 4x4-patch pair, beside plain training steps of each anchor alone, for scale;
  - evaluation time per stitch: ms per image for every stitch, and for the whole table.
The quickstart's own wall time is measured by running it: ``time snnet train --config quickstart``.

    .venv/bin/python benchmarks/bench_training.py [--batch-size 64] [--steps 30]
"""
from __future__ import annotations

import argparse
import os
import time

import timm
import torch

import snnet
from snnet.config import load_config

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--batch-size", type=int, default=64)
parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
parser.add_argument("--eval-images", type=int, default=512)
args = parser.parse_args()
torch.set_num_threads(os.cpu_count())
torch.manual_seed(0)

cfg = load_config("quickstart")
size = cfg.model.anchors[0].kwargs["img_size"]
x = torch.randn(args.batch_size, 3, size, size)
y = torch.randint(0, 10, (args.batch_size,))


def build(patch_size: int) -> snnet.SNNet:
    anchors = [timm.create_model(a.name, **{**a.kwargs, "patch_size": patch_size}) for a in cfg.model.anchors]
    model = snnet.SNNet(anchors, lora_rank=cfg.model.lora_rank)
    model.configure_sampling(cfg.train.ros_gap, seed=0)
    return model


def train_speed(net: torch.nn.Module, fused: bool) -> float:
    """Images per second of forward + backward + AdamW step, after two warm-up steps."""
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=fused, foreach=False)
    net.train()
    for i in range(args.steps + 2):
        if i == 2:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return args.steps * args.batch_size / (time.perf_counter() - start)


nets = {patch: build(patch) for patch in (8, 4)}  # the quickstart's pair, then the dense quickstarts'
model = nets[cfg.model.anchors[0].kwargs["patch_size"]]
print(f"{len(model.stitch_ids)} stitches; anchors {model.describe(0)} (width {model.widths[0]}) and "
      f"{model.describe(1)} (width {model.widths[1]}); batch {args.batch_size} at {size}x{size}; "
      f"{torch.get_num_threads()} threads")
for patch, net in nets.items():
    print(f"training, img/s, {patch}x{patch} patches: SN-Netv2 (ROS) with AdamW's per-tensor loop "
          f"{train_speed(net, False):.0f}, fused {train_speed(net, True):.0f} | small anchor alone "
          f"{train_speed(net.anchors[0], True):.0f} | large anchor alone {train_speed(net.anchors[1], True):.0f}")

model.eval()
images = torch.randn(args.eval_images, 3, size, size)
per_stitch = {}
with torch.inference_mode():
    model.select(0)(images[:64])  # warm-up
    for sid in model.stitch_ids:
        model.select(sid)
        start = time.perf_counter()
        for chunk in images.split(96):
            model(chunk)
        per_stitch[sid] = (time.perf_counter() - start) / args.eval_images * 1e3
total = sum(per_stitch.values())
print(f"evaluation, ms per image: small anchor {per_stitch[0]:.3f}, large anchor {per_stitch[1]:.3f}, "
      f"mean over stitches {total / len(per_stitch):.3f}; all {len(per_stitch)} stitches on 2,000 images "
      f"(extrapolated from {args.eval_images}): {total * 2000 / 1e3:.1f} s")
