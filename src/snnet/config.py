"""Run configuration: YAML files with ``section.key=value`` overrides, checked against dataclasses."""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import SNNetError

PACKAGE_DIR = Path(__file__).parent
PACKAGED_CONFIGS = PACKAGE_DIR / "configs"


@dataclass
class AnchorSection:
    name: str = ""
    pretrained: bool = False
    checkpoint_path: str | None = None
    kwargs: dict = field(default_factory=dict)  # timm.create_model overrides, e.g. drop_path_rate


@dataclass
class ModelSection:
    anchors: list[AnchorSection] = field(default_factory=list)
    version: str = "v2"
    lora_rank: int = 0
    lora_alpha: float = 1.0
    out_indices: list[int] | None = None

    def anchor_pair(self) -> list[AnchorSection]:
        """The two anchors, or a one-line error."""
        if len(self.anchors) != 2:
            raise SNNetError(f"model.anchors must list two anchors, got {len(self.anchors)}")
        return self.anchors


@dataclass
class ShapesSection:
    """The built-in procedural dataset (``snnet.data.scenes``)."""

    image_size: int = 64
    num_classes: int = 10
    num_train: int = 10000
    num_val: int = 2000
    seed: int = 0
    preload: bool = True  # render every image once before training
    scene: dict = field(default_factory=dict)  # other SceneConfig knobs, e.g. max_distractors


@dataclass
class DataSection:
    dataset: str = "imagefolder"  # "imagefolder" (root/train, root/val) or "shapes" (built in)
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    input_size: int | None = None  # default: the anchors' input size
    batch_size: int = 64  # per process
    eval_batch_size: int | None = None  # default: 1.5 x batch_size, as the reference
    workers: int = 4
    mean: list[float] | None = None  # default: the anchors' pretrained config
    std: list[float] | None = None
    interpolation: str = "bicubic"
    shapes: ShapesSection = field(default_factory=ShapesSection)


@dataclass
class AugmentSection:
    crop: str = "rrc"  # "rrc" (random resized crop), "simple" (resize, pad-4 random crop, DeiT-3), "none"
    auto_augment: str | None = None  # timm policy: "3a" (3-Augment), "rand-m9-mstd0.5-inc1", ...
    color_jitter: float = 0.0
    hflip: float = 0.5
    mixup: float = 0.0
    cutmix: float = 0.0
    label_smoothing: float = 0.0
    reprob: float = 0.0
    eval_crop_ratio: float = 0.875


@dataclass
class TrainSection:
    epochs: int = 50
    optimizer: str = "lamb"
    lr: float = 3e-5
    weight_decay: float = 0.02
    momentum: float = 0.9
    scheduler: str = "cosine"
    warmup_epochs: int = 5
    warmup_lr: float = 1e-7
    min_lr: float = 1e-5
    clip_grad: float | None = None
    amp: bool = True  # autocast + grad scaling on CUDA; ignored on CPU
    init_images: int = 100  # least-squares initialisation on a fresh run
    init_batch_size: int = 25
    ros_gap: float = 1.0  # GFLOPs between ROS groups
    ros_k: float | None = None
    seed: int = 0
    steps_per_epoch: int | None = None  # cap for quick runs; None = the whole training set


@dataclass
class EvalSection:
    stitches: list[int] | None = None  # None = every stitch
    max_images: int | None = None


@dataclass
class RunConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    augment: AugmentSection = field(default_factory=AugmentSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "runs/snnet"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def resolve_config_path(name: str | Path) -> Path:
    """A path, or the name of a packaged config (``quickstart``, ``imagenet_deit3_s_l``, ...)."""
    path = Path(name)
    if path.is_file():
        return path
    packaged = PACKAGED_CONFIGS / f"{Path(name).stem}.yaml"
    if packaged.is_file():
        return packaged
    known = ", ".join(sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml")))
    raise SNNetError(f"config not found: {name} (packaged configs: {known})")


def load_config(name: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """Read a YAML config (or start from defaults), apply ``a.b=value`` overrides, check every key."""
    raw: dict = {}
    if name is not None:
        path = resolve_config_path(name)
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise SNNetError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(raw, dict):
            raise SNNetError(f"{path} must hold a mapping of sections")
    for item in overrides:
        _apply_override(raw, item)
    cfg = _build(RunConfig, raw, "")
    for a in cfg.model.anchors:  # "{package}" points into the installed snnet (the quickstart's anchors)
        if a.checkpoint_path:
            a.checkpoint_path = a.checkpoint_path.replace("{package}", str(PACKAGE_DIR))
    return cfg


def _apply_override(raw: dict, item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise SNNetError(f"override {item!r} must look like section.key=value")
    value = yaml.safe_load(text) if text else None
    node: Any = raw
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
            continue
        node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    else:
        node[last] = value


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise SNNetError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _build(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SNNetError(f"config section '{prefix.rstrip('.') or 'top'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(names)})"
            raise SNNetError(f"unknown config key '{prefix}{key}'{hint}")
    values = {}
    for name in names:
        if name in raw:
            values[name] = _coerce(hints[name], raw[name], f"{prefix}{name}")
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise SNNetError(f"config key '{key}' must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}.{i}") if args else v for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise SNNetError(f"config key '{key}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise SNNetError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, str):  # YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (tp is int and value != int(value)):
            raise SNNetError(f"config key '{key}' must be a number ({tp.__name__}), got {value!r}")
        return tp(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise SNNetError(f"config key '{key}' must be a string, got {value!r}")
        return str(value)
    return value


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
