"""``snnet demo``: a Gradio page over a trained run. Upload an image, set a budget (GFLOPs, or ms once the run is
profiled) and see the best stitch under it answer: top-5 classes, a segmentation overlay, a depth map or boxes
and masks, with the stitch marked on the accuracy-vs-cost scatter. Fully offline: no fonts, labels or assets
are fetched."""
from __future__ import annotations

import importlib.util
import math
import os
import socket
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .config import load_config
from .data.scenes import SceneConfig, render_scene
from .errors import SNNetError, first_line
from .export import export_stitch
from .pretrained import load_pretrained
from .results import frontier, read_results
from .rundir import run_info, run_of
from .runtime import OnnxStitch
from .selection import choose_stitch
from .tasks import TASKS
from .tasks.dense import DISPLAY

AUTO = "best under the budget"


class DemoRun:
    """A run directory's model, results and preprocessing, and what the page computes from them."""

    def __init__(self, run: str | Path, device: str = "cpu") -> None:
        model_dir, run_dir = run_of(str(run))
        if run_dir is None or not (run_dir / "results.jsonl").is_file():
            raise SNNetError(f"{run} has no results.jsonl: the demo needs an evaluated run")
        self.model = load_pretrained(model_dir).to(device).eval()
        self.task = self.model.task
        self.spec = TASKS[self.task]  # what the page shows and how: the task's (snnet.tasks.Task)
        self.metric, self.higher = self.spec.primary_metric, self.spec.higher_is_better
        self.rows = read_results(run_dir, self.metric)
        self.by_id = {r["stitch_id"]: r for r in self.rows}
        self.cost = "latency_ms" if all("latency_ms" in r for r in self.rows) else "gflops"
        self.frontier = {r["stitch_id"] for r in frontier(self.rows, self.metric, self.higher,
                                                          "flops" if self.cost == "gflops" else self.cost)}
        info = run_info(run_dir, self.model)
        self.mean, self.std, self.classes = info["mean"], info["std"], info["class_names"]
        self.transform = self._transform(run_dir)
        self.device = torch.device(device)
        self.int8 = importlib.util.find_spec("onnxruntime") is not None
        self._int8_files: dict[int, object] = {}  # stitch -> its int8 file under ONNX Runtime, exported on demand
        self._scratch = tempfile.TemporaryDirectory(prefix="snnet-demo-")

    def _transform(self, run_dir: Path):
        """The task's preprocessing of an upload (classification: the run's own, from its config.yaml)."""
        cfg = load_config(str(run_dir / "config.yaml")) if (run_dir / "config.yaml").is_file() else None
        return self.spec.demo_transform(cfg, self.model, tuple(self.mean), tuple(self.std))

    def choose(self, budget: float, explicit: str | None) -> int:
        """The explicit stitch, else the best stitch under ``budget`` (the cheapest when nothing fits)."""
        if explicit and explicit != AUTO:
            sid = int(str(explicit).split()[0])
            if sid not in self.by_id:
                raise SNNetError(f"stitch {sid} is not among the {len(self.rows)} stitches of the run's results")
            return sid
        try:
            kw = {"max_gflops": budget} if self.cost == "gflops" else {"max_latency_ms": budget}
            return choose_stitch(self.rows, self.metric, self.higher, **kw)["stitch_id"]
        except SNNetError:  # below the cheapest stitch
            return min(self.rows, key=lambda r: r[self.cost])["stitch_id"]

    def int8_stitch(self, stitch_id: int, img_size: tuple[int, int]):
        """The stitch's int8 ONNX file (dynamic quantisation) under ONNX Runtime, exported on first use."""
        if not self.int8:
            raise SNNetError("int8 needs onnxruntime: pip install 'snnet[export]'")
        if stitch_id not in self._int8_files:
            path = Path(self._scratch.name) / f"stitch{stitch_id}_int8.onnx"
            export_stitch(self.model.cpu(), stitch_id, "onnx", path, img_size, quantize="int8")
            self.model.to(self.device)
            self._int8_files[stitch_id] = OnnxStitch(path)
        return self._int8_files[stitch_id]

    @torch.no_grad()
    def predict(self, image: Image.Image, stitch_id: int, min_score: float | None = None, int8: bool = False):
        """The task's answer (``Task.answer``): top-5 {class: probability}, or an RGB array at least ``DISPLAY``
        pixels wide (the segmentation overlay, the colour-mapped depth or the detections scoring ``min_score`` or
        more; default: the task's threshold) and its legend as HTML. ``int8``: the stitch's int8 ONNX file answers."""
        if min_score is None:
            min_score = self.spec.score_threshold or 0.0
        x = self.transform(image.convert("RGB"))[None].to(self.device)
        net = self.int8_stitch(stitch_id, tuple(x.shape[-2:])) if int8 else self.model.select(stitch_id)
        return self.spec.answer(net(self.model.as_input(x)), image, tuple(x.shape[-2:]), self.classes, min_score)

    def budget_range(self) -> tuple[float, float]:
        """The slider's range in steps of 0.001, its lowest value at or above the cheapest stitch's cost (so the
        budget shown never falls below the stitch it picks)."""
        costs = [r[self.cost] for r in self.rows]
        return math.ceil(min(costs) * 1000) / 1000, math.ceil(max(costs) * 1000) / 1000

    def choices(self) -> list[str]:
        """The stitch menu: id, kind, GFLOPs, the task's metric and, when profiled, milliseconds."""
        def label(r: dict) -> str:
            ms = f", {r['latency_ms']:.2f} ms" if "latency_ms" in r else ""
            return f"{r['stitch_id']} ({r['kind']}, {r['gflops']:.3f} GFLOPs{ms}, {self.metric} {r[self.metric]:.2f})"
        return [AUTO] + [label(r) for r in sorted(self.rows, key=lambda r: r["flops"])]

    def caption(self, stitch_id: int, budget: float, explicit: bool, int8: bool = False) -> str:
        r = self.by_id[stitch_id]
        unit = "GFLOPs" if self.cost == "gflops" else "ms"
        how = "chosen by hand" if explicit else f"best {self.metric} under {budget:g} {unit}"
        cost = f"{r['gflops']:.3f} GFLOPs" + (f", {r['latency_ms']:.2f} ms" if "latency_ms" in r else "")
        runs = ""
        if int8:
            measured = [f"{self.metric} {r[f'{self.metric}@int8']:.2f}" if f"{self.metric}@int8" in r else "",
                        f"{r['latency_ms@int8']:.2f} ms" if "latency_ms@int8" in r else ""]
            runs = "  \nanswering: its int8 ONNX file (dynamic quantisation, ONNX Runtime" + \
                "".join(f"; {m}" for m in measured if m) + ")"
        return (f"**Stitch {stitch_id}** ({r['kind']}, {cost}, {self.metric} {r[self.metric]:.2f}; {how})  \n"
                f"route `{r['route']}`{runs}")

    def scatter(self, stitch_id: int):
        """Every stitch at (cost, metric): the frontier and the current stitch in their own colours."""
        import pandas as pd

        role = lambda i: "current stitch" if i == stitch_id else ("Pareto frontier" if i in self.frontier
                                                                   else "other stitches")
        return pd.DataFrame({self.cost: [r[self.cost] for r in self.rows], self.metric: [r[self.metric] for r in self.rows],
                             "stitch": [f"{r['stitch_id']} {r['kind']}" for r in self.rows],
                             "role": [role(r["stitch_id"]) for r in self.rows]})


