"""Time and peak memory of the least-squares initialisation, snnet's streaming one vs the naive recipe.

Both fit the 23 stitching layers of DeiT3-S/L-shaped anchors (random weights, same seed) on the
SAME ``--num-images`` random 224x224 images:
  snnet  - ``snnet.init_stitching_layers`` fed ``--batch-size`` images at a time (float64 normal
           equations accumulated per batch, solved once at the end);
  naive  - the reference recipe: run each anchor over all images at once keeping EVERY block's
           output (float32, ~2.3 GB for 100 images), then per layer ``torch.linalg.pinv([X 1]) @ Y``
           with all tokens (class token included) as rows. SL layer i maps small block i to large
           block 2i+1; LS layer k maps large block 2k+1 to small block k (k = 0..10).
Each method runs in its own fresh subprocess (this script with ``--method``). A background thread
samples the process RSS every ~2 ms (psutil, else /proc/self/statm); 'peak MB' is the highest
sample minus the RSS once the model and the images exist. Target: snnet <= 1/10 of naive's memory.
The parent then compares the solutions: relative Frobenius error of W, of b and of the fitted
outputs on a few of the images, snnet vs naive, and each fit's relative residual.
Runtime: each method runs both anchors over all images (~6.6 TMAC): minutes on 2 cores.

    .venv/bin/python benchmarks/bench_least_squares.py [--batch-sizes 10 5 1] [--num-images 100]
"""
import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

# On a machine shared with other CPU jobs, libgomp's spinning worker threads slow 2-thread runs several-fold
# (measured: a DeiT3-S forward 4x, a 1025x1025 eigh 8x slower); passive waiting avoids it. Override freely.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import timm  # noqa: E402
import torch  # noqa: E402

import snnet  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--num-images", type=int, default=100)
parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10],
                    help="snnet batch sizes to run; the first is compared with naive")
