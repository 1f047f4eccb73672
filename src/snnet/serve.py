"""``snnet serve``: one loaded network behind the Open Inference Protocol (KServe v2 REST, as Triton speaks it), the
stitch chosen per request: by the request's ``parameters`` (``stitch_id``, ``max_gflops``, ``max_latency_ms``) or
the server's ``--slo-ms``, moving to cheaper stitches as the queue grows; ``max_mean_gflops`` runs the run's best
cascade (``snnet cascade``) within that mean. Requests of one stitch (or cascade) run as one batch.

Layers: ``StitchCosts`` and ``choose`` (the policy, pure), ``Scheduler`` (the bounded queue and the worker that
batches), ``create_app`` (HTTP, metrics). The model is PyTorch or the one-file ONNX of ``export --stitch all``.
"""
import asyncio
import base64
import io
import json
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from . import __version__
from .cascade import Cascade, CascadeOutput, best_cascade, read_cascades
from .config import load_config
from .distributed import local_device
from .errors import SNNetError
from .export import read_sidecar
from .pretrained import load_pretrained
from .results import read_results
from .rundir import run_info, run_of
from .runtime import OnnxStitch
from .selection import is_integer, is_number
from .tasks import TASKS

DATATYPES = {"FP32": np.float32}


class RequestError(SNNetError):
    """A client's mistake: answered with ``status`` and a JSON body naming it."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# ---- the policy ----------------------------------------------------------------------------------------------
@dataclass
class StitchCosts:
    """What the policy knows of the stitches: GFLOPs, the task metric (None without a results table) and
    milliseconds by batch size (measured at a few sizes, linear between and beyond)."""
    gflops: dict[int, float]
    metric: dict[int, float]
    higher_is_better: bool
    ms: dict[int, dict[int, float]]
    slowdown: float = 1.0  # measured over predicted milliseconds of recent batches (a busier machine than at start)

    def __post_init__(self) -> None:
        self.ranked = sorted(self.gflops, key=self.rank)  # best first
        self.sizes = {sid: sorted(ms) for sid, ms in self.ms.items()}

    def observe(self, sid: int, batch: int, ms: float, weight: float = 0.1) -> None:
        """Learn from a batch that ran: the slowdown moves a ``weight`` of the way to its measured ratio."""
        ratio = ms / max(self.profiled_ms(sid, batch), 1e-6)
        self.slowdown += weight * (min(max(ratio, 0.25), 4.0) - self.slowdown)

    def predicted_ms(self, sid: int, batch: int) -> float:
        return self.slowdown * self.profiled_ms(sid, batch)

    def profiled_ms(self, sid: int, batch: int) -> float:
        """Milliseconds at ``batch`` as measured at start-up: linear between the sizes measured."""
        ms, sizes = self.ms[sid], self.sizes[sid]
        if batch <= sizes[0] or len(sizes) == 1:  # below the smallest size measured: no faster than it
            return ms[sizes[0]] * max(1.0, batch / sizes[0])
        lo, hi = next(((a, b) for a, b in zip(sizes, sizes[1:]) if batch <= b), (sizes[-2], sizes[-1]))
        return ms[lo] + (ms[hi] - ms[lo]) * (batch - lo) / (hi - lo)

    def fastest(self, batch: int) -> int:
        """The stitch predicted quickest at ``batch`` (the lower id on a tie)."""
        return min(self.gflops, key=lambda i: (self.predicted_ms(i, batch), i))

    def rank(self, sid: int) -> tuple:
        """Better first: the higher (or lower) metric, then fewer GFLOPs; by GFLOPs alone without metrics."""
        if self.metric:
            return (-self.metric[sid] if self.higher_is_better else self.metric[sid], self.gflops[sid], sid)
        return (-self.gflops[sid], sid)


@dataclass
class Budget:
    """A request's budget, checked: a stitch, a GFLOPs budget, a deadline in ms from its arrival, or a cascade
    (its key, ``cascade_key``)."""
    stitch_id: int | None = None
    max_gflops: float | None = None
    max_latency_ms: float | None = None
    cascade: str | None = None


BUDGETS = ("stitch_id", "max_gflops", "max_latency_ms", "max_mean_gflops")


def cascade_key(index: int) -> str:
    """The scheduler's name for the run's ``index``-th cascade (stitches are ints, cascades strings)."""
    return f"cascade{index}"


def read_budget(parameters: Any, costs: StitchCosts, slo_ms: float | None,
                cascades: list[dict] | str = "the run has no cascades") -> Budget:
    """The budget of a request's ``parameters`` (at most one of ``BUDGETS``; else the server's SLO), or a
    RequestError naming what is wrong. ``cascades``: the run's operating points, or why there are none."""
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise RequestError(f"parameters must be an object, got {type(parameters).__name__}")
    given = [k for k in BUDGETS if k in parameters]
    if len(given) > 1:
        raise RequestError(f"parameters give {' and '.join(given)}: give one of {', '.join(BUDGETS)}")
    if not given:
        return Budget(max_latency_ms=slo_ms)
    key, value = given[0], parameters[given[0]]
    if key == "stitch_id":
        if not is_integer(value) or value not in costs.gflops:
            raise RequestError(f"stitch_id {value!r} is not a stitch of this network (ids: "
                               f"{_id_ranges(sorted(costs.gflops))})")
        return Budget(stitch_id=value)
    if not is_number(value) or value <= 0:
        raise RequestError(f"{key} must be a positive number, got {value!r}")
    if key == "max_mean_gflops":

        if isinstance(cascades, str):
            raise RequestError(f"max_mean_gflops chooses a cascade, and {cascades}")
        try:
            return Budget(cascade=cascade_key(cascades.index(best_cascade(cascades, value))))
        except SNNetError as e:
            raise RequestError(str(e)) from None
    if key == "max_gflops":
        cheapest = min(costs.gflops.values())
        if value < cheapest:
            raise RequestError(f"max_gflops {value:g} is below the cheapest stitch ({cheapest:.4g} GFLOPs)")
        return Budget(max_gflops=float(value))
    return Budget(max_latency_ms=float(value))


