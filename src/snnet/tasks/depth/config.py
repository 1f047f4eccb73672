"""Depth's config keys: the DPT head and the depth range, NYUv2's files and crops, the reference's augmentations."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from ...config import AugmentSection, Bool, DataSection, Float, Int, ModelSection, Probability, RunConfig, TrainSection
from ..dense import DenseEvalSection, DenseHeadSection


class DepthHeadSection(DenseHeadSection):
    """DPT's head and the depth range in metres: the head adds ``min_depth`` to its ReLU output, test predictions
    are clamped to [min_depth, max_depth], and ground truth outside (min_depth, max_depth) is not scored."""

    min_depth: Float = Field(1e-3, gt=0)
    max_depth: Float = Field(10.0, gt=0)
    # channels of DPT's four reassembled levels, shallow to deep
    reassemble_channels: list[Annotated[Int, Field(ge=1)]] = Field([96, 192, 384, 768], min_length=4, max_length=4)

    @model_validator(mode="after")
    def _depth_range(self) -> "DepthHeadSection":
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth {self.min_depth} must be below max_depth {self.max_depth}")
        return self


class DepthModelSection(ModelSection):
    head: DepthHeadSection = Field(default_factory=DepthHeadSection)


class DepthDataSection(DataSection):
    dataset: str = "nyuv2"  # without one: the task's benchmark layout
    # PNG values per metre, NYUv2's border cut before training, the Eigen crop of the metrics (top, bottom, left,
    # right; ends excluded), and the evaluation size FLOPs are reported at
    depth_scale: Float = Field(1000.0, gt=0)
    precrop: list[Annotated[Int, Field(ge=0)]] | None = Field(None, min_length=4, max_length=4)
    eval_crop: list[Annotated[Int, Field(ge=0)]] | None = Field(None, min_length=4, max_length=4)
    eval_size: list[Annotated[Int, Field(ge=1)]] | None = Field(None, min_length=2, max_length=2)

    @model_validator(mode="after")
    def _boxes(self) -> "DepthDataSection":
        for key in ("precrop", "eval_crop"):
            box = getattr(self, key)
            if box is not None and not (box[0] < box[1] and box[2] < box[3]):
                raise ValueError(f"{key} {box} must be [top, bottom, left, right] with top < bottom and left < right")
        return self


class DepthAugmentSection(AugmentSection):
    # the reference's: rotation by up to this many degrees (p 0.5), colour augmentation probability
    rotation: Float = Field(2.5, ge=0)
    color_prob: Probability = 0.5


class DepthTrainSection(TrainSection):
    loss_warmup: Int = Field(100, ge=0)  # iterations of the scale-invariant loss without its variance


class DepthEvalSection(DenseEvalSection):
    flip: Bool = True  # average with the flipped prediction of the flipped image


class DepthConfig(RunConfig):
    # the valid range of ground truth was a data key of its own, set equal to the head's in every recipe
    renamed_keys = {"data.min_depth": "model.head.min_depth", "data.max_depth": "model.head.max_depth"}

    model: DepthModelSection
    data: DepthDataSection = Field(default_factory=DepthDataSection)
    augment: DepthAugmentSection = Field(default_factory=DepthAugmentSection)
    train: DepthTrainSection = Field(default_factory=DepthTrainSection)
    eval: DepthEvalSection = Field(default_factory=DepthEvalSection)
