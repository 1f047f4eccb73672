"""What the commands share when they run: the run config they load, the run lock, stitch ids, budgets."""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .. import quantize
from ..config import load_config, repeated_ids
from ..distributed import on_main
from ..errors import SNNetError
from ..results import read_results
from ..rundir import RunLock, check_run_dir, saved_run_of
from ..tasks import TASKS, metric_direction
from ..tasks._files import by_index


def load_run_config(args, writes: bool = True):
    """The config of ``--config`` and its overrides; a command that ``writes`` into the run follows a moved one."""
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "output_dir", None):
        cfg.output_dir = args.output_dir
    elif writes and not any(o.startswith("output_dir=") for o in args.overrides):
        run = saved_run_of(args.config, cfg.output_dir)
        if run is not None and os.environ.get("RANK", "0") == "0":
            print(f"note: {args.config} is the run {run}'s own config, whose output_dir {cfg.output_dir} is elsewhere "
                  f"(the run was moved): writing into {run}")
        if run is not None:
            cfg.output_dir = str(run)
    if getattr(args, "no_share_prefixes", False):
        cfg.eval.share_prefixes = False
    return cfg


@contextmanager
def run_dir_lock(run_dir: Path, env) -> Iterator[None]:
    """Hold the run directory (checked writable, locked by rank 0) for a training or an evaluation."""
    lock = on_main(lambda: RunLock(check_run_dir(run_dir)).acquire(), env)
    try:
        for note in lock.notes if lock is not None else ():
            print(note)
        yield
    finally:
        if lock is not None:
            lock.release()


def parse_stitch_ids(text: str | None) -> list[int] | None:
    """``--stitches 0,5,25``: distinct integers, or a one-line error."""
    if not text:
        return None
    try:
        ids = [int(s) for s in text.split(",")]
    except ValueError:
        raise SNNetError(f"--stitches takes stitch ids separated by commas, got {text!r}") from None
    if repeated := repeated_ids(ids):
        raise SNNetError(f"--stitches repeats stitch ids {repeated}")
    return ids


def quantize_method(args) -> str:
    """The quantisation method ``--quantize-method`` asks for (default dynamic), checked against the other flags."""
    if args.quantize_method and not args.quantize:
        raise SNNetError("--quantize-method applies to --quantize int8")
    method = args.quantize_method or "dynamic"
    if args.calibration_images is not None and method != "static":
        raise SNNetError("--calibration-images calibrates static quantisation: add --quantize-method static")
    return method


def calibration_batches(task, num_images: int, size: tuple[int, int]) -> dict:
    """Static quantisation's calibration: ``num_images`` of the training ``task``'s images (its run's own data
    config, with the evaluation transform: what a deployed stitch sees)."""
    cfg = task.cfg
    batches = quantize.calibration_batches(by_index(task.init_set, "static int8 calibration"), num_images, size,
                                           cfg.train.seed)
    return {"calibration": batches, "calibration_info": {
        "images": num_images, "split": "train", "transform": "eval", "seed": cfg.train.seed,
        "dataset": cfg.data.dataset, "root": cfg.data.root}}


def budget_rows(args, results: str | Path, task: str) -> tuple[list[dict], str, bool]:
    """(results rows, metric, higher is better) a budget chooses by, the one rule of select and export:
    ``--metric`` (a column of the results; its direction known for every metric a task writes, or given by
    --higher-is-better / --lower-is-better for any other column), else the task's primary metric."""
    metric = args.metric or TASKS[task].primary_metric
    rows = read_results(results, metric)
    known = metric_direction(metric)
    flag = True if args.higher_is_better else False if args.lower_is_better else None
    if known is None and flag is None:
        raise SNNetError(f"--metric {metric} is no metric snnet writes: say --higher-is-better or --lower-is-better")
    if known is not None and flag not in (None, known):
        raise SNNetError(f"--metric {metric} is {'higher' if known else 'lower'}-is-better: drop "
                         f"--{'lower' if known else 'higher'}-is-better")
    return rows, metric, known if known is not None else flag
