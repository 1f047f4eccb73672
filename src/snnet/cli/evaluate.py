"""``snnet eval``: Evaluate stitches of a trained model, a released checkpoint, or exported ONNX files."""
from __future__ import annotations

import tempfile
from pathlib import Path

from ..checkpoint import model_for_eval, read_trained, trained_classes, trained_task
from ..distributed import cleanup, init_distributed
from ..errors import SNNetError
from ..evaluation import check_data, evaluate_and_report, evaluate_exported
from ..export import export_stitch
from ..rundir import saved_model_dir
from ..tasks import build_task, check_config, num_classes
from .options import calibration_batches, load_run_config, parse_stitch_ids, quantize_method, run_dir_lock


def run(args) -> int:
    cfg = load_run_config(args)
    ids = parse_stitch_ids(args.stitches)
    quantize_method(args)  # its flags mean nothing without --quantize: said before any work
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
    classes, heads = num_classes(cfg), trained_classes(found, cfg.task)
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
    if checkpoint is None or saved_model_dir(run_dir / "model") is None:
        return
    run, target = run_dir.resolve(), Path(checkpoint).resolve()
    if target != run and run not in target.parents:
        raise SNNetError(f"{run_dir} is the run of another model ({run_dir / 'model'}): the results of {checkpoint} "
                         f"would replace its table; choose another --output-dir")


def _eval_exported(args, cfg, env, task, found, ids, run_dir: Path) -> list[Path] | None:
    """``snnet eval --onnx FILE ...``, or ``--quantize int8``: the stitches exported to int8 ONNX on the fly, then
    each file through ONNX Runtime into the run's results (precision-labelled columns)."""
    if args.onnx and args.quantize:
        raise SNNetError("give --onnx files or --quantize int8 (which exports them), not both")
    if args.onnx and ids:
        raise SNNetError("--stitches chooses the stitches --quantize int8 exports; each --onnx file is the stitch its "
                         "sidecar names: give the files alone")
    method = quantize_method(args)
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
                quantized.update(calibration_batches(calibrate_on, args.calibration_images or 100, size))
            files.append(export_stitch(model, sid, "onnx", Path(tmp) / f"stitch{sid}.onnx", size, **quantized)[0])
        return evaluate_exported(files, task, cfg, env, run_dir, not args.no_progress)
