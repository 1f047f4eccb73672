"""mmsegmentation's ``PhotoMetricDistortion`` on uint8 images, as the reference's segmentation runs applied it.

Each step rounds back to uint8 as mmseg does (``astype(np.uint8)`` after clipping), and saturation and hue go
through OpenCV's 8-bit HSV (H on 0..179), written out here in torch: OpenCV's fixed-point RGB -> HSV and its
float HSV -> RGB.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

HSV_SHIFT = 12  # OpenCV's fixed-point RGB -> HSV
HUE_RANGE = 180
OPENCV_HSV_BLOCK = 32  # pixels per iteration of OpenCV's vectorised HSV -> RGB loop (4 x 8 AVX2 lanes)
# OpenCV's division tables (no entry is a rounding tie, so plain rounding equals its cvRound)
_SDIV = torch.tensor([0] + [round((255 << HSV_SHIFT) / i) for i in range(1, 256)], dtype=torch.int64)
_HDIV = torch.tensor([0] + [round((HUE_RANGE << HSV_SHIFT) / (6 * i)) for i in range(1, 256)], dtype=torch.int64)
# which of (v, v(1-s), v(1-sf), v(1-s(1-f))) is (b, g, r) in each 60-degree sector (OpenCV's sector_data)
_SECTORS = torch.tensor([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 RGB -> (3, H, W) int64 HSV with H in 0..179, S and V in 0..255 (cv2.COLOR_RGB2HSV)."""
    r, g, b = img.long()
    v = torch.maximum(torch.maximum(r, g), b)
    diff = v - torch.minimum(torch.minimum(r, g), b)
    half = 1 << (HSV_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> HSV_SHIFT
    h = torch.where(v == r, g - b, torch.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> HSV_SHIFT  # an arithmetic shift: floor, as in C
    return torch.stack([torch.where(h < 0, h + HUE_RANGE, h), s, v])


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """(3, H, W) int HSV (OpenCV's 8-bit ranges) -> (3, H, W) uint8 RGB (cv2.COLOR_HSV2RGB), in float32 as its
    vectorised loop computes it."""
    h = hsv[0].float() * torch.tensor(6.0 / HUE_RANGE, dtype=torch.float32)
    s = hsv[1].float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    v = hsv[2].float() * torch.tensor(1.0 / 255.0, dtype=torch.float32)
    h = torch.fmod(h, 6.0)
    h = torch.where(h < 0, h + 6.0, h)
    sector = h.floor()
    frac = h - sector
    sector = sector.long()
    frac = torch.where(sector >= 6, torch.zeros_like(frac), frac)
    sector = torch.where(sector >= 6, torch.zeros_like(sector), sector)
    # OpenCV's compiled loop fuses 1 - s x f into one multiply-add (one rounding): float64, then float32
    fused = lambda a, b: (1 - a.double() * b.double()).float()  # noqa: E731
    tab = torch.stack([v, v * (1 - s), v * fused(s, frac), v * fused(s, 1 - frac)])
    bgr = torch.stack([tab.gather(0, _SECTORS[sector][..., k][None])[0] for k in range(3)])
    bgr = torch.where(s[None] == 0, v[None].expand(3, *v.shape), bgr)
    # OpenCV's vectorised loop (32 pixels at a time with AVX2) truncates; its scalar loop over the last
    # width mod 32 pixels of each row rounds (saturate_cast)
    rgb = bgr.flip(0) * 255
    tail = rgb.shape[-1] - rgb.shape[-1] % OPENCV_HSV_BLOCK
    rgb[..., tail:] = rgb[..., tail:].round()
    return rgb.clamp(0, 255).to(torch.uint8)


def convert(x: torch.Tensor, alpha: float = 1.0, beta: float = 0.0) -> torch.Tensor:
    """mmseg's ``convert``: ``x * alpha + beta`` in float32, clipped to 0..255, truncated to uint8."""
    return (x.float() * alpha + beta).clamp(0, 255).to(torch.uint8)


@dataclass(frozen=True)
class Distortion:
    """One draw of the distortion: each factor, or None where its coin said no."""

    brightness: float | None = None  # added, of 255
    contrast: float | None = None  # multiplies every channel
    contrast_first: bool = False  # contrast before saturation and hue (mmseg's mode 1), else after them
    saturation: float | None = None  # multiplies HSV S
    hue: int | None = None  # added to HSV H (0..179, wraps)


def distort(img: torch.Tensor, d: Distortion) -> torch.Tensor:
    """Apply ``d`` to a (3, H, W) uint8 RGB image in mmseg's order."""
    if d.brightness is not None:
        img = convert(img, beta=d.brightness)
    if d.contrast_first and d.contrast is not None:
        img = convert(img, alpha=d.contrast)
    if d.saturation is not None:
        hsv = rgb_to_hsv(img)
        hsv[1] = convert(hsv[1], alpha=d.saturation).long()
        img = hsv_to_rgb(hsv)
    if d.hue is not None:
        hsv = rgb_to_hsv(img)
        hsv[0] = (hsv[0] + d.hue) % HUE_RANGE
        img = hsv_to_rgb(hsv)
    if not d.contrast_first and d.contrast is not None:
        img = convert(img, alpha=d.contrast)
    return img


class PhotoMetricDistortion(v2.Transform):
    """mmseg's defaults: each step with probability 0.5, brightness + U(-32, 32), contrast and saturation
    x U(0.5, 1.5), hue + an integer of [-18, 18) (numpy's randint); masks pass through."""

    def __init__(self, brightness_delta: float = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        super().__init__()
        self.brightness_delta, self.hue_delta = brightness_delta, hue_delta
        self.contrast_range, self.saturation_range = contrast_range, saturation_range

    def make_params(self, flat_inputs: list) -> dict:
        coin = lambda: bool(torch.randint(2, ()).item())  # noqa: E731
        uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(()).item()  # noqa: E731
        brightness = uniform(-self.brightness_delta, self.brightness_delta) if coin() else None
        contrast_first = coin()
        contrast = uniform(*self.contrast_range) if coin() else None
        saturation = uniform(*self.saturation_range) if coin() else None
        hue = int(torch.randint(-self.hue_delta, self.hue_delta, ()).item()) if coin() else None
        return {"d": Distortion(brightness, contrast, contrast_first, saturation, hue)}

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, tv_tensors.Image):
            return inpt
        if inpt.dtype != torch.uint8:
            raise TypeError(f"PhotoMetricDistortion takes uint8 images, got {inpt.dtype}")
        return tv_tensors.wrap(distort(inpt.as_subclass(torch.Tensor), params["d"]), like=inpt)
