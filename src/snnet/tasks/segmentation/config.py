"""Segmentation's config keys: the SETR head, label conventions, mmsegmentation's augmentations, sliding windows."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ...config import AugmentSection, Bool, DataSection, Float, Int, ModelSection, RunConfig
from ..dense import ClassesHeadSection, DenseEvalSection


class SegmentationHeadSection(ClassesHeadSection):
    """SETR-naive's decode head and its auxiliary heads."""

    aux_weight: Float = Field(0.4, ge=0)  # loss weight of each auxiliary head; 0 = none are built


class SegmentationModelSection(ModelSection):
    head: SegmentationHeadSection = Field(default_factory=SegmentationHeadSection)


class SegmentationDataSection(DataSection):
    dataset: str = "ade20k"  # without one: the task's benchmark layout
    reduce_zero_label: Bool | None = None  # label 0 -> ignored, others - 1; default per dataset (ADE20K, COCO-Stuff)
    ignore_index: Int = Field(255, ge=0, le=255)
    test_resize: list[Int] | None = Field(None, min_length=2, max_length=2)  # [long, short] bound, aspect kept


class SegmentationAugmentSection(AugmentSection):
    # mmsegmentation's pipeline: random resize of `scale` by a ratio in `ratio_range`, random crop to
    # data.input_size where no class covers more than `cat_max_ratio`, photometric distortion
    scale: list[Annotated[Int, Field(ge=1)]] = Field([2048, 512], min_length=2, max_length=2)
    ratio_range: list[Annotated[Float, Field(gt=0)]] = Field([0.5, 2.0], min_length=2, max_length=2)
    cat_max_ratio: Float = Field(0.75, gt=0, le=1)
    photometric: Bool = True


class SegmentationEvalSection(DenseEvalSection):
    mode: Literal["whole", "slide"] = "whole"  # whole image, or windows of data.input_size
    stride: Int | None = Field(None, ge=1)  # sliding-window stride; default 2/3 of the window (341 for 512)


class SegmentationConfig(RunConfig):
    model: SegmentationModelSection
    data: SegmentationDataSection = Field(default_factory=SegmentationDataSection)
    augment: SegmentationAugmentSection = Field(default_factory=SegmentationAugmentSection)
    eval: SegmentationEvalSection = Field(default_factory=SegmentationEvalSection)
