"""Anchors: the two pretrained timm ViTs a stitchable network is built from."""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from timm.data import ImageNetInfo, infer_imagenet_subset
from timm.layers import DropPath
from timm.models import get_pretrained_cfg, split_model_name_tag
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .errors import SNNetError, first_line
from .families import Family, ViTFamily, classifier_of, family_of, name_of
from .files import load_torch_checkpoint
from .flops import AnchorShape
from .rel_pos import grid_of, rel_pos_attention


@dataclass
class AnchorConfig:
    """How to build one anchor: a timm model name, ``create_model`` overrides and where weights come from."""

    name: str
    pretrained: bool = False
    checkpoint_path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    rel_pos_bias: bool = False  # a learned relative position bias in every attention (SPEC section 10)
    # how kwargs["drop_path_rate"] spreads over the blocks: timm's "linear" ramp from 0, or DeiT-3's
    # "constant" (every block the same rate, the reference's ImageNet models)
    drop_path: str = "linear"

    def to_dict(self) -> dict:
        return {"name": self.name, "pretrained": self.pretrained, "checkpoint_path": self.checkpoint_path,
                "kwargs": dict(self.kwargs), "rel_pos_bias": self.rel_pos_bias, "drop_path": self.drop_path}


# the name recorded for an anchor given as a plain VisionTransformer module: rebuilt from its constructor arguments
PLAIN_VIT = "VisionTransformer"


def check_model_name(name: str) -> None:
    """One-line error for a name timm does not know (a ``.tag`` suffix is allowed) other than ``PLAIN_VIT``."""
    if name != PLAIN_VIT and not timm.is_model(split_model_name_tag(name)[0]):
        raise SNNetError(f"unknown timm model {name!r}")


def create_anchor(config: AnchorConfig | str) -> nn.Module:
    """Build an anchor with timm; weights from the hub (``pretrained``) or a local file."""
    if isinstance(config, str):
        config = AnchorConfig(config)
    check_model_name(config.name)
    if config.drop_path not in DROP_PATH_RULES:
        raise SNNetError(f"unknown drop-path rule {config.drop_path!r}: expected one of {', '.join(DROP_PATH_RULES)}")
    if config.checkpoint_path is not None:
        model = _create(config, pretrained=False)
        load_anchor_weights(model, config.checkpoint_path)
        return model
    hub_fits = not config.rel_pos_bias and config.kwargs.get("final_norm", True) and "img_size" not in config.kwargs
    if not config.pretrained or hub_fits:
        return _create(config, config.pretrained)
    # hub weights fit the plain architecture at its own size: load them there, then move them over
    plain = {k: v for k, v in config.kwargs.items() if k not in ("final_norm", "img_size")}
    source = _create(replace(config, rel_pos_bias=False, kwargs=plain), pretrained=True)
    model = _create(config, pretrained=False)
    _load_state(model, source.state_dict(), f"timm's pretrained {config.name}")
    return model


def _create(config: AnchorConfig, pretrained: bool) -> nn.Module:
    """``timm.create_model`` with its errors as one line: a bad kwarg, or hub weights that cannot be had."""
    kwargs = dict(config.kwargs)
    if config.rel_pos_bias:
        meta = _meta_build(config)
        family = family_of(meta)
        if family is not ViTFamily:
            raise SNNetError(f"anchor {config.name!r} is of the {family.name} family: rel_pos_bias adds a relative "
                             f"position bias to the vit family's attention only (set rel_pos_bias: false)")
        kwargs["attn_layer"] = rel_pos_attention(tuple(meta.patch_embed.grid_size))
    if config.name == PLAIN_VIT and pretrained:
        raise SNNetError(f"a plain {PLAIN_VIT} has no pretrained weights: name a timm model or pass a checkpoint_path")
    try:
        model = (VisionTransformer(**kwargs) if config.name == PLAIN_VIT
                 else timm.create_model(config.name, pretrained=pretrained, **kwargs))
    except (TypeError, AssertionError, ValueError) as e:  # raised by the constructor: the kwargs are wrong
        raise SNNetError(f"timm cannot build anchor {config.name!r} with kwargs {config.kwargs}: "
                         f"{first_line(e)}") from None
    except (OSError, RuntimeError) as e:  # no network, no cache, or a hub file that does not fit
        if not pretrained:
            raise SNNetError(f"timm cannot build anchor {config.name!r}: {first_line(e)}") from None
        raise SNNetError(f"cannot load pretrained weights for {config.name!r} ({first_line(e)}); "
                         f"download them or pass a local checkpoint_path") from None
    if config.drop_path == "constant":
        set_drop_path(model, [kwargs.get("drop_path_rate", 0.0)] * len(residual_blocks(model)))
    return model


