"""One stitch as a standalone network, and its files: ONNX, TorchScript, or safetensors + ``load_exported``.

What is written is the task model's ``deployable(stitch_id)``: a ``snnet.model.StitchNet`` (only what the stitch
runs: the first anchor's embedding, the route's blocks with its stitching layers, LoRA merged, between them, the
projections of smaller anchors' taps, and the last anchor's norm and pooling) under the heads a deployed stitch
runs. Every exported file has a JSON sidecar (``<output>.json``): stitch, route, FLOPs, input size,
normalisation, class names.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import IterableDataset

from ._atomic import atomic_path, immediately, together
from .errors import SNNetError, first_line
from .files import read_json, read_safetensors
from .model import StitchNet, TaskModel
from .onnx_network import NetworkGraph, needs_external_data, save_network
from .pretrained import load_state_checked, model_from_config, saved_config
from .progress import progress_bar
from .quantize import quantize_onnx
from .runtime import OnnxStitch
from .selection import PRECISIONS, is_integer
from .tasks._files import First

FORMATS = ("onnx", "torchscript", "safetensors")
EXPORT_FORMAT = "snnet-export"


class _OneImage(nn.Module):
    """A model over image lists (detection) as ONNX exports it: one (3, H, W) image in, the tensors of its
    output dict (``keys``, in order) out."""

    def __init__(self, net: nn.Module, keys: Sequence[str]) -> None:
        super().__init__()
        self.net, self.keys = net, list(keys)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.net([image])[0]
        return tuple(out[k] for k in self.keys)


def sidecar_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".json")


def export_stitch(model: TaskModel, stitch_id: int, fmt: str, output: str | Path,
                  img_size: tuple[int, int], batch: int = 1, info: dict | None = None, quantize: str | None = None,
                  method: str = "dynamic", calibration: Iterable[torch.Tensor] | None = None,
                  calibration_info: dict | None = None) -> list[Path]:
    """Write the stitch as ``fmt`` (onnx, torchscript or safetensors) to ``output`` with its JSON sidecar;
    ``info`` adds entries to the sidecar (normalisation, class names). ``quantize="int8"`` (ONNX only) writes the
    int8 file of ``snnet.quantize.quantize_onnx`` instead (``method``, its ``calibration`` batches and their
    ``calibration_info`` for the sidecar). Both files are written atomically."""
    if fmt not in FORMATS:
        raise SNNetError(f"unknown export format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise SNNetError(f"unknown quantisation {quantize!r}: expected int8")
    if quantize and fmt != "onnx":
        raise SNNetError(f"int8 quantisation takes ONNX exports (ONNX Runtime runs them), not {fmt}")
    lists = model.takes_image_lists
    if lists and fmt == "torchscript":
        raise SNNetError(f"a {model.task} model exports as onnx or safetensors: its torchvision heads do not trace "
                         f"to TorchScript")
    output = Path(output)
    if output.is_dir():
        raise SNNetError(f"--output {output} is a directory: give a file name")
    device = next(model.parameters()).device
    net = model.eval().deployable(stitch_id)
    s = model.stitch(stitch_id)
    flops = model.flops(stitch_id, img_size)  # a size the patches do not tile fails here, before any write
    example = torch.randn(1 if lists else batch, 3, *img_size, device=device)
    try:  # what the anchors refuse (a fixed grid, a relative position table) fails before any write too
        with torch.no_grad():
            out = net(model.as_input(example))
    except SNNetError:
        raise
    except (RuntimeError, AssertionError, ValueError) as e:
        raise SNNetError(f"stitch {stitch_id} does not run at {img_size[0]}x{img_size[1]}: "
                         f"{first_line(e)}") from None
    sidecar = {"format": EXPORT_FORMAT, "file": output.name, "export_format": fmt,
               "task": model.task, "stitch_id": s.id, "kind": s.kind,
               "route": s.describe(), "flops": flops, "gflops": flops / 1e9, "params": model.params(s.id),
               "input_size": list(img_size), "batch": 1 if lists else "dynamic" if fmt == "onnx" else batch,
               "input": "image (3, H, W) of any size, fitted and padded inside, float32, normalised with mean and "
                        "std" if lists else "images (B, 3, H, W), float32, normalised with mean and std",
               **({"outputs": list(out[0])} if lists else {}),
               "precision": quantize or "fp32",
               **(info or {}), "model": saved_config(model)}  # its task names the class that rebuilds it
    side = sidecar_path(output)
    # both files go to temp files first and replace the earlier pair together: a failed or killed export leaves it
    with together(), atomic_path(side) as side_tmp, atomic_path(output) as tmp, torch.no_grad():
        if fmt == "safetensors":
            save_file({k: v.detach().contiguous().cpu() for k, v in net.state_dict().items()}, str(tmp),
                      metadata={"format": EXPORT_FORMAT})
        elif fmt == "torchscript":
            with warnings.catch_warnings():  # the input checks are Python conditions: traced as constants
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)
                torch.jit.trace(net, example, check_trace=False).save(str(tmp))
        else:
            # one input size, one position table (detection: the square every image is fitted and padded to)
            for m in net.modules():
                if isinstance(m, StitchNet):
                    m.fix_position(model.img_size if lists else img_size)
            onnx_in = (_OneImage(net, out[0]), example[0]) if lists else (net, example)
            if not quantize:
                _onnx(*onnx_in, tmp)
            else:
                with tempfile.TemporaryDirectory() as scratch:
                    fp32 = Path(scratch) / "fp32.onnx"
                    _onnx(*onnx_in, fp32)
                    sidecar["quantization"] = {**quantize_onnx(fp32, tmp, method, calibration),
                                               **({"calibration": calibration_info} if calibration_info else {})}
        side_tmp.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return [output, side]


def export_network(model: TaskModel, output: str | Path, img_size: tuple[int, int], batch: int = 1,
                   info: dict | None = None, results: dict[int, dict] | None = None, quantize: str | None = None,
                   method: str = "dynamic", calibrate: Callable[[], dict] | None = None,
                   progress: bool = False) -> list[Path]:
    """Every stitch of ``model`` in one ONNX file (``snnet.onnx_network``): inputs ``images`` and ``stitch_id``,
    the weights stored once. Each stitch is exported as ``export_stitch`` does (``quantize``: its int8 file;
    ``calibrate()``: fresh calibration for each), then the graphs merged. The sidecar lists every stitch with its
    row of the run's ``results`` where given. Written atomically, with a ``.data`` file for weights past 1.8 GB."""
    output = Path(output)
    if output.is_dir():
        raise SNNetError(f"--output {output} is a directory: give a file name")
    if model.takes_image_lists:
        raise SNNetError(f"a {model.task} model's stitches export one per file (--stitch ID): the detector's ONNX "
                         f"graph (TorchScript-based, one image) does not merge into one network")
    graph, sidecars = NetworkGraph(), {}
    with tempfile.TemporaryDirectory() as scratch:
        for sid in progress_bar(model.stitch_ids, desc="export", unit="stitches", enabled=progress):
            path = Path(scratch) / f"stitch{sid}.onnx"
            with immediately():  # a scratch file, read back and deleted (its unique weights kept) at once
                export_stitch(model, sid, "onnx", path, img_size, batch, quantize=quantize, method=method,
                              **(calibrate() if calibrate else {}))
            graph.add(sid, path)
            sidecars[sid] = json.loads(sidecar_path(path).read_text())
            path.unlink()
    merged = graph.model()
    first = sidecars[model.stitch_ids[0]]
    rows = []
    for sid, side in sidecars.items():
        row = {k: side[k] for k in ("stitch_id", "kind", "route", "flops", "gflops", "params")}
        row.update({k: v for k, v in (results or {}).get(sid, {}).items() if k not in row and k != "images"})
        rows.append(row)
    data = output.with_name(output.name + ".data")
    sidecar = {"format": EXPORT_FORMAT, "file": output.name, "export_format": "onnx", "task": model.task,
               "stitch_id": "all", "inputs": {
                   "images": "(B, 3, H, W), float32, normalised with mean and std",
                   "stitch_id": "int64, a scalar or shape [1]: the id of one of the stitches below"},
               "input_size": list(img_size), "batch": "dynamic", "precision": quantize or "fp32",
               **({"quantization": first["quantization"]} if quantize else {}),
               **({"external_data": data.name} if needs_external_data(merged) else {}),
               **(info or {}), "stitches": rows, "model": saved_config(model)}
    side = sidecar_path(output)
    with together(), atomic_path(side) as side_tmp, atomic_path(output) as tmp:
        if "external_data" in sidecar:
            with atomic_path(data) as data_tmp:
                save_network(merged, tmp, data_tmp, data.name)
        else:
            save_network(merged, tmp)
        side_tmp.write_text(json.dumps(sidecar, indent=1) + "\n", encoding="utf-8")
    return [output, *([data] if "external_data" in sidecar else []), side]


