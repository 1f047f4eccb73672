"""How fast the command line answers: ``snnet --help`` and every ``snnet CMD --help`` as a new process (the
installed entry point), wall and CPU seconds, median of ``--repeats``; then what ``import snnet`` and the parser
load, and, for scale, ``import torch`` alone and a command that does load torch (``snnet flops``). Target (issue
31): every help under 1 s wall on the 2-core machine.

    .venv/bin/python benchmarks/bench_cli.py [--repeats 5]
"""
import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

COMMANDS = ["train", "eval", "flops", "select", "export", "profile", "serve", "cascade", "demo"]
SNNET = str(Path(sys.executable).with_name("snnet"))


def timed(argv: list[str], repeats: int) -> tuple[float, float]:
    """(median wall s, median CPU s of the child) of running ``argv`` ``repeats`` times."""
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def loaded(code: str) -> list[str]:
    """The modules a fresh interpreter holds after ``code``: snnet's own and the heavy third-party ones."""
    probe = (f"import sys\n{code}\nprint(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
             f"('snnet', 'torch', 'timm', 'torchvision', 'numpy', 'matplotlib', 'pycocotools', 'pydantic') "
             f"and '.' not in m.removeprefix('snnet.'))))")
    return subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True).stdout.split()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}, median of {args.repeats}")
    print(f"{'command':<28} {'wall s':>7} {'CPU s':>7}")
    worst = 0.0
    for cmd in [[], *[[c] for c in COMMANDS]]:
        wall, cpu = timed([SNNET, *cmd, "--help"], args.repeats)
        worst = max(worst, wall)
        print(f"{' '.join(['snnet', *cmd, '--help']):<28} {wall:7.3f} {cpu:7.3f}")
    print(f"slowest help: {worst:.3f} s wall (target < 1 s): {'met' if worst < 1 else 'MISSED'}")
    for what, argv in (("python -c 'import torch'", [sys.executable, "-c", "import torch"]),
                       ("snnet flops --config quickstart", [SNNET, "flops", "--config", "quickstart"])):
        wall, cpu = timed(argv, max(1, args.repeats // 2))
        print(f"{what:<36} {wall:7.3f} {cpu:7.3f}   (for scale)")
    for code in ("import snnet", "from snnet.cli.parser import build_parser; build_parser()"):
        mods = loaded(code)
        print(f"{code}: loads {len(mods)} of snnet's and the heavy modules: {' '.join(mods) or '-'}")


if __name__ == "__main__":
    main()
