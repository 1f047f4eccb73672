"""Saving and loading snnet models (our safetensors format), and the released SN-Netv2 checkpoints (SPEC
sections 7 and 10)."""
from __future__ import annotations

import json
import re
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from ._atomic import atomic_path, atomic_write_text
from .errors import SNNetError
from .files import load_torch_checkpoint, read_json, read_safetensors

if TYPE_CHECKING:
    from .model import SNNet
    from .tasks.dense import DenseModel

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

_OFFICIAL_LAYER = re.compile(r"stitch_layers\.(?:(\d)\.)?(\d+)\.transform\.(weight|bias|lora_A|lora_B)$")
# the reference's segmentation anchors (mmsegmentation's ViT) -> timm's names
_MMSEG_NAMES = [(re.compile(a), b) for a, b in (
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."), (r"\.ffn\.layers\.1\.", ".mlp.fc2."),  # before blocks' "layers"
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."), (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.ln([12])\.", r".norm\1."))]
# what an mmengine training checkpoint holds beyond tensors: its logging state (HistoryBuffer objects,
# numpy arrays and scalars, and the getattr calls that rebuild them); read as inert stand-ins
def official_filter_fn(state: dict[str, torch.Tensor], model: "SNNet") -> dict[str, torch.Tensor]:
    """Rename a released SN-Net state dict to ours: DeiT-3 layer scales and mmsegmentation's ViT names to
    timm's, stitching layers ``stitch_layers.{0,1}.{k}.transform`` (v1: ``stitch_layers.{k}.transform``) to
    ``sl_layers.{k}`` / ``ls_layers.{k}``, position embeddings resampled to the model's grid. A saved
    relative position index must equal the one the model derives from its grid; it is not kept."""
    out, buffers = {}, dict(model.named_buffers())
    for key, value in state.items():
        m = _OFFICIAL_LAYER.match(key)
        if m:
            direction, index, param = m.groups()
            key = f"{'ls' if direction == '1' else 'sl'}_layers.{index}.{param}"
        elif key.startswith("anchors."):
            for pattern, name in _MMSEG_NAMES:
                key = pattern.sub(name, key)
            key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
            if key.endswith(".pos_embed"):
                value = _fit_pos_embed(value, model.anchors[int(key.split(".")[1])])
            if key.endswith(".relative_position_index"):
                _check_index(key, value, buffers.get(key))
                continue
        out[key] = value
    return out


def _check_index(key: str, value: torch.Tensor, own: torch.Tensor | None) -> None:
    if own is None:
        raise SNNetError(f"the checkpoint has {key} but the model's anchors have no relative position bias "
                         f"(set model.anchors.N.rel_pos_bias=true)")
    if own.shape != value.shape or not torch.equal(own.cpu(), value.cpu()):
        raise SNNetError(f"{key} in the checkpoint is for another token grid ({tuple(value.shape)}) than the "
                         f"model's ({tuple(own.shape)}): set model.anchors.N.kwargs.img_size to the training crop")


def _fit_pos_embed(pos: torch.Tensor, anchor: torch.nn.Module) -> torch.Tensor:
    target = anchor.pos_embed
    if pos.ndim != 3 or pos.shape == target.shape:
        return pos
    prefix = 0 if anchor.no_embed_class else anchor.num_prefix_tokens
    return resample_abs_pos_embed(pos, new_size=list(anchor.patch_embed.grid_size), num_prefix_tokens=prefix)


def load_state_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with a one-line error naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} ({'x'.join(map(str, state[k].shape))} in file, {'x'.join(map(str, own[k].shape))} in model)"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
            if keys:
                more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{more}")
        hint = ""
        if any("lora_" in k for k in unexpected + missing):
            ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A")}
            own_ranks = {v.shape[0] for k, v in own.items() if k.endswith("lora_A")}
            hint = f" (the file has LoRA rank {min(ranks, default=0)}, the model {min(own_ranks, default=0)})"
        raise SNNetError(f"{source} does not match the model: {'; '.join(parts)}{hint}")
    model.load_state_dict(state, strict=True)


