"""Procedural, deterministic scenes of geometric shapes with class, semantic, depth and instance labels.

Each scene holds one large "main" object (its class is the image label) and a few smaller distractors of
other classes, textured independently of class and composited far-to-near over a textured ground plane.
"""

from __future__ import annotations

import multiprocessing
import os
import zlib
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from ..progress import progress_bar

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent", "heart", "arrow",
          "semicircle", "ellipse")


def _star(u: np.ndarray, v: np.ndarray, n: int, r_in: float) -> np.ndarray:
    """Star with n tips at radius 1 and notches at radius r_in; r_in = cos(pi/n) gives a regular n-gon."""
    a = np.pi / n
    # fold the plane into the wedge between a tip (psi=0) and a notch (psi=a); there the shape is one half-plane
    psi = a - np.abs(np.mod(np.arctan2(v, u), 2 * a) - a)
    r = np.hypot(u, v)
    bx, by = r_in * np.cos(a) - 1.0, r_in * np.sin(a)
    return bx * r * np.sin(psi) - by * (r * np.cos(psi) - 1.0) >= 0


def _heart(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Classic algebraic heart curve (x^2 + y^2 - 1)^3 = x^2 y^3."""
    return (x * x + y * y - 1) ** 3 <= x * x * y ** 3


# inside tests in object-local coordinates; every shape fits in the disk of radius 1.2 and has an area of ~1.9
# (so size says nothing about class)
_INSIDE = {
    "circle": lambda u, v: u * u + v * v <= 0.6,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) <= 0.69,
    "triangle": lambda u, v: _star(u / 1.18, v / 1.18, 3, 0.5),
    "star": lambda u, v: _star(u / 1.12, v / 1.12, 5, 0.5),
    "cross": lambda u, v: (np.minimum(np.abs(u), np.abs(v)) <= 0.28) & (np.maximum(np.abs(u), np.abs(v)) <= 1.0),
    "ring": lambda u, v: (u * u + v * v <= 1.0) & (u * u + v * v >= 0.38),
    "hexagon": lambda u, v: _star(u / 0.86, v / 0.86, 6, np.cos(np.pi / 6)),
    "crescent": lambda u, v: (u * u + v * v <= 1.2) & ((u - 0.55) ** 2 + v * v >= 0.65),
    "heart": lambda u, v: _heart(1.35 * u, 1.35 * v + 0.15),
    "arrow": lambda u, v: ((u >= -1.05) & (u <= 0.0) & (np.abs(v) <= 0.35))
    | ((u >= 0.0) & (np.abs(v) <= 0.9 * (1.1 - u) / 1.1)),
    "semicircle": lambda u, v: (u * u + (v + 0.47) ** 2 <= 1.22) & (v >= -0.47),
    "ellipse": lambda u, v: (u / 1.15) ** 2 + (v / 0.5) ** 2 <= 1.0,
}


@dataclass(frozen=True)
class SceneConfig:
    """Scene generator knobs; object sizes are radii as fractions of image_size."""

    image_size: int = 64
    num_classes: int = 10
    seed: int = 0
    max_distractors: int = 3  # each scene has 1..max_distractors smaller objects of other classes
    main_size: tuple[float, float] = (0.25, 0.38)
    main_offset: float = 0.15  # main object centre is within +-main_offset * image_size of the image centre
    distractor_size: tuple[float, float] = (0.07, 0.16)
    aspect_jitter: float = 0.15  # log-aspect ratio drawn from U(-j, j)
    min_main_visible: float = 0.6  # fraction of the main object that occluders must leave visible
    min_pixels: int = 6  # smallest visible area of any instance
    texture_contrast: float = 0.6  # pattern strength is U(0, texture_contrast) of a random colour change
    min_colour_gap: float = 0.3  # min RGB distance between an object's and the background's base colour
    outline: float = 1.0  # width (pixels) of the dark contour drawn around every object; 0 = none
    noise_std: float = 0.05  # per-image Gaussian noise std is drawn from U(0, noise_std), image in [0, 1]
    blur_prob: float = 0.3

    def __post_init__(self):
        if not 2 <= self.num_classes <= len(SHAPES):
            raise ValueError(f"num_classes must be in [2, {len(SHAPES)}], got {self.num_classes}")
        if self.image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {self.image_size}")


@dataclass
class Scene:
    """One rendered scene; masks, boxes and semantics describe visible (post-occlusion) pixels."""

    image: np.ndarray  # (H, W, 3) uint8
    label: int  # class of the main object == classes[0]
    semantic: np.ndarray  # (H, W) int64, 0 = background, c + 1 = class c
    depth: np.ndarray  # (H, W) float32 metres
    boxes: np.ndarray  # (K, 4) float32 xyxy in pixel-edge coordinates: a pixel (r, c) spans [c, c+1) x [r, r+1)
    classes: np.ndarray  # (K,) int64, instance 0 is the main object
    masks: np.ndarray  # (K, H, W) bool
    depths: np.ndarray  # (K,) float32 depth of each instance (constant over the object)


@dataclass
class _Object:
    cls: int
    cx: float
    cy: float
    size: float  # radius in pixels
    angle: float
    aspect: float
    depth: float


def _label(config: SceneConfig, index: int) -> int:
    # labels cycle with the index: every split is exactly class-balanced and targets need no rendering
    return index % config.num_classes


@lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y as a column, x as a row) of an n x n image."""
    c = np.arange(n, dtype=np.float32) + 0.5
    return c[:, None], c[None, :]


def _erode(m: np.ndarray, r: int) -> np.ndarray:
    """Binary erosion by a plus-shaped element of radius r; beyond the array the mask is assumed to continue."""
    h, w = m.shape
    p = np.pad(m, r, mode="edge")
    out = m.copy()
    for d in range(1, r + 1):
        out &= p[r - d:r - d + h, r:r + w] & p[r + d:r + d + h, r:r + w]
        out &= p[r:r + h, r - d:r - d + w] & p[r:r + h, r + d:r + d + w]
    return out


def _coverage(obj: _Object, n: int, outline: float) -> tuple[np.ndarray, np.ndarray]:
    """(n, n) float32 fractions of each pixel covered by the object and by its interior (the object minus an
    `outline`-pixel contour), from 2x2 supersampling of its bounding box."""
    cov, core = np.zeros((n, n), np.float32), np.zeros((n, n), np.float32)
    ext = 1.2 * obj.size * max(obj.aspect, 1 / obj.aspect)
    x0, x1 = (int(np.clip(np.floor(obj.cx + s * ext), 0, n)) for s in (-1, 1))
    y0, y1 = (int(np.clip(np.floor(obj.cy + s * ext), 0, n)) for s in (-1, 1))
    x1, y1 = min(x1 + 1, n), min(y1 + 1, n)
    if x1 <= x0 or y1 <= y0:
        return cov, core
    xs = (np.arange(2 * x0, 2 * x1, dtype=np.float32) * 0.5 + 0.25 - obj.cx)[None, :]
    ys = (np.arange(2 * y0, 2 * y1, dtype=np.float32) * 0.5 + 0.25 - obj.cy)[:, None]
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    u = (c * xs + s * ys) / (obj.size * obj.aspect)
    v = (c * ys - s * xs) * (obj.aspect / obj.size)
    inside = _INSIDE[SHAPES[obj.cls]](u, v)
    cov[y0:y1, x0:x1] = inside.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3))
    inner = _erode(inside, round(2 * outline)) if outline > 0 else inside
    core[y0:y1, x0:x1] = inner.reshape(y1 - y0, 2, x1 - x0, 2).mean(axis=(1, 3))
    return cov, core


