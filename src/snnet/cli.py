"""The ``snnet`` command: train, eval, flops, select. A thin layer over library calls."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import SNNetError, first_line


def _add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required,
                   help="YAML file, or a packaged config name (quickstart, imagenet_deit3_s_l, ...)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--output-dir", help="run directory (default: the config's output_dir)")


def _add_share_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-share-prefixes", action="store_true",
                   help="evaluate one stitch at a time (same results as sharing route prefixes, slower)")


def _add_quantize_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--quantize", choices=["int8"], help=what)
    p.add_argument("--quantize-method", choices=["dynamic", "static"],
                   help="dynamic (weights int8, activations at run time; default) or static QDQ (calibrated)")
    p.add_argument("--calibration-images", type=_at_least(1),
                   help="static: training images to calibrate on, read through the run's data config (default 100)")


def _load(args, writes: bool = True):
    """The config of ``--config`` and its overrides; a command that ``writes`` into the run follows a moved one."""
    from .config import load_config
    from .rundir import saved_run_of

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
    from .distributed import on_main
    from .rundir import RunLock, check_run_dir

    lock = on_main(lambda: RunLock(check_run_dir(run_dir)).acquire(), env)
    try:
        for note in lock.notes if lock is not None else ():
            print(note)
        yield
    finally:
        if lock is not None:
            lock.release()


def cmd_train(args) -> int:
    from .distributed import cleanup, init_distributed
    from .engine import CHECKPOINT_NAME, LOG_NAME, check_data, evaluate_and_report, find_resume, fit
    from .tasks import build_task, check_config, check_heads

    start = time.perf_counter()
    cfg = _load(args)
    env = init_distributed(args.device)
    resume = None if args.no_resume else (args.resume or "auto")
    run_dir = Path(cfg.output_dir)
    fresh = find_resume(run_dir, resume) is None
    check_config(cfg)
    notes = check_heads(cfg, load_weights=fresh)
    for note in notes if env.is_main else ():
        print(note)
    with run_dir_lock(run_dir, env):
        task = build_task(cfg, progress=not args.no_progress and env.is_main)
        check_data(task, cfg, env, train=True)
        model = fit(cfg, task, env, resume=resume, progress=not args.no_progress)
        if env.is_main:
            model.save_pretrained(run_dir / "model")
        written = evaluate_and_report(model, task, cfg, env, run_dir, progress=not args.no_progress)
    if env.is_main and run_dir / "results.jsonl" in written:  # the model card gets the evaluated table
        from .hub import write_model_card
        from .results import read_results
        write_model_card(run_dir / "model", model, read_results(run_dir / "results.jsonl"), run_dir / "pareto.png")
    if env.is_main:
        names = [p.name for p in [*written, run_dir / LOG_NAME, run_dir / CHECKPOINT_NAME] if p.exists()]
        print(f"done in {time.perf_counter() - start:.0f} s. In {run_dir}/: "
              f"{', '.join(names)}, model/ (snnet.{type(model).__name__}.from_pretrained)")
    cleanup()
    return 0


def read_trained(path: str | None, cfg):
    """What ``--checkpoint`` names, read before any data so a bad file fails fast: a saved model or a state dict.

    A run directory, a saved model, a training checkpoint or a released .pth.
    """
    from .pretrained import load_pretrained
    from .files import load_torch_checkpoint
    from .engine import CHECKPOINT_NAME
    from .rundir import saved_model_dir
    from .tasks import TASKS

    target = Path(path) if path else Path(cfg.output_dir) / "model"
    if not target.exists():
        raise SNNetError(f"nothing to evaluate at {target}: pass --checkpoint (a run or model directory, "
                         f"a checkpoint.pt or a released snnetv2_*.pth)")
    if target.is_dir():
        saved = saved_model_dir(target)  # a saved model of any task: config.json says which
        if saved is not None:
            return load_pretrained(saved)
        if (target / CHECKPOINT_NAME).is_file():
            target = target / CHECKPOINT_NAME
        else:
            raise SNNetError(f"no trained model in {target}: pass --checkpoint")
    # a released file of some tasks (segmentation) is mmengine's, with its logging state (read as inert stand-ins)
    return {"path": target, "obj": load_torch_checkpoint(target, logging_state=TASKS[cfg.task].released_logging_state)}


def trained_task(found) -> str | None:
    """The task a trained model or snnet training checkpoint was made for (None for a released file)."""
    from .config import DEFAULT_TASK

    if not isinstance(found, dict):
        return found.task
    obj = found["obj"]
    saved = obj.get("config") if isinstance(obj, dict) else None
    return saved.get("task", DEFAULT_TASK) if isinstance(saved, dict) else None


def trained_classes(found) -> int | None:
    """Classes of the trained heads in :func:`read_trained`'s result, when it has them."""
    import torch

    if not isinstance(found, dict):
        return found.num_classes
    obj = found["obj"]
    state = obj.get("model", obj.get("state_dict", obj))
    for key in ("anchors.1.head.weight", "decode_head.conv_seg.weight"):  # classifier, segmentation head
        head = state.get(key) if isinstance(state, dict) else None
        if isinstance(head, torch.Tensor) and head.ndim >= 2:
            return int(head.shape[0])
    return None


