"""The one evaluation path: every requested stitch on every batch (route prefixes shared), the results table,
its plots and report; exported ONNX files through the same metrics."""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, Subset

from ._atomic import together
from .config import DEFAULT_TASK, RunConfig
from .distributed import DistEnv, autocast
from .errors import SNNetError
from .export import precision_label, read_sidecar, sidecar_path, stitch_checker
from .model import TaskModel
from .progress import progress_bar
from .results import carry_over, format_table, frontier, plot_pareto, read_results, result_rows, write_results
from .runtime import OnnxStitch
from .selection import ChoosesStitches, is_stitchable
from .tasks import data_defaults
from .tasks._files import First


def make_eval_loader(dataset, batch_size: int, workers: int, env: DistEnv, max_images: int | None = None,
                     collate_fn=None) -> DataLoader:
    """Each rank takes every world_size-th image, without padding, so summed metrics are exact (a streamed dataset
    comes as this rank's own share: its first images, up to this rank's part of ``max_images``)."""
    if isinstance(dataset, IterableDataset):
        shard = dataset if max_images is None else First(dataset, len(range(env.rank, max_images, env.world_size)))
        return DataLoader(shard, batch_size=batch_size, num_workers=workers if max_images is None else 0,
                          pin_memory=env.device.type == "cuda", collate_fn=collate_fn)
    n = len(dataset) if max_images is None else min(max_images, len(dataset))
    shard = Subset(dataset, range(env.rank, n, env.world_size))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=workers,
                      pin_memory=env.device.type == "cuda", collate_fn=collate_fn)


def check_data(task, cfg: RunConfig, env: DistEnv, train: bool) -> None:
    """A training epoch with no step, or an evaluation with no image, is an error before any work."""
    if train and cfg.train.epochs > 0:
        streamed = isinstance(task.train_set, IterableDataset)  # its length is already this process's share
        n = len(task.train_set) * (env.world_size if streamed else 1)
        if n // env.world_size < cfg.data.batch_size:
            raise SNNetError(f"{n} training images make no full batch of data.batch_size={cfg.data.batch_size} on "
                             f"{env.world_size} process(es): lower data.batch_size or add images")
    if len(task.val_set) == 0:
        raise SNNetError("the evaluation set has no images")


@torch.no_grad()
def evaluate_stitches(model: TaskModel, task, loader: DataLoader, stitch_ids: list[int], env: DistEnv,
                      amp: bool = True, progress: bool = True, share_prefixes: bool = True,
                      amp_dtype: str = "float16") -> dict[int, dict[str, float]]:
    """Every requested stitch on every batch: each batch is loaded once and run through all stitches,
    by default in depth-first order of their route tree, each route resuming from the deepest activation
    it shares with those before it (``snnet.route_tree``; the same arithmetic as one stitch at a time).
    A stitch id of None evaluates ``model`` as it is (any classifier).

    Per stitch, ``task.eval_batch`` states are added over batches, ``task.reduce`` combines them across ranks and
    ``task.finalize`` gives the metrics (``snnet.tasks.Task``)."""
    model.eval()
    share = share_prefixes and is_stitchable(model) and None not in stitch_ids
    order = model.backbone.depth_first(stitch_ids) if share else stitch_ids
    acc: dict[int, torch.Tensor | list] = {}
    with model.backbone.sharing_prefixes(stitch_ids) if share else nullcontext() as cache:
        for batch in progress_bar(loader, desc=f"evaluating {len(stitch_ids)} stitches",
                                  enabled=progress and env.is_main, unit="batch"):
            for sid in order:
                if sid is not None:
                    model.select(sid)
                with autocast(env.device, amp, amp_dtype):
                    s = task.eval_batch(model, batch, env.device)
                acc[sid] = acc[sid] + s if sid in acc else s
            if cache is not None:
                cache.clear()
    return {sid: task.finalize(task.reduce(acc.get(sid), env.device)) for sid in stitch_ids}


def evaluate_and_report(model: ChoosesStitches, task, cfg: RunConfig, env: DistEnv, run_dir: Path,
                        stitch_ids: list[int] | None = None, progress: bool = True) -> list[Path] | None:
    """Evaluate stitches, then on rank 0 write results.jsonl/.csv and pareto.png (``results_subset.*`` and
    ``pareto_subset.png`` for a subset of the stitches), print the frontier and return the files written."""
    ids = stitch_ids or cfg.eval.stitches or model.stitch_ids
    for sid in ids:
        model.stitch(sid)  # unknown ids fail before any work
    loader = make_eval_loader(task.val_set, cfg.data.eval_batch_size or int(1.5 * cfg.data.batch_size),
                              cfg.data.workers, env, cfg.eval.max_images, task.eval_collate)
    start = time.perf_counter()
    metrics = evaluate_stitches(model, task, loader, list(ids), env, cfg.train.amp, progress, cfg.eval.share_prefixes,
                                cfg.train.amp_dtype)
    elapsed = time.perf_counter() - start
    if not env.is_main:
        return None
    rows = result_rows(model, metrics)
    # a subset never replaces the table of every stitch
    stem = "results" if sorted(ids) == sorted(model.stitch_ids) else "results_subset"
    note = carry_over(run_dir / f"{stem}.jsonl", rows)
    with together():  # the table, its plots, the task's report and the printed frontier: all of them or none
        files = list(write_results(run_dir, rows, stem))
        for k, (metric, higher) in enumerate(task.plot_metrics):  # pareto.png, then pareto_<metric>.png
            name = stem.replace("results", "pareto") + ("" if k == 0 else f"_{metric}")
            files.append(plot_pareto(rows, run_dir / f"{name}.png", metric, higher,
                                     title=f"{task.name}: {metric} of {len(rows)} stitches"))
        files += task.report(model, rows, run_dir, env.device)
        print(f"evaluated {len(rows)} stitches on {rows[0]['images']} images in {elapsed:.1f} s "
              f"({elapsed / len(rows):.2f} s per stitch)")
        print(f"Pareto frontier ({task.primary_metric}, {'higher' if task.higher_is_better else 'lower'} is better):")
        print(format_table(frontier(rows, task.primary_metric, task.higher_is_better), task.report_metrics))
        if note:
            print(note)
        sys.stdout.flush()
    return files


