"""Model files: our safetensors format, and the released SN-Netv2 checkpoints (SPEC section 7)."""
from __future__ import annotations

import argparse
import json
import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

from ._atomic import atomic_path, atomic_write_text
from .errors import SNNetError

if TYPE_CHECKING:
    from .model import SNNet

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1

_OFFICIAL_LAYER = re.compile(r"stitch_layers\.(?:(\d)\.)?(\d+)\.transform\.(weight|bias|lora_A|lora_B)$")


def load_torch_checkpoint(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; training checkpoints of DeiT-style code also hold an
    ``argparse.Namespace`` of arguments, the one class allowed beyond tensors and containers."""
    path = Path(path)
    if not path.is_file():
        raise SNNetError(f"checkpoint not found: {path}")
    try:
        # torch warns about pickle protocols of foreign files; the refusal below says it in one line
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        named = re.search(r"[Uu]nsupported (?:global: )?GLOBAL (\S+)", str(e))
        unsafe = named.group(1) if named else _unsafe_globals(path)
        if unsafe:
            raise SNNetError(f"refusing to load {path}: it pickles objects beyond weights ({unsafe})") from None
        raise SNNetError(f"cannot read checkpoint {path}: not a torch checkpoint "
                         f"(or a legacy-format one holding objects beyond weights)") from None
    except Exception as e:  # a damaged file fails in many ways deep inside torch.load
        raise SNNetError(f"cannot read checkpoint {path}: truncated or not a torch checkpoint "
                         f"({type(e).__name__})") from None
    if not isinstance(obj, dict):
        raise SNNetError(f"checkpoint {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def _unsafe_globals(path: Path) -> str:
    """Classes a zip-format checkpoint would need to run; empty when there are none or it is no such file."""
    try:
        return ", ".join(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:
        return ""


def official_filter_fn(state: dict[str, torch.Tensor], model: "SNNet") -> dict[str, torch.Tensor]:
    """Rename a released SN-Net state dict to ours: DeiT-3 layer scales to timm's names, stitching
    layers ``stitch_layers.{0,1}.{k}.transform`` (v1: ``stitch_layers.{k}.transform``) to
    ``sl_layers.{k}`` / ``ls_layers.{k}``, position embeddings resampled to the model's grid."""
    out = {}
    for key, value in state.items():
        m = _OFFICIAL_LAYER.match(key)
        if m:
            direction, index, param = m.groups()
            key = f"{'ls' if direction == '1' else 'sl'}_layers.{index}.{param}"
        elif key.startswith("anchors."):
            key = re.sub(r"\.gamma_([12])$", r".ls\1.gamma", key)
            if key.endswith(".pos_embed"):
                value = _fit_pos_embed(value, model.anchors[int(key.split(".")[1])])
        out[key] = value
    return out


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


def load_official_checkpoint(model: "SNNet", path: str | Path, obj: dict | None = None) -> "SNNet":
    """Load a released SN-Netv2 (or SN-Net) classification checkpoint into ``model``, weights only.
    ``obj``: the file's contents when the caller has already read it."""
    obj = load_torch_checkpoint(path) if obj is None else obj
    state = obj.get("model", obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SNNetError(f"{path} holds no SN-Net state dict under 'model'")
    load_state_checked(model, official_filter_fn(state, model), f"checkpoint {path}")
    return model


def save_pretrained(model: "SNNet", directory: str | Path) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (the SNNetConfig) atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SNNetError(f"cannot save the model into {directory}: it is a file, not a directory")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "snnet", "format_version": str(FORMAT_VERSION)})
    config = {"format_version": FORMAT_VERSION, **model.config.to_dict()}
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2) + "\n")
    return directory


def load_pretrained(directory: str | Path) -> "SNNet":
    """Rebuild anchors (no download) and stitch space from ``config.json``, then load the weights."""
    from .config import ModelSection, validate
    from .model import SNNet, SNNetConfig

    directory = Path(directory)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise SNNetError(f"{directory} is not a saved snnet model: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SNNetError(f"{config_path} is not a valid snnet config ({type(e).__name__}: {e})") from None
    if not isinstance(raw, dict):
        raise SNNetError(f"{config_path} is not a valid snnet config (a {type(raw).__name__}, not a mapping)")
    raw.pop("format_version", None)
    section = validate(ModelSection, raw, f"{config_path}: ")  # the run config's schema for these keys
    config = SNNetConfig.from_dict(section.to_dict())
    model = SNNet(config.anchors, version=config.version, lora_rank=config.lora_rank,
                  lora_alpha=config.lora_alpha, out_indices=config.out_indices)
    try:
        state = load_file(str(weights_path))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise SNNetError(f"cannot read {weights_path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    load_state_checked(model, state, str(weights_path))
    return model
