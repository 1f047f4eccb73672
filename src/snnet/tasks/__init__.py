"""One module per task; each gives the shared training loop its data, loss and per-batch metric sums."""
from __future__ import annotations

from pathlib import Path

from timm.models import get_pretrained_cfg

from ..anchors import AnchorConfig, head_classes
from ..config import RunConfig
from ..errors import SNNetError
from ..model import SNNet
from ..pretrained import MODEL_CLASSES
from ..rel_pos import grid_of
from ._files import split_names
from .classification import ClassificationTask, class_folders, data_classes
from .dense import DenseModel
# importing the task packages registers their model classes (MODEL_CLASSES)
from .depth import DepthTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

TASKS = {"classification": ClassificationTask, "segmentation": SegmentationTask, "depth": DepthTask,
         "detection": DetectionTask}


def metric_direction(metric: str) -> bool | None:
    """Whether a higher ``metric`` is better, for every metric a task writes; None for a column no task writes."""
    return next((t.metric_directions[metric] for t in TASKS.values() if metric in t.metric_directions), None)


def build_model(cfg: RunConfig, num_classes: int | None = None, load_weights: bool = True,
                device: str | None = None) -> SNNet | DenseModel:
    """The model of ``cfg.task``: an ``SNNet`` for classification (heads sized by ``num_classes`` when given), a
    ``SegmentationModel``, ``DepthModel`` or ``DetectionModel`` (classes: ``num_classes``, model.head.num_classes
    or the dataset's)."""
    if cfg.task in ("segmentation", "detection") and num_classes is None:
        num_classes = cfg.model.head.num_classes or _dataset_classes(cfg)
    return MODEL_CLASSES[cfg.task].from_section(cfg.model, num_classes, load_weights, device, eval_size(cfg))


def eval_size(cfg: RunConfig) -> tuple[int, int]:
    """(height, width) of evaluation images as the config says: data.eval_size, else the input size."""
    if cfg.data.eval_size:
        return tuple(cfg.data.eval_size)
    size = data_defaults(cfg)[0]
    return tuple(size) if isinstance(size, tuple) else (size, size)


def data_defaults(cfg: RunConfig) -> tuple[int | tuple[int, int], tuple, tuple]:
    """Input size (one size, or (height, width) for depth), mean and std: the config's, else the small
    anchor's timm defaults."""
    anchor = cfg.model.anchors[0]
    pre = get_pretrained_cfg(anchor.name)
    size = cfg.data.input_size or anchor.kwargs.get("img_size")
    if size is None:
        if pre is None:
            raise SNNetError("set data.input_size: the anchors' input size is unknown")
        size = pre.input_size[-1]
    if isinstance(cfg.data.input_size, list):
        size = tuple(cfg.data.input_size)
    elif isinstance(size, (list, tuple)):
        size = size[-1]
    mean = tuple(cfg.data.mean) if cfg.data.mean else (pre.mean if pre else (0.485, 0.456, 0.406))
    std = tuple(cfg.data.std) if cfg.data.std else (pre.std if pre else (0.229, 0.224, 0.225))
    return (size if isinstance(size, tuple) else int(size)), mean, std


def _dataset_classes(cfg: RunConfig) -> int:
    if cfg.task == "detection":
        from .detection.data import dataset_classes
        return dataset_classes(cfg)
    from .segmentation.data import dataset_info
    return dataset_info(cfg)[0]


def num_classes(cfg: RunConfig) -> int | None:
    """How many classes the task's data has, read cheaply (folder names or the dataset's definition); depth has
    none. The data's folders (or split files) are checked on the way."""
    if cfg.task == "classification":
        return data_classes(cfg)
    from .depth.data import check_folders as depth_folders
    from .detection.data import check_folders as detection_folders
    from .segmentation.data import check_folders as segmentation_folders
    {"segmentation": segmentation_folders, "depth": depth_folders, "detection": detection_folders}[cfg.task](cfg)
    return None if cfg.task == "depth" else cfg.model.head.num_classes or _dataset_classes(cfg)


