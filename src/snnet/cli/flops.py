"""``snnet flops``: Per-stitch FLOPs, parameters and routes of a config, no data needed."""
from __future__ import annotations

import json

from ..tasks import build_model
from .options import load_run_config


def run(args) -> int:
    """The stitch table of a config: no weights, no data (anchors are built on the meta device)."""
    cfg = load_run_config(args, writes=False)
    model = build_model(cfg, load_weights=False, device="meta")
    size = (args.img_size, args.img_size) if args.img_size is not None else None
    flops = {s.id: model.backbone.flops(s.id, size, taps=True) if args.dense else model.flops(s.id, size)
             for s in model.stitches}
    rows = [{"stitch_id": s.id, "kind": s.kind, "gflops": flops[s.id] / 1e9,
             "params_m": model.params(s.id) / 1e6, "route": s.describe()} for s in model.stitches]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'id':>4} {'kind':<6} {'GFLOPs':>9} {'params(M)':>9}  route")
    for r in rows:
        print(f"{r['stitch_id']:>4} {r['kind']:<6} {r['gflops']:9.3f} {r['params_m']:9.2f}  {r['route']}")
    print(f"{len(rows)} stitches ({cfg.model.version}, {cfg.task})")
    return 0