def _onnx(net: nn.Module, example: torch.Tensor, path: Path) -> None:
    """ONNX of a batch model with a dynamic batch axis (torch.export-based exporter), or of a one-image model
    (``_OneImage``: torchvision's detectors) with any image size by the TorchScript-based exporter, which
    torchvision's own ONNX tests use: torch.export cannot trace their data-dependent numbers of boxes."""
    if importlib.util.find_spec("onnxscript") is None:  # torch's exporter needs it
        raise SNNetError("ONNX export needs the onnx and onnxscript packages: pip install 'snnet[export]'")
    if isinstance(net, _OneImage):
        with warnings.catch_warnings():  # the tracer's notes on Python conditions and the exporter's deprecation
            warnings.simplefilter("ignore")
            torch.onnx.export(net, (example,), str(path), input_names=["image"], output_names=net.keys,
                              dynamic_axes={"image": {1: "height", 2: "width"}}, opset_version=17, dynamo=False)
        return
    # onnxscript's optimizer notes every op it leaves unfolded (each Eva block's rotary Split): not the user's concern
    logging.getLogger("onnxscript.optimizer._constant_folding").setLevel(logging.ERROR)
    batch = torch.export.Dim("batch", min=1)
    if example.shape[0] == 1:  # torch.export specialises a size-1 dimension: trace a batch of two
        example = example.repeat(2, 1, 1, 1)
    program = torch.onnx.export(net, (example,), dynamic_shapes=({0: batch},), input_names=["images"],
                                output_names=["output"], dynamo=True, verbose=False)
    program.save(str(path))


