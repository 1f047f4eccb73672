"""The tasks: one folder (or module) each, each a ``Task`` (``tasks/base.py``, the written interface) registered by
name; what the commands ask of "the config's task" is answered here by that class."""
from __future__ import annotations

from ..config import RunConfig
from ..errors import SNNetError
from ..pretrained import Pretrained
from ..registry import TASKS
from ..rel_pos import grid_of
from .base import Task, data_defaults, register_task
from .dense import DenseModel, DenseTask
# importing the task modules registers them (TASKS), each with its model class
from .classification import ClassificationTask
from .segmentation import SegmentationTask
from .depth import DepthTask
from .detection import DetectionTask

__all__ = ["TASKS", "ClassificationTask", "DenseModel", "DenseTask", "DepthTask", "DetectionTask",
           "SegmentationTask", "Task", "build_model", "build_task", "check_config", "check_heads", "class_names",
           "data_defaults", "metric_direction", "num_classes", "register_task"]


def metric_direction(metric: str) -> bool | None:
    """Whether a higher ``metric`` is better, for every metric a task writes; None for a column no task writes."""
    return next((t.metric_directions[metric] for t in TASKS.values() if metric in t.metric_directions), None)


def build_model(cfg: RunConfig, num_classes: int | None = None, load_weights: bool = True,
                device: str | None = None) -> Pretrained:
    """The model of ``cfg.task`` (``SNNet`` for classification, a ``DenseModel`` for the dense tasks), its heads
    sized by ``num_classes`` when given, else as the task builds them."""
    return TASKS[cfg.task].build_model(cfg, num_classes, load_weights, device)


def num_classes(cfg: RunConfig) -> int | None:
    """How many classes the task's data has, read cheaply (folder names or the dataset's definition); None for a
    task without classes. The data's folders (or split files) are checked on the way."""
    return TASKS[cfg.task].check_data(cfg)


def class_names(cfg: RunConfig) -> list[str] | None:
    """Names of the classes the heads predict, where the data names them without being read."""
    return TASKS[cfg.task].class_names(cfg)


def check_config(cfg: RunConfig) -> Pretrained:
    """What can be checked before any data is read or weights loaded: the anchors built on the meta
    device (bad timm kwargs, incompatible pairs, out_indices), eval stitch ids and the input size.
    Returns the meta model."""
    model = build_model(cfg, load_weights=False, device="meta")
    for sid in cfg.eval.stitches or ():
        try:
            model.stitch(sid)
        except SNNetError as e:
            raise SNNetError(f"config key 'eval.stitches': {e}") from None
    share, anchors = cfg.train.ros_anchor_share, len(model.backbone.anchors)
    if share * anchors > 1:
        raise SNNetError(f"config key 'train.ros_anchor_share': {share:g} for each of {anchors} anchors is more than "
                         f"every step (at most 1/{anchors} = {1 / anchors:.4g})")
    size = data_defaults(cfg)[0]
    hw = size if isinstance(size, tuple) else (size, size)
    anchor = model.backbone.anchors[0]
    grid = tuple(anchor.patch_embed.img_size)
    patch = anchor.patch_embed.patch_size[0]
    # segmentation models are built for their training crop (relative position tables, FLOPs); depth anchors
    # keep their pretraining size and resize position embeddings at run time, as the reference's
    tied = not anchor.dynamic_img_size or TASKS[cfg.task].fixed_input_size or grid_of(anchor) is not None
    if hw != grid and tied:
        raise SNNetError(f"data.input_size {size} differs from the anchors' {grid[0]}x{grid[1]} input: set "
                         f"model.anchors.N.kwargs.img_size={size} for both anchors (position embeddings are resized)")
    if hw[0] % patch or hw[1] % patch:
        raise SNNetError(f"data.input_size {size} is not a multiple of the anchors' patch size {patch}")
    TASKS[cfg.task].check_input_size(cfg, hw)
    return model


def check_heads(cfg: RunConfig, load_weights: bool) -> list[str]:
    """Before training: the data and the anchors' heads and files agree (see ``Task.check_heads``); notes to print."""
    return TASKS[cfg.task].check_heads(cfg, load_weights)


def build_task(cfg: RunConfig, progress: bool = True, train: bool = True) -> Task:
    """The task of ``cfg`` with its datasets; ``train=False`` (evaluation) leaves the training split unread:
    ``train_set`` and ``init_set`` are None."""
    size, mean, std = data_defaults(cfg)
    return TASKS[cfg.task](cfg, size, mean, std, progress, train)