def load_official_checkpoint(model: "SNNet | DenseModel", path: str | Path, obj: dict | None = None):
    """Load a released SN-Netv2 (or SN-Net) checkpoint into ``model``, weights only: a classification file
    (``model`` key) into an SNNet, a segmentation one (mmengine's, ``state_dict`` key) into a
    SegmentationModel. ``obj``: the file's contents when the caller has already read it."""
    from .model import SNNet

    classification = isinstance(model, SNNet)
    if obj is None:
        obj = load_torch_checkpoint(path, logging_state=not classification)
    key = "model" if classification else "state_dict"
    state = obj.get(key, obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SNNetError(f"{path} holds no SN-Net state dict under {key!r}")
    if classification:
        state = official_filter_fn(state, model)
    else:  # the backbone's keys as a classification file's, the heads' already ours
        backbone = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        state = {**{k: v for k, v in state.items() if not k.startswith("backbone.")},
                 **{f"backbone.{k}": v for k, v in official_filter_fn(backbone, model.backbone).items()}}
    load_state_checked(model, state, f"checkpoint {path}")
    return model


def save_pretrained(model: "SNNet | DenseModel", directory: str | Path, results: list[dict] | None = None,
                    plot: str | Path | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (the SNNetConfig) and the model card ``README.md`` (with
    per-stitch ``results`` and the Pareto ``plot`` when given), each atomically."""
    from .hub import write_model_card

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SNNetError(f"cannot save the model into {directory}: it is a file, not a directory")
    check_rebuilds(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "snnet", "format_version": str(FORMAT_VERSION)})
    config = {"format_version": FORMAT_VERSION, **model.config.to_dict()}
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    write_model_card(directory, model, results, plot)
    return directory


def _structure(model: torch.nn.Module) -> list[str]:
    """The network as its modules print, drop rates left out (training settings, not the architecture), then
    every tensor's name and shape."""
    text = re.sub(r"DropPath\(drop_prob=[^)]*\)", "Identity()", repr(model))  # timm skips DropPath at rate 0
    text = re.sub(r"Dropout\(p=[^,)]*", "Dropout(", text)
    return text.splitlines() + [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]


def check_rebuilds(model: "SNNet | DenseModel") -> None:
    """One line, before anything is written, when the config.json of ``model`` would not rebuild its network:
    an anchor module of a class, or with settings, that the config cannot record."""
    try:
        with torch.device("meta"):
            rebuilt = model_from_config(json.loads(json.dumps(model.config.to_dict())), "its config")
    except SNNetError as e:
        raise SNNetError(f"cannot save the model: {e}; give such anchors as timm model names or AnchorConfigs") from None
    mine, again = _structure(model), _structure(rebuilt)
    if mine != again:
        k = next((i for i, (a, b) in enumerate(zip(mine, again)) if a != b), min(len(mine), len(again)))
        theirs = mine[k].strip() if k < len(mine) else "(nothing)"
        raise SNNetError(f"cannot save the model: its config rebuilds {again[k].strip() if k < len(again) else '(nothing)'!r} "
                         f"where it has {theirs!r}; give such anchors as timm model names or AnchorConfigs")


def load_pretrained(directory: str | Path, revision: str | None = None) -> "SNNet | DenseModel":
    """Rebuild anchors (no download), stitch space and heads from ``config.json``, then load the weights.
    ``directory`` may be a Hugging Face Hub repo id (``org/name``), read through the Hugging Face cache."""
    from .hub import resolve

    directory = resolve(directory, revision)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise SNNetError(f"{directory} is not a saved snnet model: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    model = model_from_config(read_json(config_path, "snnet config"), str(config_path))
    load_state_checked(model, read_safetensors(weights_path), str(weights_path))
    return model


def model_from_config(raw: object, source: str) -> "SNNet | DenseModel":
    """The model a saved ``config.json`` describes (``source`` names it in errors), with untrained weights."""
    from .config import ModelSection, RunConfig, validate
    from .tasks import model_from_section

    if not isinstance(raw, dict):
        raise SNNetError(f"{source} is not a valid snnet config (a {type(raw).__name__}, not a mapping)")
    raw = dict(raw)  # the caller's dict stays as it is
    raw.pop("format_version", None)
    task = raw.pop("task", "classification")
    tasks = typing.get_args(RunConfig.model_fields["task"].annotation)
    if task not in tasks:
        raise SNNetError(f"{source}: unknown task {task!r} (snnet knows {', '.join(tasks)})")
    input_size = None  # a depth model's FLOPs size, kept beside the head's keys
    if isinstance(raw.get("head"), dict):
        raw["head"] = dict(raw["head"])
        input_size = raw["head"].pop("input_size", None)
    section = validate(ModelSection, raw, f"{source}: ")  # the run config's schema for these keys
    return model_from_section(task, section, section.head.num_classes, load_weights=False,
                              input_size=tuple(input_size) if input_size else None)