def _check_normalisation(path: Path, info: dict, cfg: RunConfig) -> None:
    """A file's sidecar tells its users how to normalise images: evaluating it with other numbers would measure a
    file nobody deploys."""
    _, mean, std = data_defaults(cfg)
    for key, ours in (("mean", mean), ("std", std)):
        if key not in info:  # files exported without a run (from a saved model alone) do not say
            continue
        theirs = info[key]
        if not (isinstance(theirs, list) and len(theirs) == len(ours) and all(
                isinstance(v, (int, float)) and abs(v - o) <= 1e-6 for v, o in zip(theirs, ours))):
            raise SNNetError(f"{path} takes images normalised with {key} {theirs!r}, the config's data with "
                             f"{list(ours)}: evaluate it with its own run's config")


def evaluate_exported(files: list[Path], task, cfg: RunConfig, env: DistEnv, run_dir: Path,
                      progress: bool = True, model: TaskModel | None = None) -> list[Path] | None:
    """Each exported ONNX stitch through ONNX Runtime on the run's validation data, into the run's results as
    precision-labelled columns (``acc1@int8``, ``acc1@fp32``, ...) beside the PyTorch ones, which stay. With the
    run's ``model``, each file is first checked to compute the stitch its sidecar names."""
    if not (run_dir / "results.jsonl").is_file():
        raise SNNetError(f"no results.jsonl in {run_dir}: evaluate the run first (snnet eval), then its ONNX files")
    rows = read_results(run_dir / "results.jsonl")
    by_id = {r["stitch_id"]: r for r in rows}
    check = stitch_checker(model, task.val_set) if model is not None else None
    checked: dict[tuple[int, str], tuple[Path, dict]] = {}  # (stitch, precision): two would write the same columns
    for f in files:
        info = read_sidecar(f)
        if info.get("export_format") != "onnx":
            raise SNNetError(f"{f} is {info.get('export_format')}, not ONNX")
        sid = info.get("stitch_id")
        if sid == "all":
            raise SNNetError(f"{f} holds every stitch of its network: eval --onnx takes files of one stitch (export "
                             f"them with --stitch ID), or use eval --quantize int8")
        if not isinstance(sid, int) or isinstance(sid, bool):
            raise SNNetError(f"{sidecar_path(f)} names no stitch id (stitch_id is {sid!r})")
        if info.get("task", DEFAULT_TASK) != task.name or sid not in by_id:
            raise SNNetError(f"{f} is stitch {sid} of a {info.get('task')} model, not in {run_dir / 'results.jsonl'}")
        _check_normalisation(f, info, cfg)
        label = precision_label(info)
        if (sid, label) in checked:
            raise SNNetError(f"{checked[sid, label][0]} and {f} are both stitch {sid} in {label}: give one of them")
        if check is not None:
            check(f, info)
        checked[sid, label] = f, info
    images = len(task.val_set) if cfg.eval.max_images is None else min(cfg.eval.max_images, len(task.val_set))
    for sid, _ in checked:  # a file's figures stand beside the stitch's PyTorch ones: on the same images
        if by_id[sid].get("images", images) != images:
            raise SNNetError(f"{run_dir / 'results.jsonl'} has stitch {sid}'s figures on {by_id[sid]['images']} "
                             f"images, this evaluation reads {images} (eval.max_images): evaluate on the same images")
    loader = make_eval_loader(task.val_set, cfg.data.eval_batch_size or int(1.5 * cfg.data.batch_size),
                              cfg.data.workers, env, cfg.eval.max_images, task.eval_collate)
    for f, info in checked.values():
        metrics = evaluate_stitches(OnnxStitch(f), task, loader, [None], env, amp=False, progress=progress)[None]
        label = precision_label(info)
        by_id[info["stitch_id"]].update({f"{k}@{label}": v for k, v in metrics.items() if k != "images"})
        if env.is_main:
            print(f"stitch {info['stitch_id']} {label} ({f}): " +
                  ", ".join(f"{k} {metrics[k]:.4g}" for k in task.report_metrics))
    return list(write_results(run_dir, rows)) if env.is_main else None