def class_names(cfg: RunConfig) -> list[str] | None:
    """Names of the classes the heads predict, where the data names them without being read: the built-in
    scenes' shapes (segmentation: background first), or an ImageFolder's class folders when they are on disk."""
    from ..data.scenes import SHAPES

    shapes = list(SHAPES[:cfg.data.shapes.num_classes])
    if cfg.data.dataset == "shapes" and cfg.task in ("classification", "detection"):
        return shapes
    if cfg.data.dataset == "shapes" and cfg.task == "segmentation":
        return ["background", *shapes]
    if cfg.task == "classification" and cfg.data.root:
        train_dir = Path(cfg.data.root) / split_names(cfg.data, "train", "val")[0]
        if train_dir.is_dir():
            return class_folders(train_dir)
    return None


def check_config(cfg: RunConfig) -> SNNet | DenseModel:
    """What can be checked before any data is read or weights loaded: the anchors built on the meta
    device (bad timm kwargs, incompatible pairs, out_indices), eval stitch ids and the input size.
    Returns the meta model."""
    model = build_model(cfg, load_weights=False, device="meta")
    for sid in cfg.eval.stitches or ():
        try:
            model.stitch(sid)
        except SNNetError as e:
            raise SNNetError(f"config key 'eval.stitches': {e}") from None
    size = data_defaults(cfg)[0]
    hw = size if isinstance(size, tuple) else (size, size)
    anchor = (model.backbone if isinstance(model, DenseModel) else model).anchors[0]
    grid = tuple(anchor.patch_embed.img_size)
    patch = anchor.patch_embed.patch_size[0]
    # segmentation models are built for their training crop (relative position tables, FLOPs); depth anchors
    # keep their pretraining size and resize position embeddings at run time, as the reference's
    tied = not anchor.dynamic_img_size or cfg.task == "segmentation" or grid_of(anchor) is not None
    if hw != grid and tied:
        raise SNNetError(f"data.input_size {size} differs from the anchors' {grid[0]}x{grid[1]} input: set "
                         f"model.anchors.N.kwargs.img_size={size} for both anchors (position embeddings are resized)")
    if hw[0] % patch or hw[1] % patch:
        raise SNNetError(f"data.input_size {size} is not a multiple of the anchors' patch size {patch}")
    if cfg.eval.mode == "slide" and cfg.eval.stride is not None and cfg.eval.stride > min(hw):
        raise SNNetError(f"eval.stride {cfg.eval.stride} is larger than the {hw[0]}x{hw[1]} sliding window: pixels "
                         f"between windows would get no prediction (at most {min(hw)})")
    return model


def check_heads(cfg: RunConfig, load_weights: bool) -> list[str]:
    """Before training: the anchors' classifiers (their kwargs', or their weights' when ``load_weights``)
    must have the data's classes, unless ``model.replace_head`` trains new ones. Returns notes to print;
    local anchor checkpoints are read on the meta device, so a corrupt or mis-shaped one fails here."""
    if cfg.task != "classification":
        num_classes(cfg)  # the data folders exist
        for a in cfg.model.anchors:  # corrupt or mis-shaped anchor files fail here, before any data
            head_classes(AnchorConfig(a.name, False, a.checkpoint_path if load_weights else None, a.kwargs,
                                      a.rel_pos_bias))
        return []
    classes = data_classes(cfg)
    notes = []
    for i, a in enumerate(cfg.model.anchors):
        head = head_classes(AnchorConfig(a.name, a.pretrained and load_weights,
                                         a.checkpoint_path if load_weights else None, a.kwargs))
        if head is None or head == classes:
            continue
        if not cfg.model.replace_head:
            raise SNNetError(f"the data has {classes} classes but anchor {i} ({a.name}) has a {head}-class head: "
                             f"set model.replace_head=true to train new {classes}-class heads")
        notes.append(f"model.replace_head: anchor {i}'s {head}-class head is replaced by a new {classes}-class head")
    return notes


def build_task(cfg: RunConfig, progress: bool = True,
               train: bool = True) -> ClassificationTask | SegmentationTask | DepthTask | DetectionTask:
    """The task of ``cfg`` with its datasets; ``train=False`` (evaluation) leaves the training split unread:
    ``train_set`` and ``init_set`` are None."""
    size, mean, std = data_defaults(cfg)
    return TASKS[cfg.task](cfg, size, mean, std, progress, train)