def _id_ranges(ids: list[int]) -> str:
    runs, start = [], ids[0]
    for a, b in zip(ids, ids[1:] + [None]):
        if b != a + 1:
            runs.append(f"{start}" if start == a else f"{start}..{a}")
            start = b
    return ", ".join(runs)


def choose(budget: Budget, costs: StitchCosts, waited_ms: float, batch: int) -> tuple[int | str, bool]:
    """(stitch or cascade, whether its predicted completion meets the budget): the stitch or cascade asked for; the
    best stitch under a GFLOPs budget; under a deadline the best stitch whose queue wait so far plus its predicted
    milliseconds at ``batch`` fit, else the fastest (which then misses); with no budget at all, the best stitch."""
    if budget.cascade is not None:
        return budget.cascade, True
    if budget.stitch_id is not None:
        return budget.stitch_id, True
    ids = costs.ranked
    if budget.max_gflops is not None:
        return next(i for i in ids if costs.gflops[i] <= budget.max_gflops), True
    if budget.max_latency_ms is None:
        return ids[0], True
    for sid in ids:
        if waited_ms + costs.predicted_ms(sid, batch) <= budget.max_latency_ms:
            return sid, True
    return costs.fastest(batch), False


def _deadline(budget: Budget) -> bool:
    return (budget.stitch_id is None and budget.max_gflops is None and budget.cascade is None
            and budget.max_latency_ms is not None)


# ---- the scheduler -----------------------------------------------------------------------------------------
@dataclass(eq=False)  # requests are one another only when they are the same request
class Request:
    images: torch.Tensor  # (B, 3, H, W)
    budget: Budget
    arrival: float  # seconds, the scheduler's clock
    future: Future = field(default_factory=Future)


class QueueFull(RequestError):
    def __init__(self, size: int) -> None:
        super().__init__(f"the queue is full ({size} requests): retry shortly", status=503)


