"""Classification's config keys: the anchors' heads, timm's augmentations, distillation from a teacher."""
from __future__ import annotations

from typing import Annotated, Literal

import timm
from pydantic import BeforeValidator, Field, field_validator
from timm.data import create_transform

from ...config import (AugmentSection, Bool, DataSection, Float, ModelSection, Probability, RunConfig, Section,
                       TrainSection)


class ClassificationModelSection(ModelSection):
    # train new classifier heads when the data's classes differ from the anchors' heads
    replace_head: Bool = False


def _auto_or_bool(value):
    if value != "auto" and not isinstance(value, bool):
        raise ValueError(f"must be auto, true or false, got {value!r}")
    return value


class ClassificationDataSection(DataSection):
    # timm's prefetcher: training batches go to the device as uint8 and are normalised (and randomly erased) there,
    # the next batch's copy overlapping the step; "auto": on CUDA, as timm's train.py; true also on the CPU
    prefetcher: Annotated[bool | str, BeforeValidator(_auto_or_bool)] = "auto"


class ClassificationAugmentSection(AugmentSection):
    crop: Literal["rrc", "simple", "none"] = "rrc"  # random resized crop; DeiT-3's resize + pad-4 crop; none
    auto_augment: str | None = None  # timm policy: "3a" (3-Augment), "rand-m9-mstd0.5-inc1", ...
    color_jitter: Float = Field(0.0, ge=0)
    mixup: Float = Field(0.0, ge=0)  # Beta alphas; 0 = off
    cutmix: Float = Field(0.0, ge=0)
    label_smoothing: Float = Field(0.0, ge=0, lt=1)
    reprob: Probability = 0.0
    eval_crop_ratio: Float = Field(0.875, gt=0, le=1)

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


class ClassificationTrainSection(TrainSection):
    distillation: DistillationSection | None = None


class ClassificationConfig(RunConfig):
    model: ClassificationModelSection
    data: ClassificationDataSection = Field(default_factory=ClassificationDataSection)
    augment: ClassificationAugmentSection = Field(default_factory=ClassificationAugmentSection)
    train: ClassificationTrainSection = Field(default_factory=ClassificationTrainSection)
