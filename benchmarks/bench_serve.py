"""``snnet serve`` under open-loop load: three policies (always the largest anchor, always the smallest, adaptive
under an SLO) at 0.5x, 1x, 2x and 4x the largest stitch's batch-1 throughput, Poisson arrivals on loopback.

The network: DeiT3-S/B-shaped random anchors (12 blocks each, widths 384/768) at ``--size`` pixels (default 64:
stitches of several milliseconds, well above the server's own cost per request, which is measured first with a
no-op model), or ``--run DIR`` (a trained run: its accuracy ranks the stitches and is averaged over the requests).
Without a results table the policy ranks stitches by GFLOPs, and the mean GFLOPs of the stitches that served stand
in for accuracy. The SLO is ``--slo-factor`` (2) times the largest stitch's batch-1 latency. Prints p50/p95/p99
latency, the share within the SLO, throughput and the mean metric per policy and load, the server's resident
memory against a process holding the network for evaluation, and draws ``--plot`` (serve_load.png).

    .venv/bin/python benchmarks/bench_serve.py [--size 64] [--requests 200] [--seconds 20] [--threads 2] [--json F]
"""
import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--run", help="a trained run to serve (default: DeiT3-S/B-shaped random anchors)")
parser.add_argument("--size", type=int, default=64, help="input size of the DeiT3-S/B-shaped network")
parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 1, 2, 4])
parser.add_argument("--requests", type=int, default=200, help="requests per policy and load, at most")
parser.add_argument("--seconds", type=float, default=20, help="arrivals per policy and load last at most this")
parser.add_argument("--slo-factor", type=float, default=2.0)
parser.add_argument("--max-batch", type=int, default=8)
parser.add_argument("--threads", type=int, default=os.cpu_count())
parser.add_argument("--policies", nargs="+", default=["largest", "smallest", "adaptive"],
                    choices=["largest", "smallest", "adaptive"])
parser.add_argument("--slo-headroom", type=float, default=0.7, help="the server's --slo-headroom")
parser.add_argument("--plot", default="serve_load.png")
parser.add_argument("--json", help="also write the figures to this JSON file (benchmarks/gpu_check.py reads it)")
args = parser.parse_args()
for flag, path in (("--json", args.json), ("--plot", args.plot)):
    if path and not Path(path).resolve().parent.is_dir():  # found out now, not after the loads
        parser.error(f"{flag} {path}: its folder does not exist")
ENV = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}


def network(tmp: Path) -> Path:
    """The model directory to serve."""
    if args.run:
        return Path(args.run)
    import torch

    from snnet import build_model
    from snnet.config import load_config

    s = args.size
    cfg = load_config("imagenet_deit3_s_b", [f"model.anchors.{i}.{k}" for i in (0, 1) for k in (
        "pretrained=false", f"kwargs.img_size={s}")] + [f"data.input_size={s}"])
    torch.manual_seed(0)
    build_model(cfg, load_weights=False).save_pretrained(tmp / "model")
    return tmp / "model"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(model: Path, noop: bool = False) -> tuple[subprocess.Popen, int]:
    port = free_port()
    code = ("import sys, snnet.serve as s\n"
            "if sys.argv[1] == 'noop':\n"  # the server's own cost: a model that returns at once
            "    s.Served.run = lambda self, sid, x: x[:, :1, 0, 0]\n"
            "from snnet.cli import main\nsys.exit(main(sys.argv[2:]))")
    proc = subprocess.Popen([sys.executable, "-c", code, "noop" if noop else "model", "serve", "--checkpoint",
                             str(model), "--port", str(port), "--max-batch", str(args.max_batch), "--max-queue",
                             "100000", "--slo-headroom", str(args.slo_headroom)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    import urllib.request
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1)
            return proc, port
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(proc.stdout.read())
            time.sleep(0.2)
    raise SystemExit("the server did not start")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def load(port: int, size: int, rate: float, parameters: dict) -> list[tuple[float, int, bool, float]]:
    """Open-loop Poisson arrivals at ``rate`` per second: (seconds to answer, stitch, deadline met, seconds from the
    first arrival to the answer) per request."""
    import httpx

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size), dtype=np.float32)
    head = json.dumps({"parameters": parameters, "inputs": [{"name": "images", "shape": [1, 3, size, size],
                                                             "datatype": "FP32",
                                                             "parameters": {"binary_data_size": x.nbytes}}],
                       "outputs": [{"name": "output", "parameters": {"binary_data": True}}]}).encode()
    body = head + x.tobytes()
    headers = {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}
    gaps = rng.exponential(1 / rate, args.requests)
    arrivals = np.cumsum(gaps)
    arrivals = arrivals[arrivals <= args.seconds]
    results = []
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=2000)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=600) as client:
        async def one(at: float) -> None:
            await asyncio.sleep(max(at - (time.perf_counter() - t0), 0))
            start = time.perf_counter()
            reply = await client.post("/v2/models/snnet/infer", content=body, headers=headers)
            n = int(reply.headers["inference-header-content-length"])
            params = json.loads(reply.content[:n])["parameters"]
            end = time.perf_counter()
            results.append((end - start, params["stitch_id"], params["deadline_met"], end - t0))
        t0 = time.perf_counter()
        await asyncio.gather(*(one(a) for a in arrivals))
    return results


