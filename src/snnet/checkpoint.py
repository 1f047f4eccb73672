"""The released SN-Net and SN-Netv2 checkpoints (SPEC sections 7 and 10), weights only: one filter renames a
released state dict to ours; and what a command's ``--checkpoint`` names, read as a model (``read_trained``)."""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from timm.layers import resample_abs_pos_embed

from .config import DEFAULT_TASK
from .errors import SNNetError
from .files import load_torch_checkpoint
from .pretrained import load_pretrained, load_state_checked
from .run_state import CHECKPOINT_NAME
from .rundir import saved_model_dir
from .stitch_space import is_hierarchical, swin_layer_stages
from .tasks import TASKS, build_model

if TYPE_CHECKING:
    from .model import SNNetBackbone, TaskModel

_OFFICIAL_LAYER = re.compile(r"stitch_layers\.(?:(\d)\.)?(\d+)\.transform\.(weight|bias|lora_A|lora_B)$")
_SWIN_LAYER = re.compile(r"stitch_layers\.(\d+)\.(\d+)\.(\d+)\.transform\.(weight|bias)$")  # stage.pair.k
# the reference's segmentation anchors (mmsegmentation's ViT) -> timm's names
_MMSEG_NAMES = [(re.compile(a), b) for a, b in (
    (r"\.ffn\.layers\.0\.0\.", ".mlp.fc1."), (r"\.ffn\.layers\.1\.", ".mlp.fc2."),  # before blocks' "layers"
    (r"\.patch_embed\.projection\.", ".patch_embed.proj."), (r"\.layers\.(\d+)\.", r".blocks.\1."),
    (r"\.ln([12])\.", r".norm\1."))]


def official_filter_fn(state: dict[str, torch.Tensor], model: "SNNetBackbone") -> dict[str, torch.Tensor]:
    """Rename a released SN-Net state dict to ours: DeiT-3 layer scales and mmsegmentation's ViT names to
    timm's, stitching layers ``stitch_layers.{0,1}.{k}.transform`` (v1: ``stitch_layers.{k}.transform``) to
    ``sl_layers.{k}`` / ``ls_layers.{k}`` (SN-Net's ``stitch_layers.{pair}.{k}`` to pair ``pair``'s SL layer
    ``k``), position embeddings resampled to the model's grid. A saved
    relative position index must equal the one the model derives from its grid; it is not kept. SN-Net's Swin
    checkpoints: :func:`swin_filter_fn`."""
    if is_hierarchical(model.stages):
        return swin_filter_fn(state, model)
    out, buffers = {}, dict(model.named_buffers())
    for key, value in state.items():
        m = _OFFICIAL_LAYER.match(key)
        if m:
            key = _layer_key(key, *m.groups(), model)
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


def _layer_key(key: str, group: str | None, index: str, param: str, model: "SNNetBackbone") -> str:
    """Our name of a released stitching layer ``key``: SN-Netv2's group 0 SL, 1 LS; SN-Net's group p is
    neighbour pair p, its layers SL only. A layer the model has no place for is a one-line error, not a
    rename into the next pair's layers."""
    if model.config.version != "sn-net":
        return f"{'ls' if group == '1' else 'sl'}_layers.{index}.{param}"
    pairs, per_pair = len(model.anchors) - 1, len(model.sl_layers) // (len(model.anchors) - 1)
    if group is None:
        raise SNNetError(f"the checkpoint's {key} is the SN-Netv2 code base's layout (stitch_layers.K), not SN-Net's "
                         f"(stitch_layers.PAIR.K): load it into a model.version v1 or v2 network")
    if int(group) >= pairs or int(index) >= per_pair:
        raise SNNetError(f"the checkpoint has {key}, but the model's SN-Net network has {pairs} anchor pairs "
                         f"of {per_pair} stitching layers (stitch_layers.0..{pairs - 1}.0..{per_pair - 1})")
    return f"sl_layers.{int(group) * per_pair + int(index)}.{param}"


def swin_filter_fn(state: dict[str, torch.Tensor], model: "SNNetBackbone") -> dict[str, torch.Tensor]:
    """Rename SN-Net's Swin state dict (stitching_swin) to ours: each anchor's keys through its family's filter
    (timm's for Swin: patch merging moved from the end of a stage to the start of the next, the attention masks and
    relative position indices dropped), its classifier under ``head``; ``stitch_layers.{stage}.{pair}.{k}`` to
    pair ``pair``'s SL layer ``k`` of that stage."""
    out, anchors = {}, {}
    for key, value in state.items():
        m = _SWIN_LAYER.match(key)
        if m:
            out[_swin_layer_key(key, *map(int, m.groups()[:3]), m[4], model)] = value
        elif key.startswith("anchors.") and key.split(".")[1].isdigit():
            _, i, rest = key.split(".", 2)
            anchors.setdefault(int(i), {})[rest] = value
        else:
            out[key] = value  # left for the load to name as unexpected
    for i, sub in sorted(anchors.items()):
        if i >= len(model.anchors):
            raise SNNetError(f"the checkpoint has anchors.{i}, but the model has {len(model.anchors)} anchors")
        family, anchor = model.families[i], model.anchors[i]
        for key, value in family.filter_state(sub, anchor).items():
            if key.startswith(f"{family.classifier_path}."):
                key = "head." + key.removeprefix(f"{family.classifier_path}.")
            out[f"anchors.{i}.{key}"] = value
    return out


