"""int8 ONNX files of exported stitches, with ONNX Runtime's quantisation tools (``onnxruntime.quantization``).

ONNX Runtime's recipe: pre-process the float32 model (symbolic shape inference and graph optimisation), then
either *dynamic* quantisation (int8 weights of the linear layers, their inputs quantised at run time from their own
range) or *static* QDQ quantisation (int8 weights per channel and int8 inputs of the linear layers and
convolutions, their ranges from calibration images, MinMax).
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch

from .errors import SNNetError

METHODS = ("dynamic", "static")
# what is quantised: the linear layers (blocks, stitching layers, heads); static mode adds the convolutions (the
# patch embedding and the dense heads'); norms, softmax and the rest stay float32
LINEAR_OPS = ["MatMul", "Gemm"]


def _quantization():
    try:
        from onnxruntime import quantization
    except ImportError:
        raise SNNetError("int8 quantisation needs onnxruntime: pip install 'snnet[export]'") from None
    return quantization


class _Batches:
    """ONNX Runtime's calibration reader over float32 image batches (B, 3, H, W), fed to the file's input
    ``name``: whole, or image by image for a one-image file (detection's)."""

    def __init__(self, batches: Iterable[torch.Tensor], name: str, one_image: bool) -> None:
        self.feeds: Iterator[torch.Tensor] = (x for batch in batches for x in (batch if one_image else [batch]))
        self.name = name

    def get_next(self) -> dict[str, np.ndarray] | None:
        x = next(self.feeds, None)
        return None if x is None else {self.name: x.float().numpy()}


def quantize_onnx(src: str | Path, dst: str | Path, method: str = "dynamic",
                  calibration: Iterable[torch.Tensor] | None = None) -> dict:
    """Write the int8 version of the float32 ONNX file ``src`` to ``dst``; returns what the export sidecar records.
    ``static`` needs ``calibration``: batches of normalised images at the exported input size."""
    if method not in METHODS:
        raise SNNetError(f"unknown quantisation method {method!r}: expected {' or '.join(METHODS)}")
    if (method == "static") != (calibration is not None):
        raise SNNetError("static quantisation takes calibration images, dynamic none")
    q = _quantization()
    src, dst = Path(src).resolve(), Path(dst).resolve()
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        shapes = "symbolic"
        cwd = os.getcwd()
        os.chdir(tmp)  # a failed symbolic inference saves its partial model into the working directory
        try:
            q.quant_pre_process(str(src), str(pre))
        except Exception:  # e.g. DPT's head: symbolic inference gives up on its resizes; ONNX's own does not
            shapes = "onnx"
            q.quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        finally:
            os.chdir(cwd)
        record = {"method": method, "pre_processing": f"{shapes} shape inference, graph optimisation"}
        if method == "dynamic":
            q.quantize_dynamic(pre, dst, op_types_to_quantize=LINEAR_OPS, weight_type=q.QuantType.QInt8)
            return {**record, "ops": LINEAR_OPS, "weights": "int8, per tensor", "activations": "int8 at run time"}
        import onnx  # onnxruntime's quantisation tools need it too

        inp = onnx.load(str(src), load_external_data=False).graph.input[0]
        reader = _Batches(calibration, inp.name, len(inp.type.tensor_type.shape.dim) == 3)
        q.quantize_static(pre, dst, reader, quant_format=q.QuantFormat.QDQ,
                          op_types_to_quantize=LINEAR_OPS + ["Conv"], per_channel=True,
                          activation_type=q.QuantType.QInt8, weight_type=q.QuantType.QInt8,
                          calibrate_method=q.CalibrationMethod.MinMax)
    return {**record, "format": "QDQ", "ops": LINEAR_OPS + ["Conv"], "weights": "int8, per channel",
            "activations": "int8, MinMax calibration"}


def calibration_batches(dataset, num_images: int, img_size: tuple[int, int], seed: int = 0,
                        batch_size: int = 16) -> Iterator[torch.Tensor]:
    """A seeded random sample of ``num_images`` of ``dataset``'s images (item 0 of each), in batches at
    ``img_size``; more images than the dataset has is an error, raised now."""
    if not 1 <= num_images <= len(dataset):
        raise SNNetError(f"--calibration-images {num_images} is not between 1 and the {len(dataset)} training "
                         f"images the run's data config reads")
    chosen = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:num_images].tolist()

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, num_images, batch_size):
            images = torch.stack([dataset[i][0] for i in chosen[start:start + batch_size]])
            if tuple(images.shape[-2:]) != tuple(img_size):  # e.g. dense tasks' evaluation images
                images = torch.nn.functional.interpolate(images, size=tuple(img_size), mode="bilinear",
                                                         align_corners=False)
            yield images
    return batches()