def model_for_eval(found, cfg, num_classes: int):
    """The model of :func:`read_trained`'s result; state dicts go into the config's model."""
    from .checkpoint import load_official_checkpoint
    from .pretrained import load_state_checked
    from .tasks import build_model

    if not isinstance(found, dict):
        return found
    obj = found["obj"]
    model = build_model(cfg, num_classes, load_weights=False)
    if {"optimizer", "scheduler", "rng", "config"} <= set(obj):  # our own training checkpoint
        load_state_checked(model, obj["model"], f"checkpoint {found['path']}")
    else:
        load_official_checkpoint(model, found["path"], obj)
    return model


def parse_stitch_ids(text: str | None) -> list[int] | None:
    """``--stitches 0,5,25``: distinct integers, or a one-line error."""
    from .config import repeated_ids

    if not text:
        return None
    try:
        ids = [int(s) for s in text.split(",")]
    except ValueError:
        raise SNNetError(f"--stitches takes stitch ids separated by commas, got {text!r}") from None
    if repeated := repeated_ids(ids):
        raise SNNetError(f"--stitches repeats stitch ids {repeated}")
    return ids


def cmd_eval(args) -> int:
    from .distributed import cleanup, init_distributed
    from .engine import check_data, evaluate_and_report
    from .tasks import build_task, check_config, num_classes

    cfg = _load(args)
    ids = parse_stitch_ids(args.stitches)
    _quantize_method(args)  # its flags mean nothing without --quantize: said before any work
    env = init_distributed(args.device)
    found = read_trained(args.checkpoint, cfg)
    held = trained_task(found)
    if held is not None and held != cfg.task:
        raise SNNetError(f"{args.checkpoint or cfg.output_dir} holds a {held} model but the config's task is "
                         f"{cfg.task}: evaluate it with a {held} config")
    meta = check_config(cfg)
    trained = meta if isinstance(found, dict) else found
    for sid in ids or ():
        trained.stitch(sid)
    classes, heads = num_classes(cfg), trained_classes(found)
    if heads is not None and heads != classes:
        raise SNNetError(f"the data has {classes} classes but the trained heads have {heads}")
    run_dir = Path(cfg.output_dir)
    _check_own_run(run_dir, args.checkpoint)
    exported = bool(args.onnx or args.quantize)
    with run_dir_lock(run_dir, env):
        task = build_task(cfg, progress=not args.no_progress and env.is_main, train=False)
        check_data(task, cfg, env, train=False)
        if exported:
            written = _eval_exported(args, cfg, env, task, found, ids, run_dir)
        else:
            model = model_for_eval(found, cfg, task.num_classes).to(env.device)
            written = evaluate_and_report(model, task, cfg, env, run_dir, ids, progress=not args.no_progress)
    if env.is_main:
        print(f"results in {run_dir}/: {', '.join(p.name for p in written)}")
    cleanup()
    return 0


def _check_own_run(run_dir: Path, checkpoint: str | None) -> None:
    """A run's results table describes its own model: the evaluation of another checkpoint goes elsewhere."""
    from .rundir import saved_model_dir

    if checkpoint is None or saved_model_dir(run_dir / "model") is None:
        return
    run, target = run_dir.resolve(), Path(checkpoint).resolve()
    if target != run and run not in target.parents:
        raise SNNetError(f"{run_dir} is the run of another model ({run_dir / 'model'}): the results of {checkpoint} "
                         f"would replace its table; choose another --output-dir")


def _eval_exported(args, cfg, env, task, found, ids, run_dir: Path) -> list[Path] | None:
    """``snnet eval --onnx FILE ...``, or ``--quantize int8``: the stitches exported to int8 ONNX on the fly, then
    each file through ONNX Runtime into the run's results (precision-labelled columns)."""
    import tempfile

    from .engine import evaluate_exported
    from .export import export_stitch
    from .tasks import build_task

    if args.onnx and args.quantize:
        raise SNNetError("give --onnx files or --quantize int8 (which exports them), not both")
    if args.onnx and ids:
        raise SNNetError("--stitches chooses the stitches --quantize int8 exports; each --onnx file is the stitch its "
                         "sidecar names: give the files alone")
    method = _quantize_method(args)
    model = model_for_eval(found, cfg, task.num_classes).cpu().eval()  # ONNX Runtime runs on the CPU
    if args.onnx:
        return evaluate_exported([Path(f) for f in args.onnx], task, cfg, env, run_dir, not args.no_progress, model)
    size = model.img_size
    quantized = {"quantize": args.quantize, "method": method}
    calibrate_on = build_task(cfg, progress=False) if method == "static" else None  # its training images
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for sid in ids or cfg.eval.stitches or model.stitch_ids:
            if calibrate_on is not None:  # the calibration batches are an iterator: one per file
                quantized.update(_calibration(calibrate_on, args.calibration_images or 100, size))
            files.append(export_stitch(model, sid, "onnx", Path(tmp) / f"stitch{sid}.onnx", size, **quantized)[0])
        return evaluate_exported(files, task, cfg, env, run_dir, not args.no_progress)


