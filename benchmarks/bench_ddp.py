"""DDP's cost of unused parameters (issue 33, point 3): a training step of SN-Netv2 over DeiT3-S/L shapes, each rank
drawing its own stitch, under the ways DDP can be told that a step leaves parameters unused, side by side.

  find_unused   - ``find_unused_parameters=True`` (what ``snnet train`` does): DDP walks the autograd graph after
                  every forward to mark the parameters it will not see
  zero_touch    - ``find_unused_parameters=False`` and the loss plus 0 x the sum of every parameter: each one gets
                  a (zero) gradient, so DDP's buckets fill without the graph walk; but a parameter no rank used
                  then has a zero gradient instead of none, and AdamW moves it (momentum, weight decay): it does
                  not train the same
  hooks         - no DDP: after backward, every gradient (zeros where a parameter was unused on this rank)
                  flattened and all-reduced in buckets of 25 MB, DDP's default; one more all-reduce of a flag per
                  parameter leaves those no rank used without a gradient, as DDP does
  static_graph  - refused by DDP here: the set of used parameters changes with the stitch (not measured)

Every variant runs the same seeded stitches and batches; the parameters after the last step are compared with
find_unused's (they train the same when they agree to float32 rounding). Runs on CUDA (nccl, one process per GPU)
where there are ``--world`` GPUs, else on the CPU (gloo, ``--world`` processes, default two).

    .venv/bin/python benchmarks/bench_ddp.py [--img-size 64] [--steps 8] [--batch-size 8]
"""
from __future__ import annotations

import argparse
import os
import time

import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from snnet import SNNet
from snnet.cli.parser import at_least, tcp_port

VARIANTS = ("find_unused", "zero_touch", "hooks")
BUCKET = 25 * 2**20  # bytes, DDP's default bucket_cap_mb


def build(img_size: int, device: torch.device) -> SNNet:
    torch.manual_seed(0)
    kw = dict(img_size=img_size, num_classes=1000)
    anchors = [timm.create_model("deit3_small_patch16_224", **kw),
               timm.create_model("deit3_large_patch16_224", **kw)]
    return SNNet(anchors, lora_rank=8).to(device)


def all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Average every gradient across ranks, a rank that left a parameter unused contributing zeros, in buckets of
    ``BUCKET`` bytes; a parameter no rank used keeps no gradient (as under DDP: the optimizer skips it)."""
    used = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=params[0].device)
    dist.all_reduce(used)
    params = [p for p, n in zip(params, used.tolist()) if n > 0]
    bucket: list[torch.nn.Parameter] = []

    def flush() -> None:
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for p in bucket:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()
        bucket.clear()

    size = 0
    for p in params:
        bucket.append(p)
        size += p.numel() * p.element_size()
        if size >= BUCKET:
            flush()
            size = 0
    if bucket:
        flush()


def on_gpus(world: int) -> bool:
    """One GPU per process (NCCL) where there are enough of them, else the CPU (gloo)."""
    return torch.cuda.device_count() >= world


def run(rank: int, world: int, args, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    cuda = on_gpus(world)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // world))
    results = {}
    for variant in VARIANTS:
        model = build(args.img_size, device)
        model.configure_sampling(gap_gflops=1.0, seed=rank)  # each rank its own stitch, as snnet train
        params = [p for p in model.parameters() if p.requires_grad]
        net = model
        if variant != "hooks":
            net = DistributedDataParallel(model, device_ids=[rank] if cuda else None,
                                          find_unused_parameters=variant == "find_unused")
        opt = torch.optim.AdamW(params, lr=1e-4)
        g = torch.Generator().manual_seed(100 + rank)
        times = []
        for step in range(args.steps + 2):
            x = torch.randn(args.batch_size, 3, args.img_size, args.img_size, generator=g).to(device)
            y = torch.randint(0, 1000, (args.batch_size,), generator=g).to(device)
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            loss = F.cross_entropy(net(x), y)
            if variant == "zero_touch":
                loss = loss + 0.0 * sum(p.sum() for p in params)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if variant == "hooks":
                all_reduce_grads(params, world)
            opt.step()
            if cuda:
                torch.cuda.synchronize()
            if step >= 2:
                times.append(time.perf_counter() - start)
        results[variant] = (sorted(times)[len(times) // 2] * 1e3,
                            torch.cat([p.detach().reshape(-1).cpu() for p in params]))
    if rank == 0:
        ref = results["find_unused"][1]
        queue.put({v: (ms, (w - ref).abs().max().item()) for v, (ms, w) in results.items()})
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=at_least(16), default=64, help="a multiple of DeiT3's 16-pixel patches")
    parser.add_argument("--steps", type=at_least(1), default=8, help="timed steps per variant (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=at_least(1), default=8, help="per rank")
    parser.add_argument("--world", type=at_least(2), default=max(torch.cuda.device_count(), 2))
    parser.add_argument("--port", type=tcp_port, default=29533)
    args = parser.parse_args()
    if args.img_size % 16:
        parser.error(f"--img-size {args.img_size} is not a multiple of DeiT3's 16-pixel patches")
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(run, args=(args.world, args, queue), nprocs=args.world, join=True)
    figures = queue.get()
    device = torch.cuda.get_device_name() if on_gpus(args.world) else "cpu (gloo)"
    print(f"DeiT3-S/L shapes at {args.img_size}x{args.img_size}, {args.world} x {device}, batch {args.batch_size} "
          f"per rank, median of {args.steps} steps")
    base = figures["find_unused"][0]
    for variant, (ms, diff) in figures.items():
        print(f"  {variant:12s} {ms:9.1f} ms/step  {ms / base:5.2f}x  max |param - find_unused's| {diff:.2e}")


if __name__ == "__main__":
    main()
