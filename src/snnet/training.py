"""The one training loop: least-squares start, ROS steps, checkpoints, resume.

A task (``snnet.tasks.*``) supplies datasets, a training loss and per-batch metric sums; the loop
does the rest the same way for every task, on one process or many under torchrun.
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from timm.data.distributed_sampler import RepeatAugSampler
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, IterableDataset, Subset

from ._atomic import atomic_write_text
from .config import DataSection, RunConfig, TrainSection, dump_config
from .distributed import DistEnv, all_reduce_sum, autocast, barrier, broadcast_buffers, grad_scaling
from .errors import SNNetError, first_line
from .least_squares import init_stitching_layers
from .pretrained import load_state_checked
from .progress import progress_bar
from .run_state import (CHECKPOINT_NAME, EpochLog, find_resume, load_checkpoint, save_checkpoint, seed_everything,
                        set_rng_state)
from .selection import is_stitchable
from .stitching_layers import StitchingLayer
from .tasks import build_model
from .tasks._files import First


def make_train_loader(dataset, data: DataSection, repeated_aug: int, seed: int, env: DistEnv,
                      collate=None) -> DataLoader:
    """Each rank's shuffled share of ``dataset`` in batches of ``data.batch_size`` (``repeated_aug`` > 1: each
    image that many times, on different ranks). A streamed dataset (webdataset shards) shares and shuffles itself."""
    if isinstance(dataset, IterableDataset):
        dataset.set_loader_cfg(num_workers=data.workers)  # its length counts the loader's workers
        return DataLoader(dataset, batch_size=data.batch_size, num_workers=data.workers, drop_last=True,
                          pin_memory=env.device.type == "cuda", persistent_workers=False, collate_fn=collate)
    if repeated_aug > 1:  # DeiT's RASampler, which timm's is; shuffled by the epoch alone, as DeiT's
        sampler = RepeatAugSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                   num_repeats=repeated_aug)
    else:
        sampler = DistributedSampler(dataset, num_replicas=env.world_size, rank=env.rank, shuffle=True,
                                     seed=seed, drop_last=True)
    return DataLoader(dataset, batch_size=data.batch_size, sampler=sampler, num_workers=data.workers,
                      pin_memory=env.device.type == "cuda", drop_last=True, persistent_workers=False,
                      collate_fn=collate)


def round_batches(loader: DataLoader, round_index: int, steps: int, passes_per_round: int):
    """The ``steps`` batches of one round (an epoch, or ``checkpoint_interval`` iterations): whole passes
    over the data, each shuffled by a seed that depends only on the round, so a resumed run sees the same."""
    done, p = 0, 0
    while done < steps:
        # a streamed dataset shuffles its shards by the epoch it is told
        shuffled = loader.dataset if isinstance(loader.dataset, IterableDataset) else loader.sampler
        shuffled.set_epoch(round_index * passes_per_round + p)
        before = done
        for batch in loader:
            if done == steps:
                return
            done += 1
            yield batch
        if done == before:
            raise SNNetError("the training data yields no full batch: lower data.batch_size or add images")
        p += 1


def init_batches(task, train: TrainSection, workers: int, env: DistEnv):
    """The least-squares fit's images: a seeded random sample of training images (an ImageFolder is sorted by
    class), split across ranks, under the training pipeline (with the task's batch mixing, e.g. CutMix) or the
    evaluation transform (``train.init_transform``)."""
    pipeline = train.init_transform == "train"
    source = task.train_set if pipeline else task.init_set
    if isinstance(source, IterableDataset):  # streamed shards, already shuffled and shared by rank: the first ones
        mine = len(range(env.rank, train.init_images, env.world_size))
        source = First(source, mine)
    else:
        g = torch.Generator().manual_seed(train.seed)
        chosen = torch.randperm(len(source), generator=g)[:train.init_images].tolist()
        source = Subset(source, chosen[env.rank::env.world_size])
    loader = DataLoader(source, batch_size=train.init_batch_size, shuffle=False, num_workers=0 if isinstance(
        source, IterableDataset) else workers, collate_fn=task.train_collate if pipeline else None)
    mix = getattr(task, "mixup", None) if pipeline else None  # classification's CutMix / Mixup, as its training steps
    for images, targets, *_ in loader:
        if not isinstance(images, torch.Tensor):  # lists of equal-size training crops (detection)
            images = torch.stack(images)
        if mix is not None:
            n = len(images) - len(images) % 2  # timm's batch mixing pairs image i with image n - 1 - i
            images = torch.cat([mix(images[:n], targets[:n])[0], images[n:]])
        yield images


class Schedule:
    """Rounds of training steps: epochs, or for ``train.iterations`` rounds of ``checkpoint_interval`` steps
    (a checkpoint and a log line after each round either way)."""

    def __init__(self, t: TrainSection, loader_len: int) -> None:
        self.by_iteration = t.iterations is not None
        if self.by_iteration:
            self.total_steps, self.round_steps = t.iterations, t.checkpoint_interval
            self.rounds = math.ceil(t.iterations / t.checkpoint_interval)
        else:
            self.round_steps = loader_len if t.steps_per_epoch is None else min(loader_len, t.steps_per_epoch)
            self.rounds = t.epochs
            self.total_steps = self.rounds * self.round_steps
        self.passes_per_round = max(1, math.ceil(self.round_steps / max(loader_len, 1)))

    def steps_in(self, r: int) -> int:
        return min(self.round_steps, self.total_steps - r * self.round_steps)

    def label(self, r: int) -> str:
        if self.by_iteration:
            return f"iterations {r * self.round_steps + self.steps_in(r)}/{self.total_steps}"
        return f"epoch {r + 1}/{self.rounds}"


class OneCycle:
    """torch's OneCycleLR behind timm's scheduler interface, stepped every iteration: the learning rate rises
    from max/25 to max over the first 30 % of the steps and falls to max/2500 (cosine), while Adam's beta1
    (or SGD's momentum) cycles between 0.95 and 0.85 (mmcv's OneCycle hooks, the depth recipe)."""

    def __init__(self, optimizer, total_steps: int) -> None:
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=max(total_steps, 1),
            pct_start=0.3, div_factor=25, final_div_factor=100, base_momentum=0.85, max_momentum=0.95)

    def step(self, epoch: int) -> None:
        pass

    def step_update(self, num_updates: int) -> None:
        while self.sched.last_epoch < min(num_updates, self.sched.total_steps - 1):
            self.sched.step()

    def state_dict(self) -> dict:
        return self.sched.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sched.load_state_dict(state)


def param_groups(model: torch.nn.Module, t: TrainSection) -> list[dict] | torch.nn.Module:
    """mmcv-style groups when the config asks for them: no weight decay on parameters whose names hold one of
    ``train.no_decay_keys``, the backbone's learning rate times ``train.backbone_lr_scale``; else the model
    (timm then leaves biases and norms undecayed)."""
    if t.no_decay_keys is None and t.backbone_lr_scale == 1.0:
        return model
    groups: dict[tuple[float, float], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decay = 0.0 if any(k in name for k in t.no_decay_keys or ()) else t.weight_decay
            scale = t.backbone_lr_scale if name.startswith("backbone.") else 1.0
            groups.setdefault((decay, scale), []).append(p)
    return [{"params": ps, "weight_decay": d, "lr": t.lr * s} for (d, s), ps in groups.items()]


def create_optimizer(model: torch.nn.Module, t: TrainSection, device: torch.device) -> torch.optim.Optimizer:
    """timm's optimizer of ``train.optimizer``; Adam and AdamW use torch's fused kernels on CPU and CUDA (one
    kernel over all parameters instead of about ten ops per tensor: a third of the optimizer step's time)."""
    extra = {"fused": True} if t.optimizer in ("adam", "adamw") and device.type in ("cpu", "cuda") else {}
    if t.opt_eps is not None:
        extra["eps"] = t.opt_eps
    if t.opt_betas is not None:
        extra["betas"] = tuple(t.opt_betas)
    return create_optimizer_v2(param_groups(model, t), opt=t.optimizer, lr=t.lr, weight_decay=t.weight_decay,
                               momentum=t.momentum, filter_bias_and_bn=not t.weight_decay_all, **extra)


def create_scheduler(optimizer, t: TrainSection, schedule: Schedule):
    """timm's scheduler: stepped per epoch, or per iteration for an iteration-based run; or torch's one-cycle."""
    if t.scheduler == "onecycle":
        return OneCycle(optimizer, schedule.total_steps)
    extra = {"decay_rate": t.poly_power} if t.scheduler == "poly" else {}
    if t.scheduler == "multistep" and t.decay_milestones:
        extra = {"decay_milestones": list(t.decay_milestones), "decay_rate": 0.1}
    if schedule.by_iteration:
        # in updates: timm's t_initial = num_epochs x updates_per_epoch
        return create_scheduler_v2(optimizer, sched=t.scheduler, num_epochs=t.iterations,
                                   warmup_epochs=t.warmup_iterations, warmup_lr=t.warmup_lr, min_lr=t.min_lr,
                                   step_on_epochs=False, updates_per_epoch=1, **extra)[0]
    # train.epochs=0 is a valid run (evaluate the least-squares start); timm needs a positive length
    return create_scheduler_v2(optimizer, sched=t.scheduler, num_epochs=max(t.epochs, 1),
                               warmup_epochs=t.warmup_epochs, warmup_lr=t.warmup_lr, min_lr=t.min_lr, **extra)[0]


def compile_blocks(model: torch.nn.Module) -> int:
    """``torch.compile`` every transformer block and stitching layer of ``model`` in place (``Module.compile``:
    parameters, names and the state dict unchanged); returns how many were compiled."""
    modules = [m for m in model.modules() if hasattr(m, "drop_path1") or isinstance(m, StitchingLayer)]
    for m in modules:
        m.compile()
    return len(modules)


def train_one_epoch(model, task, loader: DataLoader, optimizer, scheduler, scaler, t: TrainSection, env: DistEnv,
                    schedule: Schedule, r: int, progress: bool) -> dict[str, float]:
    """One round of the schedule; the scheduler is updated after every step (epoch-based ones ignore it)."""
    model.train()
    total, count, seen = 0.0, 0, 0
    steps = schedule.steps_in(r)
    start = time.perf_counter()
    bar = progress_bar(total=steps, desc=schedule.label(r), enabled=progress and env.is_main, unit="step")
    for step, batch in enumerate(round_batches(loader, r, steps, schedule.passes_per_round)):
        with autocast(env.device, t.amp, t.amp_dtype):
            loss = task.training_loss(model, batch, env.device, r * schedule.round_steps + step)
        if not math.isfinite(loss.item()):
            raise SNNetError(f"loss is {loss.item()} at {schedule.label(r)}, step {step}: lower train.lr or enable clipping")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if t.clip_grad:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], t.clip_grad)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step_update(num_updates=r * schedule.round_steps + step + 1)
        total += loss.item()
        count += 1
        seen += len(batch[0])
        bar.set_postfix(loss=f"{total / count:.4f}")
        bar.update()
    bar.close()
    elapsed = time.perf_counter() - start
    sums = all_reduce_sum(torch.tensor([total, count, seen], dtype=torch.float64, device=env.device))
    return {"train_loss": (sums[0] / max(sums[1], 1)).item(), "images_per_sec": sums[2].item() / elapsed,
            "epoch_time_s": elapsed}