def main() -> None:
    import urllib.request

    with tempfile.TemporaryDirectory() as tmp:
        model = network(Path(tmp))
        meta_proc, port = start(model, noop=True)
        meta = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/snnet").read())
        size = meta["inputs"][0]["shape"][-1]
        noop = asyncio.run(load(port, size, 200.0, {"stitch_id": meta["parameters"]["stitches"][0]["stitch_id"]}))
        stop(meta_proc)
        overhead = 1000 * float(np.median([r[0] for r in noop]))
        print(f"the server's own cost (no-op model, {len(noop)} requests at 200/s): median {overhead:.2f} ms a request")

        proc, port = start(model)
        meta = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/models/snnet").read())
        stitches = meta["parameters"]["stitches"]
        metric = meta["parameters"]["metric"] or "gflops"
        score = {s["stitch_id"]: s[metric] for s in stitches}
        anchors = sorted((s for s in stitches if s["kind"] == "anchor"), key=lambda s: s["gflops"])
        small, large = anchors[0]["stitch_id"], anchors[-1]["stitch_id"]
        probe = asyncio.run(load(port, size, 2.0, {"stitch_id": large}))  # one at a time: its batch-1 latency
        large_ms = 1000 * float(np.median([r[0] for r in probe]))
        slo = args.slo_factor * large_ms
        capacity = 1000 / large_ms
        print(f"network: {len(stitches)} stitches at {size}x{size}; largest anchor {large} answers in {large_ms:.1f} ms "
              f"at batch 1 ({capacity:.0f}/s); SLO {slo:.1f} ms; ranking by {metric}")
        policies = {"largest": {"stitch_id": large}, "smallest": {"stitch_id": small},
                    "adaptive": {"max_latency_ms": slo}}
        table = []
        print(f"{'load':>5} {'policy':<9} {'done/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'in SLO':>7} "
              f"{'mean ' + metric:>12}")
        for factor in args.loads:
            for name in args.policies:
                params = policies[name]
                got = asyncio.run(load(port, size, factor * capacity, params))
                ms = np.array([r[0] for r in got]) * 1000
                within = float(np.mean(ms <= slo))
                mean = float(np.mean([score[r[1]] for r in got]))
                throughput = len(got) / max(r[3] for r in got)
                row = dict(load=factor, policy=name, rate=throughput, p50=np.percentile(ms, 50),
                           p95=np.percentile(ms, 95), p99=np.percentile(ms, 99), within=within, mean=mean, n=len(got))
                table.append(row)
                print(f"{factor:5.1f} {name:<9} {row['rate']:7.1f} {row['p50']:8.1f} {row['p95']:8.1f} "
                      f"{row['p99']:8.1f} {100 * within:6.1f}% {mean:12.4g}   ({len(got)} requests)")
        served_rss = rss_mb(proc.pid)
        stop(proc)
        holder = subprocess.run([sys.executable, "-c", (
            "import sys, torch, snnet\nfrom snnet.rundir import run_of\n"
            "m = snnet.from_pretrained(run_of(sys.argv[1])[0]).eval()\n"
            "with torch.no_grad(): m.select(m.stitch_ids[-1])(torch.randn(8, 3, m.img_size[0], m.img_size[1]))\n"
            "print([l for l in open('/proc/self/status') if l.startswith('VmRSS')][0].split()[1])"), str(model)],
            env=ENV, capture_output=True, text=True)
        eval_rss = int(holder.stdout.split()[-1]) / 1024
        print(f"resident memory: server {served_rss:.0f} MB, a process holding the network for evaluation "
              f"{eval_rss:.0f} MB ({served_rss / eval_rss:.2f}x)")
        plot(table, slo, metric)
        if args.json:
            figures = dict(server_overhead_ms=overhead, largest_anchor_ms=large_ms, slo_ms=slo, metric=metric,
                           server_rss_mb=served_rss, eval_rss_mb=eval_rss,
                           table=[{k: float(v) if k != "policy" else v for k, v in r.items()} for r in table])
            Path(args.json).write_text(json.dumps(figures, indent=1))


def plot(table: list[dict], slo: float, metric: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for name, colour in (("largest", "tab:red"), ("smallest", "tab:blue"), ("adaptive", "black")):
        rows = [r for r in table if r["policy"] == name]
        loads = [r["load"] for r in rows]
        axes[0].plot(loads, [r["p99"] for r in rows], marker="o", color=colour, label=name)
        axes[1].plot(loads, [100 * r["within"] for r in rows], marker="o", color=colour, label=name)
        axes[2].plot(loads, [r["mean"] for r in rows], marker="o", color=colour, label=name)
    axes[0].axhline(slo, color="gray", ls="--", lw=1, label="SLO")
    axes[0].set_yscale("log")
    for ax, label in zip(axes, ("p99 latency (ms)", "requests within the SLO (%)", f"mean {metric} served")):
        ax.set_xlabel("load (x the largest anchor's rate)")
        ax.set_ylabel(label)
        ax.set_xscale("log", base=2)
        ax.set_xticks(args.loads, [f"{x:g}x" for x in args.loads])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.plot)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