def cmd_flops(args) -> int:
    """The stitch table of a config: no weights, no data (anchors are built on the meta device)."""
    from .tasks import build_model

    cfg = _load(args, writes=False)
    model = build_model(cfg, load_weights=False, device="meta")
    size = (args.img_size, args.img_size) if args.img_size is not None else None
    if args.dense and model.backbone is not model:  # a task model over a dense backbone
        raise SNNetError(f"--dense is for classification configs: {cfg.task} FLOPs count the dense backbone "
                         f"and the head already")
    dense = {"dense": True} if args.dense else {}
    flops = {s.id: model.flops(s.id, size, **dense) for s in model.stitches}
    rows = [{"stitch_id": s.id, "kind": s.kind, "gflops": flops[s.id] / 1e9,
             "params_m": model.params(s.id) / 1e6, "route": s.describe()} for s in model.stitches]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'id':>4} {'kind':<6} {'GFLOPs':>9} {'params(M)':>9}  route")
    for r in rows:
        print(f"{r['stitch_id']:>4} {r['kind']:<6} {r['gflops']:9.3f} {r['params_m']:9.2f}  {r['route']}")
    print(f"{len(rows)} stitches ({cfg.model.version}, {cfg.task})")
    return 0


def cmd_select(args) -> int:
    if args.cascade:
        return _select_cascade(args)
    from .results import format_table, frontier
    from .selection import choose_stitch, precision_rows
    from .tasks import TASKS

    task = results_task(Path(args.results))
    rows, metric, higher = budget_rows(args, args.results, task)
    rows = precision_rows(rows, metric, args.precision)
    note = _untimed(rows, args.precision) if args.max_latency_ms is not None else None
    best = choose_stitch(rows, metric, higher, args.max_gflops, args.max_latency_ms)
    shown = (*TASKS[task].report_metrics, metric, "latency_ms") + (("precision",) if args.precision != "fp32" else ())
    metrics = tuple(dict.fromkeys(k for k in shown if k in best))
    budget = f"{args.max_gflops} GFLOPs" if args.max_gflops is not None else f"{args.max_latency_ms} ms"
    print(f"best stitch under {budget} by {metric} ({'higher' if higher else 'lower'} is better):")
    print(format_table([best], metrics))
    if args.frontier:
        cost, key, limit = (("flops", "gflops", args.max_gflops) if args.max_gflops is not None
                            else ("latency_ms", "latency_ms", args.max_latency_ms))
        print("frontier within the budget:")
        costed = [r for r in rows if cost in r and all(m in r for m in metrics)]
        print(format_table([r for r in frontier(costed, metric, higher, cost) if r[key] <= limit], metrics))
    if note:
        print(note)
    return 0


def _select_cascade(args) -> int:
    from .cascade import best_cascade, read_cascades
    from .selection import is_number

    if args.max_gflops is None:
        raise SNNetError("a cascade's budget is its mean GFLOPs per image: give --max-gflops (latency varies per "
                         "image)")
    if args.metric not in (None, "acc1") or args.precision != "fp32":
        raise SNNetError("--cascade chooses by acc1 at float32: drop --metric and --precision")
    rows = read_cascades(Path(args.results))
    best = best_cascade(rows, args.max_gflops)
    print(f"best cascade under {args.max_gflops} GFLOPs on average by acc1:")
    print(f"  stitches {best['stitches']}, thresholds {best['thresholds']} ({best.get('confidence', 'max_prob')})")
    print(f"  {best['gflops']:.4f} GFLOPs per image on average, acc1 {best['acc1']:.2f}"
          + (f", acc5 {best['acc5']:.2f}" if is_number(best.get("acc5")) else "")
          + (f"; exits per stage {', '.join(f'{100 * x:.0f} %' for x in best['exit_share'])}"
             if isinstance(best.get("exit_share"), list) else ""))
    if args.frontier:
        print("cascades within the budget:")
        for r in sorted((r for r in rows if r["gflops"] <= args.max_gflops), key=lambda r: r["gflops"]):
            print(f"  {r['gflops']:8.4f} GFLOPs  acc1 {r['acc1']:6.2f}  stitches {r['stitches']} thresholds "
                  f"{[round(t, 4) for t in r['thresholds']]}")
    return 0


