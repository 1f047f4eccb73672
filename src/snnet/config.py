"""Run configuration: YAML files with ``section.key=value`` overrides, checked against one declared schema.

Every key has a type, a range or a set of choices (pydantic models below); a bad value is a one-line
error naming the key, raised before any data is read or any model is built.
"""
from __future__ import annotations

import copy
import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictInt, ValidationError,
                      field_validator, model_validator)
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


class ModelSection(Section):
    anchors: list[AnchorSection]
    version: Literal["v1", "v2", "sn-net"] = "v2"
    lora_rank: Int = Field(0, ge=0)
    lora_alpha: Float = Field(1.0, gt=0)
    out_indices: list[Int] | None = None  # the blocks of the last anchor whose tokens dense heads read

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


def listed(names: typing.Sequence[str], last: str) -> str:
    """'a', 'a and b' or 'a, b and c' (``last``: the word before the last name)."""
    return f"{', '.join(names[:-1])} {last} {names[-1]}" if len(names) > 1 else names[0]


def one_of(choices, value: Any) -> ValueError:
    """The schema's error for a value outside ``choices``: "must be 'a', 'b' or 'c', got 'x'"."""
    return ValueError(f"must be {listed([repr(c) for c in choices], 'or')}, got {value!r}")


class DataSection(Section):
    """The keys every task reads; a task's own (depth's range, segmentation's labels) are on its subclass."""

    # one of the task's datasets (snnet.tasks.Task.datasets); root: its folder (each task's docs give the layout)
    dataset: str = "imagefolder"
    root: str | None = None
    # None: the dataset's own split names (ImageFolder train/val, ADE20K training/validation, COCO-Stuff-10K
    # train2014/test2014, NYUv2 nyu_train.txt/nyu_test.txt, COCO train2017/val2017), so a run's config.yaml,
    # which lists every key, reloads with the same splits
    train_split: str | None = None
    val_split: str | None = None
    # default: the anchors' input size; the training crop of dense tasks ([height, width] for depth)
    input_size: Annotated[Int, Field(ge=1)] | list[Annotated[Int, Field(ge=1)]] | None = None
    batch_size: Int = Field(64, ge=1)  # per process
    eval_batch_size: Int | None = Field(None, ge=1)  # default: 1.5 x batch_size, as the reference
    workers: Int = Field(4, ge=0)
    mean: list[Float] | None = Field(None, min_length=3, max_length=3)  # default: the anchors' pretrained config
    std: list[Annotated[Float, Field(gt=0)]] | None = Field(None, min_length=3, max_length=3)
    interpolation: Literal[INTERPOLATIONS] = "bicubic"
    shapes: ShapesSection = Field(default_factory=ShapesSection)

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


class AugmentSection(Section):
    """The augmentations every task's pipeline reads; a task's own are on its subclass."""

    hflip: Probability = 0.5
    # each training image this many times per epoch, the copies on different ranks, each epoch a 1/n share of the
    # images rounded down to a multiple of 256 (DeiT's RASampler: 3; 1 = off)
    repeated_aug: Int = Field(1, ge=1)


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
    amp: Bool = True  # mixed precision in training and evaluation, of amp_dtype
    # float16: autocast with grad scaling on CUDA, nothing on CPU (the reference's apex fp16); bfloat16: autocast
    # without a scaler on CUDA (A100, H100) and on the CPU
    amp_dtype: Literal["float16", "bfloat16"] = "float16"
    # torch.compile each transformer block and stitching layer in place, after the least-squares start: every
    # stitch reuses the compiled blocks (a compiled model per stitch would recompile for each); the state dict keeps
    # its keys
    compile: Bool = False
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
    share_prefixes: Bool = True  # run stitches as a route tree, sharing common prefixes (same results, faster)

    @field_validator("stitches")
    @classmethod
    def _distinct(cls, ids: list[int] | None) -> list[int] | None:
        if ids is not None and (repeated := repeated_ids(ids)):
            raise ValueError(f"repeats stitch ids {repeated}")
        return ids


class RunConfig(Section):
    """A run: its task and the sections every task reads. A task reads its config through a subclass whose sections
    add the task's own keys (``Task.config_class``, declared in the task's folder); ``load_config`` picks it."""

    # dotted names a task's key had in an earlier snnet -> today's, so that a run's config.yaml of then loads
    renamed_keys: ClassVar[dict[str, str]] = {}

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
        task = TASKS[self.task]
        if type(self) is not task.config_class:  # its own keys would go unread
            raise ValueError(f"a {self.task} config is read with {task.config_class.__name__}, not "
                             f"{type(self).__name__} (snnet.config.read_config picks it)")
        task.check_keys(self)  # the task's own rules (snnet.tasks.Task.check_keys)
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
    return read_config(raw)


