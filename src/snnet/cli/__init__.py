"""The ``snnet`` command: the options of every command in ``parser`` (light), the work of each in its own module,
imported when it runs; what the commands share at run time in ``options``."""
from __future__ import annotations

import importlib
import os
import sys

from ..errors import SNNetError
from .parser import parse_args


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
        code = importlib.import_module(f"{__name__}.{args.module}").run(args)
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
