"""One module per task; each gives the shared training loop its data, loss and per-batch metric sums."""
from __future__ import annotations

from timm.models import get_pretrained_cfg

from ..anchors import check_model_name
from ..config import RunConfig
from ..errors import SNNetError
from .classification import ClassificationTask


def data_defaults(cfg: RunConfig) -> tuple[int, tuple, tuple]:
    """Input size, mean and std: the config's, else the small anchor's timm defaults."""
    anchor = cfg.model.anchors[0] if cfg.model.anchors else None
    pre = get_pretrained_cfg(anchor.name) if anchor is not None else None
    size = cfg.data.input_size or (anchor.kwargs.get("img_size") if anchor else None)
    if size is None:
        if pre is None:
            raise SNNetError("set data.input_size: the anchors' input size is unknown")
        size = pre.input_size[-1]
    if isinstance(size, (list, tuple)):
        size = size[-1]
    mean = tuple(cfg.data.mean) if cfg.data.mean else (pre.mean if pre else (0.485, 0.456, 0.406))
    std = tuple(cfg.data.std) if cfg.data.std else (pre.std if pre else (0.229, 0.224, 0.225))
    return int(size), mean, std


def build_task(cfg: RunConfig, progress: bool = True) -> ClassificationTask:
    for a in cfg.model.anchor_pair():  # before any data is read
        check_model_name(a.name)
    size, mean, std = data_defaults(cfg)
    return ClassificationTask(cfg, size, mean, std, progress)