def _swin_layer_key(key: str, stage: int, pair: int, k: int, param: str, model: "SNNetBackbone") -> str:
    """Our name of SN-Net's Swin stitching layer ``key``; one the model has no place for is a one-line error."""
    stages = swin_layer_stages(model.stages, pair) if pair < len(model.anchors) - 1 else []
    first = stages.index(stage) if stage in stages else None
    if first is None or k >= stages.count(stage):
        raise SNNetError(f"the checkpoint has {key}, but the model's Swin network has no stitching layer {k} in "
                         f"stage {stage} of anchor pair {pair}")
    return f"sl_layers.{model.layer_offsets['SL'][pair] + first + k}.{param}"


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


def load_official_checkpoint(model: "TaskModel", path: str | Path, obj: dict | None = None) -> "TaskModel":
    """Load a released SN-Netv2 (or SN-Net) checkpoint into ``model``, weights only: a classification file
    (``model`` key) into an ``SNNet``, a segmentation one (mmengine's, ``state_dict`` key) into a
    SegmentationModel; the task says where its files keep the state dict and the backbone's keys. ``obj``: the
    file's contents when the caller has already read it."""
    task = TASKS[model.task]
    if obj is None:
        obj = load_torch_checkpoint(path, logging_state=task.released_logging_state)
    key, prefix = task.released_state_key, task.released_backbone_prefix
    state = obj.get(key, obj)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SNNetError(f"{path} holds no SN-Net state dict under {key!r}")
    backbone = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    heads = {k: v for k, v in state.items() if not k.startswith(prefix)}
    state = {**heads, **{f"backbone.{k}": v for k, v in official_filter_fn(backbone, model.backbone).items()}}
    load_state_checked(model, model.upgrade_state_dict(state), f"checkpoint {path}")
    return model


def read_trained(path: str | None, cfg):
    """What ``--checkpoint`` names, read before any data so a bad file fails fast: a saved model or a state dict.

    A run directory, a saved model, a training checkpoint or a released .pth.
    """
    target = Path(path) if path else Path(cfg.output_dir) / "model"
    if not target.exists():
        raise SNNetError(f"nothing to evaluate at {target}: pass --checkpoint (a run or model directory, "
                         f"a checkpoint.pt or a released snnetv2_*.pth)")
    if target.is_dir():
        saved = saved_model_dir(target)  # a saved model of any task: config.json says which
        if saved is not None:
            return load_pretrained(saved)
        if (target / CHECKPOINT_NAME).is_file():
            target = target / CHECKPOINT_NAME
        else:
            raise SNNetError(f"no trained model in {target}: pass --checkpoint")
    # a released file of some tasks (segmentation) is mmengine's, with its logging state (read as inert stand-ins)
    return {"path": target, "obj": load_torch_checkpoint(target, logging_state=TASKS[cfg.task].released_logging_state)}


def trained_task(found) -> str | None:
    """The task a trained model or snnet training checkpoint was made for (None for a released file)."""
    if not isinstance(found, dict):
        return found.task
    obj = found["obj"]
    saved = obj.get("config") if isinstance(obj, dict) else None
    return saved.get("task", DEFAULT_TASK) if isinstance(saved, dict) else None


def trained_classes(found, task: str) -> int | None:
    """Classes of the trained heads in :func:`read_trained`'s result for ``task``, when it has them."""
    if not isinstance(found, dict):
        return found.num_classes
    spec, obj = TASKS[task], found["obj"]
    if spec.head_weight is None:
        return None
    state = obj.get("model", obj.get(spec.released_state_key, obj))
    if not isinstance(state, dict):
        return None
    head = spec.model_class.upgrade_state_dict(state).get(spec.head_weight)
    return int(head.shape[0]) if isinstance(head, torch.Tensor) and head.ndim >= 2 else None


def model_for_eval(found, cfg, num_classes: int):
    """The model of :func:`read_trained`'s result; state dicts go into the config's model."""
    if not isinstance(found, dict):
        return found
    obj = found["obj"]
    model = build_model(cfg, num_classes, load_weights=False)
    if {"optimizer", "scheduler", "rng", "config"} <= set(obj):  # our own training checkpoint
        load_state_checked(model, model.upgrade_state_dict(obj["model"]), f"checkpoint {found['path']}")
    else:
        load_official_checkpoint(model, found["path"], obj)
    return model
