"""SN-Netv2: one stitchable network from two pretrained timm Vision Transformers.

The public names resolve on first use (PEP 562): ``import snnet`` loads nothing, so the command line's help and
the pure stitch-space functions answer without importing torch."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# a submodule of the same name: bound here, before any import of the submodule could bind the module instead
from .stitch_space import stitch_space

__version__ = "0.1.0"

# public name -> (module, its name there)
_PUBLIC = {
    "AnchorConfig": ("anchors", "AnchorConfig"),
    "create_anchor": ("anchors", "create_anchor"),
    "Cascade": ("cascade", "Cascade"),
    "load_official_checkpoint": ("checkpoint", "load_official_checkpoint"),
    "RunConfig": ("config", "RunConfig"),
    "load_config": ("config", "load_config"),
    "SNNetError": ("errors", "SNNetError"),
    "load_exported": ("export", "load_exported"),
    "init_stitching_layers": ("least_squares", "init_stitching_layers"),
    "SNNet": ("tasks.classification", "SNNet"),
    "SNNetBackbone": ("model", "SNNetBackbone"),
    "TaskModel": ("model", "TaskModel"),
    "SNNetConfig": ("model", "SNNetConfig"),
    "from_pretrained": ("pretrained", "load_pretrained"),
    "ROSSampler": ("sampling", "ROSSampler"),
    "ros_groups": ("sampling", "ros_groups"),
    "best_under_budget": ("selection", "best_under_budget"),
    "pareto_frontier": ("selection", "pareto_frontier"),
    "LayerRef": ("stitch_space", "LayerRef"),
    "Segment": ("stitch_space", "Segment"),
    "Stitch": ("stitch_space", "Stitch"),
    "StitchingLayer": ("stitching_layers", "StitchingLayer"),
    "DenseModel": ("tasks", "DenseModel"),
    "build_model": ("tasks", "build_model"),
    "SegmentationModel": ("tasks.segmentation", "SegmentationModel"),
}
__all__ = sorted([*_PUBLIC, "stitch_space"])


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'snnet' has no attribute {name!r}")
    module, attr = _PUBLIC[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attr)
    globals()[name] = value  # resolved once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


if TYPE_CHECKING:  # what type checkers and IDEs read
    from .anchors import AnchorConfig, create_anchor
    from .cascade import Cascade
    from .checkpoint import load_official_checkpoint
    from .config import RunConfig, load_config
    from .errors import SNNetError
    from .export import load_exported
    from .least_squares import init_stitching_layers
    from .model import SNNetBackbone, SNNetConfig, TaskModel
    from .tasks.classification import SNNet
    from .pretrained import load_pretrained as from_pretrained
    from .sampling import ROSSampler, ros_groups
    from .selection import best_under_budget, pareto_frontier
    from .stitch_space import LayerRef, Segment, Stitch
    from .stitching_layers import StitchingLayer
    from .tasks import DenseModel, build_model
    from .tasks.segmentation import SegmentationModel