def _untimed(rows: list[dict], precision: str) -> str | None:
    """A latency budget chooses among timed rows only: a note of the rows without a time, or an error when
    ``--precision any`` has no float32 time from the runtime that timed the int8 files."""
    untimed = {p: sum(r["precision"] == p and "latency_ms" not in r for r in rows) for p in ("fp32", "int8")}
    if precision == "any" and untimed["fp32"] == sum(r["precision"] == "fp32" for r in rows):
        raise SNNetError("--precision any compares times of one runtime, and no float32 stitch was timed in ONNX "
                         "Runtime (latency_onnx_ms): run snnet profile --onnx --quantize int8 first")
    left = [f"{n} {p} {'row' if n == 1 else 'rows'}" for p, n in untimed.items() if n]
    if left:
        runtime = " in ONNX Runtime" if precision == "any" else ""
        verb = "has" if sum(untimed.values()) == 1 else "have"
        return f"note: {' and '.join(left)} of the results {verb} no latency{runtime}, left out"
    return None


def results_task(path: Path) -> str:
    """The task a results table belongs to: its run's config.yaml says, else the first task whose primary metric
    is a column (the table is read for that only)."""
    import yaml

    from .config import DEFAULT_TASK
    from .results import read_results
    from .tasks import TASKS

    run = path if path.is_dir() else path.parent
    if (run / "config.yaml").is_file():
        try:
            saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SNNetError(f"cannot parse {run / 'config.yaml'}: {first_line(e)}") from None
        if isinstance(saved, dict) and saved.get("task", DEFAULT_TASK) in TASKS:
            return saved.get("task", DEFAULT_TASK)
    columns = read_results(path)[0]
    return next((name for name, t in TASKS.items() if t.primary_metric in columns), DEFAULT_TASK)


def budget_rows(args, results: str | Path, task: str) -> tuple[list[dict], str, bool]:
    """(results rows, metric, higher is better) a budget chooses by, the one rule of select and export:
    ``--metric`` (a column of the results; its direction known for every metric a task writes, or given by
    --higher-is-better / --lower-is-better for any other column), else the task's primary metric."""
    from .results import read_results
    from .tasks import TASKS, metric_direction

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


def pick_stitch(args, model, run: Path | None) -> int:
    """``--stitch``, or the best stitch of the run's results under ``--max-gflops`` / ``--max-latency-ms``."""
    from .selection import choose_stitch

    if args.stitch is not None:
        return model.stitch(args.stitch).id
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError("a budget needs the run's results.jsonl: give a run directory, or --stitch")
    rows, metric, higher = budget_rows(args, run, model.task)
    return choose_stitch(rows, metric, higher, args.max_gflops, args.max_latency_ms)["stitch_id"]


def cmd_export(args) -> int:
    from contextlib import nullcontext
    from functools import partial

    from ._atomic import together
    from .pretrained import load_pretrained
    from .export import export_network, export_stitch, sidecar_path
    from .rundir import RunLock, check_output, run_info, run_of

    model_dir, run = run_of(args.checkpoint)
    if not args.output.strip():
        raise SNNetError("--output is empty: give a file name")
    output = Path(args.output)
    data = [output.with_name(output.name + ".data")] if args.stitch == "all" else []  # weights past 1.8 GB
    check_output([output, sidecar_path(output), *data], model_dir, run)
    if args.quantize and args.format != "onnx":
        raise SNNetError(f"--quantize int8 takes --format onnx (ONNX Runtime runs it), not {args.format}")
    if args.stitch == "all" and args.format != "onnx":
        raise SNNetError(f"--stitch all writes one ONNX file with a stitch_id input: give --format onnx, not "
                         f"{args.format}")
    method = _quantize_method(args)
    model = load_pretrained(model_dir)
    every = args.stitch == "all"
    sid = None if every else pick_stitch(args, model, run)
    size = tuple(args.img_size) if args.img_size else model.img_size
    quantized, calibrate = {}, None
    if args.quantize:
        quantized = {"quantize": args.quantize, "method": method}
        if method == "static":
            if run is None or not (run / "config.yaml").is_file():
                raise SNNetError("static quantisation calibrates on the run's training images: give --checkpoint "
                                 "a run directory with its config.yaml")
            from .config import load_config
            from .tasks import build_task

            task = build_task(load_config(str(run / "config.yaml")), progress=False)
            calibrate = partial(_calibration, task, args.calibration_images or 100, size)  # fresh batches per file
    into_run = run is not None and run.resolve() in output.resolve().parents
    how = f"{args.format}" + (f", int8 ({method})" if args.quantize else "")
    # a writer into the run holds it, as training does; the files are in place only once the line is printed
    with RunLock(run) if into_run else nullcontext(), together():
        if every:
            from .results import read_results

            results = {r["stitch_id"]: r for r in read_results(run)} if run and (run / "results.jsonl").is_file() else {}
            written = export_network(model, output, size, args.batch, run_info(run, model), results, **quantized,
                                     calibrate=calibrate, progress=not args.no_progress)
            print(f"{len(model.stitch_ids)} stitches in one file, exported as {how}: {', '.join(map(str, written))}")
        else:
            written = export_stitch(model, sid, args.format, output, size, args.batch, run_info(run, model),
                                    **quantized, **(calibrate() if calibrate else {}))
            print(f"stitch {sid} ({model.describe(sid)}, {model.flops(sid, size) / 1e9:.3f} GFLOPs at "
                  f"{size[0]}x{size[1]}) exported as {how}: {', '.join(map(str, written))}")
        sys.stdout.flush()
    return 0


