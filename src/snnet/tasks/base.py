"""The task interface: what a task gives the one training loop, the one evaluation path and the commands.

A task is a ``Task`` subclass registered with ``@register_task``. Its class attributes and class methods are its
*spec*: what the config schema, the commands, the demo and the Hub card ask of it, answered without reading any
data. An instance holds one run's datasets and what the loop calls on them:

- training: ``train_set`` (batches through ``train_collate``, read by ``training_batches``), ``training_loss`` per
  step, ``init_set`` for the least-squares start;
- evaluation, per stitch: ``eval_batch`` gives each batch's state (states add with ``+``: a tensor of sums, or a
  list of records), ``reduce`` combines one rank's total across ranks, ``finalize`` turns it into metrics;
  ``report`` writes the task's files beside the results table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

import numpy as np
import torch
from PIL import Image
from timm.models import get_pretrained_cfg
from torchvision import transforms as T

from ..anchors import AnchorConfig, head_classes
from ..config import RunConfig
from ..distributed import all_reduce_sum
from ..errors import SNNetError
from ..pretrained import Pretrained
from ..registry import TASKS


def register_task(cls: type["Task"]) -> type["Task"]:
    """Class decorator: configs with ``task: <cls.name>`` run ``cls``, saved models of that task rebuild as its
    ``model_class``; another class of a name taken is refused."""
    return TASKS.register(cls)


class Task:
    """One task of the training loop and the evaluation path (see the module's docstring)."""

    # ---- spec: read without any data ---------------------------------------------------------------------
    name: ClassVar[str]
    # the model it trains: its config.json task, primary metric and direction, Hub pipeline tag
    model_class: ClassVar[type[Pretrained]]
    datasets: ClassVar[tuple[str, ...]]  # the values of data.dataset it reads
    metric_directions: ClassVar[dict[str, bool]]  # every metric it writes: higher is better?
    plot_metrics: ClassVar[tuple[tuple[str, bool], ...]]  # (metric, higher is better): pareto.png, pareto_<m>.png
    report_metrics: ClassVar[tuple[str, ...]]  # the columns printed in tables
    primary_metric: ClassVar[str]  # the model class's (set for every subclass)
    higher_is_better: ClassVar[bool]
    # its config's schema: RunConfig, or a subclass whose sections add the task's own keys (its folder's config.py)
    config_class: ClassVar[type[RunConfig]] = RunConfig
    input_size_pairs: ClassVar[bool] = False  # data.input_size may be [height, width]
    # its model is built for data.input_size even where the anchors could resize position embeddings per call
    fixed_input_size: ClassVar[bool] = False
    released_logging_state: ClassVar[bool] = False  # its released checkpoints are mmengine's, logging state inside
    # where a released checkpoint holds the state dict, and the prefix of the backbone's keys in it (the rest are
    # the heads', under the model's own names): mmengine's layout, the dense tasks'
    released_state_key: ClassVar[str] = "state_dict"
    released_backbone_prefix: ClassVar[str] = "backbone."
    head_weight: ClassVar[str | None] = None  # the state dict key whose first dimension is the trained classes
    # its model answers with class scores (B, classes): the demo shows {class: probability}, a cascade exits on
    # their confidence; else the demo shows an image and a legend
    answer_is_label: ClassVar[bool] = False
    score_threshold: ClassVar[float | None] = None  # the demo's minimum-score slider starts here (None: no slider)

    # ---- what the loop reads of an instance --------------------------------------------------------------
    train_set: Any
    val_set: Any
    init_set: Any
    num_classes: int | None = None
    train_collate: ClassVar[Any] = None  # None: the default collate (stacked tensors)
    eval_collate: ClassVar[Any] = None
    num_sums: int  # the length of the tensor eval_batch returns, for the default reduce

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        model = cls.__dict__.get("model_class")
        if model is not None:
            cls.primary_metric = model.primary_metric
            cls.higher_is_better = cls.metric_directions[model.primary_metric]

    def __init__(self, cfg: RunConfig, input_size: int | tuple[int, int], mean: tuple, std: tuple,
                 progress: bool = True, train: bool = True) -> None:
        """Keeps the config and the preprocessing; a task then reads its datasets (``train=False``, evaluation:
        ``train_set`` and ``init_set`` stay None)."""
        self.cfg, self.input_size, self.mean, self.std = cfg, input_size, mean, std

    # ---- spec methods ---------------------------------------------------------------------------------------
    @classmethod
    def check_keys(cls, cfg: RunConfig) -> None:
        """The config's keys make sense for this task; a ValueError says which does not (the schema's check)."""
        if cfg.data.dataset not in cls.datasets:
            raise ValueError(f"data.dataset {cfg.data.dataset!r} is not a {cls.name} dataset "
                             f"(choose {', '.join(cls.datasets)})")
        if not cls.input_size_pairs and isinstance(cfg.data.input_size, list):
            raise ValueError(f"data.input_size takes one size for {cls.name}, got {cfg.data.input_size}")

    @classmethod
    def check_input_size(cls, cfg: RunConfig, hw: tuple[int, int]) -> None:
        """The task's keys agree with the training input's (height, width), known once the anchors are built; an
        SNNetError says which does not."""

    @classmethod
    def eval_size(cls, cfg: RunConfig) -> tuple[int, int]:
        """(height, width) of evaluation images, which FLOPs are reported at: the input size."""
        size = data_defaults(cfg)[0]
        return tuple(size) if isinstance(size, tuple) else (size, size)

    @classmethod
    def check_data(cls, cfg: RunConfig) -> int | None:
        """The data's folders and files exist (read cheaply, before any run directory is touched); returns how
        many classes the data has, None for a task without classes."""
        return cls.head_classes(cfg)

    @classmethod
    def head_classes(cls, cfg: RunConfig) -> int | None:
        """Classes the model's heads are built for when the caller gives none (None: the anchors' own heads)."""
        return None

    @classmethod
    def class_names(cls, cfg: RunConfig) -> list[str] | None:
        """Names of the classes the heads predict, where the data names them without being read."""
        return None

    @classmethod
    def check_heads(cls, cfg: RunConfig, load_weights: bool) -> list[str]:
        """Before training: the data's folders exist and local anchor files read on the meta device (a corrupt or
        mis-shaped one fails here, before any data). Returns notes to print."""
        cls.check_data(cfg)
        for a in cfg.model.anchors:
            head_classes(AnchorConfig(a.name, False, a.checkpoint_path if load_weights else None, a.kwargs,
                                      a.rel_pos_bias))
        return []

    @classmethod
    def build_model(cls, cfg: RunConfig, num_classes: int | None = None, load_weights: bool = True,
                    device: str | None = None) -> Pretrained:
        """The model of ``cfg``, its heads sized by ``num_classes`` (default: ``head_classes``)."""
        if num_classes is None:
            num_classes = cls.head_classes(cfg)
        return cls.model_class.from_section(cfg.model, num_classes, load_weights, device, cls.eval_size(cfg))

    @classmethod
    def demo_transform(cls, cfg: RunConfig | None, model: Pretrained, mean, std):
        """An uploaded PIL image to the model's normalised input (``cfg``: the run's config.yaml, when it has one)."""
        resize = [] if model.takes_image_lists else [T.Resize(model.img_size)]  # it fits any size itself
        return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])

    @classmethod
    def answer(cls, out: Any, image: Image.Image, input_hw: tuple[int, int], classes: list[str] | None,
               min_score: float) -> dict[str, float] | tuple[np.ndarray, str]:
        """The demo's view of the model's output for one uploaded ``image`` (``input_hw``: the size it ran at):
        {class: probability} when ``answer_is_label``, else (an RGB float array, its legend as HTML)."""
        raise SNNetError(f"the demo has no view of {cls.name} answers: define {cls.__name__}.answer")

    # ---- the loop -----------------------------------------------------------------------------------------------
    def training_batches(self, make_loader: Callable[[Any, Any], Any], device: torch.device) -> Iterable:
        """The training loop's batches: ``make_loader(dataset, collate)`` over ``train_set`` and ``train_collate``
        (a task may read them another way, such as classification through timm's prefetcher)."""
        return make_loader(self.train_set, self.train_collate)

    def training_loss(self, model, batch, device: torch.device, step: int = 0) -> torch.Tensor:
        """The loss of one training batch (``step``: the global step, for losses that change over training)."""
        raise NotImplementedError

    def eval_batch(self, model, batch, device: torch.device) -> Any:
        """One batch's evaluation state under the selected stitch; states of one stitch add with ``+``."""
        raise NotImplementedError

    def reduce(self, state: Any, device: torch.device) -> Any:
        """One stitch's total on this rank (None when the rank saw no batch), combined across ranks: the tensor
        of ``num_sums`` sums, summed (tasks whose state is a list of records gather it instead)."""
        if state is None:  # a rank with no images still joins the reduction
            state = torch.zeros(self.num_sums, dtype=torch.float64, device=device)
        return all_reduce_sum(state)

    def finalize(self, state: Any) -> dict[str, float]:
        """The metrics of one stitch from its reduced state (and ``images``: how many were evaluated)."""
        raise NotImplementedError

    def report(self, model, rows: list[dict], run_dir: Path, device: torch.device) -> list[Path]:
        """Task files beside the results table (written as part of the evaluation's file set): none by default."""
        return []


def data_defaults(cfg: RunConfig) -> tuple[int | tuple[int, int], tuple, tuple]:
    """Input size (one size, or (height, width) where the task takes pairs), mean and std: the config's, else the
    small anchor's timm defaults."""
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

