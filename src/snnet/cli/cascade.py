"""``snnet cascade``: Early-exit cascades over a run's stitches: search on training images, validate."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Subset

from .._atomic import atomic_write_text, together
from ..cascade import (StageScorer, candidate_stitches, check_search_stages, evaluate_cascades, exit_flops,
                       plot_cascades, search, spread)
from ..config import load_config
from ..distributed import DistEnv, local_device
from ..errors import SNNetError
from ..evaluation import evaluate_stitches
from ..pretrained import load_pretrained
from ..progress import progress_bar
from ..results import frontier, read_results
from ..rundir import RunLock, run_of
from ..tasks import TASKS, build_task
from ..tasks._files import by_index


def run(args) -> int:
    check_search_stages(args.max_stages)  # before any work
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SNNetError("snnet cascade runs in one process: start it without torchrun")
    model_dir, run = run_of(args.run)
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError(f"no results.jsonl beside {model_dir}: a cascade draws its stages from the run's frontier; "
                         f"evaluate the run first (snnet eval)")
    if not (run / "config.yaml").is_file():
        raise SNNetError(f"no config.yaml in {run}: the cascade search reads the run's training images")
    cfg = load_config(str(run / "config.yaml"))
    if not TASKS[cfg.task].answer_is_label:
        raise SNNetError(f"{run} is a {cfg.task} run: cascades exit on a classifier's confidence (docs/cascades.md)")
    rows = read_results(run / "results.jsonl", "acc1")
    device = local_device(args.device, "auto")
    model = load_pretrained(model_dir).to(device)
    with RunLock(run):  # it writes into the run: no training, evaluation or profile beside it
        return _cascade(args, cfg, model, rows, run, device)


def _cascade(args, cfg, model, rows: list[dict], run: Path, device) -> int:
    start = time.perf_counter()
    cfg.data.shapes.preload = False  # the built-in scenes: render only the images read
    task = build_task(cfg, progress=False, train=True)
    flops = model.flops_table()
    known = [r for r in rows if r["stitch_id"] in flops]
    if not known:
        raise SNNetError(f"{run / 'results.jsonl'} has no row for a stitch of {run / 'model'}: evaluate the run again")
    stages = candidate_stitches(model.stitches, [r["stitch_id"] for r in frontier(known, "acc1")], flops,
                                args.max_candidates)
    # held-out training images under the evaluation transform, a seeded sample (an ImageFolder is sorted by class)
    by_index(task.init_set, "the cascade's calibration")
    by_index(task.val_set, "the cascade's validation")
    chosen = torch.randperm(len(task.init_set), generator=torch.Generator().manual_seed(cfg.train.seed))
    calibration = Subset(task.init_set, chosen[:args.calibration_images].tolist())
    batch = cfg.data.eval_batch_size or int(1.5 * cfg.data.batch_size)
    loader = DataLoader(calibration, batch_size=batch, num_workers=cfg.data.workers)
    # the one evaluation path (route prefixes shared), keeping each image's figures; float32, as cascades run
    scores = evaluate_stitches(model, StageScorer(args.confidence), loader, stages, DistEnv(0, 1, 0, device),
                               amp=False, progress=not args.no_progress)
    front = search(scores, lambda ids: exit_flops([model.stitch(i) for i in ids], model.shapes), args.max_stages)
    points = spread(front, args.points)
    val = Subset(task.val_set, range(min(cfg.eval.max_images or len(task.val_set), len(task.val_set))))
    bar = progress_bar(DataLoader(val, batch_size=batch, num_workers=cfg.data.workers),
                       desc=f"validation: {len(points)} cascades", unit="batch", enabled=not args.no_progress)
    with torch.no_grad():
        found = evaluate_cascades(model, task, bar, points, args.confidence, device)
    for r in found:
        r["calibration_images"] = len(calibration)
    with together():  # the table, its plot and the printed figures: all of them or none
        atomic_write_text(run / "cascade.jsonl", "".join(json.dumps(r) + "\n" for r in found))
        plot = plot_cascades(known, found, run / "pareto_cascade.png",
                             f"cascades of up to {args.max_stages} stages ({args.confidence}) over {len(known)} "
                             f"stitches")
        print(f"{len(found)} operating points from {len(front)} on the calibration frontier ({len(calibration)} "
              f"training images, {len(stages)} candidate stitches), validated on {found[0]['images']} images in "
              f"{time.perf_counter() - start:.0f} s")
        print(f"{'GFLOPs':>8} {'acc1':>7} {'acc5':>7}  stages (thresholds) -> exit shares")
        for r in found:
            stages_text = " > ".join(f"{sid}" + (f" ({t:.3f})" if k < len(r["thresholds"]) else "")
                                     for k, (sid, t) in enumerate(zip(r["stitches"], r["thresholds"] + [0])))
            shares = "/".join(f"{100 * x:.0f}" for x in r["exit_share"])
            print(f"{r['gflops']:8.4f} {r['acc1']:7.2f} {r['acc5']:7.2f}  {stages_text} -> {shares} %")
        print(f"written: {run / 'cascade.jsonl'}, {plot}")
        sys.stdout.flush()
    return 0
