"""The ``snnet`` command: one module per command (its options and its work), the shared options beside them."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..errors import SNNetError
from . import cascade, demo, evaluate, export, flops, profile, select, serve, train
from .options import Parser

COMMANDS = (train, evaluate, flops, select, export, profile, serve, cascade, demo)  # in the order of --help


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="snnet", description="Stitchable ViTs (SN-Netv2): train once, deploy any stitch.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add_parser(sub)
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
        import re

        moved = [a for a in args.onnx if re.match(r"[A-Za-z_][\w.]*=", a) and not Path(a).exists()]
        args.onnx = [a for a in args.onnx if a not in moved]
        args.overrides = [*args.overrides, *moved]
        if not args.onnx:
            raise SNNetError("--onnx takes exported ONNX files, got only overrides")
    return args


def _one_line(e: BaseException) -> str:
    # errors raised inside DataLoader workers arrive wrapped with the worker's traceback
    lines = [line for line in str(e).splitlines() if line.strip()]
    return (lines[-1] if lines else type(e).__name__).split("SNNetError: ", 1)[-1]


class _PipeSafe:
    """stdout that goes quiet when its reader has gone (``snnet ... | head``): output is dropped and
    the work goes on, instead of a BrokenPipeError ending training. Any other failure to write it (a full
    disk) is a one-line error."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _guard(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError as e:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())  # the buffered rest goes nowhere, quietly
            os.close(devnull)
            if isinstance(e, BrokenPipeError):
                return None
            raise SNNetError(f"cannot write to standard output: {e.strerror or e}") from None

    def write(self, text: str):
        return self._guard("write", text)

    def flush(self):
        return self._guard("flush")

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main(argv: list[str] | None = None) -> int:
    stdout = sys.stdout
    sys.stdout = _PipeSafe(stdout)
    try:
        args = parse_args(argv)
        code = args.func(args)
        sys.stdout.flush()  # buffered output that cannot be written fails the command
        return code
    except SNNetError as e:
        print(f"snnet: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("snnet: interrupted", file=sys.stderr)
        return 130
    finally:
        sys.stdout = stdout
