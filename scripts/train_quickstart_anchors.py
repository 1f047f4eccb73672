"""Train quickstart anchors from scratch and ship them with the package.

The anchors are plain timm ViTs trained with snnet's own loop (``snnet.training.fit``) on the built-in
shapes scenes; the recipe is ``configs/quickstart_anchors.yaml`` (its anchors are the roles small, medium,
large). The weights go to ``src/snnet/assets/quickstart/{role}_p{patch}.safetensors`` (float16), their
validation accuracy to ``anchors.json`` beside them. Each anchor resumes if interrupted.

    python scripts/train_quickstart_anchors.py --anchors small large                 # the dense quickstarts' pair
    python scripts/train_quickstart_anchors.py --patch-size 8 --anchors small large  # the classification one's
    python scripts/train_quickstart_anchors.py --patch-size 8 --anchors medium       # the chain's middle anchor
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
from safetensors.torch import save_file

from snnet._atomic import atomic_path, atomic_write_text
from snnet.anchors import CLASS_NAMES_KEY
from snnet.config import PACKAGE_DIR, load_config
from snnet.distributed import init_distributed
from snnet.evaluation import evaluate_stitches, make_eval_loader
from snnet.training import fit
from snnet.tasks import build_task

ASSETS = PACKAGE_DIR / "assets" / "quickstart"


ROLES = ("small", "medium", "large")  # the config's anchors, in order


def main(patch_size: int, roles: list[str], overrides: list[str]) -> None:
    cfg = load_config("quickstart_anchors", [f"model.anchors.{i}.kwargs.patch_size={patch_size}"
                                             for i in range(len(ROLES))] + overrides)
    env = init_distributed("cpu")
    task = build_task(cfg)
    run_root = Path(cfg.output_dir)
    report_path = ASSETS / "anchors.json"
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    for role, anchor in zip(ROLES, cfg.model.anchors):
        if role not in roles:
            continue
        name = f"{role}_p{patch_size}"
        cfg.output_dir = str(run_root / name)
        model = timm.create_model(anchor.name, **anchor.kwargs)
        start = time.perf_counter()
        model = fit(cfg, task, env, resume="auto", model=model)
        loader = make_eval_loader(task.val_set, 256, cfg.data.workers, env)
        metrics = evaluate_stitches(model, task, loader, [None], env, progress=False)[None]
        print(f"{name}: top-1 {metrics['acc1']:.2f} %, {time.perf_counter() - start:.0f} s")
        state = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
        with atomic_path(ASSETS / f"{name}.safetensors") as tmp:  # the classes its head was trained on, recorded
            save_file(state, str(tmp), metadata={CLASS_NAMES_KEY: json.dumps(task.class_names(cfg))})
        report[name] = {"name": anchor.name, "kwargs": anchor.kwargs, "val_acc1": round(metrics["acc1"], 2),
                        "val_images": metrics["images"], "epochs": cfg.train.epochs}
        atomic_write_text(report_path, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patch-size", type=int, default=4, help="both anchors' patch size (default 4)")
    parser.add_argument("--anchors", nargs="+", choices=ROLES, default=list(ROLES), help="the roles to train")
    parser.add_argument("overrides", nargs="*", help="config overrides, section.key=value")
    args = parser.parse_args()
    main(args.patch_size, args.anchors, args.overrides)
