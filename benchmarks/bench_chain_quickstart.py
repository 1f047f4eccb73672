"""The three-anchor quickstart against its two-anchor sub-networks, trained the same way, side by side.

Trains ``quickstart_chain`` (small / medium / large anchors) and the networks over two of its anchors with the
same config otherwise (S/M, M/L and S/L, the last being ``quickstart`` itself), one after another in this process,
then prints per network: stitches, distinct FLOPs levels, points on the Pareto frontier (top-1 vs FLOPs), the
FLOPs range and the frontier's top-1, and draws every network's frontier on one plot.

    .venv/bin/python benchmarks/bench_chain_quickstart.py [--out runs/bench_chain] [--plot docs/quickstart_chain_pareto.png]
"""
import argparse
import time
from pathlib import Path

import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from snnet._atomic import atomic_path
from snnet.cli import main
from snnet.config import PACKAGE_DIR
from snnet.results import frontier, read_results

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/bench_chain", help="one run directory per network under it")
parser.add_argument("--plot", default="docs/quickstart_chain_pareto.png")
parser.add_argument("--reuse", action="store_true", help="read the networks' results from --out, train none")
parser.add_argument("overrides", nargs="*", help="config overrides for every network, e.g. train.epochs=1")
args = parser.parse_args()

NETWORKS = {"S/M/L": (0, 1, 2), "S/M": (0, 1), "M/L": (1, 2), "S/L": (0, 2)}
COLORS = {"S/M/L": "tab:red", "S/M": "tab:blue", "M/L": "tab:green", "S/L": "tab:gray"}
chain = yaml.safe_load((PACKAGE_DIR / "configs" / "quickstart_chain.yaml").read_text())
out = Path(args.out)
out.mkdir(parents=True, exist_ok=True)
rows = {}
for name, picked in NETWORKS.items():
    cfg = dict(chain, model=dict(chain["model"], anchors=[chain["model"]["anchors"][i] for i in picked]),
               output_dir=str(out / name.replace("/", "")))
    path = out / f"{name.replace('/', '')}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    start = time.perf_counter()
    if not args.reuse:
        assert main(["train", "--config", str(path), "--no-progress", "--no-resume", *args.overrides]) == 0
        print(f"{name}: trained and evaluated in {time.perf_counter() - start:.0f} s")
    rows[name] = read_results(Path(cfg["output_dir"]) / "results.jsonl", "acc1")

print("\n| network | stitches | FLOPs levels | frontier points | MFLOPs range | frontier top-1 |")
print("| --- | ---: | ---: | ---: | --- | --- |")
for name, r in rows.items():
    front = frontier(r, "acc1")
    mflops = sorted({x["flops"] for x in r})
    print(f"| {name} | {len(r)} | {len(mflops)} | {len(front)} | {mflops[0] / 1e6:.2f}-{mflops[-1] / 1e6:.2f} | "
          f"{front[0]['acc1']:.2f}-{front[-1]['acc1']:.2f} |")

fig = Figure(figsize=(7, 4.5), dpi=120)
FigureCanvasAgg(fig)
ax = fig.add_subplot()
ax.scatter([x["flops"] / 1e6 for x in rows["S/M/L"]], [x["acc1"] for x in rows["S/M/L"]], s=10,
           color=COLORS["S/M/L"], alpha=0.25, label="S/M/L: every stitch")
for name, r in rows.items():
    front = frontier(r, "acc1")
    ax.plot([x["flops"] / 1e6 for x in front], [x["acc1"] for x in front], marker="o", ms=3.5,
            lw=2.2 if name == "S/M/L" else 1.2, color=COLORS[name], label=f"{name}: frontier ({len(front)} points)")
ax.set_xlabel("MFLOPs")
ax.set_ylabel("top-1 (%)")
ax.set_title("quickstart_chain (S/M/L) against its two-anchor sub-networks,\nall trained the same way",
             fontsize=10)
ax.grid(alpha=0.3)
ax.legend(fontsize=8, loc="lower right")
fig.tight_layout()
with atomic_path(Path(args.plot)) as tmp:
    fig.savefig(tmp, format="png")
print(f"plot: {args.plot}")
