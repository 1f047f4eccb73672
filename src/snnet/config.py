"""Run configuration: YAML files with ``section.key=value`` overrides, checked against one declared schema.

Every key has a type, a range or a set of choices (pydantic models below); a bad value is a one-line
error naming the key, raised before any data is read or any model is built.
"""
from __future__ import annotations

import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import timm
import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError,
                      field_validator, model_validator)
from timm.data import create_transform
from timm.optim import list_optimizers

from .anchors import check_model_name
from .data import SceneConfig
from .errors import SNNetError, first_line
from .registry import TASKS

PACKAGE_DIR = Path(__file__).parent
DEFAULT_TASK = "classification"  # a config (or a saved run's) without a task key
PACKAGED_CONFIGS = PACKAGE_DIR / "configs"

# interpolations both timm's transforms and torchvision's InterpolationMode accept
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
# timm schedulers the epoch loop can drive (plateau needs a metric, rsqrt a stable timescale)
SCHEDULERS = ("cosine", "tanh", "step", "multistep", "poly", "onecycle")  # onecycle: torch's, per iteration


def _number(value: Any) -> Any:
    """Floats from YAML: 3e-5 (no dot) arrives as a string under YAML 1.1; true/false are not numbers."""
    if isinstance(value, bool):
        raise ValueError(f"must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ValueError(f"must be a number, got {value!r}") from None
    return value


Float = Annotated[float, BeforeValidator(_number)]
Int = StrictInt
Bool = StrictBool
Probability = Annotated[Float, Field(ge=0, le=1)]


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are checked too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True,
                              allow_inf_nan=False)

    def to_dict(self) -> dict:
        return self.model_dump()


class AnchorSection(Section):
    name: str
    pretrained: Bool = False
    checkpoint_path: str | None = None  # "{package}" points into the installed snnet (the quickstart's anchors)
    kwargs: dict[str, Any] = Field(default_factory=dict)  # timm.create_model overrides, e.g. drop_path_rate
    rel_pos_bias: Bool = False  # a learned relative position bias in every attention (the reference's dense anchors)
    # how kwargs.drop_path_rate spreads over the blocks: timm's (and mmseg's) linear ramp from 0, or DeiT-3's
    # constant rate in every block (the reference's ImageNet models)
    drop_path: Literal["linear", "constant"] = "linear"

    @field_validator("name")
    @classmethod
    def _known_model(cls, name: str) -> str:
        check_model_name(name)
        return name

    @field_validator("checkpoint_path")
    @classmethod
    def _expand(cls, path: str | None) -> str | None:
        return path.replace("{package}", str(PACKAGE_DIR)) if path else path


class HeadSection(Section):
    """The head of a dense task (segmentation: SETR-naive decode head and its auxiliary heads)."""

    channels: Int = Field(256, ge=1)
    # the heads' initial weights: "reference" as the reference's heads are built (mmseg / mmcv: conv_seg N(0, 0.01),
    # Kaiming ConvModules; torchvision's for detection), or "torch": PyTorch's default for every conv and linear
    init: Literal["reference", "torch"] = "reference"
    num_classes: Int | None = Field(None, ge=1)  # segmentation, detection; default: the dataset's
    aux_weight: Float = Field(0.4, ge=0)  # segmentation: loss weight of each auxiliary head; 0 = none are built
    min_depth: Float = Field(1e-3, gt=0)  # depth: added to the head's ReLU output
    max_depth: Float = Field(10.0, gt=0)  # depth: test predictions are clamped to [min_depth, max_depth]
    roi_channels: Int = Field(256, ge=1)  # detection: mask-head convs (box-head FC layers: 4x)
    roi_samples: Int = Field(512, ge=1)  # detection: RoIs per image in the box head's loss
    detections: Int = Field(100, ge=1)  # detection: the most detections kept per image
    # depth: channels of DPT's four reassembled levels, shallow to deep
    reassemble_channels: list[Annotated[Int, Field(ge=1)]] = Field([96, 192, 384, 768], min_length=4, max_length=4)

    @model_validator(mode="after")
    def _depth_range(self) -> "HeadSection":
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        return self


class ModelSection(Section):
    anchors: list[AnchorSection]
    version: Literal["v1", "v2", "sn-net"] = "v2"
    lora_rank: Int = Field(0, ge=0)
    lora_alpha: Float = Field(1.0, gt=0)
    out_indices: list[Int] | None = None
    # train new classifier heads when the data's classes differ from the anchors' heads
    replace_head: Bool = False
    head: HeadSection = Field(default_factory=HeadSection)  # dense tasks only

    @field_validator("anchors")
    @classmethod
    def _two_or_more(cls, anchors: list[AnchorSection]) -> list[AnchorSection]:
        if len(anchors) < 2:
            raise ValueError(f"must list at least two anchors, got {len(anchors)}")
        return anchors