parser.add_argument("--skip-naive", action="store_true")
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--naive-rtol", type=float, help="rtol of the naive pinv (default: torch's, max(rows, cols) * eps)")
parser.add_argument("--probe-images", type=int, default=4, help="images the two solutions' outputs are compared on")
parser.add_argument("--method", choices=["snnet", "naive"], help=argparse.SUPPRESS)  # child process only
parser.add_argument("--batch-size", type=int, default=10, help=argparse.SUPPRESS)
parser.add_argument("--out", help=argparse.SUPPRESS)
args = parser.parse_args()


def rss_reader():
    try:
        import psutil
        proc = psutil.Process()
        return lambda: proc.memory_info().rss, "psutil"
    except ImportError:
        page = os.sysconf("SC_PAGE_SIZE")
        return lambda: int(open("/proc/self/statm").read().split()[1]) * page, "/proc/self/statm"


class PeakRSS(threading.Thread):
    """Samples RSS every ``interval`` seconds until stopped; ``peak`` is the highest sample."""

    def __init__(self, interval: float = 0.002):
        super().__init__(daemon=True)
        self.read, self.source = rss_reader()
        self.interval, self.stopped, self.samples = interval, threading.Event(), 0
        self.peak = self.read()

    def run(self):
        while not self.stopped.is_set():
            self.peak = max(self.peak, self.read())
            self.samples += 1
            time.sleep(self.interval)

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return max(self.peak, self.read())


def block_outputs(anchor, images: torch.Tensor) -> list[torch.Tensor]:
    x = anchor.norm_pre(anchor.patch_drop(anchor._pos_embed(anchor.patch_embed(images))))
    outs = []
    for blk in anchor.blocks:
        x = blk(x)
        outs.append(x)
    return outs


def pinv_fit(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.reshape(-1, x.shape[-1])
    sol = torch.linalg.pinv(torch.cat([x, x.new_ones(len(x), 1)], dim=1), rtol=args.naive_rtol) @ y.reshape(-1, y.shape[-1])
    return sol[:-1].T.contiguous(), sol[-1].contiguous()


@torch.inference_mode()
def naive(model, images: torch.Tensor) -> dict:
    small, large = block_outputs(model.backbone.anchors[0], images), block_outputs(model.backbone.anchors[1], images)
    sols = {f"SL{i}": pinv_fit(small[i], large[2 * i + 1]) for i in range(len(model.backbone.sl_layers))}
    sols.update({f"LS{k}": pinv_fit(large[2 * k + 1], small[k]) for k in range(len(model.backbone.ls_layers))})
    return sols


def layer_weights(model) -> dict:
    layers = {f"SL{i}": l for i, l in enumerate(model.backbone.sl_layers)} | {f"LS{k}": l for k, l in enumerate(model.backbone.ls_layers)}
    return {name: (l.weight.detach().clone(), l.bias.detach().clone()) for name, l in layers.items()}


def setup() -> tuple:
    """The same anchors (seed 0) and images (seed 1) in every process."""
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = snnet.SNNet([timm.create_model("deit3_small_patch16_224"), timm.create_model("deit3_large_patch16_224")]).eval()
    return model, torch.randn(args.num_images, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def child() -> None:
    """One method in this fresh process: build, measure the baseline RSS, run, save results."""
    model, images = setup()
    monitor = PeakRSS()
    base = monitor.peak
    monitor.start()
    t0 = time.perf_counter()
    if args.method == "naive":
        sols = naive(model, images)
    else:  # fills the model's own stitching layers, which exist before the baseline is taken
        snnet.init_stitching_layers(model, images.split(args.batch_size), progress=False)
    seconds = time.perf_counter() - t0
    peak = monitor.stop()
    if args.method == "snnet":
        sols = layer_weights(model)
    torch.save({"solutions": sols, "seconds": seconds, "base": base, "peak": peak,
                "samples": monitor.samples, "rss_source": monitor.source}, args.out)


def launch(method: str, batch_size: int, out: Path) -> dict:
    cmd = [sys.executable, __file__, "--method", method, "--batch-size", str(batch_size),
           "--num-images", str(args.num_images), "--threads", str(args.threads), "--out", str(out)]
    cmd += ["--naive-rtol", str(args.naive_rtol)] if args.naive_rtol is not None else []
    subprocess.run(cmd, check=True)
    return torch.load(out)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def parent() -> None:
    print(f"torch {torch.__version__}, {args.threads} threads of {os.cpu_count()} CPUs, OMP_WAIT_POLICY="
          f"{os.environ['OMP_WAIT_POLICY']}, {args.num_images} images 224x224, DeiT3-S/L random weights")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for bs in args.batch_sizes:
            runs[f"snnet bs={bs}"] = launch("snnet", bs, Path(tmp) / f"snnet{bs}.pt")
        if not args.skip_naive:
            runs["naive"] = launch("naive", args.num_images, Path(tmp) / "naive.pt")
    print(f"\n{'method':<16}{'seconds':>9}{'base MB':>9}{'peak MB':>9}{'x naive':>9}{'samples':>9}  (RSS from "
          f"{next(iter(runs.values()))['rss_source']})")
    naive_mb = (runs["naive"]["peak"] - runs["naive"]["base"]) / 2**20 if "naive" in runs else None
    for name, r in runs.items():
        mb = (r["peak"] - r["base"]) / 2**20
        ratio = f"{mb / naive_mb:.3f}" if naive_mb else "-"
        print(f"{name:<16}{r['seconds']:>9.1f}{r['base'] / 2**20:>9.0f}{mb:>9.0f}{ratio:>9}{r['samples']:>9}")
    sols = next(iter(runs.values()))["solutions"]  # snnet's fixed cost: float64 [X 1]^T [X 1] and [X 1]^T Y per layer
    eq_mb = sum(8 * (w.shape[1] + 1) * (w.shape[1] + 1 + w.shape[0]) for w, _ in sols.values()) / 2**20
    print(f"(snnet's {len(sols)} float64 normal equations alone take {eq_mb:.0f} MB)")
    if len(args.batch_sizes) > 1:  # batching must not change the solution beyond float rounding
        first = runs[f"snnet bs={args.batch_sizes[0]}"]["solutions"]
        for bs in args.batch_sizes[1:]:
            other = runs[f"snnet bs={bs}"]["solutions"]
            print(f"snnet bs={bs} vs bs={args.batch_sizes[0]}: max weight rel. error "
                  f"{max(rel(other[n][0], first[n][0]) for n in first):.2e}")
    if "naive" not in runs:
        return
    a, b = runs[f"snnet bs={args.batch_sizes[0]}"]["solutions"], runs["naive"]["solutions"]
    # outputs of both fits on the first few (training) images: agreement and residual ||XW^T + b - Y|| / ||Y||
    model, images = setup()
    with torch.inference_mode():
        small, large = (block_outputs(model.backbone.anchors[i], images[: args.probe_images]) for i in (0, 1))
    data = {f"SL{i}": (small[i], large[2 * i + 1]) for i in range(len(model.backbone.sl_layers))}
    data.update({f"LS{k}": (large[2 * k + 1], small[k]) for k in range(len(model.backbone.ls_layers))})
    errs = {}
    for name, (x, y) in data.items():
        ya, yb = (torch.nn.functional.linear(x, *sol[name]) for sol in (a, b))
        errs[name] = (rel(a[name][0], b[name][0]), rel(a[name][1], b[name][1]), rel(ya, yb), rel(ya, y), rel(yb, y))
    print(f"\nsnnet bs={args.batch_sizes[0]} (a) vs naive (b): relative errors ||a - b|| / ||b|| of W, b and of the"
          f" outputs on {args.probe_images} images; residual ||fit - Y|| / ||Y|| of each")
    print(f"{'layer':<7}{'W':>10}{'b':>10}{'outputs':>10}{'resid a':>10}{'resid b':>10}")
    for name in ("SL0", "SL5", "SL11", "LS0", "LS5", "LS10", "max"):  # max: over all 23 layers
        e = errs[name] if name != "max" else [max(col) for col in zip(*errs.values())]
        print(f"{name:<7}" + "".join(f"{v:>10.2e}" for v in e))

if __name__ == "__main__":
    child() if args.method else parent()
