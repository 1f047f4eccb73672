"""Train the quickstart's two anchors from scratch and ship them with the package.

Both anchors are plain timm ViTs trained with snnet's own loop (``snnet.engine.fit``) on the built-in
shapes scenes; the recipe is ``configs/quickstart_anchors.yaml``. The weights go to
``src/snnet/assets/quickstart/{small,large}.safetensors`` (float16), their validation accuracy to
``anchors.json`` beside them. About an hour on a 2-core CPU; each anchor resumes if interrupted.

    python scripts/train_quickstart_anchors.py [section.key=value ...]
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import timm
from safetensors.torch import save_file

from snnet._atomic import atomic_path, atomic_write_text
from snnet.config import PACKAGE_DIR, load_config
from snnet.distributed import init_distributed
from snnet.engine import evaluate_stitches, fit, make_eval_loader
from snnet.tasks import build_task

ASSETS = PACKAGE_DIR / "assets" / "quickstart"


def main(overrides: list[str]) -> None:
    cfg = load_config("quickstart_anchors", overrides)
    env = init_distributed("cpu")
    task = build_task(cfg)
    run_root = Path(cfg.output_dir)
    report = {}
    for role, anchor in zip(("small", "large"), cfg.model.anchors):
        cfg.output_dir = str(run_root / role)
        model = timm.create_model(anchor.name, **anchor.kwargs)
        start = time.perf_counter()
        model = fit(cfg, task, env, resume="auto", model=model)
        loader = make_eval_loader(task.val_set, 256, cfg.data.workers, env)
        metrics = evaluate_stitches(model, task, loader, [None], env, progress=False)[None]
        print(f"{role}: top-1 {metrics['acc1']:.2f} %, {time.perf_counter() - start:.0f} s")
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(ASSETS / f"{role}.safetensors") as tmp:
            save_file(state, str(tmp))
        report[role] = {"name": anchor.name, "kwargs": anchor.kwargs, "val_acc1": round(metrics["acc1"], 2),
                        "val_images": metrics["images"], "epochs": cfg.train.epochs}
    atomic_write_text(ASSETS / "anchors.json", json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
