"""``snnet serve``: The Open Inference Protocol server choosing the stitch per request."""
from __future__ import annotations

import math
import signal
import sys
import threading

from ..demo import check_address
from ..errors import SNNetError
from ..serve import build_server, log_figures, ray_application


def run(args) -> int:
    """The network behind the Open Inference Protocol until SIGTERM or Ctrl+C (requests in flight finish): one
    process (uvicorn), or ``--replicas N`` Ray Serve replicas behind Ray's HTTP proxy."""
    if not 0 < args.slo_headroom <= 1:
        raise SNNetError(f"--slo-headroom must be in (0, 1], got {args.slo_headroom:g}")
    for flag, low in (("slo_ms", 0), ("max_body_mb", 0), ("max_wait_ms", None)):
        value = getattr(args, flag)
        if value is not None and not (math.isfinite(value) and (value > low if low is not None else value >= 0)):
            raise SNNetError(f"--{flag.replace('_', '-')} must be a {'positive' if low is not None else 'non-negative'} "
                             f"number, got {value:g}")
    check_address(args.host, args.port)
    if args.max_replicas is not None and (args.replicas is None or args.max_replicas < args.replicas):
        raise SNNetError("--max-replicas needs --replicas N, and at least N" if args.replicas is None else
                         f"--max-replicas {args.max_replicas} is below --replicas {args.replicas}")
    options = {k: getattr(args, k) for k in ("checkpoint", "onnx", "device", "name", "slo_ms", "slo_headroom",
                                             "max_batch", "max_wait_ms", "max_queue", "max_body_mb")}
    where = f"http://{args.host}:{args.port}/v2/models/{args.name}"
    # uvicorn finishes the requests in flight on SIGTERM, then raises the signal again: here, the command's end
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        if args.replicas:
            _serve_ray(options, args, where)
        else:
            _serve_here(options, args, where)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("snnet serve: stopped")
    return 0


def _serve_here(options: dict, args, where: str) -> None:
    import uvicorn


    app, scheduler, served = build_server(**options, log=print)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning",
                                           timeout_graceful_shutdown=30))
    scheduler.start()
    logger = log_figures(app.state.registry, 60.0)
    print(f"snnet serve: model {args.name!r} ({served.task.name}, {len(served.rows)} stitches, {served.platform}) on "
          f"{where} (Ctrl+C stops it)")
    sys.stdout.flush()
    try:
        server.run()
    finally:
        logger.set()
        scheduler.stop()


def _serve_ray(options: dict, args, where: str) -> None:
    """Ray Serve: ``--replicas`` copies of the same application, Ray's proxy spreading requests over them."""
    try:
        import ray
        from ray import serve
    except ImportError:
        raise SNNetError("--replicas runs on Ray Serve: pip install 'snnet[ray]'") from None
    stop = threading.Event()
    ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(ray_application(options, args.replicas, args.max_replicas), name="snnet", route_prefix="/",
                  blocking=False)
        scaling = f" (up to {args.max_replicas} under load)" if (args.max_replicas or 0) > args.replicas else ""
        print(f"snnet serve: model {args.name!r} on {args.replicas} Ray Serve replicas{scaling}, {where} "
              f"(Ctrl+C stops it)")
        sys.stdout.flush()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(0.5):  # short waits: the handler runs between them
                pass
        except KeyboardInterrupt:
            pass
        serve.shutdown()
    finally:
        ray.shutdown()