def fit(cfg: RunConfig, task, env: DistEnv, resume: str | None = "auto", progress: bool = True,
        model: torch.nn.Module | None = None) -> torch.nn.Module:
    """Train for ``cfg.train.epochs`` epochs (or ``cfg.train.iterations`` steps), checkpointing after each
    epoch (or ``checkpoint_interval`` steps); returns the model.

    By default the model is the task model of ``cfg.model`` (least-squares start, ROS steps); any other
    classifier given as ``model`` trains with the same loop (the quickstart's anchors do).
    """
    run_dir = Path(cfg.output_dir)
    ckpt_path = find_resume(run_dir, resume)
    seed_everything(cfg.train.seed + env.rank)
    if model is None:
        model = build_model(cfg, task.num_classes, load_weights=ckpt_path is None)
    stitchable = is_stitchable(model)
    model.to(env.device)
    if stitchable:
        ros_seed = cfg.train.seed + (0 if cfg.train.ros_same_on_all_ranks else env.rank)
        model.configure_sampling(cfg.train.ros_gap, cfg.train.ros_k, seed=ros_seed,
                                 anchor_share=cfg.train.ros_anchor_share)

    state = None
    if ckpt_path is not None:
        state = load_checkpoint(ckpt_path)
        afresh = "to start afresh: --no-resume or another --output-dir"
        if stitchable and model.upgrade_state_dict(state["model"]).keys() != state["model"].keys():
            raise SNNetError(f"{ckpt_path} was written by an earlier snnet whose model held its parameters in "
                             f"another order, which its optimizer state follows: training cannot resume from it "
                             f"(snnet eval --checkpoint reads it; {afresh})")
        load_state_checked(model, state["model"], f"{ckpt_path} ({afresh})")
    elif stitchable:
        batches = init_batches(task, cfg.train, cfg.data.workers, env)
        n = init_stitching_layers(model, batches, progress=progress and env.is_main)
        if env.is_main:
            how = "training pipeline" if cfg.train.init_transform == "train" else "evaluation transform"
            print(f"stitching layers fitted by least squares on {n} images ({how})")

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = create_optimizer(model, cfg.train, env.device)
    loader = task.training_batches(lambda dataset, collate: make_train_loader(
        dataset, cfg.data, cfg.augment.repeated_aug, cfg.train.seed, env, collate), env.device)
    schedule = Schedule(cfg.train, len(loader))
    scheduler = create_scheduler(optimizer, cfg.train, schedule)
    scaler = torch.amp.GradScaler(env.device.type, enabled=grad_scaling(env.device, cfg.train.amp, cfg.train.amp_dtype))
    start = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        start = state["epoch"] + 1
        if len(state["rng"]) == env.world_size:
            set_rng_state(model, state["rng"][env.rank])
        if env.is_main:
            print(f"resumed from {ckpt_path} after {schedule.label(start - 1)}")
    lag = cfg.train.scheduler_lag  # epoch r trains at lr(r - lag)
    scheduler.step(max(start - lag, 0))
    scheduler.step_update(num_updates=min(start * schedule.round_steps, schedule.total_steps))
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        n_train = sum(p.numel() for p in params)
        what = (f"{len(model.stitch_ids)} stitches, {len(model.sampler.groups)} ROS groups, " if stitchable else "")
        print(f"{what}{n_train / 1e6:.2f} M trainable parameters, training on {env.world_size} x {env.device.type}")

    if cfg.train.compile:
        compile_blocks(model)
    net = model
    if env.distributed:
        if env.device.type == "cuda":  # the heads' BatchNorm, synchronised as the reference's (CUDA only in torch)
            net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        # every rank samples its own stitch, so parameters unused on one rank are expected; of the ways to tell DDP,
        # this trains as the reference and was not slower than the others (benchmarks/bench_ddp.py)
        net = DistributedDataParallel(net, device_ids=[env.device.index] if env.device.type == "cuda" else None,
                                      find_unused_parameters=True)
    log = EpochLog(run_dir, start) if env.is_main else None
    for r in range(start, schedule.rounds):
        lr = optimizer.param_groups[0]["lr"]
        try:
            stats = train_one_epoch(net, task, loader, optimizer, scheduler, scaler, cfg.train, env, schedule, r,
                                    progress)
        except torch._dynamo.exc.TorchDynamoException as e:  # train.compile: no compiler, or a graph it cannot take
            cause = getattr(e, "inner_exception", None) or e
            raise SNNetError(f"train.compile: torch.compile failed ({type(cause).__name__}: {first_line(cause)}); "
                             f"set train.compile=false") from None
        scheduler.step(max(r + 1 - lag, 0))
        if log is not None:
            extra = {"iteration": r * schedule.round_steps + schedule.steps_in(r)} if schedule.by_iteration else {}
            log.write({"epoch": r, **extra, "lr": lr, **stats})
            print(f"{schedule.label(r)}: loss {stats['train_loss']:.4f}, "
                  f"{stats['images_per_sec']:.1f} img/s, {stats['epoch_time_s']:.1f} s")
        save_checkpoint(run_dir / CHECKPOINT_NAME, model, optimizer, scheduler, scaler, r, cfg, env)
        barrier()
    if log is not None:
        log.close()
    broadcast_buffers(model)  # every rank evaluates the model rank 0 saves
    return model
