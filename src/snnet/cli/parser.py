"""The command line's options, every command's, and nothing heavy: ``snnet --help`` and ``snnet CMD --help``
answer without importing torch. The work of a command is in its own module (``snnet.cli.<command>``), imported
only when it runs."""
from __future__ import annotations

import argparse
import ipaddress
import os
import re
import sys
from pathlib import Path

from ..errors import SNNetError


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (argparse prints its usage lines first)."""

    def error(self, message: str):
        raise SNNetError(message)


def at_least(low: int):
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


def stitch_or_all(text: str) -> int | str:
    """An argparse type: a stitch id, or ``all``."""
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a stitch id or all, got {text!r}") from None


def tcp_port(text: str) -> int:
    value = at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port 1..65535, got {value}")
    return value


def host_name(text: str) -> str:
    if re.fullmatch(r"[0-9.]+", text):  # dotted numbers must be an IPv4 address
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an IP address or a host name, got {text!r}") from None
    return text


def add_config(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--config", required=required,
                   help="YAML file, or a packaged config name (quickstart, imagenet_deit3_s_l, ...)")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides, e.g. train.epochs=5")
    p.add_argument("--output-dir", help="run directory (default: the config's output_dir)")


def add_share_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-share-prefixes", action="store_true",
                   help="evaluate one stitch at a time (same results as sharing route prefixes, slower)")


def add_quantize_flags(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--quantize", choices=["int8"], help=what)
    p.add_argument("--quantize-method", choices=["dynamic", "static"],
                   help="dynamic (weights int8, activations at run time; default) or static QDQ (calibrated)")
    p.add_argument("--calibration-images", type=at_least(1),
                   help="static: training images to calibrate on, read through the run's data config (default 100)")


def add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metric", help="metric a budget chooses by (default: the task's: acc1, mIoU, rmse, bbox_AP)")
    direction = p.add_mutually_exclusive_group()
    direction.add_argument("--higher-is-better", action="store_true", help="for a --metric column snnet does not write")
    direction.add_argument("--lower-is-better", action="store_true", help="for a --metric column snnet does not write")


def _train(sub) -> None:
    p = sub.add_parser("train", help="train an SN-Net, then evaluate every stitch")
    add_config(p)
    p.add_argument("--resume", help="checkpoint to resume from (default: the run directory's own, if any)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if the run directory has a checkpoint")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_share_flag(p)
    p.set_defaults(module="train")


def _evaluate(sub) -> None:
    p = sub.add_parser("eval", help="evaluate stitches of a trained model or a released checkpoint")
    add_config(p)
    p.add_argument("--checkpoint", help="run dir, saved model dir, checkpoint.pt or a released snnetv2_*.pth "
                                        "(default: <output_dir>/model)")
    p.add_argument("--stitches", help="comma-separated stitch ids (default: all); a subset writes results_subset.*")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--onnx", nargs="+", metavar="FILE",
                   help="exported ONNX stitches to evaluate with ONNX Runtime into the run's results (acc1@int8, ...)")
    add_quantize_flags(p, "export the stitches to int8 ONNX and evaluate those")
    add_share_flag(p)
    p.set_defaults(module="evaluate")


def _flops(sub) -> None:
    p = sub.add_parser("flops", help="per-stitch FLOPs, parameters and routes of a config (no data needed)")
    add_config(p)
    p.add_argument("--img-size", type=at_least(1), help="input size (default: the anchors')")
    p.add_argument("--dense", action="store_true", help="count the backbone alone: its dense taps, no head")
    p.add_argument("--json", action="store_true")
    p.set_defaults(module="flops")


def _select(sub) -> None:
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
    p.set_defaults(module="select")


def _export(sub) -> None:
    p = sub.add_parser("export", help="one stitch as a standalone ONNX, TorchScript or safetensors model")
    p.add_argument("--checkpoint", required=True, help="a run directory (with model/ and results) or a saved model")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--stitch", type=stitch_or_all,
                       help="stitch id, or all: every stitch in one ONNX file with a stitch_id input")
    which.add_argument("--max-gflops", type=float, help="the best stitch of the run's results under this budget")
    which.add_argument("--max-latency-ms", type=float, help="the same by measured latency (snnet profile)")
    add_metric_options(p)
    p.add_argument("--format", required=True, choices=["onnx", "torchscript", "safetensors"])
    p.add_argument("--output", required=True, help="file to write; a JSON sidecar goes beside it (<output>.json)")
    p.add_argument("--img-size", type=at_least(1), nargs=2, metavar=("H", "W"), help="input size (default: the anchors')")
    p.add_argument("--batch", type=at_least(1), default=1, help="example batch for tracing (ONNX keeps the batch dynamic)")
    add_quantize_flags(p, "quantise the ONNX file with ONNX Runtime's tools")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (--stitch all)")
    p.set_defaults(module="export")


def _profile(sub) -> None:
    p = sub.add_parser("profile", help="measure every stitch's latency on this device into the run's results")
    p.add_argument("--run", default="runs/quickstart", help="run directory (default: runs/quickstart)")
    p.add_argument("--stitches", help="comma-separated stitch ids (default: every stitch in the results)")
    p.add_argument("--batch", type=at_least(1), default=1)
    p.add_argument("--img-size", type=at_least(1), nargs=2, metavar=("H", "W"), help="input size (default: the anchors')")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--threads", type=at_least(1), help="CPU threads (default: torch's)")
    p.add_argument("--repeats", type=at_least(1), default=10, help="timed forwards per stitch (median and IQR)")
    p.add_argument("--warmup", type=at_least(0), default=3)
    p.add_argument("--onnx", action="store_true", help="also time each stitch exported to ONNX Runtime (CPU)")
    p.add_argument("--quantize", choices=["int8"],
                   help="also time each stitch's int8 ONNX file (dynamic) under ONNX Runtime: latency_ms@int8")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(module="profile")


def _serve(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP server (Open Inference Protocol, KServe v2) choosing the stitch per "
                                     "request")
    p.add_argument("--checkpoint", default="runs/quickstart", help="a run directory or a saved model")
    p.add_argument("--onnx", help="serve this one-file ONNX export (snnet export --stitch all) by ONNX Runtime")
    p.add_argument("--host", type=host_name, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=tcp_port, default=8000)
    p.add_argument("--name", default="snnet", help="the model's name in the protocol's paths")
    p.add_argument("--slo-ms", type=float, help="the deadline of a request that names no budget (default: none, "
                                                 "the most accurate stitch)")
    p.add_argument("--slo-headroom", type=float, default=0.7,
                   help="a deadline's share the scheduler plans to finish within (run times vary; default 0.7)")
    p.add_argument("--max-batch", type=at_least(1), default=8, help="images run together at most")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="how long a batch waits for more requests")
    p.add_argument("--max-queue", type=at_least(1), default=256, help="requests waiting at most (then 503)")
    p.add_argument("--max-body-mb", type=float, default=64.0, help="the largest request body (then 413)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.add_argument("--replicas", type=at_least(1), help="run as this many Ray Serve replicas (pip install "
                                                          "'snnet[ray]')")
    p.add_argument("--max-replicas", type=at_least(1),
                   help="with --replicas N: Ray Serve adds replicas up to this many as requests queue (N at least)")
    p.set_defaults(module="serve")


def _cascade(sub) -> None:
    p = sub.add_parser("cascade", help="find cascades of stitches that stop early on easy images (anytime inference)")
    p.add_argument("--run", default="runs/quickstart", help="an evaluated classification run (default: runs/quickstart)")
    p.add_argument("--max-stages", type=at_least(1), default=3, help="stitches in a cascade at most: 1 to 3 (default 3)")
    p.add_argument("--calibration-images", type=at_least(1), default=2000,
                   help="training images the search fits thresholds on (never validation images; default 2000)")
    p.add_argument("--max-candidates", type=at_least(1), default=16,
                   help="stitches the stages are drawn from at most (the frontier first; default 16)")
    p.add_argument("--points", type=at_least(1), default=12, help="operating points validated at most (default 12)")
    p.add_argument("--confidence", choices=["max_prob", "margin"], default="max_prob",
                   help="the score an exit compares with its threshold: the top softmax probability, or its margin "
                        "over the second")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(module="cascade")


def _demo(sub) -> None:
    p = sub.add_parser("demo", help="a Gradio page: upload an image, set a budget, see the best stitch answer")
    p.add_argument("--run", default="runs/quickstart", help="an evaluated run directory (default: runs/quickstart)")
    p.add_argument("--port", type=tcp_port, default=7860)
    p.add_argument("--host", type=host_name, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.set_defaults(module="demo")


COMMANDS = (_train, _evaluate, _flops, _select, _export, _profile, _serve, _cascade, _demo)  # in the order of --help


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="snnet", description="Stitchable ViTs (SN-Netv2): train once, deploy any stitch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command(sub)
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
        moved = [a for a in args.onnx if re.match(r"[A-Za-z_][\w.]*=", a) and not Path(a).exists()]
        args.onnx = [a for a in args.onnx if a not in moved]
        args.overrides = [*args.overrides, *moved]
        if not args.onnx:
            raise SNNetError("--onnx takes exported ONNX files, got only overrides")
    return args
