"""SN-Netv2: one stitchable network from two pretrained timm Vision Transformers."""
from .anchors import AnchorConfig, create_anchor
from .checkpoint import load_official_checkpoint
from .pretrained import load_pretrained as from_pretrained
from .config import RunConfig, load_config
from .errors import SNNetError
from .least_squares import init_stitching_layers
from .model import SNNet, SNNetConfig
from .sampling import ROSSampler, ros_groups
from .selection import best_under_budget, pareto_frontier
from .stitch_space import LayerRef, Segment, Stitch, stitch_space
from .stitching_layers import StitchingLayer
from .tasks import DenseModel, build_model
from .export import load_exported
from .tasks.segmentation import SegmentationModel

__all__ = [
    "AnchorConfig", "DenseModel", "LayerRef", "ROSSampler", "RunConfig", "SNNet", "SNNetConfig", "SNNetError",
    "SegmentationModel", "Segment", "Stitch", "StitchingLayer", "best_under_budget", "build_model", "create_anchor",
    "from_pretrained", "init_stitching_layers", "load_config", "load_exported", "load_official_checkpoint", "pareto_frontier", "ros_groups",
    "stitch_space",
]
__version__ = "0.1.0"