def _quantize_method(args) -> str:
    """The quantisation method ``--quantize-method`` asks for (default dynamic), checked against the other flags."""
    if args.quantize_method and not args.quantize:
        raise SNNetError("--quantize-method applies to --quantize int8")
    method = args.quantize_method or "dynamic"
    if args.calibration_images is not None and method != "static":
        raise SNNetError("--calibration-images calibrates static quantisation: add --quantize-method static")
    return method


def _calibration(task, num_images: int, size: tuple[int, int]) -> dict:
    """Static quantisation's calibration: ``num_images`` of the training ``task``'s images (its run's own data
    config, with the evaluation transform: what a deployed stitch sees)."""
    from .quantize import calibration_batches

    cfg = task.cfg
    batches = calibration_batches(task.init_set, num_images, size, cfg.train.seed)
    return {"calibration": batches, "calibration_info": {
        "images": num_images, "split": "train", "transform": "eval", "seed": cfg.train.seed,
        "dataset": cfg.data.dataset, "root": cfg.data.root}}


def cmd_profile(args) -> int:
    from .distributed import local_device
    from .rundir import RunLock, run_of

    model_dir, run = run_of(args.run)
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError(f"no results.jsonl beside {model_dir}: evaluate the run first (snnet eval)")
    device = local_device(args.device, "auto")
    with RunLock(run):  # it rewrites the run's results: no training, evaluation or other profile beside it
        return _profile(args, run, model_dir, device)


def _profile(args, run: Path, model_dir: Path, device) -> int:
    import torch

    from .pretrained import load_pretrained
    from .latency import onnx_latency, stitch_latency
    from ._atomic import together
    from .results import read_results, plot_pareto, write_results
    from .tasks import TASKS

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    model = load_pretrained(model_dir).to(device)
    rows = read_results(run / "results.jsonl")
    ids = parse_stitch_ids(args.stitches) or [r["stitch_id"] for r in rows]
    for sid in ids:
        model.stitch(sid)
    size = tuple(args.img_size) if args.img_size else model.img_size
    timed = stitch_latency(model, ids, size, args.batch, args.repeats, args.warmup, progress=not args.no_progress)
    where = f"{device.type}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    # ONNX Runtime on the CPU, each stitch's float32 file and its int8 file side by side:
    # (median column, IQR column) -> {stitch: (median, IQR)}
    extra: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}
    if args.onnx or args.quantize:
        import tempfile

        from .export import export_stitch
        from .quantize import quantize_onnx
        model = model.cpu()
        with tempfile.TemporaryDirectory() as tmp:
            for sid in ids:
                fp32 = export_stitch(model, sid, "onnx", Path(tmp) / f"{sid}.onnx", size, args.batch)[0]
                files = {("latency_onnx_ms", "latency_onnx_iqr_ms"): fp32} if args.onnx else {}
                if args.quantize:
                    files[("latency_ms@int8", "latency_iqr_ms@int8")] = int8 = Path(tmp) / f"{sid}_int8.onnx"
                    quantize_onnx(fp32, int8)  # dynamic, as snnet export --quantize int8 by default
                for columns, path in files.items():
                    extra.setdefault(columns, {})[sid] = onnx_latency(str(path), args.batch, size,
                                                                      torch.get_num_threads(), args.repeats,
                                                                      args.warmup)
    setting = f"batch {args.batch}, {size[0]}x{size[1]}, {where}"
    stale = 0
    for r in rows:
        retimed = r["stitch_id"] in timed
        # one table, one setting: figures of another go; those of this setting that this run does not measure
        # again (ONNX, int8) stay
        if r.get("latency_setting", setting) != setting:
            stale += not retimed
            for key in [k for k in r if k.startswith("latency_")]:
                del r[key]
        if retimed:
            r["latency_ms"], r["latency_iqr_ms"] = timed[r["stitch_id"]]
            r["latency_setting"] = setting
            for (ms, iqr), by_id in extra.items():
                r[ms], r[iqr] = by_id[r["stitch_id"]]
    if stale:
        print(f"dropped the latency of {stale} stitches measured in another setting")
    task = TASKS[model.task]
    profiled = [r for r in rows if "latency_ms" in r]
    with together():  # the table, its latency plot and the printed figures: all of them or none
        write_results(run, rows)
        plot = plot_pareto(profiled, run / "pareto_latency.png", task.primary_metric, task.higher_is_better,
                           title=f"{task.primary_metric} vs latency ({setting})", cost="latency_ms")
        heads = {"latency_onnx_ms": "onnx ms", "latency_ms@int8": "int8 ms"}
        print(f"{'id':>4} {'GFLOPs':>9} {'ms':>9} {'IQR':>7}" + "".join(f" {heads[c[0]]:>9}" for c in extra)
              + "  route")
        for sid in ids:
            r = next(r for r in rows if r["stitch_id"] == sid)
            onnx = "".join(f" {r[c[0]]:9.2f}" for c in extra)
            print(f"{sid:>4} {r['gflops']:9.3f} {r['latency_ms']:9.2f} {r['latency_iqr_ms']:7.2f}{onnx}  "
                  f"{r.get('route', '')}")
        print(f"latency of {len(ids)} stitches ({setting}) written to {run / 'results.jsonl'}; plot {plot}")
        sys.stdout.flush()
    return 0