class ShapesSection(Section):
    """The built-in procedural dataset (``snnet.data.scenes``)."""

    image_size: Int = Field(64, ge=8)
    num_classes: Int = Field(10, ge=2)
    num_train: Int = Field(10000, ge=1)
    num_val: Int = Field(2000, ge=1)
    seed: Int = Field(0, ge=0)
    preload: Bool = True  # render every image once before training
    scene: dict[str, Any] = Field(default_factory=dict)  # other SceneConfig knobs, e.g. max_distractors

    @model_validator(mode="after")
    def _scene_knobs(self) -> "ShapesSection":
        try:
            self.scene_config()
        except (TypeError, ValueError) as e:
            raise ValueError(f"scene: {e}") from None
        return self

    def scene_config(self):
        """The generator's config."""
        return SceneConfig(image_size=self.image_size, num_classes=self.num_classes, seed=self.seed, **self.scene)


def one_of(choices, value: Any) -> ValueError:
    """The schema's error for a value outside ``choices``: "must be 'a', 'b' or 'c', got 'x'"."""
    names = [repr(c) for c in choices]
    listed = f"{', '.join(names[:-1])} or {names[-1]}" if len(names) > 1 else names[0]
    return ValueError(f"must be {listed}, got {value!r}")


class DataSection(Section):
    # classification: root/train + root/val class folders, or the built-in scenes;
    # segmentation: ADE20K, COCO-Stuff-10K, root/images/<split> + root/annotations/<split>, or the scenes
    # depth: NYUv2 (BTS split files), root/images/<split> + root/depths/<split> (16-bit PNGs), or the scenes
    # detection: COCO (root/<split>/ images, root/annotations/instances_<split>.json) or the scenes
    dataset: str = "imagefolder"  # one of the registered tasks' datasets (snnet.tasks.Task.datasets)
    root: str | None = None
    # None: the dataset's own split names (ImageFolder train/val, ADE20K training/validation, COCO-Stuff-10K
    # train2014/test2014, NYUv2 nyu_train.txt/nyu_test.txt, COCO train2017/val2017), so a run's config.yaml,
    # which lists every key, reloads with the same splits
    train_split: str | None = None
    val_split: str | None = None
    reduce_zero_label: Bool | None = None  # label 0 -> ignored, others - 1; default per dataset (ADE20K, COCO-Stuff)
    ignore_index: Int = Field(255, ge=0, le=255)
    test_resize: list[Int] | None = Field(None, min_length=2, max_length=2)  # [long, short] bound, aspect kept
    # depth: PNG values per metre, the valid range, NYUv2's border cut before training, the Eigen crop of the
    # metrics (top, bottom, left, right; ends excluded), and the evaluation size FLOPs are reported at
    depth_scale: Float = Field(1000.0, gt=0)
    min_depth: Float = Field(1e-3, ge=0)
    max_depth: Float = Field(10.0, gt=0)
    precrop: list[Annotated[Int, Field(ge=0)]] | None = Field(None, min_length=4, max_length=4)
    eval_crop: list[Annotated[Int, Field(ge=0)]] | None = Field(None, min_length=4, max_length=4)
    eval_size: list[Annotated[Int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        known = dict.fromkeys(d for task in TASKS.values() for d in task.datasets)
        if name not in known:
            raise one_of(known, name)
        return name

    @field_validator("input_size")
    @classmethod
    def _one_or_two(cls, size):
        if isinstance(size, list) and len(size) != 2:
            raise ValueError(f"must be one size or [height, width], got {size}")
        return size
    # default: the anchors' input size; the training crop of dense tasks ([height, width] for depth)
    input_size: Annotated[Int, Field(ge=1)] | list[Annotated[Int, Field(ge=1)]] | None = None
    batch_size: Int = Field(64, ge=1)  # per process
    eval_batch_size: Int | None = Field(None, ge=1)  # default: 1.5 x batch_size, as the reference
    workers: Int = Field(4, ge=0)
    mean: list[Float] | None = Field(None, min_length=3, max_length=3)  # default: the anchors' pretrained config
    std: list[Annotated[Float, Field(gt=0)]] | None = Field(None, min_length=3, max_length=3)
    interpolation: Literal[INTERPOLATIONS] = "bicubic"
    shapes: ShapesSection = Field(default_factory=ShapesSection)

    @model_validator(mode="after")
    def _ranges(self) -> "DataSection":
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        for key in ("precrop", "eval_crop"):
            box = getattr(self, key)
            if box is not None and not (box[0] < box[1] and box[2] < box[3]):
                raise ValueError(f"{key} {box} must be [top, bottom, left, right] with top < bottom and left < right")
        return self


class AugmentSection(Section):
    crop: Literal["rrc", "simple", "none"] = "rrc"  # random resized crop; DeiT-3's resize + pad-4 crop; none
    auto_augment: str | None = None  # timm policy: "3a" (3-Augment), "rand-m9-mstd0.5-inc1", ...
    color_jitter: Float = Field(0.0, ge=0)
    hflip: Probability = 0.5
    mixup: Float = Field(0.0, ge=0)  # Beta alphas; 0 = off
    cutmix: Float = Field(0.0, ge=0)
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    reprob: Probability = 0.0
    eval_crop_ratio: Float = Field(0.875, gt=0, le=1)
    # each training image this many times per epoch, the copies on different ranks, each epoch a 1/n share of the
    # images rounded down to a multiple of 256 (DeiT's RASampler: 3; 1 = off)
    repeated_aug: Int = Field(1, ge=1)
    # detection: large-scale jitter of the input_size square by a ratio in `ratio_range` (0.1-2.0 in ViTDet)
    # segmentation (mmsegmentation's pipeline): random resize of `scale` by a ratio in `ratio_range`,
    # random crop to data.input_size where no class covers more than `cat_max_ratio`, photometric distortion
    scale: list[Annotated[Int, Field(ge=1)]] = Field([2048, 512], min_length=2, max_length=2)
    ratio_range: list[Annotated[Float, Field(gt=0)]] = Field([0.5, 2.0], min_length=2, max_length=2)
    cat_max_ratio: Float = Field(0.75, gt=0, le=1)
    photometric: Bool = True
    # depth (the reference's): rotation by up to this many degrees (p 0.5), colour augmentation probability
    rotation: Float = Field(2.5, ge=0)
    color_prob: Probability = 0.5

    @field_validator("auto_augment")
    @classmethod
    def _timm_policy(cls, policy: str | None) -> str | None:
        if policy:
            try:
                create_transform(32, is_training=True, auto_augment=policy)
            except Exception:
                raise ValueError(f"{policy!r} is not a timm auto-augment policy "
                                 f"(e.g. '3a', 'rand-m9-mstd0.5-inc1', 'augmix-m5', 'original')") from None
        return policy


class DistillationSection(Section):
    """DeiT's distillation from a frozen timm teacher (SN-Net's recipe): the loss is ``(1 - alpha)`` x the task's
    plus ``alpha`` x the cross-entropy of the stitch's logits against the teacher's top class (``hard``), or their
    KL divergence at temperature ``tau`` (``soft``), the teacher seeing the same (mixed) images."""

    teacher: str  # a timm model name, e.g. regnety_160.deit_in1k
    pretrained: Bool = True
    kind: Literal["hard", "soft"] = "hard"
    alpha: Float = Field(0.5, ge=0, le=1)
    tau: Float = Field(1.0, gt=0)

    @field_validator("teacher")
    @classmethod
    def _timm_model(cls, name: str) -> str:
        if not timm.is_model(name):
            raise ValueError(f"{name!r} is not a timm model")
        return name


class TrainSection(Section):
    epochs: Int = Field(50, ge=0)
    optimizer: str = "lamb"
    lr: Float = Field(3e-5, gt=0)
    opt_eps: Float | None = Field(None, gt=0)  # None: timm's default for the optimizer (LAMB 1e-6; the reference 1e-8)
    opt_betas: list[Annotated[Float, Field(ge=0, lt=1)]] | None = Field(None, min_length=2, max_length=2)
    weight_decay: Float = Field(0.02, ge=0)
    momentum: Float = Field(0.9, ge=0, lt=1)
    scheduler: Literal[SCHEDULERS] = "cosine"
    warmup_epochs: Int = Field(5, ge=0)
    # epochs the schedule trails: 0 = epoch e trains at lr(e) (timm's convention); 1 = at lr(e - 1), epochs 0 and 1
    # both at lr(0) (DeiT's main.py steps lr_scheduler.step(epoch) after epoch `epoch`: the reference's runs)
    scheduler_lag: Literal[0, 1] = 0
    warmup_lr: Float = Field(1e-7, ge=0)
    min_lr: Float = Field(1e-5, ge=0)
    clip_grad: Float | None = Field(None, gt=0)
    amp: Bool = True  # autocast + grad scaling on CUDA; ignored on CPU
    init_images: Int = Field(100, ge=1)  # least-squares initialisation on a fresh run
    # the images it fits on: training images through the training pipeline (augmentations and CutMix, as the
    # reference's runs fitted), or through the deterministic evaluation transform
    init_transform: Literal["train", "eval"] = "train"
    init_batch_size: Int = Field(25, ge=1)
    ros_gap: Float = Field(1.0, ge=0)  # GFLOPs between ROS groups
    ros_k: Float | None = Field(None, gt=0)
    # each anchor alone trains on at least this share of the steps (0: ROS alone, the reference's)
    ros_anchor_share: Float = Field(0.0, ge=0, le=0.5)
    # every rank trains the same stitch each step (one ROS generator seeded alike on all ranks: the reference's
    # segmentation runs under mmengine); false: each rank draws its own (seed + rank: classification, depth)
    ros_same_on_all_ranks: Bool = False
    distillation: DistillationSection | None = None  # classification only
    seed: Int = Field(0, ge=0)
    steps_per_epoch: Int | None = Field(None, ge=1)  # cap for quick runs; None = the whole training set
    # iteration-based schedule (mmsegmentation's): `iterations` steps, the LR stepped every iteration,
    # a checkpoint and a log line every `checkpoint_interval` steps; replaces epochs and warmup_epochs
    iterations: Int | None = Field(None, ge=1)
    warmup_iterations: Int = Field(0, ge=0)
    checkpoint_interval: Int = Field(1000, ge=1)
    poly_power: Float = Field(0.9, gt=0)  # the poly scheduler's exponent
    decay_milestones: list[Annotated[Int, Field(ge=1)]] | None = None  # multistep: epochs (or iterations) of x0.1
    weight_decay_all: Bool = False  # also decay biases and norms (mmsegmentation does, timm's optimizers do not)
    # parameter groups as mmcv's custom keys: names containing one of `no_decay_keys` get no weight decay,
    # the backbone's learning rate is scaled (the depth recipe: pos_embed, cls_token, norm; 0.1)
    no_decay_keys: list[str] | None = None
    backbone_lr_scale: Float = Field(1.0, gt=0)
    loss_warmup: Int = Field(100, ge=0)  # depth: iterations of the scale-invariant loss without its variance

    @field_validator("optimizer")
    @classmethod
    def _timm_optimizer(cls, name: str) -> str:
        known = list_optimizers()
        if name.lower().split("_")[-1] not in known:  # timm also takes "lookahead_<name>"
            close = difflib.get_close_matches(name.lower(), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ValueError(f"{name!r} is not a timm optimizer{hint}")
        return name

    @model_validator(mode="after")
    def _one_schedule(self) -> "TrainSection":
        # by value, not by presence: a run's own config.yaml lists every key with its default
        changed = {k for k in ("epochs", "warmup_epochs", "warmup_iterations")
                   if k in self.model_fields_set and getattr(self, k) != type(self).model_fields[k].default}
        if self.iterations is not None:
            if self.scheduler_lag:
                raise ValueError("sets iterations and scheduler_lag: the lag applies to epoch-based schedules")
            both = sorted({"epochs", "warmup_epochs"} & changed)
            if both:
                raise ValueError(f"sets iterations and {' and '.join(both)}: an iteration-based run takes "
                                 f"train.iterations and train.warmup_iterations only")
        elif "warmup_iterations" in changed:
            raise ValueError("sets warmup_iterations without iterations: use warmup_epochs for an epoch-based run")
        return self


def repeated_ids(ids: list[int]) -> list[int]:
    """The ids that occur more than once, sorted."""
    return sorted({i for i in ids if ids.count(i) > 1})


class EvalSection(Section):
    stitches: list[Int] | None = Field(None, min_length=1)  # None = every stitch
    max_images: Int | None = Field(None, ge=1)
    mode: Literal["whole", "slide"] = "whole"  # dense tasks: whole image, or windows of data.input_size
    stride: Int | None = Field(None, ge=1)  # sliding-window stride; default 2/3 of the window (341 for 512)
    visualize: Int = Field(4, ge=0)  # dense tasks: validation images in the prediction grid
    flip: Bool = True  # depth: average with the flipped prediction of the flipped image
    share_prefixes: Bool = True  # run stitches as a route tree, sharing common prefixes (same results, faster)

    @field_validator("stitches")
    @classmethod
    def _distinct(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and (repeated := repeated_ids(ids)):
            raise ValueError(f"repeats stitch ids {repeated}")
        return ids


class RunConfig(Section):
    task: str = DEFAULT_TASK  # a registered task (snnet.tasks.TASKS)
    model: ModelSection
    data: DataSection = Field(default_factory=DataSection)
    augment: AugmentSection = Field(default_factory=AugmentSection)
    train: TrainSection = Field(default_factory=TrainSection)
    eval: EvalSection = Field(default_factory=EvalSection)
    output_dir: str = Field("runs/snnet", min_length=1)

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise one_of(TASKS, name)
        return name

    @model_validator(mode="after")
    def _task_keys(self) -> "RunConfig":
        TASKS[self.task].check_keys(self)  # the task's own rules (snnet.tasks.Task.check_keys)
        return self


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a packaged config (``quickstart``, ``imagenet_deit3_s_l``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{Path(name).stem}.yaml"
    if packaged.is_file() and path.suffix in ("", ".yaml"):
        return packaged
    known = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise SNNetError(f"config not found: {name} (packaged configs: {known})")


def load_config(name: str | Path | None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults), apply ``a.b=value`` overrides, check every key."""
    raw: dict = {}
    if name is not None:
        path = resolve_config_path(name)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            raise SNNetError(f"cannot parse {path}: {first_line(e)}") from None
        if not isinstance(raw, dict):
            raise SNNetError(f"{path} must hold a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    return validate(RunConfig, raw)


def validate(schema: type[Section], raw: Any, source: str = "") -> Any:
    """``schema`` built from ``raw``, or an SNNetError naming the first bad key (prefixed by ``source``)."""
    try:
        return schema.model_validate(raw)
    except ValidationError as e:
        raise SNNetError(f"{source}{_describe_error(schema, e.errors()[0])}") from None


_TYPE_MESSAGES = {
    "int_type": "must be an integer", "int_parsing": "must be an integer", "int_from_float": "must be an integer",
    "float_type": "must be a number", "float_parsing": "must be a number", "finite_number": "must be a finite number",
    "bool_type": "must be true or false", "bool_parsing": "must be true or false",
    "string_type": "must be a string", "list_type": "must be a list", "dict_type": "must be a mapping",
    "model_type": "must be a mapping", "model_attributes_type": "must be a mapping", "missing": "is required",
}


def _describe_error(schema: type[Section], err: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc)
    if err["type"] == "extra_forbidden":
        names = list(_schema_at(schema, err["loc"][:-1]).model_fields)
        close = difflib.get_close_matches(loc[-1], names, n=1)
        prefix = key.rpartition(".")[0]
        prefix = f"{prefix}." if prefix else ""
        hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
        return f"unknown config key '{key}'{hint}"
    if err["type"] == "value_error":
        text = str(err["ctx"]["error"])
        if not key:  # a rule across sections
            return f"config: {text}"
        return f"config key '{key}' {text}" if text.startswith("must ") else f"config key '{key}': {text}"
    if err["type"] in ("too_short", "too_long"):
        bound = f"at least {err['ctx']['min_length']}" if err["type"] == "too_short" else \
            f"at most {err['ctx']['max_length']}"
        return f"config key '{key}' must hold {bound} items, got {err['input']!r}"
    text = _TYPE_MESSAGES.get(err["type"]) or err["msg"].replace("Input should", "must").replace("List", "list")
    got = "" if err["type"] == "missing" else f", got {err['input']!r}"
    return f"config key '{key or 'top'}' {text}{got}"


def _schema_at(schema: Any, loc: tuple) -> Any:
    """The section class that ``loc`` (a pydantic error location) points into."""
    for part in loc:
        if isinstance(part, int):
            continue
        tp = schema.model_fields[part].annotation
        for arg in (tp, *typing.get_args(tp)):
            inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
            if isinstance(inner, type) and issubclass(inner, Section):
                tp = inner
                break
        schema = tp
    return schema


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key or any(not p for p in key.split(".")):
        raise SNNetError(f"override {item!r} must look like section.key=value")
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        raise SNNetError(f"override {item!r}: cannot parse the value {text!r}") from None
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        if not isinstance(node, dict):
            raise SNNetError(f"override {key!r}: '{'.'.join(parts[:i])}' is not a section")
        if node.get(part) is None:  # absent, or an empty section in the YAML file
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise SNNetError(f"override {key!r}: '{'.'.join(parts[:-1])}' is not a section")


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SNNetError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)

