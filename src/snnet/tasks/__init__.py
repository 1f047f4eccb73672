"""One module per task; each gives the shared training loop its data, loss and per-batch metric sums."""
from __future__ import annotations

from timm.models import get_pretrained_cfg

from ..anchors import AnchorConfig, head_classes
from ..config import RunConfig
from ..errors import SNNetError
from ..model import SNNet
from .classification import ClassificationTask, data_classes


def data_defaults(cfg: RunConfig) -> tuple[int, tuple, tuple]:
    """Input size, mean and std: the config's, else the small anchor's timm defaults."""
    anchor = cfg.model.anchors[0]
    pre = get_pretrained_cfg(anchor.name)
    size = cfg.data.input_size or anchor.kwargs.get("img_size")
    if size is None:
        if pre is None:
            raise SNNetError("set data.input_size: the anchors' input size is unknown")
        size = pre.input_size[-1]
    if isinstance(size, (list, tuple)):
        size = size[-1]
    mean = tuple(cfg.data.mean) if cfg.data.mean else (pre.mean if pre else (0.485, 0.456, 0.406))
    std = tuple(cfg.data.std) if cfg.data.std else (pre.std if pre else (0.229, 0.224, 0.225))
    return int(size), mean, std


def check_config(cfg: RunConfig) -> SNNet:
    """What can be checked before any data is read or weights loaded: the anchors built on the meta
    device (bad timm kwargs, incompatible pairs, out_indices), eval stitch ids and the input size.
    Returns the meta model."""
    from ..engine import build_model

    model = build_model(cfg.model, load_weights=False, device="meta")
    for sid in cfg.eval.stitches or ():
        try:
            model.stitch(sid)
        except SNNetError as e:
            raise SNNetError(f"config key 'eval.stitches': {e}") from None
    size = data_defaults(cfg)[0]
    anchor = model.anchors[0]
    grid = tuple(anchor.patch_embed.img_size)
    patch = anchor.patch_embed.patch_size[0]
    if not anchor.dynamic_img_size and (size, size) != grid:
        raise SNNetError(f"data.input_size {size} differs from the anchors' {grid[0]}x{grid[1]} input: set "
                         f"model.anchors.N.kwargs.img_size={size} for both anchors (position embeddings are resized)")
    if size % patch:
        raise SNNetError(f"data.input_size {size} is not a multiple of the anchors' patch size {patch}")
    return model


def check_heads(cfg: RunConfig, load_weights: bool) -> list[str]:
    """Before training: the anchors' classifiers (their kwargs', or their weights' when ``load_weights``)
    must have the data's classes, unless ``model.replace_head`` trains new ones. Returns notes to print;
    local anchor checkpoints are read on the meta device, so a corrupt or mis-shaped one fails here."""
    num_classes = data_classes(cfg)
    notes = []
    for i, a in enumerate(cfg.model.anchors):
        head = head_classes(AnchorConfig(a.name, a.pretrained and load_weights,
                                         a.checkpoint_path if load_weights else None, a.kwargs))
        if head is None or head == num_classes:
            continue
        if not cfg.model.replace_head:
            raise SNNetError(f"the data has {num_classes} classes but anchor {i} ({a.name}) has a {head}-class head: "
                             f"set model.replace_head=true to train new {num_classes}-class heads")
        notes.append(f"model.replace_head: anchor {i}'s {head}-class head is replaced by a new {num_classes}-class head")
    return notes


def build_task(cfg: RunConfig, progress: bool = True) -> ClassificationTask:
    size, mean, std = data_defaults(cfg)
    return ClassificationTask(cfg, size, mean, std, progress)