def cmd_cascade(args) -> int:
    from .config import load_config
    from .distributed import local_device
    from .pretrained import load_pretrained
    from .results import read_results
    from .rundir import RunLock, run_of

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SNNetError("snnet cascade runs in one process: start it without torchrun")
    model_dir, run = run_of(args.run)
    if run is None or not (run / "results.jsonl").is_file():
        raise SNNetError(f"no results.jsonl beside {model_dir}: a cascade draws its stages from the run's frontier; "
                         f"evaluate the run first (snnet eval)")
    if not (run / "config.yaml").is_file():
        raise SNNetError(f"no config.yaml in {run}: the cascade search reads the run's training images")
    cfg = load_config(str(run / "config.yaml"))
    if cfg.task != "classification":
        raise SNNetError(f"{run} is a {cfg.task} run: cascades exit on a classifier's confidence (docs/cascades.md)")
    rows = read_results(run / "results.jsonl", "acc1")
    device = local_device(args.device, "auto")
    model = load_pretrained(model_dir).to(device)
    with RunLock(run):  # it writes into the run: no training, evaluation or profile beside it
        return _cascade(args, cfg, model, rows, run, device)


def _cascade(args, cfg, model, rows: list[dict], run: Path, device) -> int:

    import torch
    from torch.utils.data import DataLoader, Subset

    from ._atomic import atomic_write_text, together
    from .cascade import candidate_stitches, evaluate_cascades, exit_flops, plot_cascades, search, spread, \
        stage_scores
    from .progress import progress_bar
    from .results import frontier
    from .tasks import build_task

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
    chosen = torch.randperm(len(task.init_set), generator=torch.Generator().manual_seed(cfg.train.seed))
    calibration = Subset(task.init_set, chosen[:args.calibration_images].tolist())
    batch = cfg.data.eval_batch_size or int(1.5 * cfg.data.batch_size)
    loader = DataLoader(calibration, batch_size=batch, num_workers=cfg.data.workers)
    bar = progress_bar(loader, desc=f"calibration: {len(stages)} stitches", unit="batch", enabled=not args.no_progress)
    scores = stage_scores(model, bar, stages, args.confidence, device)
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


def cmd_demo(args) -> int:
    from .demo import launch
    from .distributed import local_device

    launch(args.run, args.port, args.host, str(local_device(args.device)))
    return 0


def cmd_serve(args) -> int:
    """The network behind the Open Inference Protocol until SIGTERM or Ctrl+C (requests in flight finish): one
    process (uvicorn), or ``--replicas N`` Ray Serve replicas behind Ray's HTTP proxy."""
    import signal

    from .demo import check_address

    if not 0 < args.slo_headroom <= 1:
        raise SNNetError(f"--slo-headroom must be in (0, 1], got {args.slo_headroom:g}")
    for flag, low in (("slo_ms", 0), ("max_body_mb", 0), ("max_wait_ms", None)):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and (value > low if low is not None else value >= 0)):
            raise SNNetError(f"--{flag.replace('_', '-')} must be a {'positive' if low is not None else 'non-negative'} "
                             f"number, got {value:g}")
    check_address(args.host, args.port)
    if args.max_replicas is not None and (args.replicas is None or args.max_replicas < args.replicas):
        raise SNNetError("--max-replicas needs --replicas N, and at least N" if args.replicas is None else
                         f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}")
    options = {k: getattr(args, k) for k in ("checkpoint", "onnx", "device", "name", "slo_ms", "slo_headroom",
                                             "max_batch", "max_wait_ms", "max_queue", "max_body_mb")}
    where = f"http://{args.host}:{args.port}/v2/models/{args.name}"
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again: here, the command's end
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        if args.replicas:
            _serve_ray(options, args, where)
        else:
            _serve_here(options, args, where)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("snnet serve: stopped")
    return 0


def _serve_here(options: dict, args, where: str) -> None:
    import uvicorn

    from .serve import build_server, log_figures

    app, scheduler, served = build_server(**options, log=print)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    scheduler.start()
    logger = log_figures(app.state.registry, 60.0)
    print(f"snnet serve: model {args.name!r} ({served.task.name}, {len(served.rows)} stitches, {served.platform}) on "
          f"{where} (Ctrl+C stops it)")
    sys.stdout.flush()
    try:
        server.run()
    finally:
        logger.set()
        scheduler.stop()


