"""Fine-tuning the quickstart network on a small real dataset of new classes (issue 28, point 3).

The data: scikit-learn's handwritten digits (1,797 real 8x8 scans of 10 digits, shipped inside the
scikit-learn wheel: ``pip install scikit-learn`` or ``--digits-csv`` to its ``digits.csv.gz``), upscaled to
32x32 RGB and written as an ImageFolder (500 validation images, the rest for training). Each setting trains
``snnet train --config quickstart`` on it for a few epochs; printed: the two anchors' and the best stitch's top-1.

    python benchmarks/bench_finetune.py --epochs 3 --out /tmp/finetune
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from snnet.cli import main

SETTINGS = {  # name: overrides beyond the data and the epochs
    "heads kept (the default when the count matches)": [],
    "model.replace_head=true": ["model.replace_head=true"],
    "replace_head + ros_anchor_share=0.25": ["model.replace_head=true", "train.ros_anchor_share=0.25"],
}


def digits_folder(root: Path, csv: Path | None, num_val: int = 500) -> Path:
    """The digits as ``root/{train,val}/digitK/*.png`` (32x32 RGB), split by a seeded permutation."""
    if csv is None:
        import sklearn
        csv = Path(sklearn.__file__).parent / "datasets" / "data" / "digits.csv.gz"
    data = np.loadtxt(gzip.open(csv), delimiter=",")
    images, labels = data[:, :64].reshape(-1, 8, 8), data[:, 64].astype(int)
    for i, k in enumerate(np.random.default_rng(0).permutation(len(labels))):
        folder = root / ("val" if i < num_val else "train") / f"digit{labels[k]}"
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (images[k] / 16 * 255).astype(np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{k}.png")
    return root


def run(out: Path, data: Path, epochs: int, extra: list[str]) -> dict[int, float]:
    argv = ["train", "--config", "quickstart", "data.dataset=imagefolder", f"data.root={data}",
            f"train.epochs={epochs}", "train.init_images=500", *extra, "--output-dir", str(out), "--no-progress"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0, argv
    return {r["stitch_id"]: r["acc1"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}


def main_() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_finetune"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--digits-csv", type=Path, help="sklearn/datasets/data/digits.csv.gz (default: scikit-learn's)")
    args = parser.parse_args()
    data = digits_folder(args.out / "digits", args.digits_csv)
    print(f"{'setting':<42} {'small':>7} {'large':>7} {'best':>7}  (top-1 %, {args.epochs} epochs, chance 10 %)")
    for i, (name, extra) in enumerate(SETTINGS.items()):
        acc = run(args.out / f"run{i}", data, args.epochs, extra)
        print(f"{name:<42} {acc[0]:7.2f} {acc[1]:7.2f} {max(acc.values()):7.2f}")


if __name__ == "__main__":
    main_()