def _visible(hard: list[np.ndarray], depths: list[float]) -> list[np.ndarray]:
    """Visible part of each hard mask: a pixel belongs to the nearest object covering it."""
    covered = np.zeros_like(hard[0])
    vis = [None] * len(hard)
    for k in np.argsort(depths):
        vis[k] = hard[k] & ~covered
        covered |= hard[k]
    return vis


def _layout_ok(vis: list[np.ndarray], hard: list[np.ndarray], config: SceneConfig) -> bool:
    """Main object well visible and strictly the largest; every distractor visible enough to be an instance."""
    areas = [int(m.sum()) for m in vis]
    return (areas[0] >= config.min_main_visible * hard[0].sum() and areas[0] > max(areas[1:], default=0)
            and min(areas) >= config.min_pixels)


def _sample_object(rng: np.random.Generator, cls: int, size_range: tuple[float, float], n: int,
                   spread: float, config: SceneConfig) -> _Object:
    size = rng.uniform(*size_range) * n
    cx, cy = n * (0.5 + rng.uniform(-spread, spread, 2))
    return _Object(cls, cx, cy, size, rng.uniform(0, 2 * np.pi),
                   float(np.exp(rng.uniform(-config.aspect_jitter, config.aspect_jitter))), rng.uniform(1.0, 3.5))


