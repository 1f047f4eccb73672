"""``snnet train``: Train an SN-Net, then evaluate every stitch."""
from __future__ import annotations

import time
from pathlib import Path

from ..distributed import cleanup, init_distributed
from ..evaluation import check_data, evaluate_and_report
from ..hub import write_model_card
from ..results import read_results
from ..run_state import CHECKPOINT_NAME, LOG_NAME, find_resume
from ..tasks import build_task, check_config, check_heads
from ..training import fit
from .options import load_run_config, run_dir_lock


def run(args) -> int:
    start = time.perf_counter()
    cfg = load_run_config(args)
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
        write_model_card(run_dir / "model", model, read_results(run_dir / "results.jsonl"), run_dir / "pareto.png")
    if env.is_main:
        names = [p.name for p in [*written, run_dir / LOG_NAME, run_dir / CHECKPOINT_NAME] if p.exists()]
        print(f"done in {time.perf_counter() - start:.0f} s. In {run_dir}/: "
              f"{', '.join(names)}, model/ (snnet.{type(model).__name__}.from_pretrained)")
    cleanup()
    return 0
