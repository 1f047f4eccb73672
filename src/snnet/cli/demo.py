"""``snnet demo``: The Gradio page."""
from __future__ import annotations


from .options import host_name, tcp_port


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="a Gradio page: upload an image, set a budget, see the best stitch answer")
    p.add_argument("--run", default="runs/quickstart", help="an evaluated run directory (default: runs/quickstart)")
    p.add_argument("--port", type=tcp_port, default=7860)
    p.add_argument("--host", type=host_name, default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--device", help="cpu or cuda (default: cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..demo import launch
    from ..distributed import local_device

    launch(args.run, args.port, args.host, str(local_device(args.device)))
    return 0
