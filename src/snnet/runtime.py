"""Exported ONNX stitches under ONNX Runtime (CPU): a session per file, and the file as a torch module so the
evaluation loop and the timer run it as they run a model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import SNNetError, first_line


def onnx_session(path: str | Path, threads: int | None = None, prepacking: bool = True):
    """An ONNX Runtime CPU session of ``path`` (``threads``: intra-op threads, default ONNX Runtime's;
    ``prepacking``: ONNX Runtime's weight pre-packing, on by default)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise SNNetError("running ONNX models needs onnxruntime: pip install 'snnet[export]'") from None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only: e.g. detection's outputs, whose row counts vary, draw warnings
    if threads is not None:
        opts.intra_op_num_threads = threads
    if not prepacking:
        opts.add_session_config_entry("session.disable_prepacking", "1")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # a damaged or foreign file: ONNX Runtime raises its own types
        raise SNNetError(f"ONNX Runtime cannot load {path}: {first_line(e)}") from None


class OnnxStitch(nn.Module):
    """An exported stitch run by ONNX Runtime: float32 images in, the file's output as a tensor on their device; a
    one-image file (detection) takes a list of (3, H, W) images and gives a dict per image, keyed by its outputs.
    A file of every stitch (``snnet export --stitch all``) runs the stitch ``stitch_id`` names (settable)."""

    def __init__(self, path: str | Path, threads: int | None = None, stitch_id: int | None = None) -> None:
        super().__init__()
        self.path = path
        self.session = onnx_session(path, threads)
        inputs = self.session.get_inputs()
        self.input_name = inputs[0].name
        self.input_shape = inputs[0].shape  # ints where fixed, names where dynamic
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.every_stitch = any(i.name == "stitch_id" for i in inputs)
        if self.every_stitch == (stitch_id is None):
            raise SNNetError(f"{path} holds every stitch of a network: say which (stitch_id)" if self.every_stitch
                             else f"{path} holds one stitch: it takes no stitch_id")
        self.stitch_id = stitch_id

    def _run(self, x: torch.Tensor) -> list[torch.Tensor]:
        fixed = tuple(d for d in self.input_shape[-2:] if isinstance(d, int))
        if len(fixed) == 2 and tuple(x.shape[-2:]) != fixed:
            raise SNNetError(f"{self.path} takes {fixed[0]}x{fixed[1]} images, not {x.shape[-2]}x{x.shape[-1]}: "
                             f"resize the input, or for segmentation evaluate with eval.mode=slide (windows of its "
                             f"size)")
        try:
            feed = {self.input_name: x.detach().float().cpu().numpy()}
            if self.every_stitch:
                feed["stitch_id"] = np.array(self.stitch_id, np.int64)
            outs = self.session.run(None, feed)
        except Exception as e:  # ONNX Runtime raises its own types
            raise SNNetError(f"ONNX Runtime cannot run {self.path} on a {tuple(x.shape)} input: {first_line(e)}") from None
        return [torch.from_numpy(o).to(x.device) for o in outs]

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor | list[dict[str, torch.Tensor]]:
        if isinstance(x, (list, tuple)):
            return [dict(zip(self.output_names, self._run(image))) for image in x]
        return self._run(x)[0]
