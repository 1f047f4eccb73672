"""Measured latency of stitches on the current device: median and interquartile range of repeated forwards.

FLOPs do not predict latency across routes (widths, layer counts and stitching layers differ), so
deployment picks by milliseconds measured where the model will run.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import SNNetError
from .progress import progress_bar
from .runtime import onnx_session


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 10, warmup: int = 3) -> tuple[float, float]:
    """(median, interquartile range) in ms of ``fn()``; CUDA work is synchronised around every call."""
    if repeats < 1 or warmup < 0:
        raise SNNetError(f"repeats must be >= 1 and warmup >= 0, got {repeats} and {warmup}")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    if len(times) == 1:
        return times[0], 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return statistics.median(times), q3 - q1


def example_input(model: torch.nn.Module, batch: int, img_size: tuple[int, int], device: torch.device):
    """Random normalised images in the form the model takes (a list of images for detection)."""
    return model.as_input(torch.randn(batch, 3, *img_size, device=device))


@torch.inference_mode()
def stitch_latency(model: torch.nn.Module, stitch_ids: Sequence[int], img_size: tuple[int, int], batch: int = 1,
                   repeats: int = 10, warmup: int = 3, progress: bool = False) -> dict[int, tuple[float, float]]:
    """(median ms, IQR ms) of one eval-mode forward of each stitch on the model's device."""
    device = next(model.parameters()).device
    model.eval()
    x = example_input(model, batch, img_size, device)
    out = {}
    for sid in progress_bar(stitch_ids, desc="profiling", enabled=progress, unit="stitch"):
        model.select(sid)
        out[sid] = time_call(lambda: model(x), device, repeats, warmup)
    return out


def onnx_latency(path: str, batch: int, img_size: tuple[int, int], threads: int, repeats: int = 10,
                 warmup: int = 3) -> tuple[float, float]:
    """(median ms, IQR ms) of an exported ONNX model under ONNX Runtime on the CPU."""
    session = onnx_session(path, threads)
    one_image = len(session.get_inputs()[0].shape) == 3  # detection's files take one (3, H, W) image
    if one_image and batch != 1:
        raise SNNetError(f"{path} takes one image per call: profile it with --batch 1")
    shape = (3, *img_size) if one_image else (batch, 3, *img_size)
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).standard_normal(shape, dtype=np.float32)}
    return time_call(lambda: session.run(None, feed), torch.device("cpu"), repeats, warmup)