def read_sidecar(path: str | Path) -> dict:
    """The JSON sidecar of an exported stitch file, checked to be snnet's."""
    path = Path(path)
    side = sidecar_path(path)
    if not path.is_file() or not side.is_file():
        raise SNNetError(f"{path} is not an exported stitch: expected it and its sidecar {side.name}")
    info = read_json(side, "export sidecar")
    if not isinstance(info, dict) or info.get("format") != EXPORT_FORMAT or "model" not in info:
        raise SNNetError(f"{side} is not an snnet export sidecar")
    if not isinstance(info.get("quantization", {}), dict):
        raise SNNetError(f"{side}: quantization is {info['quantization']!r}, not a mapping")
    precision, method = info.get("precision", "fp32"), info.get("quantization", {}).get("method", "dynamic")
    if precision not in PRECISIONS or (precision == "int8" and method not in ("dynamic", "static")):
        raise SNNetError(f"{side}: precision {precision!r}" + (f" by {method!r}" if precision == "int8" else "")
                         + " is none snnet writes (fp32, int8 by dynamic or static quantisation)")
    return info


def stitch_checker(model: TaskModel, dataset, tolerance: float = 0.5) -> Callable[[Path, dict], None]:
    """A check that an ONNX file computes the stitch of ``model`` its sidecar names: on the first two images of
    ``dataset`` (resized to the file's input) its output must be nearest that stitch's and within ``tolerance`` of
    its norm (int8 rounding moves it by about 1 %, another stitch or run by its whole norm); else a one-line error
    naming the stitch it does compute, or none of this model's. Every stitch's output is computed once per input
    size, for all the files checked. Files over image lists (detection) are not probed: their outputs have no fixed
    shape to compare."""
    references: dict[tuple[int, int], tuple[torch.Tensor, dict[int, torch.Tensor]]] = {}

    def probe(size: tuple[int, int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        if size not in references:
            first = First(dataset, 2) if isinstance(dataset, IterableDataset) else (
                dataset[i] for i in range(min(2, len(dataset))))  # a streamed dataset: its first two
            images = [item[0].as_subclass(torch.Tensor)[None].float() for item in first]
            x = torch.cat([F.interpolate(im, size=size, mode="bilinear", align_corners=False) for im in images])
            ids = model.stitch_ids
            with torch.no_grad(), model.backbone.sharing_prefixes(ids):
                references[size] = x, {sid: model.select(sid)(x).float() for sid in model.backbone.depth_first(ids)}
        return references[size]

    def check(path: Path, info: dict) -> None:
        if model.takes_image_lists:
            return
        size = info.get("input_size")
        if not (isinstance(size, list) and len(size) == 2 and all(is_integer(v) and v > 0 for v in size)):
            raise SNNetError(f"{sidecar_path(path)}: input_size is {size!r}, not [height, width]")
        x, outputs = probe(tuple(size))
        got, claimed = OnnxStitch(path)(x).float(), info["stitch_id"]
        differ = {sid: float((got - ref).norm() / ref.norm()) if ref.shape == got.shape else float("inf")
                  for sid, ref in outputs.items()}
        nearest = min(differ, key=lambda i: (differ[i], i != claimed))
        if differ[nearest] > tolerance:
            raise SNNetError(f"{path} is no stitch of this model: its outputs differ from every stitch's (nearest: "
                             f"stitch {nearest}, by {differ[nearest]:.2g} of their norm); it was exported from "
                             f"another run")
        # stitches that compute the same function on the probe (as degenerate tiny ones can) are all the file's
        if differ[claimed] > min(tolerance, 2 * differ[nearest] + 1e-4):
            raise SNNetError(f"{path} computes stitch {nearest} of this model, not the stitch {claimed} its sidecar "
                             f"names (outputs differ by {differ[nearest]:.2g} against {differ[claimed]:.2g} of their "
                             f"norm)")

    return check


def precision_label(info: dict) -> str:
    """How results name a file's precision: fp32, int8 (dynamic) or int8-static."""
    precision = info.get("precision", "fp32")
    return f"{precision}-static" if info.get("quantization", {}).get("method") == "static" else precision


def load_exported(path: str | Path) -> nn.Module:
    """The plain ``nn.Module`` of a stitch exported as safetensors (its sidecar says how to rebuild it)."""
    path = Path(path)
    side = sidecar_path(path)
    info = read_sidecar(path)
    if info.get("export_format") != "safetensors":
        raise SNNetError(f"{path} is {info.get('export_format')}: load it with onnxruntime or torch.jit.load")
    net = model_from_config(info["model"], str(side)).deployable(info["stitch_id"])
    load_state_checked(net, read_safetensors(path), str(path))
    return net.eval()
