"""FLOPs of stitches, counted as the published tables do (SPEC section 4). Pure functions, no torch.

One multiply-add is one FLOP: linear layers and convolutions, attention's two matmuls and the
stitching layers. LayerNorm counts 5 per element. Biases, activations, softmax, residual adds and
layer scale are free. The final norm runs on every token, the classifier head on one vector.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace

from .errors import SNNetError
from .route_tree import tree_nodes
from .stitch_space import SMALL, Step, Stitch, route_steps, route_taps, stage_offsets, tap_layers

NORM_FLOPS_PER_ELEMENT = 5
# operators of dense heads, as fvcore counts them (SPEC section 4)
BATCHNORM_FLOPS_PER_ELEMENT = 2  # eval mode
BILINEAR_FLOPS_PER_OUTPUT = 4


@dataclass(frozen=True)
class StageShape:
    """One stage of a hierarchical anchor (Swin): its blocks, on the patch grid strided by ``stride``, attending
    within ``window`` (rows, columns), and the patch merging that starts it."""

    depth: int
    width: int
    stride: int
    window: tuple[int, int]
    block_linear_macs: int  # per token and block, as AnchorShape's
    block_norm_elements: int
    attn_dim: int
    attn_linear_macs: int = 0  # of block_linear_macs, the attention's (qkv, proj): they also run on window padding
    merge_linear_macs: int = 0  # per token of the stage: the patch merging before its first block
    merge_norm_elements: int = 0


@dataclass(frozen=True)
class AnchorShape:
    """What the FLOPs of one anchor depend on; read off a timm ViT by ``snnet.anchors.anchor_shape``."""

    embed_dim: int
    depth: int
    patch_size: tuple[int, int]
    img_size: tuple[int, int]
    in_chans: int
    num_prefix_tokens: int
    num_classes: int
    block_linear_macs: int  # per token and block: sum of in x out over the block's linear layers
    block_norm_elements: int  # per token and block: elements normalised by the block's norms
    attn_dim: int  # width of the q.k and attn.v products (heads x head_dim)
    embed_norm_elements: int = 0  # per patch, a norm inside the patch embedding
    pre_norm: bool = False  # a norm on all tokens before the blocks
    final_norm: bool = True  # a norm on all tokens after the blocks
    fc_norm: bool = False  # a norm on the pooled vector
    # an attention pool (SigLIP's): per token (its key/value projection, the latent queries' products), and once
    pool_token_macs: int = 0
    pool_macs: int = 0
    # a hierarchical anchor's stages (Swin; ``embed_dim`` is then the first stage's width): blocks are numbered
    # across them
    stages: tuple[StageShape, ...] = ()

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "AnchorShape":
        stages = tuple(StageShape(**dict(st, window=tuple(st["window"]))) for st in d.get("stages", ()))
        d = dict(d, patch_size=tuple(d["patch_size"]), img_size=tuple(d["img_size"]), stages=stages)
        return cls(**d)


def grid_size(shape: AnchorShape, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    h, w = img_size or shape.img_size
    ph, pw = shape.patch_size
    if h <= 0 or w <= 0 or h % ph or w % pw:
        raise SNNetError(f"image size {h}x{w} is not a positive multiple of the patch size {ph}x{pw}")
    return h // ph, w // pw


def num_tokens(shape: AnchorShape, img_size: tuple[int, int] | None = None) -> int:
    gh, gw = grid_size(shape, img_size)
    return gh * gw + shape.num_prefix_tokens


def stage_starts(shape: AnchorShape) -> list[int]:
    """The first block of each stage of a hierarchical anchor ([0] for a plain one)."""
    return stage_offsets([st.depth for st in shape.stages]) or [0]


def stage_of(shape: AnchorShape, block: int) -> int:
    """The stage a block belongs to (0 for a plain anchor)."""
    return max(s for s, first in enumerate(stage_starts(shape)) if first <= block)


def out_width(shape: AnchorShape) -> int:
    """The width of the anchor's last block (its final norm and classifier)."""
    return shape.stages[-1].width if shape.stages else shape.embed_dim


