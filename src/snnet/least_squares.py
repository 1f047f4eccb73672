"""Least-squares initialisation of the stitching layers from real activations (SPEC section 3).

The reference keeps every block's output for one batch and calls a pseudo-inverse. Here every anchor
runs once per chunk of images, each chunk adds to the normal equations of every fit (float64), and the
layers are solved once at the end: memory does not grow with the number of images, and any number of
batches can be used.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.distributed as dist

from .errors import SNNetError
from .progress import progress_bar
from .stitch_space import Step, layer_fits


class NormalEquations:
    """Running ``[X 1]^T [X 1]`` and ``[X 1]^T Y`` for the affine map ``x -> y`` (float64)."""

    def __init__(self, in_features: int, out_features: int, device: torch.device) -> None:
        self.xtx = torch.zeros(in_features + 1, in_features + 1, dtype=torch.float64, device=device)
        self.xty = torch.zeros(in_features + 1, out_features, dtype=torch.float64, device=device)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add token rows: ``x`` (..., in) and ``y`` (..., out)."""
        x = x.reshape(-1, x.shape[-1]).to(torch.float64)
        y = y.reshape(-1, y.shape[-1]).to(torch.float64)
        # the constant column of [X 1] is kept implicit: its products are sums and the row count
        s = x.sum(dim=0)
        self.xtx[:-1, :-1].addmm_(x.T, x)
        self.xtx[-1, :-1] += s
        self.xtx[:-1, -1] += s
        self.xtx[-1, -1] += x.shape[0]
        self.xty[:-1].addmm_(x.T, y)
        self.xty[-1] += y.sum(dim=0)

    def all_reduce(self) -> None:
        """Sum the statistics of every process, so each rank solves the same layer."""
        dist.all_reduce(self.xtx)
        dist.all_reduce(self.xty)

    @property
    def rows(self) -> int:
        """Token rows added so far (all ranks after ``all_reduce``)."""
        return int(self.xtx[-1, -1].item())

    def solve(self, rtol: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Minimum-norm least squares ``(W (out, in), b (out,))``, i.e. ``pinv([X 1]) Y``.

        Singular values of ``[X 1]`` below ``rtol`` x the largest count as zero. The default is
        ``torch.linalg.pinv``'s on the float32 ``[X 1]`` the reference solves: max(rows, in + 1) x float32
        epsilon, so the cutoff grows with the number of token rows (2.3e-3 for 100 ImageNet images).
        """
        if rtol is None:
            rtol = max(self.rows, self.xtx.shape[0]) * torch.finfo(torch.float32).eps
        # eigenvalues of X^T X are squared singular values of X
        sol = torch.linalg.pinv(self.xtx, rtol=rtol**2, hermitian=True) @ self.xty
        return sol[:-1].T.contiguous(), sol[-1].contiguous()


def _accumulate(model, images: torch.Tensor, needed: dict[int, set[int]], fits: list, eqs: list) -> None:
    """Run every anchor once on ``images``, keeping the outputs of its ``needed`` blocks (block -1: the
    embedding), and add each fit's pair of them to its normal equations."""
    out = {}
    contexts = model.block_contexts(images)
    for a, blocks in needed.items():
        x = out[a, -1] = model.embed(images, a)
        for b in range(max(blocks) + 1):
            x = model.run_step(Step("block", a, b), x, contexts)
            if b in blocks:
                out[a, b] = x
    for eq, (_, src, dst) in zip(eqs, fits):
        eq.add(out[src], out[dst])


@torch.no_grad()
def init_stitching_layers(model, batches: Iterable, num_images: int | None = None,
                          progress: bool = True, chunk_size: int = 4) -> int:
    """Fit every stitching layer of a task model's backbone on up to ``num_images`` images; returns how many
    were used.

    ``batches`` yields image tensors (B, 3, H, W) or ``(images, targets)`` pairs. The anchors run
    once per image (eval mode), ``chunk_size`` images at a time, which bounds the activation memory
    whatever the loader's batch size. Under torch.distributed the statistics of all ranks are summed.
    """
    for name, value in (("num_images", num_images), ("chunk_size", chunk_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise SNNetError(f"init_stitching_layers: {name} must be an integer >= 1, got {value!r}")
    net = getattr(model, "backbone", None)
    if not hasattr(net, "stitching_layer"):  # a backbone alone, or any other module
        raise SNNetError(f"init_stitching_layers takes a task model (snnet.SNNet, a DenseModel), whose backbone it "
                         f"fits, got a {type(model).__name__}")
    device = next(net.parameters()).device
    fits = layer_fits(net.depths, net.config.version, net.stages, net.dense)
    layers = {ref: net.stitching_layer(ref) for ref, _, _ in fits}
    eqs = [NormalEquations(layers[ref].in_features, layers[ref].out_features, device) for ref, _, _ in fits]
    needed: dict[int, set[int]] = {}
    for _, *ends in fits:
        for a, b in ends:
            needed.setdefault(a, set()).add(b)

    was_training = net.training
    net.eval()
    seen = 0
    bar = progress_bar(total=num_images, unit="img", desc="least-squares init", enabled=progress)
    try:
        for batch in batches:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            if num_images is not None:
                images = images[: num_images - seen]
            for chunk in images.split(chunk_size):
                _accumulate(net, chunk.to(device, non_blocking=True), needed, fits, eqs)
            seen += images.shape[0]
            bar.update(images.shape[0])
            if num_images is not None and seen >= num_images:
                break
    finally:
        bar.close()
        net.train(was_training)

    if dist.is_available() and dist.is_initialized():
        total = torch.tensor([seen], dtype=torch.float64, device=device)
        dist.all_reduce(total)
        seen_all = int(total.item())
        for eq in eqs:
            eq.all_reduce()
    else:
        seen_all = seen
    if seen_all == 0:
        raise SNNetError("least-squares initialisation got no images")
    solutions: dict = {}
    for (ref, _, _), eq in zip(fits, eqs):
        solutions.setdefault(ref, []).append(eq.solve())
    for ref, sols in solutions.items():  # one fit per layer, but SN-Net's: the mean over its positions
        w, b = (sum(t) / len(sols) for t in zip(*sols))
        layers[ref].set_solution(w.to(layers[ref].weight.dtype), b.to(layers[ref].bias.dtype))
    return seen_all