class Scheduler:
    """A bounded queue and one worker: the oldest request's stitch is chosen when it can run (its wait known), the
    queued requests that would choose the same stitch join it up to ``max_batch`` images (waiting up to
    ``max_wait_ms`` after the oldest arrived for more), and the batch runs. ``run(stitch, images)`` computes;
    ``clock`` gives seconds (injectable)."""

    def __init__(self, run: Callable[[int, torch.Tensor], Any], costs: StitchCosts, max_batch: int = 8,
                 max_wait_ms: float = 2.0, max_queue: int = 256, clock: Callable[[], float] = time.perf_counter,
                 on_batch: Callable[[int, int, list[Request], float], None] | None = None,
                 headroom: float = 1.0) -> None:
        self.run, self.costs, self.clock = run, costs, clock
        self.max_batch, self.max_wait, self.max_queue = max_batch, max_wait_ms / 1000, max_queue
        self.on_batch = on_batch
        self.headroom = headroom  # the plan aims to finish within this share of a deadline (run times vary)
        self.reply_ms = 0.0  # from a batch's end to its request's handler resuming (learnt): deadlines keep room
        self.queue: deque[Request] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.worker = threading.Thread(target=self._work, name="snnet-serve-worker", daemon=True)

    def start(self) -> None:
        self.worker.start()

    def stop(self) -> None:
        """Finish the requests queued so far, then end the worker."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.worker.is_alive():
            self.worker.join()

    def submit(self, images: torch.Tensor, budget: Budget, arrival: float | None = None) -> Future:
        """Queue a request; ``arrival`` (the scheduler's clock) is when it reached the server, if earlier than
        now (its body read and parsed since)."""
        with self.cond:
            if self.stopping:
                raise RequestError("the server is shutting down", status=503)
            if len(self.queue) >= self.max_queue:
                raise QueueFull(self.max_queue)
            request = Request(images, budget, self.clock() if arrival is None else arrival)
            self.queue.append(request)
            self.cond.notify_all()
        return request.future

    def replied(self, ms: float, weight: float = 0.1) -> None:
        """Learn how long a request's handler takes to resume once its batch is done."""
        self.reply_ms += weight * (max(ms, 0.0) - self.reply_ms)

    def depth(self) -> int:
        return len(self.queue)

    def next_batch(self) -> tuple[int, list[Request]] | None:
        """The stitch and requests of the next batch, taken off the queue (None when it is empty): the oldest
        request's stitch (``plan``), and the queued requests that take it (the same stitch asked for or chosen; a
        deadline it still meets) up to ``max_batch`` images."""
        if not self.queue:
            return None
        now = self.clock()
        sid = self.plan(now)
        first = self.queue[0]
        size, batch = first.images.shape[0], [first]
        fastest = self.costs.fastest(1)
        for r in list(self.queue)[1:4 * self.max_batch]:  # a bounded scan: the rest wait for later batches
            n = r.images.shape[0]
            if size + n > self.max_batch:
                continue
            waited = (now - r.arrival) * 1000
            if _deadline(r.budget):  # a deadline joins a stitch's batch (a cascade's time is not known ahead)
                joins = isinstance(sid, int) and (sid == fastest or (
                    waited + self.costs.predicted_ms(sid, size + n) + self.reply_ms
                    <= self.headroom * r.budget.max_latency_ms))
            else:
                joins = choose(r.budget, self.costs, waited, size + n)[0] == sid
            if joins:
                batch.append(r)
                size += n
        for r in batch:
            self.queue.remove(r)
        return sid, batch

    def plan(self, now: float) -> int:
        """The stitch of the oldest request: asked for, or under a GFLOPs budget, as ``choose`` says; under a
        deadline the best stitch under which every queued deadline request, served in order in batches of this
        stitch, is predicted to finish in time (its predicted queue wait plus its batch's milliseconds plus the time
        its handler takes to resume), else the fastest. Under load the queue waits grow, so the stitch gets cheaper;
        as it empties, dearer again."""
        queue = list(self.queue)[:4 * self.max_batch]  # a bounded look-ahead: the plan is redone every batch
        first = queue[0]
        if not _deadline(first.budget):
            return choose(first.budget, self.costs, (now - first.arrival) * 1000, first.images.shape[0])[0]
        images = min(sum(r.images.shape[0] for r in queue), self.max_batch)
        for sid in self.costs.ranked:
            per_batch, ahead = self.costs.predicted_ms(sid, images), 0
            for r in queue:
                finish = (now - r.arrival) * 1000 + (ahead // self.max_batch + 1) * per_batch + self.reply_ms
                if _deadline(r.budget) and finish > self.headroom * r.budget.max_latency_ms:
                    break
                ahead += r.images.shape[0]
            else:
                return sid
        return self.costs.fastest(images)

    def _work(self) -> None:
        while True:
            with self.cond:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue and self.stopping:
                    return
                # more requests may join a batch that is not full: wait up to max_wait after the oldest arrived
                deadline = self.queue[0].arrival + self.max_wait
                while (sum(r.images.shape[0] for r in self.queue) < self.max_batch and not self.stopping
                       and self.clock() < deadline):
                    self.cond.wait(max(deadline - self.clock(), 0))
                sid, batch = self.next_batch()
            start = self.clock()
            try:
                out = self.run(sid, torch.cat([r.images for r in batch]))
            except Exception as e:  # the model failed: every request of the batch is told, the server goes on
                for r in batch:
                    r.future.set_exception(e)
                continue
            done, images = self.clock(), sum(r.images.shape[0] for r in batch)
            if isinstance(sid, int):  # a cascade's time depends on its images: it teaches the stitches' table nothing
                self.costs.observe(sid, images, (done - start) * 1000)
            if self.on_batch is not None:
                self.on_batch(sid, images, batch, done - start)
            offset = 0
            for r in batch:
                n = r.images.shape[0]
                met = r.budget.max_latency_ms is None or (done - r.arrival) * 1000 <= r.budget.max_latency_ms
                r.future.set_result((sid, out[offset:offset + n], met, done - r.arrival))
                offset += n


# ---- the served network --------------------------------------------------------------------------------------
class Served:
    """The network a server answers with: its stitch table (from the run's results where there are some), a
    ``run(stitch, images)`` in PyTorch or ONNX Runtime, and the people endpoint's preprocessing."""

    def __init__(self, checkpoint: str, onnx: str | None = None, device: str = "cpu") -> None:
        model_dir, run = run_of(checkpoint)
        self.model = load_pretrained(model_dir).eval()
        if self.model.takes_image_lists:
            raise SNNetError(f"snnet serve takes classification, segmentation and depth networks, not {self.model.task}")
        self.task = TASKS[self.model.task]
        self.img_size = tuple(self.model.img_size)
        info = run_info(run, self.model)
        self.mean, self.std, self.classes = info["mean"], info["std"], info["class_names"]
        self.rows = {s: {"stitch_id": s, "kind": self.model.stitch(s).kind, "route": self.model.describe(s),
                         "gflops": self.model.flops(s) / 1e9} for s in self.model.stitch_ids}
        metric = self.task.primary_metric
        if run is not None and (run / "results.jsonl").is_file():
            for r in read_results(run):
                if r["stitch_id"] in self.rows and is_number(r.get(metric)):
                    self.rows[r["stitch_id"]][metric] = r[metric]
        self.metric = metric if all(metric in r for r in self.rows.values()) else None
        self.platform = "pytorch"
        self.device = torch.device(device)
        if onnx is not None:

            side = read_sidecar(onnx)
            ids = [s.get("stitch_id") for s in side.get("stitches", [])]
            if side.get("stitch_id") != "all" or sorted(ids) != sorted(self.model.stitch_ids):
                raise SNNetError(f"{onnx} is not this network's one-file export: export it with snnet export "
                                 f"--checkpoint {checkpoint} --stitch all --format onnx")
            self.onnx = OnnxStitch(onnx, stitch_id=ids[0])
            self.platform = "onnxruntime"
            self.precision = side.get("precision", "fp32")
        else:
            self.onnx, self.precision = None, "fp32"
            self.model.to(self.device)
        self.cascades, self.cascade_runs = self._cascades(run)

        cfg = load_config(str(run / "config.yaml")) if run is not None and (run / "config.yaml").is_file() else None
        self.transform = self.task.demo_transform(cfg, self.model, tuple(self.mean), tuple(self.std))

    def _cascades(self, run) -> tuple[list[dict] | str, dict]:
        """The run's cascades (``snnet cascade``) and a runner per scheduler key, or why there are none."""
        if run is None or not (run / "cascade.jsonl").is_file():
            return "the run has no cascades (snnet cascade --run RUN finds them)", {}
        if self.onnx is not None:
            return "cascades run on the PyTorch network, not --onnx", {}
        rows = read_cascades(run / "cascade.jsonl")
        runs = {}
        for k, r in enumerate(rows):
            cascade = Cascade(self.model, r["stitches"], r["thresholds"], r.get("confidence", "max_prob"))

            def answer(images: torch.Tensor, cascade=cascade) -> CascadeOutput:
                out = cascade.run(images.to(self.device))
                return CascadeOutput(out.logits.float().cpu(), out.exits, out.flops)
            runs[cascade_key(k)] = answer
        return rows, runs

    @torch.inference_mode()
    def run(self, sid: int | str, images: torch.Tensor):
        """Logits of stitch ``sid`` on ``images``, or the ``CascadeOutput`` of a cascade's key."""
        if isinstance(sid, str):
            return self.cascade_runs[sid](images)
        if self.onnx is not None:
            self.onnx.stitch_id = sid
            return self.onnx(images)
        return self.model.select(sid)(images.to(self.device)).float().cpu()

    def profile(self, batches: tuple[int, ...], repeats: int = 2) -> dict[int, dict[int, float]]:
        """Milliseconds of every stitch at each batch size (median of ``repeats`` after one warm-up)."""
        out = {}
        for sid in self.rows:
            out[sid] = {}
            for b in batches:
                x = torch.randn(b, 3, *self.img_size)
                self.run(sid, x)
                times = []
                for _ in range(repeats):
                    start = time.perf_counter()
                    self.run(sid, x)
                    times.append(time.perf_counter() - start)
                out[sid][b] = 1000 * float(np.median(times))
        return out

    def costs(self, ms: dict[int, dict[int, float]]) -> StitchCosts:
        return StitchCosts({s: r["gflops"] for s, r in self.rows.items()},
                           {s: r[self.metric] for s, r in self.rows.items()} if self.metric else {},
                           self.task.higher_is_better, ms)

    def image_batch(self, data: bytes) -> tuple[torch.Tensor, Any]:
        """An uploaded JPEG/PNG as the network's input batch of one (the run's own preprocessing), and the image."""
        try:
            image = Image.open(io.BytesIO(data))
            image.load()
        except Image.DecompressionBombError as e:
            raise RequestError(f"the image is too large to decode: {e}") from None
        except (UnidentifiedImageError, OSError, ValueError):
            raise RequestError("the body is not an image: send a JPEG or PNG file") from None
        return self.transform(image.convert("RGB"))[None], image

    def answer(self, out: torch.Tensor, image, input_hw) -> dict:
        """The task's answer as JSON: top-5 {label: probability}, or a PNG (base64) and a summary."""
        result = self.task.answer(out, image, input_hw, self.classes, self.task.score_threshold or 0.0)
        if isinstance(result, dict):
            return {"top5": result}

        picture, legend = result if isinstance(result, tuple) else (result, "")
        picture = np.asarray(picture)
        if picture.dtype != np.uint8:  # the tasks draw in floats in [0, 1], as the demo shows them
            picture = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(picture).save(buf, format="PNG")
        return {"png_base64": base64.b64encode(buf.getvalue()).decode(), "summary": legend}


# ---- HTTP ---------------------------------------------------------------------------------------------------
def _error(message: str, status: int, headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _tensor(spec: Any, binary: bytes | None, img_size: tuple[int, int], max_batch: int) -> torch.Tensor:
    """The ``images`` input of an inference request (JSON data or the binary extension's bytes), checked."""
    if not isinstance(spec, dict):
        raise RequestError("each input must be an object with name, shape, datatype and data")
    if spec.get("datatype") not in DATATYPES:
        raise RequestError(f"input images has datatype {spec.get('datatype')!r}: send FP32")
    shape = spec.get("shape")
    want = (3, *img_size)
    if not (isinstance(shape, list) and len(shape) == 4 and all(is_integer(d) for d in shape)
            and tuple(shape[1:]) == want and shape[0] >= 1):
        raise RequestError(f"input images has shape {shape!r}: send [batch, {want[0]}, {want[1]}, {want[2]}]")
    if shape[0] > max_batch:
        raise RequestError(f"input images holds {shape[0]} images: at most {max_batch} a request (--max-batch)")
    count = math.prod(shape)
    if binary is not None:
        if len(binary) != 4 * count:
            raise RequestError(f"input images has {len(binary)} bytes of binary data, its shape needs {4 * count}")
        array = np.frombuffer(binary, dtype="<f4")
    else:
        data = spec.get("data")
        if not isinstance(data, list):
            raise RequestError(f"input images: data must be a list of numbers, got {type(data).__name__}")
        try:
            array = np.asarray(data, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            raise RequestError("input images: data must be numbers") from None
        if array.size != count:
            raise RequestError(f"input images has {array.size} values, its shape {shape} needs {count}")
    return torch.from_numpy(array.copy()).reshape(shape)


def parse_infer(body: bytes, header_length: str | None) -> tuple[dict, dict[str, bytes]]:
    """An inference request's JSON and, with the binary tensor extension, each input's bytes."""
    if header_length is not None:
        try:
            n = int(header_length)
        except ValueError:
            raise RequestError(f"Inference-Header-Content-Length {header_length!r} is not a number") from None
        if not 0 < n <= len(body):
            raise RequestError(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
        head, rest = body[:n], body[n:]
    else:
        head, rest = body, b""
    try:
        request = json.loads(head)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RequestError(f"the body is not a JSON inference request ({e.__class__.__name__})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestError("an inference request needs an inputs list")
    binaries, offset = {}, 0
    for spec in request["inputs"]:
        size = (spec.get("parameters") or {}).get("binary_data_size") if isinstance(spec, dict) else None
        if size is not None:
            if not is_integer(size) or size < 0 or offset + size > len(rest):
                raise RequestError(f"binary_data_size {size!r} of input {spec.get('name')!r} does not fit the body")
            binaries[spec.get("name")] = rest[offset:offset + size]
            offset += size
    return request, binaries


def create_app(served: Served, scheduler: Scheduler, name: str = "snnet", slo_ms: float | None = None,
               max_body_mb: float = 64.0):
    """The FastAPI application: the Open Inference Protocol's health, metadata and infer endpoints, an image
    endpoint for people, and Prometheus metrics."""
    from fastapi import FastAPI
    from fastapi import Request as HTTPRequest
    from fastapi.responses import JSONResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

    registry = CollectorRegistry()
    requests_total = Counter("snnet_requests", "requests answered, by HTTP status", ["status"], registry=registry)
    latency = Histogram("snnet_request_seconds", "time from arrival to answer of an inference",
                        buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10), registry=registry)
    queue_depth = Gauge("snnet_queue_depth", "requests waiting", registry=registry)
    queue_depth.set_function(scheduler.depth)
    batch_size = Histogram("snnet_batch_images", "images per batch run", buckets=(1, 2, 4, 8, 16, 32, 64),
                           registry=registry)
    per_stitch = Counter("snnet_stitch_requests", "requests served, by stitch (or cascade)", ["stitch_id"],
                         registry=registry)
    misses = Counter("snnet_deadline_misses", "requests answered after their deadline", registry=registry)

    def on_batch(sid: int, images: int, batch: list, seconds: float) -> None:
        batch_size.observe(images)
        per_stitch.labels(str(sid)).inc(len(batch))
    scheduler.on_batch = on_batch

    limit = int(max_body_mb * 1024 * 1024)
    replica = str(os.getpid()).encode()  # which process answered (several under Ray Serve)
    costs = scheduler.costs
    app = FastAPI(title="snnet serve", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestError)
    async def client_error(request: HTTPRequest, e: RequestError):
        return _error(str(e), e.status, {"Retry-After": "1"} if e.status == 503 else None)

    @app.exception_handler(Exception)
    async def server_error(request: HTTPRequest, e: Exception):  # the model failed: one line, the server goes on
        return _error(f"the model failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", 500)

    class CountAndBound:
        """Plain ASGI (Starlette's BaseHTTPMiddleware costs milliseconds a request): a body over the limit is a 413
        before it is read, and every answer is counted by status."""

        def __init__(self, inner) -> None:
            self.inner = inner

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.inner(scope, receive, send)
            length = dict(scope["headers"]).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                requests_total.labels("413").inc()
                return await _error(f"the body is {int(length)} bytes, over the server's {max_body_mb:g} MB "
                                    f"(--max-body-mb)", 413)(scope, receive, send)
            status = [500]

            async def counted(message):
                if message["type"] == "http.response.start":
                    status[0] = message["status"]
                    message["headers"] = [*message.get("headers", []), (b"x-snnet-replica", replica)]
                await send(message)
            await self.inner(scope, receive, counted)
            requests_total.labels(str(status[0])).inc()

    app.add_middleware(CountAndBound)

    async def body_of(request: HTTPRequest) -> bytes:
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise RequestError(f"the body is over the server's {max_body_mb:g} MB (--max-body-mb)", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def model_or_404(model: str, version: str | None = None) -> None:
        if model != name:
            raise RequestError(f"unknown model {model!r}: this server serves {name!r}", 404)
        if version not in (None, "1"):
            raise RequestError(f"unknown version {version!r} of {name!r}: it has version '1' only", 404)

    def served_by(sid: int | str, out) -> dict:
        """What answered: the stitch and its GFLOPs, or the cascade, each image's exit stitch and the mean GFLOPs."""
        if not isinstance(sid, str):
            return {"stitch_id": sid, "gflops": served.rows[sid]["gflops"]}
        point = served.cascades[int(sid.removeprefix("cascade"))]
        return {"cascade": point["stitches"], "thresholds": point["thresholds"],
                "stitch_ids": [point["stitches"][k] for k in out.exits.tolist()],
                "gflops": float(out.flops.mean()) / 1e9}

    async def infer_images(images: torch.Tensor, budget: Budget, arrival: float):
        sid, out, met, seconds = await asyncio.wrap_future(scheduler.submit(images, budget, arrival))
        scheduler.replied((scheduler.clock() - arrival - seconds) * 1000)
        latency.observe(seconds)
        if not met:
            misses.inc()
        return sid, out, met, seconds

    @app.get("/v2/health/live")
    async def live():
        return {"live": True}

    @app.get("/v2/health/ready")
    async def ready():
        return {"ready": True}

    @app.get("/v2")
    async def server_metadata():
        return {"name": "snnet", "version": __version__, "extensions": ["binary_tensor_data"]}

    @app.get("/v2/models/{model}")
    @app.get("/v2/models/{model}/versions/{version}")
    async def model_metadata(model: str, version: str | None = None):
        model_or_404(model, version)
        out_shape = [-1, served.model.num_classes] if served.task.answer_is_label else [-1, -1, -1, -1]
        return {"name": name, "versions": ["1"], "platform": served.platform,
                "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 3, *served.img_size]}],
                "outputs": [{"name": "output", "datatype": "FP32", "shape": out_shape}],
                "parameters": {"task": served.task.name, "precision": served.precision, "metric": served.metric,
                               "slo_ms": slo_ms, "mean": served.mean, "std": served.std,
                               "stitches": list(served.rows.values()),
                               "cascades": served.cascades if isinstance(served.cascades, list) else []}}

    @app.get("/v2/models/{model}/ready")
    @app.get("/v2/models/{model}/versions/{version}/ready")
    async def model_ready(model: str, version: str | None = None):
        model_or_404(model, version)
        return {"name": name, "ready": True}

    @app.post("/v2/models/{model}/infer")
    @app.post("/v2/models/{model}/versions/{version}/infer")
    async def infer(model: str, request: HTTPRequest, version: str | None = None):
        arrival = scheduler.clock()  # the deadline counts from here: reading and parsing the body are part of it
        model_or_404(model, version)
        body, binaries = parse_infer(await body_of(request), request.headers.get("inference-header-content-length"))
        inputs = body["inputs"]
        names = [s.get("name") if isinstance(s, dict) else None for s in inputs]
        if names != ["images"]:
            raise RequestError(f"inputs are {names}: this model takes one input, images")
        images = _tensor(inputs[0], binaries.get("images"), served.img_size, scheduler.max_batch)
        budget = read_budget(body.get("parameters"), costs, slo_ms, served.cascades)
        wanted = body.get("outputs") or [{"name": "output"}]
        if not isinstance(wanted, list):
            raise RequestError(f"outputs must be a list of objects, got {type(wanted).__name__}")
        for o in wanted:
            if not isinstance(o, dict) or o.get("name") != "output":
                raise RequestError(f"unknown output {o.get('name') if isinstance(o, dict) else o!r}: this model "
                                   f"gives output")
        sid, out, met, seconds = await infer_images(images, budget, arrival)
        params = {"deadline_met": met, "latency_ms": round(seconds * 1000, 3), **served_by(sid, out)}
        array = (out.logits if isinstance(sid, str) else out).numpy().astype(np.float32)
        binary = bool((body.get("parameters") or {}).get("binary_data_output")) or any(
            (o.get("parameters") or {}).get("binary_data") for o in wanted)
        output = {"name": "output", "datatype": "FP32", "shape": list(array.shape)}
        reply = {"model_name": name, "model_version": "1", "parameters": params, "outputs": [output]}
        if "id" in body:
            reply["id"] = body["id"]
        if not binary:
            output["data"] = array.reshape(-1).tolist()
            return JSONResponse(reply)
        raw = array.astype("<f4").tobytes()
        output["parameters"] = {"binary_data_size": len(raw)}
        head = json.dumps(reply).encode()
        return Response(head + raw, media_type="application/octet-stream",
                        headers={"Inference-Header-Content-Length": str(len(head))})

    @app.post("/v2/models/{model}/image")
    async def image(model: str, request: HTTPRequest):
        """For people: a JPEG or PNG body, the budget as query parameters; the task's answer as JSON."""
        arrival = scheduler.clock()
        model_or_404(model)
        x, picture = served.image_batch(await body_of(request))
        query = {}
        for key, value in request.query_params.items():
            if key not in BUDGETS:
                raise RequestError(f"unknown query parameter {key!r}: give one of {', '.join(BUDGETS)}")
            try:
                query[key] = int(value) if key == "stitch_id" else float(value)
            except ValueError:
                raise RequestError(f"{key} must be a number, got {value!r}") from None
        budget = read_budget(query, costs, slo_ms, served.cascades)
        sid, out, met, seconds = await infer_images(x, budget, arrival)
        by = served_by(sid, out)
        if "stitch_ids" in by:  # one image: the stitch it left at
            by["stitch_id"] = by.pop("stitch_ids")[0]
        return {**by, "deadline_met": met, "latency_ms": round(seconds * 1000, 3),
                **served.answer(out.logits if isinstance(sid, str) else out, picture, tuple(x.shape[-2:]))}

    @app.get("/metrics")
    async def metrics():
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    app.state.registry = registry
    return app


def log_figures(registry, every_s: float) -> threading.Event:
    """A line a minute (every ``every_s``) with the figures /metrics gives; set the returned event to stop it."""
    stop = threading.Event()

    def figures() -> str:
        samples = {(m.name, tuple(sorted(s.labels.items()))): s.value for m in registry.collect() for s in m.samples}
        by_status = {dict(k[1])["status"]: int(v) for k, v in samples.items() if k[0] == "snnet_requests_total"}
        stitches = {dict(k[1])["stitch_id"]: int(v) for k, v in samples.items()
                    if k[0] == "snnet_stitch_requests_total"}
        count = samples.get(("snnet_request_seconds_count", ()), 0)
        mean = 1000 * samples.get(("snnet_request_seconds_sum", ()), 0) / count if count else 0.0
        images = samples.get(("snnet_batch_images_sum", ()), 0)
        batches = samples.get(("snnet_batch_images_count", ()), 0)
        return (f"requests {sum(by_status.values())} by status {by_status}; inference mean {mean:.1f} ms; queue "
                f"{int(samples.get(('snnet_queue_depth', ()), 0))}; mean batch {images / batches if batches else 0:.2f}; "
                f"deadline misses {int(samples.get(('snnet_deadline_misses_total', ()), 0))}; by stitch {stitches}")

    def loop() -> None:
        while not stop.wait(every_s):
            print(f"snnet serve: {figures()}", flush=True)

    threading.Thread(target=loop, name="snnet-serve-log", daemon=True).start()
    return stop


def build_server(checkpoint: str, onnx: str | None = None, device: str | None = None, name: str = "snnet",
                 slo_ms: float | None = None, slo_headroom: float = 0.7, max_batch: int = 8,
                 max_wait_ms: float = 2.0, max_queue: int = 256, max_body_mb: float = 64.0,
                 log: Callable[[str], None] = lambda _: None):
    """(application, scheduler, served network) of ``snnet serve``'s options: the network loaded and every stitch
    timed at batch 1 and ``max_batch``. The scheduler is started by the caller."""
    served = Served(checkpoint, onnx, str(local_device(device, "cpu")))
    batches = tuple(sorted({1, max_batch}))
    log(f"timing {len(served.rows)} stitches at batch {' and '.join(map(str, batches))} ({served.platform}) ...")
    scheduler = Scheduler(served.run, served.costs(served.profile(batches)), max_batch, max_wait_ms, max_queue,
                          headroom=slo_headroom)
    return create_app(served, scheduler, name, slo_ms, max_body_mb), scheduler, served


def ray_application(options: dict, replicas: int, max_replicas: int | None = None):
    """The Ray Serve application of ``build_server(**options)``: ``replicas`` replicas (autoscaled up to
    ``max_replicas`` where more, Ray adding one as each holds over a batch of requests), each its own network,
    scheduler and HTTP application, to which Ray's proxy hands the requests it routes there."""
    from ray import serve

    max_batch, max_queue = options.get("max_batch", 8), options.get("max_queue", 256)
    scale = ({"autoscaling_config": {"min_replicas": replicas, "max_replicas": max_replicas,
                                     "target_ongoing_requests": max_batch}}
             if max_replicas is not None and max_replicas > replicas else {"num_replicas": replicas})

    # a replica takes up to its own queue's bound (Ray's default, 5, would keep its batches below --max-batch)
    @serve.deployment(**scale, max_ongoing_requests=max_queue, ray_actor_options={"num_cpus": 0},
                      graceful_shutdown_timeout_s=10, graceful_shutdown_wait_loop_s=0.5)
    class SNNetReplica:
        def __init__(self, options: dict) -> None:
            import httpx

            self.app, self.scheduler, _ = build_server(**options)
            self.scheduler.start()
            self.client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://replica")

        async def __call__(self, request):
            from starlette.responses import Response

            reply = await self.client.request(request.method, request.url.path, params=request.query_params,
                                              content=await request.body(), headers=request.headers.raw)
            return Response(reply.content, reply.status_code, headers={
                k: v for k, v in reply.headers.items() if k.lower() not in ("content-length", "transfer-encoding")})

        def __del__(self) -> None:
            self.scheduler.stop()

    return SNNetReplica.bind(options)