def stage_tokens(shape: AnchorShape, stage: int, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, columns) of a hierarchical anchor's tokens in ``stage``: each patch merging halves the grid, an odd
    side padded by one (timm's)."""
    h, w = grid_size(shape, img_size)
    for _ in range(shape.stages[stage].stride.bit_length() - 1):
        h, w = (h + 1) // 2, (w + 1) // 2
    return h, w


def tap_grid(shape: AnchorShape, block: int, img_size: tuple[int, int] | None = None) -> tuple[int, int]:
    """(rows, columns) of the token map out of ``block`` of an anchor (its dense tap there)."""
    return stage_tokens(shape, stage_of(shape, block), img_size) if shape.stages else grid_size(shape, img_size)


def final_tokens(shape: AnchorShape, img_size: tuple[int, int] | None = None) -> int:
    """Tokens out of the anchor's last block (the final norm's)."""
    if not shape.stages:
        return num_tokens(shape, img_size)
    h, w = stage_tokens(shape, len(shape.stages) - 1, img_size)
    return h * w


def embed_flops(shape: AnchorShape, img_size: tuple[int, int] | None = None) -> int:
    """Patch embedding (a strided convolution) and the optional norms around it."""
    gh, gw = grid_size(shape, img_size)
    ph, pw = shape.patch_size
    patches = gh * gw
    flops = patches * shape.in_chans * ph * pw * shape.embed_dim
    flops += NORM_FLOPS_PER_ELEMENT * patches * shape.embed_norm_elements
    if shape.pre_norm:
        flops += NORM_FLOPS_PER_ELEMENT * (patches + shape.num_prefix_tokens) * shape.embed_dim
    return flops


def block_flops(shape: AnchorShape, tokens: int) -> int:
    """One transformer block on ``tokens`` tokens."""
    per_token = shape.block_linear_macs + NORM_FLOPS_PER_ELEMENT * shape.block_norm_elements
    return tokens * per_token + 2 * tokens * tokens * shape.attn_dim


def stage_block_flops(shape: AnchorShape, block: int, img_size: tuple[int, int] | None = None) -> int:
    """One block of a hierarchical anchor, with the patch merging before it when it starts a stage: window
    attention, each token attending to its window's tokens. A grid that is not a whole number of windows is padded
    to one (timm's), and the attention's linear layers and products run on the padding too."""
    s = stage_of(shape, block)
    st = shape.stages[s]
    h, w = stage_tokens(shape, s, img_size)
    (wh, ww), tokens = st.window, h * w
    padded = -(-h // wh) * wh * -(-w // ww) * ww
    flops = tokens * (st.block_linear_macs - st.attn_linear_macs + NORM_FLOPS_PER_ELEMENT * st.block_norm_elements)
    flops += padded * st.attn_linear_macs + 2 * padded * wh * ww * st.attn_dim
    if block == stage_starts(shape)[s]:
        flops += tokens * (st.merge_linear_macs + NORM_FLOPS_PER_ELEMENT * st.merge_norm_elements)
    return flops


def head_flops(shape: AnchorShape, tokens: int) -> int:
    """Final norm on all tokens, the attention pool if any, optional norm on the pooled vector, linear classifier."""
    width = out_width(shape)
    flops = width * shape.num_classes + tokens * shape.pool_token_macs + shape.pool_macs
    if shape.final_norm:
        flops += NORM_FLOPS_PER_ELEMENT * tokens * width
    if shape.fc_norm:
        flops += NORM_FLOPS_PER_ELEMENT * width
    return flops


def linear_flops(tokens: int, in_features: int, out_features: int) -> int:
    """A stitching layer (LoRA merged) on every token."""
    return tokens * in_features * out_features


def step_flops(step: Step, shapes: Sequence[AnchorShape], img_size: tuple[int, int] | None = None,
               before: Step | None = None) -> int:
    """One operation of a route (``snnet.stitch_space.route_steps``): embedding, block or stitching layer
    (``shapes``: the anchors', smallest first; every plain anchor has the smallest's tokens). A stitching layer
    between hierarchical anchors works at the stage of the block ``before`` it."""
    if step.kind == "embed":
        return embed_flops(shapes[step.part], img_size)
    if step.kind == "block":
        shape = shapes[step.part]
        if shape.stages:
            return stage_block_flops(shape, step.index, img_size)
        return block_flops(shape, num_tokens(shapes[SMALL], img_size))
    src, dst = (step.pair, step.pair + 1) if step.part == "SL" else (step.pair + 1, step.pair)
    if not shapes[src].stages:
        return linear_flops(num_tokens(shapes[SMALL], img_size), shapes[src].embed_dim, shapes[dst].embed_dim)
    if before is None or before.kind != "block":
        raise SNNetError("a stitching layer between hierarchical anchors follows a block: pass the step before it")
    s = stage_of(shapes[src], before.index)
    h, w = stage_tokens(shapes[src], s, img_size)
    return linear_flops(h * w, shapes[src].stages[s].width, shapes[dst].stages[s].width)


def stitch_flops(
    stitch: Stitch,
    shapes: Sequence[AnchorShape],
    img_size: tuple[int, int] | None = None,
    out_indices: tuple[int, ...] | None = None,
) -> int:
    """FLOPs of one stitch at ``img_size`` (default: the anchors' input size).

    Without ``out_indices``: the classification route, ending in the last anchor's norm and head.
    With ``out_indices``: the dense backbone, ending at the last block, plus the SL projections that
    bring smaller anchors' taps to the largest width (``tap_layers``; no norm, no head).
    """
    steps = route_steps(stitch)
    flops = sum(step_flops(step, shapes, img_size, steps[k - 1] if k else None) for k, step in enumerate(steps))
    return flops + _ending_flops(stitch, shapes, img_size, out_indices)


def prefix_shared_flops(
    stitches: Iterable[Stitch],
    shapes: Sequence[AnchorShape],
    img_size: tuple[int, int] | None = None,
    out_indices: tuple[int, ...] | None = None,
) -> int:
    """FLOPs of running every stitch once by a prefix-shared walk (``snnet.route_tree``): each distinct route
    prefix once, the endings (head, or tap projections) once per stitch."""
    stitches = list(stitches)
    flops = sum(step_flops(node[-1], shapes, img_size, node[-2] if len(node) > 1 else None)
                for node in tree_nodes(stitches))
    return flops + sum(_ending_flops(s, shapes, img_size, out_indices) for s in stitches)


def _ending_flops(stitch: Stitch, shapes: Sequence[AnchorShape], img_size: tuple[int, int] | None,
                  out_indices: tuple[int, ...] | None) -> int:
    """What follows the last block: the norm and head, or the projections of smaller anchors' taps."""
    if out_indices is None:
        last = shapes[stitch.last_anchor]
        return head_flops(last if stitch.final_norm else replace(last, final_norm=False), final_tokens(last, img_size))
    depths = [s.depth for s in shapes]
    stages = [tuple(st.depth for st in s.stages) or (s.depth,) for s in shapes]
    flops = 0
    for anchor, block in route_taps(stitch, out_indices, *depths, stages=stages):
        stage = stage_of(shapes[anchor], block)
        for ref in tap_layers(anchor, block, *depths, stages=stages):  # each at the stage of the tap
            before = Step("block", ref.pair, stage_starts(shapes[ref.pair])[stage])
            flops += step_flops(Step("layer", ref.direction, ref.index, ref.pair), shapes, img_size, before)
    return flops


def conv_flops(out_hw: tuple[int, int], in_channels: int, out_channels: int, kernel: int = 1) -> int:
    """A convolution, multiply-adds without bias, per output position."""
    return out_hw[0] * out_hw[1] * in_channels * out_channels * kernel * kernel
