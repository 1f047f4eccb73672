"""Cascades over stitches (anytime inference): stages run cheapest first, and an image leaves at the first stage
whose confidence reaches that stage's threshold; the others go on, each later stage resuming from the deepest
activation its route shares with a stage already run (the route tree's prefixes).

The FLOPs of an image are those of what ran for it: the distinct route prefixes of the stages up to its exit, and
each of those stages' heads (``snnet.flops.prefix_shared_flops``).
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ._atomic import atomic_path
from .errors import SNNetError
from .registry import TASKS
from .flops import AnchorShape, prefix_shared_flops
from .results import frontier
from .selection import best_under_budget, is_integer, is_number, pareto_frontier
from .stitch_space import Stitch, route_steps

if TYPE_CHECKING:
    from .tasks.classification import SNNet

# the per-image score an exit compares with its threshold; max_prob is the default (see docs/cascades.md)
CONFIDENCES = ("max_prob", "margin")
# the search tries grid ** (stages - 1) threshold sets for every sequence of that many stitches: 4 stages over 16
# candidates would be 1820 sequences of 4096 sets each
MAX_SEARCH_STAGES = 3


def check_search_stages(max_stages: int) -> None:
    """A one-line error for a search over more stages than it can try in reasonable time."""
    if not 1 <= max_stages <= MAX_SEARCH_STAGES:
        raise SNNetError(f"--max-stages must be 1 to {MAX_SEARCH_STAGES}, got {max_stages}: the search tries a grid "
                         f"of thresholds for every stage of every sequence, which grows 16-fold a stage")


def check_stages(stitch_ids: Sequence[int], thresholds: Sequence[float], confidence: str, known: Sequence[int]) -> None:
    """A one-line error for stages a network cannot run as a cascade."""
    if not stitch_ids:
        raise SNNetError("a cascade needs at least one stage")
    if len(set(stitch_ids)) != len(stitch_ids):
        raise SNNetError(f"a cascade's stages repeat a stitch: {list(stitch_ids)}")
    if unknown := [s for s in stitch_ids if s not in set(known)]:
        raise SNNetError(f"the network has no stitch {unknown[0]} (its ids: {min(known)}..{max(known)})")
    if len(thresholds) != len(stitch_ids) - 1:
        raise SNNetError(f"{len(stitch_ids)} stages take {len(stitch_ids) - 1} thresholds (the last stage answers "
                         f"every image left), got {len(thresholds)}")
    for t in thresholds:
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= 1:  # NaN fails the range too
            raise SNNetError(f"a cascade threshold is a confidence in [0, 1], got {t!r}")
    if confidence not in CONFIDENCES:
        raise SNNetError(f"unknown confidence {confidence!r}: one of {', '.join(CONFIDENCES)}")


def shared_steps(a: tuple, b: tuple) -> int:
    """How many first steps two routes have in common."""
    return next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def resume_points(stitches: Sequence[Stitch]) -> list[tuple[int | None, int]]:
    """For each stage: (the earlier stage it resumes from or None, how many of its route's steps it skips)."""
    routes = [route_steps(s) for s in stitches]
    points: list[tuple[int | None, int]] = []
    for k, route in enumerate(routes):
        best: tuple[int | None, int] = (None, 0)
        for j in range(k):
            shared = shared_steps(routes[j], route)
            # the earliest such stage ran that step itself (a later one may have resumed past it)
            if shared > best[1]:
                best = (j, shared)
        points.append(best)
    return points


def exit_flops(stitches: Sequence[Stitch], shapes: Sequence[AnchorShape],
               img_size: tuple[int, int] | None = None) -> list[int]:
    """FLOPs of an image leaving at each stage: every stage up to it, shared prefixes counted once."""
    return [prefix_shared_flops(stitches[:k + 1], shapes, img_size) for k in range(len(stitches))]


def confidence_of(logits: torch.Tensor, kind: str = "max_prob") -> torch.Tensor:
    """Per image: the largest softmax probability, or its margin over the second largest."""
    probs = logits.float().softmax(-1)
    if kind == "max_prob":
        return probs.max(-1).values
    top2 = probs.topk(2, -1).values
    return top2[:, 0] - top2[:, 1]


@dataclass
class CascadeOutput:
    """A batch's answers: each image's logits (from its exit stage), exit stage index and FLOPs."""

    logits: torch.Tensor
    exits: torch.Tensor
    flops: torch.Tensor

    def __getitem__(self, index) -> "CascadeOutput":
        """The answers of some of the images (a slice or an index tensor)."""
        return CascadeOutput(self.logits[index], self.exits[index], self.flops[index])


class Cascade:
    """Stitches of one classification network run as a cascade (``stitch_ids`` in order, ``thresholds`` for every
    stage but the last, on the ``confidence`` score)."""

    def __init__(self, model: SNNet, stitch_ids: Sequence[int], thresholds: Sequence[float],
                 confidence: str = "max_prob") -> None:
        check_stages(stitch_ids, thresholds, confidence, model.stitch_ids)
        if not TASKS[model.task].answer_is_label:
            raise SNNetError(f"cascades exit on a classifier's confidence; a {model.task} model has none")
        self.model, self.stitch_ids = model, list(stitch_ids)
        self.thresholds, self.confidence = [float(t) for t in thresholds], confidence
        self.stitches = [model.stitch(s) for s in stitch_ids]
        self.routes = [route_steps(s) for s in self.stitches]
        self.resume = resume_points(self.stitches)
        # the activations to keep: after step n - 1 of stage j, for each later stage resuming there
        self.keep = [{n - 1 for j2, n in self.resume if j2 == j} for j in range(len(self.stitches))]
        self._costs: dict[tuple[int, int], torch.Tensor] = {}
        model.eval()  # the stages run as evaluated (dropout off); switching a module's mode costs more than a step

    def exit_flops(self, img_size: tuple[int, int] | None = None) -> list[int]:
        return exit_flops(self.stitches, self.model.shapes, img_size)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's logits from its exit stage: a classifier like any other."""
        return self.run(images).logits

    def run(self, images: torch.Tensor) -> CascadeOutput:
        """Run the cascade on a batch (no gradients; the model as the constructor left it, in eval mode): logits,
        exit stages, FLOPs per image."""
        model = self.model
        n, size = images.shape[0], tuple(images.shape[-2:])
        if size not in self._costs:
            self._costs[size] = torch.tensor(self.exit_flops(size), dtype=torch.float64)
        costs = self._costs[size]
        exits = torch.full((n,), len(self.stitches) - 1, dtype=torch.long)
        logits = None
        alive = torch.arange(n, device=images.device)  # the images still running, as indices into the batch
        kept: dict[tuple[int, int], torch.Tensor] = {}  # (stage, step) -> activation of the alive images
        contexts = model.backbone.block_contexts(images)  # per anchor, for the images' token grid
        with torch.no_grad():
            for k, (stitch, route) in enumerate(zip(self.stitches, self.routes)):
                src, start = self.resume[k]
                h = images[alive] if src is None else kept[(src, start - 1)]
                for i in range(start, len(route)):
                    h = model.backbone.run_step(route[i], h, contexts)
                    if i in self.keep[k]:
                        kept[(k, i)] = h
                out = model.logits(h, stitch)
                if logits is None:
                    logits = out.new_zeros((n, out.shape[-1]))
                last = k == len(self.stitches) - 1
                leave = (torch.ones_like(alive, dtype=torch.bool) if last else
                         confidence_of(out, self.confidence) >= self.thresholds[k])
                logits[alive[leave]] = out[leave]
                exits[alive[leave].cpu()] = k
                if last or bool(leave.all()):
                    break
                stay = ~leave
                alive = alive[stay]
                kept = {key: t[stay] for key, t in kept.items()}
        return CascadeOutput(logits, exits, costs[exits])


# ---- finding cascades: stage scores on calibration images, a search over stages and thresholds -----------------
@dataclass
class StageScores:
    """One stitch on the calibration images: each image's confidence, and whether its top-1 / top-5 are right."""

    confidence: np.ndarray
    correct1: np.ndarray
    correct5: np.ndarray


class StageScorer:
    """A task for ``snnet.evaluation.evaluate_stitches`` whose batch states are per image, kept in order: its
    ``confidence`` and whether its top-1 and top-5 are right; ``finalize`` gives a stitch's :class:`StageScores`."""

    def __init__(self, confidence: str) -> None:
        self.confidence = confidence

    def eval_batch(self, model, batch, device: torch.device) -> list[tuple]:
        images, targets = (t.to(device) for t in batch)
        logits = model(images)
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices == targets[:, None]
        return [(confidence_of(logits, self.confidence), top[:, 0], top.any(1))]  # lists add up by concatenation

    @staticmethod
    def reduce(parts: list[tuple], device: torch.device) -> list[tuple]:
        return parts  # one process

    @staticmethod
    def finalize(parts: list[tuple]) -> StageScores:
        return StageScores(*(torch.cat([p[i] for p in parts]).cpu().numpy() for i in range(3)))


def candidate_stitches(stitches: Sequence[Stitch], frontier_ids: Sequence[int], flops: dict[int, int],
                       limit: int) -> list[int]:
    """Stages a search draws from, by ascending FLOPs: the frontier's stitches, then the stitches that share at
    least half their route with a frontier stitch (a later stage resumes past its middle), most shared first; at
    most ``limit``, the frontier thinned evenly by FLOPs where it alone has more."""
    by_id = {s.id: s for s in stitches}
    front = sorted(frontier_ids, key=lambda i: flops[i])
    if len(front) > limit:
        keep = sorted({round(x) for x in np.linspace(0, len(front) - 1, limit)})
        return [front[i] for i in keep]
    routes = {i: route_steps(s) for i, s in by_id.items()}
    share = {i: max(shared_steps(routes[i], routes[f]) for f in front) / len(routes[i]) for i in by_id
             if i not in front}
    relatives = sorted((i for i, v in share.items() if v >= 0.5), key=lambda i: (-share[i], flops[i], i))
    return sorted(front + relatives[:limit - len(front)], key=lambda i: (flops[i], i))


def threshold_grid(conf: np.ndarray, grid: int) -> np.ndarray:
    """Candidate thresholds of one stage: quantiles of its confidence (every image exits at the lowest)."""
    return np.unique(np.quantile(conf, np.linspace(0, 1, grid)).clip(0, 1))


def search(scores: dict[int, StageScores], costs: Callable[[tuple[int, ...]], list[int]], max_stages: int,
           grid: int = 16) -> list[dict]:
    """The calibration frontier of cascades over ``scores``' stitches (stages in the order given, which should be
    ascending FLOPs; ``costs(stages)``: FLOPs of leaving at each stage): rows of ``stitches``, ``thresholds``,
    ``gflops`` (mean) and ``acc1``, by ascending GFLOPs, each more accurate than the one before."""
    check_search_stages(max_stages)
    ids = list(scores)
    points: list[tuple[float, float, tuple[int, ...], tuple[float, ...]]] = []
    for m in range(1, max_stages + 1):
        for stages in itertools.combinations(ids, m):
            f = np.array(costs(stages), dtype=np.float64) / 1e9
            s = [scores[i] for i in stages]
            if m == 1:
                points.append((f[0], float(s[0].correct1.mean()), stages, ()))
                continue
            # exit[k]: (thresholds of stage k, images), whether an image reaches stage k's threshold
            ts = [threshold_grid(x.confidence, grid) for x in s[:-1]]
            grids = np.meshgrid(*ts, indexing="ij")
            flat = np.stack([g.ravel() for g in grids], 1)  # (combinations, m - 1)
            left = np.ones((len(flat), len(s[0].correct1)), dtype=bool)
            correct = np.zeros(left.shape)
            cost = np.zeros(len(flat))
            for k in range(m):
                leave = left if k == m - 1 else left & (s[k].confidence[None, :] >= flat[:, k:k + 1])
                correct += leave * s[k].correct1[None, :]
                cost += leave.mean(1) * f[k]
                left = left & ~leave
            acc = correct.mean(1)
            points += [(cost[i], acc[i], stages, tuple(float(t) for t in flat[i])) for i in range(len(flat))]
    front = pareto_frontier(dict(enumerate(p[0] for p in points)), dict(enumerate(p[1] for p in points)))
    return [{"stitches": list(points[i][2]), "thresholds": list(points[i][3]), "gflops": points[i][0],
             "acc1": 100 * points[i][1]} for i in front]


def spread(front: list[dict], count: int) -> list[dict]:
    """At most ``count`` rows of a frontier, spaced evenly in GFLOPs (its cheapest and best always among them)."""
    if len(front) <= count:
        return front
    targets = np.linspace(front[0]["gflops"], front[-1]["gflops"], count)
    picks = sorted({int(np.argmin([abs(r["gflops"] - t) for r in front])) for t in targets})
    return [front[i] for i in picks]


def evaluate_cascades(model: SNNet, task, batches: Iterable, points: list[dict], confidence: str,
                      device: torch.device) -> list[dict]:
    """Each operating point (``stitches``, ``thresholds``) run as a :class:`Cascade` on every batch (loaded once):
    the task's metrics, the mean GFLOPs per image and the share of images leaving at each stage."""
    cascades = [Cascade(model, p["stitches"], p["thresholds"], confidence) for p in points]
    sums: list = [None] * len(cascades)
    exits = [np.zeros(len(c.stitch_ids)) for c in cascades]
    flops = [0.0] * len(cascades)
    for batch in batches:
        for k, cascade in enumerate(cascades):
            ran: list[CascadeOutput] = []

            def classify(images: torch.Tensor) -> torch.Tensor:
                ran.append(cascade.run(images))
                return ran[-1].logits

            s = task.eval_batch(classify, batch, device)
            sums[k] = s if sums[k] is None else sums[k] + s
            exits[k] += np.bincount(ran[0].exits.numpy(), minlength=len(exits[k]))
            flops[k] += float(ran[0].flops.sum())
    rows = []
    for p, s, e, f in zip(points, sums, exits, flops):
        metrics = task.finalize(s)
        n = metrics["images"]
        rows.append({"stitches": p["stitches"], "thresholds": p["thresholds"], "confidence": confidence,
                     "gflops": f / n / 1e9, **metrics, "exit_share": (e / n).tolist(),
                     "calibration_gflops": p["gflops"], "calibration_acc1": p["acc1"]})
    return rows


def plot_cascades(static: list[dict], cascades: list[dict], path: Path, title: str) -> Path:
    """``pareto_cascade.png``: every stitch and the static frontier, the cascades' operating points and theirs (all
    on the validation images), top-1 against mean GFLOPs per image."""
    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter([r["gflops"] for r in static], [r["acc1"] for r in static], s=12, color="tab:gray", alpha=0.5,
               label="stitches")
    front = frontier(static, "acc1")
    ax.plot([r["gflops"] for r in front], [r["acc1"] for r in front], color="tab:gray", lw=1.2,
            label="static frontier")
    ax.scatter([r["gflops"] for r in cascades], [r["acc1"] for r in cascades], s=22, marker="x", color="tab:green")
    front = frontier(cascades, "acc1", cost="gflops")
    ax.plot([r["gflops"] for r in front], [r["acc1"] for r in front], color="tab:green", lw=1.5, marker="x",
            label="cascade frontier")
    for r in static:
        if r["kind"] == "anchor":
            ax.scatter([r["gflops"]], [r["acc1"]], marker="*", s=160, color="gold", edgecolor="black", zorder=5)
    ax.set_xlabel("GFLOPs per image (cascades: the mean)")
    ax.set_ylabel("acc1")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path


def read_cascades(path: Path) -> list[dict]:
    """The operating points of a ``cascade.jsonl`` (or a run directory's), checked: a one-line error naming the line
    of anything a budget cannot choose by."""
    path = Path(path)
    if path.is_dir():
        path = path / "cascade.jsonl"
    if not path.is_file():
        raise SNNetError(f"no cascades at {path}: find them first (snnet cascade --run RUN)")
    rows = []
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SNNetError(f"{where} is not a JSON object") from None
        if not isinstance(row, dict):
            raise SNNetError(f"{where} is not a JSON object")
        for key in ("gflops", "acc1"):
            if not is_number(row.get(key)) or row[key] < 0:
                raise SNNetError(f"{where}: {key} is {row.get(key)!r}, not a number of at least 0")
        stitches, thresholds = row.get("stitches"), row.get("thresholds")
        if not (isinstance(stitches, list) and stitches and all(is_integer(s) for s in stitches)):
            raise SNNetError(f"{where}: stitches is {stitches!r}, not a list of stitch ids")
        if not isinstance(thresholds, list):
            raise SNNetError(f"{where}: thresholds is {thresholds!r}, not a list")
        check_stages(stitches, thresholds, row.get("confidence", "max_prob"), stitches)
        rows.append(row)
    if not rows:
        raise SNNetError(f"{path} has no cascades")
    return rows


def best_cascade(rows: list[dict], max_gflops: float) -> dict:
    """The most accurate operating point whose mean GFLOPs fit ``max_gflops`` (ties: the cheaper)."""
    best = best_under_budget(dict(enumerate(r["gflops"] for r in rows)), dict(enumerate(r["acc1"] for r in rows)),
                             max_gflops)
    if best is None:
        cheapest = min(r["gflops"] for r in rows)
        raise SNNetError(f"no cascade fits {max_gflops} GFLOPs (the cheapest needs {cheapest:.3f})")
    return rows[best]