def _texture(rng: np.random.Generator, n: int, colour: np.ndarray, contrast: float) -> np.ndarray:
    """(n, n, 3) float32 pattern from `colour` towards a random colour, `contrast` of the way.

    Patterns: flat, stripes, checker, gradient, smooth waves or speckle.
    """
    c0 = colour.astype(np.float32)
    c1 = c0 + contrast * (rng.random(3, dtype=np.float32) - c0)
    kind = rng.integers(6)
    y, x = _grid(n)
    theta = rng.uniform(0, 2 * np.pi)
    d = x * np.cos(theta) + y * np.sin(theta)  # distance along a random direction
    period = rng.uniform(2.5, max(3.0, n / 6))
    if kind == 0:  # flat
        t = np.zeros((n, n), np.float32)
    elif kind == 1:  # stripes
        t = (np.sin(2 * np.pi * d / period + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    elif kind == 2:  # checker
        e = y * np.cos(theta) - x * np.sin(theta)
        t = ((np.floor(d / period) + np.floor(e / period)) % 2).astype(np.float32)
    elif kind == 3:  # linear gradient
        t = (d - d.min()) / (d.max() - d.min())
    elif kind == 4:  # smooth low-frequency waves: sum of three random plane waves
        w = rng.normal(0, 2.5 * np.pi / n, (3, 2)).astype(np.float32)
        t = sum(np.sin(wx * x + wy * y + rng.uniform(0, 2 * np.pi)) for wx, wy in w) / 6 + 0.5
    else:  # speckle / dots
        t = (rng.random((n, n)) < rng.uniform(0.1, 0.5)).astype(np.float32)
    return c0 + (c1 - c0) * t[..., None]


def _blur(img: np.ndarray) -> np.ndarray:
    """Separable [1, 2, 1] / 4 blur with edge padding."""
    p = np.pad(img, ((1, 1), (0, 0), (0, 0)), mode="edge")
    img = 0.25 * p[:-2] + 0.5 * p[1:-1] + 0.25 * p[2:]
    p = np.pad(img, ((0, 0), (1, 1), (0, 0)), mode="edge")
    return 0.25 * p[:, :-2] + 0.5 * p[:, 1:-1] + 0.25 * p[:, 2:]


def render_scene(config: SceneConfig, split: str, index: int) -> Scene:
    """Render scene `index` of `split`; a pure function of (config, split, index)."""
    rng = np.random.default_rng([config.seed, zlib.crc32(split.encode()), index])
    n, label = config.image_size, _label(config, index)

    # layout: main object first, then distractors of other classes, each re-drawn until the layout is valid
    objs = [_sample_object(rng, label, config.main_size, n, config.main_offset, config)]
    cov = [_coverage(objs[0], n, config.outline)]
    hard = [cov[0][0] >= 0.5]
    vis = hard
    others = [c for c in range(config.num_classes) if c != label]
    for _ in range(rng.integers(1, config.max_distractors + 1)):
        for _attempt in range(10):
            o = _sample_object(rng, others[rng.integers(len(others))], config.distractor_size, n, 0.5, config)
            c = _coverage(o, n, config.outline)
            new_hard = hard + [c[0] >= 0.5]
            new_vis = _visible(new_hard, [ob.depth for ob in objs] + [o.depth])
            if _layout_ok(new_vis, new_hard, config):
                objs, cov, hard, vis = objs + [o], cov + [c], new_hard, new_vis
                break

    # depth: a ground plane whose inverse depth is linear in the image (far at the top), behind every object
    y, x = _grid(n)
    near, far = rng.uniform(4.5, 6.0), rng.uniform(10.0, 20.0)
    inv = 1 / far + (1 / near - 1 / far) * (y / n + rng.uniform(-0.2, 0.2) * (x / n - 0.5))
    depth = (1 / inv).astype(np.float32)
    semantic = np.zeros((n, n), np.int64)

    # paint far to near so nearer objects occlude (and anti-alias over) farther ones; object base colours keep
    # a minimum distance from the background's so figure-ground is hard but not hopeless
    bg = rng.random(3)
    img = _texture(rng, n, bg, rng.uniform(0, config.texture_contrast))
    for k in sorted(range(len(objs)), key=lambda k: -objs[k].depth):
        colour = rng.random(3)
        for _attempt in range(20):
            if np.linalg.norm(colour - bg) >= config.min_colour_gap:
                break
            colour = rng.random(3)
        a, core = cov[k][0][..., None], cov[k][1][..., None]
        img = img * (1 - a) + _texture(rng, n, colour, rng.uniform(0, config.texture_contrast)) * a
        img = img * (1 - (a - core)) + 0.05 * (a - core)  # dark contour, a colour-independent shape cue
        depth[hard[k]] = objs[k].depth
        semantic[hard[k]] = objs[k].cls + 1

    # photometric jitter: contrast, brightness, optional blur, sensor noise
    img = (img - 0.5) * rng.uniform(0.6, 1.2) + 0.5 + rng.uniform(-0.15, 0.15)
    if rng.random() < config.blur_prob:
        img = _blur(img)
    img = img + rng.normal(0, rng.uniform(0, config.noise_std), img.shape)
    image = (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)

    masks = np.stack(vis)
    boxes = np.zeros((len(objs), 4), np.float32)
    for k, m in enumerate(masks):
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        boxes[k] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return Scene(image=image, label=label, semantic=semantic, depth=depth, boxes=boxes,
                 classes=np.array([o.cls for o in objs], np.int64), masks=masks,
                 depths=np.array([o.depth for o in objs], np.float32))


def _render_fields(config: SceneConfig, split: str, fields: tuple[str, ...], index: int) -> tuple:
    scene = render_scene(config, split, index)
    return tuple(getattr(scene, f) for f in fields)


def render_all(config: SceneConfig, split: str, num_images: int, fields: tuple[str, ...],
               progress: bool = True) -> list[tuple]:
    """``fields`` of scenes 0..num_images-1, rendered in forked worker processes (one per core) when there
    are enough of them to pay for the fork; identical to rendering them one by one."""
    render = partial(_render_fields, config, split, fields)
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 8)
    bar = dict(total=num_images, desc=f"rendering {split} scenes", unit="img", enabled=progress)
    if workers < 2 or num_images < 2000 or "fork" not in multiprocessing.get_all_start_methods():
        return [render(i) for i in progress_bar(range(num_images), **bar)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        return list(progress_bar(pool.imap(render, range(num_images), chunksize=250), **bar))


class ShapesClassification(Dataset):
    """Classification view of the scenes: (PIL image or transform(image), class of the main object).

    ``preload`` renders every image once up front (about 1 ms each), for training over many epochs.
    """

    def __init__(self, split: str, num_images: int, config: SceneConfig = SceneConfig(), transform=None,
                 preload: bool = False, progress: bool = True):
        self.split, self.num_images, self.config, self.transform = split, num_images, config, transform
        self.classes = list(SHAPES[:config.num_classes])
        self.targets = [_label(config, i) for i in range(num_images)]
        self.images = [img for img, in render_all(config, split, num_images, ("image",), progress)] if preload else None

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int):
        if not -self.num_images <= index < self.num_images:
            raise IndexError(index)
        index %= self.num_images
        pixels = self.images[index] if self.images is not None else render_scene(self.config, self.split, index).image
        img = Image.fromarray(pixels)
        return (self.transform(img) if self.transform is not None else img), self.targets[index]


class ShapesMaps(Dataset):
    """Dense view of the scenes: (image, per-pixel ``target``), "semantic" (0 = background, c + 1 = class c) or
    "depth" (metres). ``wrap(transform, image, map)`` turns the numpy arrays into the task's tensors."""

    def __init__(self, split: str, num_images: int, config: SceneConfig, target: str, wrap, transform=None,
                 preload: bool = True, progress: bool = True):
        self.split, self.num_images, self.config, self.target = split, num_images, config, target
        self.wrap, self.transform = wrap, transform
        self.scenes = render_all(config, split, num_images, ("image", target), progress) if preload else None

    @classmethod
    def splits(cls, shapes, target: str, wrap, train_transform, val_transform, progress: bool = True,
               train: bool = True):
        """(train, val) views from a config's ``data.shapes`` section; train is None without ``train``."""
        view = partial(cls, config=shapes.scene_config(), target=target, wrap=wrap, preload=shapes.preload,
                       progress=progress)
        return (view("train", shapes.num_train, transform=train_transform) if train else None,
                view("val", shapes.num_val, transform=val_transform))

    def __len__(self) -> int:
        return self.num_images

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if not 0 <= index < self.num_images:
            raise IndexError(index)
        if self.scenes is not None:
            return self.scenes[index]
        return _render_fields(self.config, self.split, ("image", self.target), index)

    def __getitem__(self, index: int):
        return self.wrap(self.transform, *self.read(index))


def class_folder(label: int) -> str:
    """ImageFolder directory name of a class; the numeric prefix makes ImageFolder's sorted indices equal labels."""
    return f"{label:02d}_{SHAPES[label]}"


def write_image_folder(root: str | Path, config: SceneConfig, num_train: int, num_val: int) -> Path:
    """Write root/{train,val}/<NN_shape>/<index>.png in torchvision ImageFolder layout; returns root."""
    root = Path(root)
    for split, num in (("train", num_train), ("val", num_val)):
        # create every class folder, even empty ones, so ImageFolder can never shift class indices
        for c in range(config.num_classes):
            (root / split / class_folder(c)).mkdir(parents=True, exist_ok=True)
        for i in range(num):
            scene = render_scene(config, split, i)
            path = root / split / class_folder(scene.label) / f"{i:06d}.png"
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # hidden and not an image extension
            Image.fromarray(scene.image).save(tmp, format="PNG")
            os.replace(tmp, path)
    return root