def example_images(folder: Path, count: int = 4) -> list[str]:
    """A few validation scenes of the built-in data, rendered here (nothing is downloaded)."""
    paths = []
    for i in range(count):
        path = folder / f"scene_{i}.png"
        Image.fromarray(render_scene(SceneConfig(image_size=128), "val", i).image).save(path)
        paths.append(str(path))
    return paths


def read_upload(upload: dict | None) -> tuple[Image.Image | None, str]:
    """(the upload, as gradio's file record of it after its own checks, as an image; or None with a message for the
    page when it is not one)."""
    if not upload:
        return None, ""
    try:
        with Image.open(upload["path"]) as im:
            return im.convert("RGB"), ""
    except Exception:
        name = upload.get("orig_name") or Path(upload["path"]).name
        return None, f"**{name} is not an image**: upload a PNG, JPEG or another image file."


def build_demo(run: DemoRun, examples_dir: Path):
    import gradio as gr

    unit = "GFLOPs" if run.cost == "gflops" else "ms"
    lo, hi = run.budget_range()

    # the events take the page's raw values (preprocess=False): the slider's own check would answer a typed budget
    # outside its range with error badges, so update clamps it instead; an upload arrives as gradio's file record
    threshold = run.spec.score_threshold

    def update(upload, budget, explicit, int8=False, min_score=threshold or 0.0):
        try:
            typed = float(budget)
            budget = min(max(typed, lo), hi)
            min_score = min(max(float(min_score), 0.0), 1.0)
            int8 = bool(int8)
            image, problem = read_upload(upload)
            sid = run.choose(budget, explicit)
            caption = problem or run.caption(sid, budget, bool(explicit) and explicit != AUTO, int8)
            answer = run.predict(image, sid, min_score, int8) if image is not None else None
        except (TypeError, ValueError, SNNetError) as e:  # API calls with values the page never sends
            return None, None, "", f"**{first_line(e)}**", None, gr.skip()
        prediction, legend = answer if isinstance(answer, tuple) else (answer, "")
        shown = np.asarray(image) if image is not None else None
        # the slider is written back only when its value was clamped: an unchanged write-back arriving after the user
        # typed again would overwrite what they typed (and the queued change would then send the old value)
        return shown, prediction, legend, caption, run.scatter(sid), budget if budget != typed else gr.skip()

    with gr.Blocks(title="snnet demo", analytics_enabled=False) as demo:
        gr.Markdown(f"# snnet: one stitchable network, {len(run.rows)} stitches ({run.task})\n"
                    f"Set a budget; the best stitch under it answers. Or pick a stitch yourself.")
        with gr.Row():
            with gr.Column():
                upload = gr.File(label="image", file_types=["image"], type="filepath", elem_id="upload")
                shown = gr.Image(label="input", interactive=False, height=220)
                budget = gr.Slider(lo, hi, value=hi, step=0.001, label=f"budget ({unit}, {lo:g} to {hi:g})",
                                   elem_id="budget")
                explicit = gr.Dropdown(run.choices(), value=AUTO, label="stitch", elem_id="stitch")
                int8 = gr.Checkbox(False, label="int8: run the stitch's quantised ONNX file (ONNX Runtime)",
                                   elem_id="int8", visible=run.int8)
                # detections below it are not drawn (the run's prediction grid draws those of 0.5 or more)
                score = (gr.Slider(0, 1, value=threshold, step=0.05, label="minimum score", elem_id="score")
                         if threshold is not None else None)
                gr.Examples(example_images(examples_dir), inputs=upload, label="built-in scenes")
            with gr.Column():
                caption = gr.Markdown(elem_id="caption")
                if run.spec.answer_is_label:
                    output = gr.Label(num_top_classes=5, label="top-5 classes", elem_id="prediction")
                else:
                    output = gr.Image(label="prediction", interactive=False, elem_id="prediction",
                                      height=DISPLAY, image_mode="RGB")
                legend = gr.HTML(elem_id="legend-box")
                plot = gr.ScatterPlot(x=run.cost, y=run.metric, color="role", tooltip=["stitch", run.cost, run.metric],
                                      color_map={"current stitch": "#d62728", "Pareto frontier": "#1f77b4",
                                                 "other stitches": "#c7c7c7"},
                                      x_title=unit, y_title=run.metric, label=f"{run.metric} vs {unit}",
                                      elem_id="scatter")
        inputs = [upload, budget, explicit, int8] + ([score] if score else [])
        outputs = [shown, output, legend, caption, plot, budget]
        for trigger in [upload.change, budget.change, explicit.change, int8.change] + ([score.change] if score else []):
            trigger(update, inputs, outputs, preprocess=False)  # a clamped budget changes once more
        demo.load(update, inputs, outputs, preprocess=False)
    return demo


def check_address(host: str, port: int) -> None:
    """One line, before any model is loaded, when ``host:port`` cannot be served (unknown host, port in use)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror:
        raise SNNetError(f"--host {host}: not an address of this machine") from None
    try:
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as e:
        raise SNNetError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None


def launch(run_path: str | Path, port: int = 7860, host: str = "127.0.0.1", device: str = "cpu") -> None:
    """Serve the demo until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if importlib.util.find_spec("gradio") is None:
        raise SNNetError("the demo needs gradio: pip install 'snnet[demo]'")
    if not Path(run_path).exists():
        raise SNNetError(f"no run at {run_path}: train one first with `snnet train --config quickstart`")
    check_address(host, port)
    run = DemoRun(run_path, device)
    with tempfile.TemporaryDirectory() as tmp:
        demo = build_demo(run, Path(tmp))
        print(f"snnet demo of {run_path} on http://{host}:{port} (Ctrl+C stops it)", flush=True)
        demo.launch(server_name=host, server_port=port, share=False, ssr_mode=False, show_error=True, quiet=True,
                    allowed_paths=[tmp])
