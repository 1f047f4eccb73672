"""Saving and loading any snnet model: ``model.safetensors`` + ``config.json`` + a model card, and the registry of
model classes (filled by the classes, as timm registers its models) that rebuilds a model from its config."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import save_file

from ._atomic import atomic_path, atomic_write_text
from .config import DEFAULT_TASK, ModelSection, validate
from .errors import SNNetError
from .files import read_json, read_safetensors
from .hub import push_to_hub, resolve, write_model_card
from .registry import TASKS

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
FORMAT_VERSION = 1


class Pretrained:
    """``save_pretrained``, ``from_pretrained`` and ``push_to_hub`` for the task models. A model class
    names its task, primary metric (and its direction) and Hub pipeline, and rebuilds itself from a config."""

    task: ClassVar[str]
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    pipeline_tag: ClassVar[str]
    takes_image_lists: ClassVar[bool] = False  # a list of (3, H, W) images of any size, not one batch tensor

    def as_input(self, images: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """A (B, 3, H, W) batch of normalised images in the form the model's forward takes."""
        return list(images) if self.takes_image_lists else images

    @classmethod
    def upgrade_state_dict(cls, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A state dict in this class's layout: what an earlier snnet saved (or a released file, renamed by
        ``snnet.checkpoint``) maps to today's names; the default keeps it as it is."""
        return state

    @classmethod
    def from_section(cls, section: "ModelSection", num_classes: int | None = None, load_weights: bool = True,
                     device: str | None = None, input_size: tuple[int, int] | None = None) -> "Pretrained":
        """The model the ``model:`` section of a config (or a saved config.json) describes."""
        raise NotImplementedError

    def save_pretrained(self, directory: str | Path, results: list[dict] | None = None,
                        plot: str | Path | None = None) -> Path:
        """``model.safetensors``, ``config.json`` and a model card (``README.md``, with per-stitch ``results``
        and the Pareto ``plot`` when given) in ``directory``, each written atomically."""
        return save_pretrained(self, directory, results, plot)

    def push_to_hub(self, repo_id: str, results: list[dict] | None = None, plot: str | Path | None = None,
                    private: bool = False, token: str | None = None) -> str:
        """Upload weights, config and model card to a Hugging Face Hub repo; returns the commit URL."""
        return push_to_hub(self, repo_id, results, plot, private, token)

    @classmethod
    def from_pretrained(cls, directory: str | Path, revision: str | None = None) -> "Pretrained":
        """Rebuild a saved model (of any task) from a directory or a Hub repo id (``org/name``), offline."""
        return load_pretrained(directory, revision)


def save_pretrained(model: Pretrained, directory: str | Path, results: list[dict] | None = None,
                    plot: str | Path | None = None) -> Path:
    """Write ``model.safetensors``, ``config.json`` (the SNNetConfig) and the model card ``README.md`` (with
    per-stitch ``results`` and the Pareto ``plot`` when given), each atomically."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise SNNetError(f"cannot save the model into {directory}: it is a file, not a directory")
    check_rebuilds(model)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME) as tmp:
        save_file(state, str(tmp), metadata={"format": "snnet", "format_version": str(FORMAT_VERSION)})
    atomic_write_text(directory / CONFIG_NAME, json.dumps(saved_config(model), indent=2) + "\n")
    write_model_card(directory, model, results, plot)
    return directory


def saved_config(model: Pretrained) -> dict:
    """What ``config.json`` holds: the format version, the task (it names the class that rebuilds the model: a
    subclass of a task model has a task of its own) and the model's config."""
    return {"format_version": FORMAT_VERSION, "task": model.task, **model.config.to_dict()}


def _structure(model: torch.nn.Module) -> list[str]:
    """The network as its modules print, drop rates left out (training settings, not the architecture), then
    every tensor's name and shape."""
    text = re.sub(r"DropPath\(drop_prob=[^)]*\)", "Identity()", repr(model))  # timm skips DropPath at rate 0
    text = re.sub(r"Dropout\(p=[^,)]*", "Dropout(", text)
    return text.splitlines() + [f"{k} {tuple(v.shape)}" for k, v in model.state_dict().items()]


def check_rebuilds(model: Pretrained) -> None:
    """One line, before anything is written, when the config.json of ``model`` would not rebuild its network:
    an anchor module of a class, or with settings, that the config cannot record."""
    advice = "give such anchors as timm model names or AnchorConfigs"
    try:
        with torch.device("meta"):
            rebuilt = model_from_config(json.loads(json.dumps(saved_config(model))), "its config")
    except SNNetError as e:
        raise SNNetError(f"cannot save the model: {e}; {advice}") from None
    mine, again = _structure(model), _structure(rebuilt)
    if mine != again:
        k = next((i for i, (a, b) in enumerate(zip(mine, again)) if a != b), min(len(mine), len(again)))

        def line(lines: list[str]) -> str:
            return lines[k].strip() if k < len(lines) else "(nothing)"

        raise SNNetError(f"cannot save the model: its config rebuilds {line(again)!r} where it has {line(mine)!r}; "
                         f"{advice}")


def load_pretrained(directory: str | Path, revision: str | None = None) -> Pretrained:
    """Rebuild anchors (no download), stitch space and heads from ``config.json``, then load the weights.
    ``directory`` may be a Hugging Face Hub repo id (``org/name``), read through the Hugging Face cache."""
    directory = resolve(directory, revision)
    config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not config_path.is_file() or not weights_path.is_file():
        raise SNNetError(f"{directory} is not a saved snnet model: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    model = model_from_config(read_json(config_path, "snnet config"), str(config_path))
    load_state_checked(model, model.upgrade_state_dict(read_safetensors(weights_path)), str(weights_path))
    return model


def model_from_config(raw: object, source: str) -> Pretrained:
    """The model a saved ``config.json`` describes (``source`` names it in errors), with untrained weights."""
    if not isinstance(raw, dict):
        raise SNNetError(f"{source} is not a valid snnet config (a {type(raw).__name__}, not a mapping)")
    raw = dict(raw)  # the caller's dict stays as it is
    raw.pop("format_version", None)
    task = raw.pop("task", DEFAULT_TASK)  # files from before the key was written are classification models
    if task not in TASKS:
        raise SNNetError(f"{source}: unknown task {task!r} (snnet knows {', '.join(TASKS)})")
    input_size = None  # a depth model's FLOPs size, kept beside the head's keys
    if isinstance(raw.get("head"), dict):
        raw["head"] = dict(raw["head"])
        input_size = raw["head"].pop("input_size", None)
    schema = TASKS[task].config_class.model_fields["model"].annotation  # the run config's for these keys
    section = validate(schema, raw, f"{source}: ")
    return TASKS[task].model_class.from_section(section, load_weights=False,
                                                input_size=tuple(input_size) if input_size else None)


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