def _serve_ray(options: dict, args, where: str) -> None:
    """Ray Serve: ``--replicas`` copies of the same application, Ray's proxy spreading requests over them."""
    import signal
    import threading

    from .serve import ray_application

    try:
        import ray
        from ray import serve
    except ImportError:
        raise SNNetError("--replicas runs on Ray Serve: pip install 'snnet[ray]'") from None
    stop = threading.Event()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(ray_application(options, args.replicas, args.max_replicas), name="snnet", route_prefix="/",
                  blocking=False)
        scaling = f" (up to {args.max_replicas} under load)" if (args.max_replicas or 0) > args.replicas else ""
        print(f"snnet serve: model {args.name!r} on {args.replicas} Ray Serve replicas{scaling}, {where} "
              f"(Ctrl+C stops it)")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):  # short waits: the handler runs between them
                pass
        except KeyboardInterrupt:
            pass
        serve.shutdown()
    finally:
        ray.shutdown()


def _at_least(low: int):
    """An argparse type: an integer >= ``low``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value
    return parse


def _stitch_or_all(text: str) -> int | str:
    """An argparse type: a stitch id, or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a stitch id or all, got {text!r}") from None


def _port(text: str) -> int:
    value = _at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {value}")
    return value


def _host(text: str) -> str:
    import ipaddress
    import re

    if re.fullmatch(r"[0-9.]+", text):  # dotted numbers must be an IPv4 address
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an IP address or a host name, got {text!r}") from None
    return text


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints its usage lines first)."""

    def error(self, message: str):
        raise SNNetError(message)


def add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", help="metric a budget chooses by (default: the task's: acc1, mIoU, rmse, bbox_AP)")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", action="store_true", help="for a --metric column snnet does not write")
    direction.add_argument("--lower-is-better", action="store_true", help="for a --metric column snnet does not write")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="snnet", description="Stitchable ViTs (SN-Netv2): train once, deploy any stitch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("train", help="train an SN-Net, then evaluate every stitch")
    _add_config(p)
    p.add_argument("--resume", help="checkpoint to resume from (default: the run directory's own, if any)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run directory has a checkpoint")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_share_flag(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate stitches of a trained model or a released checkpoint")
    _add_config(p)
    p.add_argument("--checkpoint", help="run dir, saved model dir, checkpoint.pt or a released snnetv2_*.pth "
                                        "(default: <output_dir>/model)")
    p.add_argument("--stitches", help="comma-separated stitch ids (default: all); a subset writes results_subset.*")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--onnx", nargs="+", metavar="FILE",
                   help="exported ONNX stitches to evaluate with ONNX Runtime into the run's results (acc1@int8, ...)")
    _add_quantize_flags(p, "export the stitches to int8 ONNX and evaluate those")
    _add_share_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("flops", help="per-stitch FLOPs, parameters and routes of a config (no data needed)")
    _add_config(p)
    p.add_argument("--img-size", type=_at_least(1), help="input size (default: the anchors')")
    p.add_argument("--dense", action="store_true", help="count the dense backbone (taps, no head)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("select", help="the best stitch under a GFLOPs or latency budget, from a results file")
    p.add_argument("--results", required=True, help="results.jsonl or a run directory")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--max-gflops", type=float)
    budget.add_argument("--max-latency-ms", type=float, help="needs latency_ms in the results (snnet profile)")
    add_metric_options(p)
    p.add_argument("--frontier", action="store_true", help="also list the frontier within the budget")
    p.add_argument("--cascade", action="store_true",
                   help="choose among the run's cascades (snnet cascade) by their mean GFLOPs per image")
    p.add_argument("--precision", choices=["fp32", "int8", "any"], default="fp32",
                   help="the PyTorch float32 figures (default), the int8 files' (snnet eval / profile --quantize), "
                        "or the best of both per stitch")
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("export", help="one stitch as a standalone ONNX, TorchScript or safetensors model")
    p.add_argument("--checkpoint", required=True, help="a run directory (with model/ and results) or a saved model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stitch", type=_stitch_or_all,
                       help="stitch id, or all: every stitch in one ONNX file with a stitch_id input")
    which.add_argument("--max-gflops", type=float, help="the best stitch of the run's results under this budget")
    which.add_argument("--max-latency-ms", type=float, help="the same by measured latency (snnet profile)")
    add_metric_options(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    p.add_argument("--output", required=True, help="file to write; a JSON sidecar goes beside it (<output>.json)")
    p.add_argument("--img-size", type=_at_least(1), nargs=2, metavar=("H", "W"), help="input size (default: the anchors')")
    p.add_argument("--batch", type=_at_least(1), default=1, help="example batch for tracing (ONNX keeps the batch dynamic)")
    _add_quantize_flags(p, "quantise the ONNX file with ONNX Runtime's tools")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--stitch all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("profile", help="measure every stitch's latency on this device into the run's results")
    p.add_argument("--run", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    p.add_argument("--stitches", help="comma-separated stitch ids (default: every stitch in the results)")
    p.add_argument("--batch", type=_at_least(1), default=1)
    p.add_argument("--img-size", type=_at_least(1), nargs=2, metavar=("H", "W"), help="input size (default: the anchors')")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=_at_least(1), help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=_at_least(1), default=10, help="timed forwards per stitch (median and IQR)")
    p.add_argument("--warmup", type=_at_least(0), default=3)
    p.add_argument("--onnx", action="store_true", help="also time each stitch exported to ONNX Runtime (CPU)")
    p.add_argument("--quantize", choices=["int8"],
                   help="also time each stitch's int8 ONNX file (dynamic) under ONNX Runtime: latency_ms@int8")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("serve", help="an HTTP server (Open Inference Protocol, KServe v2) choosing the stitch per "
                                     "request")
    p.add_argument("--checkpoint", default="runs/quickstart", help="a run directory or a saved model")
    p.add_argument("--onnx", help="serve this one-file ONNX export (snnet export --stitch all) by ONNX Runtime")
    p.add_argument("--host", type=_host, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=_port, default=8000)
    p.add_argument("--name", default="snnet", help="the model's name in the protocol's paths")
    p.add_argument("--slo-ms", type=float, help="the deadline of a request that names no budget (default: none, "
                                                 "the most accurate stitch)")
    p.add_argument("--slo-headroom", type=float, default=0.7,
                   help="a deadline's share the scheduler plans to finish within (run times vary; default 0.7)")
    p.add_argument("--max-batch", type=_at_least(1), default=8, help="images run together at most")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=_at_least(1), default=256, help="requests waiting at most (then 503)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="the largest request body (then 413)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--replicas", type=_at_least(1), help="run as this many Ray Serve replicas (pip install "
                                                          "'snnet[ray]')")
    p.add_argument("--max-replicas", type=_at_least(1),
                   help="with --replicas N: Ray Serve adds replicas up to this many as requests queue (N at least)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("cascade", help="find cascades of stitches that stop early on easy images (anytime inference)")
    p.add_argument("--run", default="runs/quickstart", help="an evaluated classification run (default: runs/quickstart)")
    p.add_argument("--max-stages", type=_at_least(1), default=3, help="stitches in a cascade at most (default 3)")
    p.add_argument("--calibration-images", type=_at_least(1), default=2000,
                   help="training images the search fits thresholds on (never validation images; default 2000)")
    p.add_argument("--max-candidates", type=_at_least(1), default=16,
                   help="stitches the stages are drawn from at most (the frontier first; default 16)")
    p.add_argument("--points", type=_at_least(1), default=12, help="operating points validated at most (default 12)")
    p.add_argument("--confidence", choices=["max_prob", "margin"], default="max_prob",
                   help="the score an exit compares with its threshold: the top softmax probability, or its margin "
                        "over the second")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_cascade)

    p = sub.add_parser("demo", help="a Gradio page: upload an image, set a budget, see the best stitch answer")
    p.add_argument("--run", default="runs/quickstart", help="an evaluated run directory (default: runs/quickstart)")
    p.add_argument("--port", type=_port, default=7860)
    p.add_argument("--host", type=_host, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=cmd_demo)
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Options, with ``section.key=value`` overrides accepted anywhere on the line."""
    for arg in sys.argv[1:] if argv is None else argv:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:  # bytes the file system holds that no UTF-8 config, sidecar or table can
            shown = os.fsencode(arg).decode("utf-8", "backslashreplace")
            raise SNNetError(f"argument '{shown}' is not UTF-8 text: snnet records paths in UTF-8 files (configs, "
                             f"sidecars, results); rename it") from None
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    unknown = [a for a in extra if a.startswith("-") or "=" not in a]
    if unknown or (extra and not hasattr(args, "overrides")):
        raise SNNetError(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    if isinstance(getattr(args, "onnx", None), list):  # eval --onnx FILE... takes the overrides written after it
        import re

        moved = [a for a in args.onnx if re.match(r"[A-Za-z_][\w.]*=", a) and not Path(a).exists()]
        args.onnx = [a for a in args.onnx if a not in moved]
        args.overrides = [*args.overrides, *moved]
        if not args.onnx:
            raise SNNetError("--onnx takes exported ONNX files, got only overrides")
    return args


def _one_line(e: BaseException) -> str:
    # errors raised inside DataLoader workers arrive wrapped with the worker's traceback
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__).split("SNNetError: ", 1)[-1]


class _PipeSafe:
    """stdout that goes quiet when its reader has gone (``snnet ... | head``): output is dropped and
    the work goes on, instead of a BrokenPipeError ending training. Any other failure to write it (a full
    disk) is a one-line error."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _guard(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as e:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the buffered rest goes nowhere, quietly
            os.close(devnull)
            if isinstance(e, BrokenPipeError):
                return None
            raise SNNetError(f"cannot write to standard output: {e.strerror or e}") from None

    def write(self, text: str):
        return self._guard("write", text)

    def flush(self):
        return self._guard("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _PipeSafe(stdout)
    try:
        args = parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # buffered output that cannot be written fails the command
        return code
    except SNNetError as e:
        print(f"snnet: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snnet: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout


if __name__ == "__main__":
    sys.exit(main())