DROP_PATH_RULES = ("linear", "constant")


def residual_blocks(model: nn.Module) -> list[nn.Module]:
    """The anchor's transformer blocks in order (every family's have ``drop_path1`` and ``drop_path2``)."""
    return [m for m in model.modules() if hasattr(m, "drop_path1")]


def set_drop_path(model: nn.Module, rates: list[float]) -> None:
    """Stochastic depth of each block (both residual branches), e.g. DeiT-3's constant rate."""
    for blk, rate in zip(residual_blocks(model), rates, strict=True):
        blk.drop_path1 = DropPath(rate) if rate > 0 else nn.Identity()
        blk.drop_path2 = DropPath(rate) if rate > 0 else nn.Identity()


def anchor_family(config: AnchorConfig) -> type[Family]:
    """The family of the anchor ``config`` describes, read off a build on the meta device."""
    return family_of(_meta_build(config))


def _meta_build(config: AnchorConfig) -> nn.Module:
    """The architecture ``config`` describes (without a relative position bias) on the meta device: no memory."""
    return _create(replace(config, rel_pos_bias=False, kwargs={**config.kwargs, "device": "meta"}), pretrained=False)


def _read_weights(path: Path) -> dict[str, Any]:
    """A state dict from safetensors, or from a torch file without running pickled code."""
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for a damaged header
            raise SNNetError(f"cannot read anchor checkpoint {path}: {first_line(e)}") from None
    state = load_torch_checkpoint(path)
    for key in ("model", "state_dict"):  # DeiT and other training scripts nest the weights
        if isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_anchor_weights(model: nn.Module, path: str | Path) -> int | None:
    """Load a local timm / DeiT-3 / safetensors checkpoint into an anchor through timm's key filter.
    Returns how many classes the file's classifier has (None when it has none)."""
    path = Path(path)
    if not path.is_file():
        raise SNNetError(f"anchor checkpoint not found: {path}")
    state = _read_weights(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SNNetError(f"anchor checkpoint {path} holds no state dict of tensors")
    return _load_state(model, state, f"checkpoint {path}")


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> int | None:
    """Load anchor weights through timm's key filter. A classifier or final norm the model does not
    have (dense backbones) is left out; relative position tables the weights lack start at zero."""
    absent = {name for name in ("head", "norm", "fc_norm") if isinstance(getattr(model, name, None), nn.Identity)}
    state = {k: v for k, v in state.items() if k.split(".")[0] not in absent}
    family = family_of(model)
    try:
        state = family.filter_state(state, model)
        file_head = state.get(f"{family.classifier_path}.weight")
        head = classifier_of(model)
        if isinstance(head, nn.Identity):  # a backbone without a classifier (Swin's sits inside its head)
            state = {k: v for k, v in state.items() if not k.startswith(f"{family.classifier_path}.")}
        if isinstance(head, nn.Linear) and file_head is not None and file_head.shape != head.weight.shape:
            # a classifier for other classes: keep the backbone, start the head fresh (timm does the same);
            # the command line only gets here when model.replace_head asked for it
            state = {k: v for k, v in state.items() if not k.startswith("head.")}
        result = model.load_state_dict(state, strict=False)
    except (RuntimeError, ValueError, IndexError) as e:  # shapes of another width, depth or patch size
        lines = [line.strip() for line in str(e).splitlines()]
        reason = next((line for line in lines if line.startswith("size mismatch")), first_line(e))
        raise SNNetError(f"{source} does not fit {_describe(model)}: {reason}") from None
    missing = [k for k in result.missing_keys if not k.startswith("head.")
               and not k.endswith("relative_position_bias_table")]
    if missing or result.unexpected_keys:
        raise SNNetError(f"{source} does not fit {name_of(model)}: "
                         f"missing {missing[:5]}, unexpected {result.unexpected_keys[:5]}")
    return None if file_head is None else int(file_head.shape[0])


def _check_checkpoint(config: AnchorConfig) -> int | None:
    """Load ``config.checkpoint_path`` into the anchor built on the meta device (no memory, no copy):
    a missing, corrupt or mis-shaped file fails here. Returns the file's classifier size."""
    model = _create(replace(config, kwargs={**config.kwargs, "device": "meta"}), pretrained=False)
    with warnings.catch_warnings():  # copying into meta tensors is a no-op, which torch warns about
        warnings.simplefilter("ignore")
        return load_anchor_weights(model, config.checkpoint_path)


def head_classes(config: AnchorConfig) -> int | None:
    """Outputs of the classifier the anchor will have: its kwargs', its weights' (timm hub, or a local
    file, which is checked on the way by loading it into the anchor built on the meta device), or None
    when nothing fixes it (random weights: the head is built for the data)."""
    from_file = _check_checkpoint(config) if config.checkpoint_path else None
    if "num_classes" in config.kwargs:
        return config.kwargs["num_classes"]
    if config.checkpoint_path:
        return from_file
    if config.pretrained:
        pre = get_pretrained_cfg(config.name)
        return getattr(pre, "num_classes", None)
    return None


CLASS_NAMES_KEY = "class_names"  # a safetensors anchor file's metadata: the JSON list its head was trained on


def head_class_names(config: AnchorConfig) -> list[str] | None:
    """The classes the anchor's weights were trained on, where they record them: a local safetensors file's
    ``class_names`` metadata, or for timm hub weights the label names of their ImageNet subset (WordNet ids, as
    an ImageNet folder names its classes). None when nothing records them."""
    if config.checkpoint_path:
        path = Path(config.checkpoint_path)
        if path.suffix != ".safetensors":
            return None
        try:
            with safe_open(str(path), "pt") as f:
                raw = (f.metadata() or {}).get(CLASS_NAMES_KEY)
            names = json.loads(raw) if raw else None
        except Exception:  # unreadable files fail with their own one-line error where the weights load
            return None
        return [str(n) for n in names] if isinstance(names, list) else None
    pre = get_pretrained_cfg(config.name) if config.pretrained else None
    if pre is not None:
        subset = infer_imagenet_subset(pre)
        return list(ImageNetInfo(subset).label_names()) if subset else None
    return None


def anchor_config_of(model: nn.Module) -> AnchorConfig:
    """A config that rebuilds ``model``'s architecture with timm (weights are stored separately)."""
    kwargs = family_of(model).rebuild_kwargs(model)
    return AnchorConfig(name_of(model), kwargs=kwargs, rel_pos_bias=grid_of(model) is not None)


def anchor_shape(model: nn.Module) -> AnchorShape:
    """The numbers FLOPs are computed from, read off the modules by the anchor's family."""
    return family_of(model).shape(model)


def anchor_depth(model: nn.Module) -> int:
    """Blocks of an anchor, across its stages."""
    return sum(family_of(model).stage_depths(model))


def _describe(model: nn.Module) -> str:
    pe = model.patch_embed
    return (f"{name_of(model)} (depth {anchor_depth(model)}, width {family_of(model).width(model)}, "
            f"patch {pe.patch_size[0]}x{pe.patch_size[1]}, grid {pe.grid_size[0]}x{pe.grid_size[1]})")


def order_anchors(anchors: list[nn.Module]) -> list[nn.Module]:
    """Check the anchors can be stitched and return them small -> large (fewer blocks first, then narrower): each
    neighbour pair shares patch size, token grid and prefix tokens, every plain depth a multiple of the smallest;
    hierarchical anchors (Swin) are stitched with their own kind only."""
    if len(anchors) < 2:
        raise SNNetError(f"SN-Net stitches at least two anchors, got {len(anchors)}")
    layouts = {id(a): family_of(a).prefix_layout(a) for a in anchors}
    staged = {len(family_of(a).stage_depths(a)) > 1 for a in anchors}
    if len(staged) > 1:
        raise SNNetError(f"hierarchical anchors (swin) stitch with hierarchical anchors only, got "
                         f"{', '.join(f'{name_of(a)} ({family_of(a).name})' for a in anchors)}")
    ordered = sorted(anchors, key=lambda a: (anchor_depth(a), family_of(a).width(a)))
    small = ordered[0]
    for large in ordered[1:]:
        pair = f"anchors {_describe(small)} and {_describe(large)}"
        if small.patch_embed.patch_size != large.patch_embed.patch_size:
            raise SNNetError(f"incompatible {pair}: patch sizes differ")
        if small.patch_embed.grid_size != large.patch_embed.grid_size:
            raise SNNetError(f"incompatible {pair}: token grids differ")
        if layouts[id(small)] != layouts[id(large)]:
            (c0, r0), (c1, r1) = layouts[id(small)], layouts[id(large)]
            raise SNNetError(f"incompatible {pair}: prefix tokens differ ({c0} class and {r0} register tokens "
                             f"against {c1} and {r1})")
        if small.patch_embed.proj.in_channels != large.patch_embed.proj.in_channels:
            raise SNNetError(f"incompatible {pair}: input channels differ")
        if staged == {False} and anchor_depth(large) % anchor_depth(small):
            raise SNNetError(f"incompatible {pair}: depth ratio {anchor_depth(large)}/{anchor_depth(small)} is not "
                             f"an integer")
    for a in ordered:
        anchor_shape(a)  # rejects unsupported block types up front
    return ordered
