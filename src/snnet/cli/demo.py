"""``snnet demo``: The Gradio page."""
from __future__ import annotations

from ..demo import launch
from ..distributed import local_device


def run(args) -> int:
    launch(args.run, args.port, args.host, str(local_device(args.device)))
    return 0
