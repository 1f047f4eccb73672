"""Detection's config keys: Mask R-CNN's heads and ViTDet's large-scale jitter."""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ...config import AugmentSection, DataSection, Float, Int, ModelSection, RunConfig
from ..dense import ClassesHeadSection, DenseEvalSection


class DetectionHeadSection(ClassesHeadSection):
    """Mask R-CNN's heads over ViTDet's simple feature pyramid."""

    roi_channels: Int = Field(256, ge=1)  # mask-head convs (box-head FC layers: 4x)
    roi_samples: Int = Field(512, ge=1)  # RoIs per image in the box head's loss
    detections: Int = Field(100, ge=1)  # the most detections kept per image


class DetectionModelSection(ModelSection):
    head: DetectionHeadSection = Field(default_factory=DetectionHeadSection)


class DetectionDataSection(DataSection):
    dataset: str = "coco"  # without one: the task's benchmark layout


class DetectionAugmentSection(AugmentSection):
    # large-scale jitter of the data.input_size square by a ratio in this range (0.1-2.0 in ViTDet)
    ratio_range: list[Annotated[Float, Field(gt=0)]] = Field([0.5, 2.0], min_length=2, max_length=2)


class DetectionConfig(RunConfig):
    model: DetectionModelSection
    data: DetectionDataSection = Field(default_factory=DetectionDataSection)
    augment: DetectionAugmentSection = Field(default_factory=DetectionAugmentSection)
    eval: DenseEvalSection = Field(default_factory=DenseEvalSection)