def read_config(raw: dict) -> RunConfig:
    """The config a mapping of sections describes, read with its task's schema (``Task.config_class``). Keys that
    other tasks own are dropped where they hold those tasks' defaults (a run's config.yaml from an earlier snnet
    lists every task's keys); set to another value, they are a one-line error naming the tasks that read them."""
    if not isinstance(raw, dict):
        raise SNNetError(f"a config is a mapping of sections, got a {type(raw).__name__}")
    task = raw.get("task", DEFAULT_TASK)
    if not isinstance(task, str) or task not in TASKS:
        raise SNNetError(f"config key 'task' {one_of(TASKS, task)}")
    schema = TASKS[task].config_class
    raw = copy.deepcopy(raw)
    for old, new in schema.renamed_keys.items():
        _rename(raw, old, new)
    others = [(t.name, t.config_class) for t in TASKS.values() if t.config_class is not schema]
    for name, other in others:  # another task's key under its earlier name: foreign, as under today's
        for old, new in other.renamed_keys.items():
            *path, key = old.split(".")
            node = _node(raw, path)
            if isinstance(node, dict) and key in node and node[key] != _default(_field_at(other, new)):
                raise SNNetError(f"config key '{old}' belongs to {name}: a {task} run does not read it")
            if isinstance(node, dict):
                node.pop(key, None)
    _drop_foreign_keys(raw, schema, others, "", task)
    return validate(schema, raw)


def _node(raw: dict, path: list[str]) -> Any:
    """The value at ``path`` (keys) in nested mappings, None where one is missing."""
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


def _field_at(schema: type[Section], dotted: str) -> Any:
    """The pydantic field of a dotted key."""
    *path, key = dotted.split(".")
    return _schema_at(schema, tuple(path)).model_fields[key]


def _rename(raw: dict, old: str, new: str) -> None:
    """The value of the dotted key ``old`` moved to ``new``; the two set to different values is an error."""
    *path, key = old.split(".")
    node = _node(raw, path)
    if not isinstance(node, dict) or key not in node:
        return
    value = node.pop(key)
    *path, key = new.split(".")
    node = raw
    for part in path:
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            return  # the schema says what is wrong with it
    if key in node and node[key] != value:
        raise SNNetError(f"config keys '{old}' ({value!r}) and '{new}' ({node[key]!r}) differ: '{old}' is now "
                         f"'{new}'")
    node[key] = value


_REQUIRED = object()  # the default of a key without one: equal to no value


def _drop_foreign_keys(raw: dict, own: type[Section], others: list[tuple[str, type[Section]]], path: str,
                       task: str) -> None:
    """Keys of ``raw`` that ``own`` (the task's section at ``path``) lacks and ``others`` (other tasks' sections
    there) declare leave it at those defaults, and are an error otherwise; unknown keys stay for the schema."""
    for key in list(raw):
        theirs = [(name, s.model_fields[key]) for name, s in others if key in s.model_fields]
        if key in own.model_fields:
            section = _section_of(own.model_fields[key].annotation)
            if isinstance(raw[key], dict) and section is not None:
                inner = [(name, s) for name, f in theirs if (s := _section_of(f.annotation)) is not None]
                _drop_foreign_keys(raw[key], section, inner, f"{path}{key}.", task)
        elif theirs:
            if not _at_defaults(raw[key], [f for _, f in theirs]):
                readers = listed(list(dict.fromkeys(name for name, _ in theirs)), "and")
                raise SNNetError(f"config key '{path}{key}' belongs to {readers}: a {task} run does not read it")
            del raw[key]


def _at_defaults(value: Any, fields: list[Any]) -> bool:
    """``value`` is the default of one of ``fields``, or a mapping of keys their sections declare, each at one."""
    sections = [s for f in fields if (s := _section_of(f.annotation)) is not None]
    if isinstance(value, dict) and sections:
        return all(_at_defaults(v, [s.model_fields[k] for s in sections if k in s.model_fields])
                   for k, v in value.items())
    return any(value == _default(f) for f in fields)


def _default(field: Any) -> Any:
    """A field's default as a YAML file would hold it."""
    if field.is_required():
        return _REQUIRED
    value = field.get_default(call_default_factory=True)
    return value.model_dump() if isinstance(value, BaseModel) else value


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
        schema = _section_of(tp) or tp
    return schema


def _section_of(tp: Any) -> type[Section] | None:
    """The section class an annotation holds (``S``, ``S | None``, ``list[S]``), if any."""
    for arg in (tp, *typing.get_args(tp)):
        inner = typing.get_args(arg)[0] if typing.get_origin(arg) is list else arg
        if isinstance(inner, type) and issubclass(inner, Section):
            return inner
    return None


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
