"""Safe reading of foreign and own files: torch checkpoints (weights only, foreign objects as inert stand-ins),
JSON and safetensors, each failure a one-line error naming the file. No snnet model code here."""
from __future__ import annotations

import argparse
import json
import pickle
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from .errors import SNNetError, first_line

# what an mmengine training checkpoint holds beyond tensors: its logging state (HistoryBuffer objects,
# numpy arrays and scalars, and the getattr calls that rebuild them); read as inert stand-ins
_LOGGING_MODULES = ("mmengine.", "numpy.")
_LOGGING_NAMES = ("builtins.getattr",)
# what Swin's training code (SN-Net's stitching_swin) saves beside the weights: its yacs configuration, a dict
# subclass, read as a plain OrderedDict of its items (no yacs code runs)
_CONFIG_NAMES = ("yacs.config.CfgNode",)


class _Inert:
    """Stands in for a foreign object or function: accepts any arguments and state, keeps nothing, runs no code."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Inert":
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass


def load_torch_checkpoint(path: str | Path, logging_state: bool = False) -> dict[str, Any]:
    """``torch.load(weights_only=True)``; training checkpoints of DeiT-style code also hold an
    ``argparse.Namespace`` of arguments, the one class allowed beyond tensors and containers, and Swin's a yacs
    ``CfgNode``, read as an ``OrderedDict`` of its items. ``logging_state`` also reads an mmengine checkpoint's
    logging objects, as inert stand-ins."""
    path = Path(path)
    if not path.is_file():
        raise SNNetError(f"checkpoint not found: {path}")
    allowed: list = [argparse.Namespace, *((OrderedDict, name) for name in _CONFIG_NAMES)]
    if logging_state:
        foreign = [g for g in _unsafe_globals(path).split(", ") if g]
        refused = [g for g in foreign if not (g.startswith(_LOGGING_MODULES) or g in _LOGGING_NAMES)]
        if refused:
            raise SNNetError(f"refusing to load {path}: it pickles objects beyond weights and mmengine's "
                             f"logging state ({', '.join(refused)})")
        allowed += [(_Inert, g) for g in foreign]
    try:
        # torch warns about pickle protocols of foreign files; the refusal below says it in one line
        with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
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


def read_json(path: Path, what: str) -> object:
    """A JSON file, or a one-line error naming it as ``what``."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise SNNetError(f"{path} is not a valid {what} ({type(e).__name__}: {e})") from None


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for a damaged header
        raise SNNetError(f"cannot read {path}: {first_line(e)}") from None
