"""The stitchable network: the backbone (two or more anchors, their stitching layers, one route runner for every
task) and the base of the task models that hold it (classification's included)."""
from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from .anchors import AnchorConfig, anchor_config_of, anchor_family, anchor_shape, create_anchor, order_anchors
from .errors import SNNetError
from .families import Family, family_of, with_classifier
from .flops import stage_of, stitch_flops, tap_grid
from .pretrained import Pretrained
from .route_tree import PrefixCache, depth_first
from .sampling import ROSSampler
from .selection import ChoosesStitches, is_integer, is_number
from .stitch_space import (SMALL, VERSIONS, LayerRef, Step, Stitch, is_hierarchical, layer_counts, network_space,
                           route_steps, route_taps, stage_ends, swin_layer_stages, tap_layers)
from .stitching_layers import StitchingLayer

if TYPE_CHECKING:
    from .config import ModelSection

DEFAULT_ROS_GAP_GFLOPS = 1.0  # the reference's gap for ImageNet at 224


@dataclass
class SNNetConfig:
    """Everything needed to rebuild an SNNet offline; written beside every saved model."""

    anchors: list[AnchorConfig]
    version: str = "v2"
    lora_rank: int = 0
    lora_alpha: float = 1.0
    out_indices: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"anchors": [a.to_dict() for a in self.anchors], "version": self.version,
                "lora_rank": self.lora_rank, "lora_alpha": self.lora_alpha, "out_indices": list(self.out_indices)}

    @classmethod
    def from_dict(cls, d: dict) -> "SNNetConfig":
        return cls(anchors=[AnchorConfig(**a) for a in d["anchors"]], version=d["version"],
                   lora_rank=d["lora_rank"], lora_alpha=d["lora_alpha"], out_indices=list(d["out_indices"]))


def _default_out_indices(d1: int) -> list[int]:
    """Four evenly spaced large blocks ending at the last one, e.g. (5, 11, 17, 23) for 24 blocks."""
    return sorted({max(0, (k + 1) * d1 // 4 - 1) for k in range(4)})


def anchor_configs(section: "ModelSection", load_weights: bool = True, device: str | None = None,
                   overrides: dict[str, Any] | Callable[[type[Family]], dict[str, Any]] | None = None,
                   defaults: dict[str, Any] | None = None) -> list[AnchorConfig]:
    """The anchors of a config's ``model`` section; ``load_weights=False`` skips hub and local weights (they come
    later). A task model sets the anchors' timm kwargs it needs: ``overrides`` replace the config's (or a function
    of each anchor's family giving them, e.g. its ``backbone_kwargs``), ``defaults`` apply where the config sets
    none."""
    anchors = []
    for a in section.anchors:
        if callable(overrides):
            family = anchor_family(AnchorConfig(a.name, kwargs={**(defaults or {}), **a.kwargs}))
            chosen = overrides(family)
        else:
            chosen = overrides
        kwargs = {**(defaults or {}), **a.kwargs, **(chosen or {})}
        if device is not None:
            kwargs["device"] = device
        anchors.append(AnchorConfig(a.name, pretrained=a.pretrained and load_weights,
                                    checkpoint_path=a.checkpoint_path if load_weights else None, kwargs=kwargs,
                                    rel_pos_bias=a.rel_pos_bias, drop_path=a.drop_path))
    return anchors


class BlockContexts(dict):
    """Anchor index -> its blocks' context for one input, computed by ``compute`` on first use."""

    def __init__(self, compute) -> None:
        super().__init__()
        self.compute = compute

    def __missing__(self, anchor: int) -> Any:
        self[anchor] = value = self.compute(anchor)
        return value


class SNNetBackbone(ChoosesStitches, nn.Module):
    """The stitched backbone: SN-Netv2 over two or more timm ViT anchors (a chain: docs/anchors.md), its v1 baseline
    over two, or SN-Net (CVPR 2023, ``version="sn-net"``) over anchors of equal depth. A task model holds it (the
    classification model ``snnet.SNNet``, which owns the anchors' classifier heads, and the dense models).

    ``select(id)`` picks the stitch that eval-mode calls run; in train mode every call runs a stitch drawn by
    ``sampler`` (ROS). As in timm, ``forward_features`` returns that stitch's final tokens (after its last anchor's
    norm) and ``forward_intermediates`` its dense feature maps, all at the large anchor's width. ``dense``: the
    backbone of a dense task model (Swin anchors then get a tap layer per stage and pair, docs/anchors.md).
    """

    def __init__(
        self,
        anchors: Sequence[nn.Module | str | AnchorConfig],
        version: str = "v2",
        lora_rank: int = 0,
        lora_alpha: float = 1.0,
        out_indices: Sequence[int] | None = None,
        pretrained: bool = False,
        dense: bool = False,
    ) -> None:
        super().__init__()
        if version not in VERSIONS:
            raise SNNetError(f"unknown SN-Net version {version!r}: expected {', '.join(map(repr, VERSIONS))}")
        if not is_integer(lora_rank) or lora_rank < 0:
            raise SNNetError(f"lora_rank must be an integer >= 0, got {lora_rank!r}")
        if not is_number(lora_alpha) or lora_alpha <= 0:
            raise SNNetError(f"lora_alpha must be a number > 0, got {lora_alpha!r}")
        if not isinstance(dense, bool):
            raise SNNetError(f"dense must be True or False, got {dense!r}")
        if not isinstance(anchors, Sequence) or isinstance(anchors, str):
            raise SNNetError(f"anchors must be a list of timm ViTs (modules, names or AnchorConfigs), "
                             f"got {type(anchors).__name__}")
        modules, configs = [], []
        for a in anchors:
            if isinstance(a, nn.Module):
                modules.append(a)
                configs.append(None)
            elif isinstance(a, (str, AnchorConfig)):
                cfg = AnchorConfig(a, pretrained=pretrained) if isinstance(a, str) else a
                modules.append(create_anchor(cfg))
                # weights travel separately
                configs.append(AnchorConfig(cfg.name, kwargs=dict(cfg.kwargs), rel_pos_bias=cfg.rel_pos_bias,
                                            drop_path=cfg.drop_path))
            else:
                raise SNNetError(f"an anchor must be a timm ViT module, a model name or an AnchorConfig, "
                                 f"got {type(a).__name__}")
        ordered = order_anchors(modules)
        config_of = {id(m): c for m, c in zip(modules, configs)}
        configs = [config_of[id(a)] or anchor_config_of(a) for a in ordered]

        self.anchors = nn.ModuleList(ordered)
        self.families: tuple[type[Family], ...] = tuple(family_of(a) for a in ordered)
        self.stages = tuple(f.stage_depths(a) for f, a in zip(self.families, ordered))  # blocks per stage
        self.depths = tuple(sum(s) for s in self.stages)
        self.widths = tuple(f.width(a) for f, a in zip(self.families, ordered))
        self.shapes = tuple(anchor_shape(a) for a in ordered)
        self.dense = dense
        self.out_indices = self._check_out_indices(out_indices)
        self.config = SNNetConfig(configs, version, lora_rank, lora_alpha, list(self.out_indices))

        try:
            self.stitches: tuple[Stitch, ...] = network_space(self.depths, version, self.stages)
            counts = layer_counts(self.depths, version, self.stages, self.dense)
        except ValueError as e:  # depths the version's rule cannot stitch
            raise SNNetError(str(e)) from None
        # per neighbour pair, SL (up) and LS (down) layers, kept in two flat lists: pair p's layer i is entry
        # offsets[p] + i (two anchors: SL i and LS i, the reference's)
        # a layer per boundary, which depends on the smallest depth G only: SL at 1..G (G: the dense taps'
        # projection), LS at 1..G-1, as between two anchors of depth G (SN-Net: its paired layers, SL only; over
        # Swin anchors its layers stage by stage, each as wide as its stage, then a dense backbone's tap layers)
        self.layer_offsets = {d: [sum(c[k] for c in counts[:p]) for p in range(len(counts))]
                              for k, d in enumerate(("SL", "LS"))}
        dev = next(ordered[SMALL].parameters()).device  # meta anchors (FLOPs only) get meta layers
        if is_hierarchical(self.stages):  # each SL layer as wide as its stage in the two anchors
            widths = [(self.shapes[p].stages[s].width, self.shapes[p + 1].stages[s].width)
                      for p in range(len(counts)) for s in swin_layer_stages(self.stages, p, self.dense)]
        else:
            widths = [(lo, hi) for (lo, hi), (n, _) in zip(zip(self.widths, self.widths[1:]), counts) for _ in range(n)]
        self.sl_layers = nn.ModuleList(StitchingLayer(lo, hi, lora_rank, lora_alpha, device=dev) for lo, hi in widths)
        self.ls_layers = nn.ModuleList(StitchingLayer(hi, lo, lora_rank, lora_alpha, device=dev)
                                       for (lo, hi), (_, n) in zip(zip(self.widths, self.widths[1:]), counts)
                                       for _ in range(n))
        self._by_id = {s.id: s for s in self.stitches}
        self.selected: Stitch = self.stitches[0]
        self.last_stitch: Stitch | None = None  # the stitch the latest train-mode call ran
        self.prefix_cache: PrefixCache | None = None  # set by sharing_prefixes
        self.configure_sampling()

    # ---- stitches -------------------------------------------------------------------------
    @classmethod
    def from_section(cls, section: "ModelSection", load_weights: bool = True, device: str | None = None,
                     overrides: dict[str, Any] | Callable[[type[Family]], dict[str, Any]] | None = None,
                     defaults: dict[str, Any] | None = None, dense: bool = False) -> "SNNetBackbone":
        """The backbone of a config's anchors (see :func:`anchor_configs`)."""
        return cls(anchor_configs(section, load_weights, device, overrides, defaults), version=section.version,
                   lora_rank=section.lora_rank, lora_alpha=section.lora_alpha, out_indices=section.out_indices,
                   dense=dense)

    @property
    def stitch_ids(self) -> list[int]:
        return [s.id for s in self.stitches]

    def stitch(self, stitch_id: int) -> Stitch:
        """The record of one stitch; an unknown id is an error naming the valid ones."""
        if is_integer(stitch_id) and stitch_id in self._by_id:
            return self._by_id[stitch_id]
        ids = self.stitch_ids
        missing = sorted(set(range(ids[0], ids[-1] + 1)) - set(ids))
        hole = f" except {', '.join(map(str, missing))}" if missing else ""
        raise SNNetError(f"unknown stitch id {stitch_id!r}: valid ids are {ids[0]}..{ids[-1]}{hole}")

    def select(self, stitch_id: int) -> "SNNetBackbone":
        """Run ``stitch_id`` in eval mode (train mode samples instead)."""
        self.selected = self.stitch(stitch_id)
        return self

    def describe(self, stitch_id: int) -> str:
        return self.stitch(stitch_id).describe()

    @property
    def img_size(self) -> tuple[int, int]:
        """The input size the anchors are built for."""
        return tuple(self.anchors[SMALL].patch_embed.img_size)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.anchors[SMALL].patch_embed.patch_size)

    def flops(self, stitch_id: int, img_size: tuple[int, int] | None = None, taps: bool = False) -> int:
        """FLOPs of one stitch at ``img_size`` (default: the anchors' input size), SPEC section 4: the route ending
        in its last anchor's norm and classifier (the anchors' shapes count the heads the classification model
        holds), or with ``taps`` the route of ``forward_intermediates`` (tap projections, no norm, no head)."""
        if taps:
            self._check_dense()
        return stitch_flops(self.stitch(stitch_id), self.shapes, img_size,
                            tuple(self.out_indices) if taps else None)

    def route_taps(self, stitch: Stitch) -> list[tuple[int, int]]:
        """(anchor, block) of each of the stitch's dense taps, in the order of ``out_indices``."""
        return route_taps(stitch, tuple(self.out_indices), *self.depths, stages=self.stages)

    def tap_layers(self, anchor: int, block: int) -> tuple[LayerRef, ...]:
        """The stitching layers that bring a tap of ``anchor``'s ``block`` to the largest anchor's width."""
        return tap_layers(anchor, block, *self.depths, stages=self.stages)

    @property
    def tap_widths(self) -> list[int]:
        """The channels of each dense tap: the largest anchor's width at its block."""
        last = self.shapes[-1]
        return [last.stages[stage_of(last, t)].width if last.stages else last.embed_dim for t in self.out_indices]

    def tap_grids(self, img_size: tuple[int, int] | None = None) -> list[tuple[int, int]]:
        """(rows, columns) of each dense tap's map for images of ``img_size`` (default: the anchors' input size)."""
        return [tap_grid(self.shapes[-1], t, img_size) for t in self.out_indices]

    def flops_table(self, img_size: tuple[int, int] | None = None, taps: bool = False) -> dict[int, int]:
        return {s.id: self.flops(s.id, img_size, taps) for s in self.stitches}

    def params(self, stitch_id: int, taps: bool = False) -> int:
        """Parameters a deployed stitch's route keeps: its blocks, embedding, final norm and merged stitching layers
        (SN-Net's stitched routes as its ``get_model_size`` counts them: no front class token or position
        embedding, no front Swin patch merging); the task model adds its heads. With ``taps``: the route of
        ``forward_intermediates``, every module it runs and no norm, pooling or head after its last block."""
        s = self.stitch(stitch_id)
        first, last = self.anchors[s.first_anchor], self.anchors[s.last_anchor]
        sn_net = self.config.version == "sn-net" and s.kind != "anchor" and not taps
        embedding = ("patch_embed", "norm_pre") if sn_net else ("patch_embed", "cls_token", "reg_token", "pos_embed",
                                                                "norm_pre")
        n = sum(_numel(first, p) for p in embedding)
        if not taps:
            n += sum(_numel(last, p) for p in ("norm", "attn_pool", "fc_norm", "head"))
        for k, seg in enumerate(s.segments):
            n += sum(_numel(self.block(seg.anchor, b)) for b in range(seg.first, seg.last + 1))
            if sn_net and k == 0:
                family, a = self.families[seg.anchor], self.anchors[seg.anchor]
                n -= sum(_numel(family.merging(a, b)) for b in range(seg.first, seg.last + 1))
        for ref in s.layers:
            layer = self.stitching_layer(ref)
            n += layer.in_features * layer.out_features + layer.out_features
        return n

    # ---- sampling -------------------------------------------------------------------------
    def configure_sampling(self, gap_gflops: float = DEFAULT_ROS_GAP_GFLOPS, k: float | None = None,
                           seed: int = 0, flops: dict[int, int] | None = None, anchor_share: float = 0.0) -> None:
        """ROS over ``flops`` (default: classification FLOPs), each anchor alone at least ``anchor_share`` of the
        steps; v1 and SN-Net sample uniformly, as SN-Net did."""
        anchors = [s.id for s in self.stitches if s.kind == "anchor"]
        try:
            if self.config.version != "v2":
                self.sampler = ROSSampler([self.stitch_ids], seed=seed, anchors=anchors, anchor_share=anchor_share)
            else:
                self.sampler = ROSSampler.from_flops(flops or self.flops_table(), gap_gflops, k, seed, anchors,
                                                     anchor_share)
        except ValueError as e:  # a share the anchors cannot have
            raise SNNetError(str(e)) from None

    def active_stitch(self) -> Stitch:
        """The stitch a call runs: the selected one in eval mode, a new ROS draw in train mode."""
        if not self.training:
            return self.selected
        self.last_stitch = self._by_id[self.sampler.sample()]
        return self.last_stitch

    # ---- the route runner -----------------------------------------------------------------
    def stitching_layer(self, ref: LayerRef) -> StitchingLayer:
        layers = self.sl_layers if ref.direction == "SL" else self.ls_layers
        return layers[self.layer_offsets[ref.direction][ref.pair] + ref.index]

    def block(self, anchor: int, index: int) -> nn.Module:
        """Block ``index`` of an anchor, numbered as routes number them (across a Swin's stages)."""
        return self.families[anchor].block(self.anchors[anchor], index)

    def embed(self, x: torch.Tensor, anchor: int) -> torch.Tensor:
        """Patch embedding, position embedding and prefix tokens of one anchor: (B, 3, H, W) -> (B, N, C)."""
        return self.families[anchor].embed(self.anchors[anchor], x)

    def block_contexts(self, images: torch.Tensor) -> "BlockContexts":
        """What each anchor's blocks need for ``images`` (their family's context), computed on first use."""
        def compute(a: int) -> Any:  # on first use: after the embedding has checked the images
            grid = tuple(self.anchors[SMALL].patch_embed.dynamic_feat_size(images.shape[-2:]))
            return self.families[a].context(self.families[a].context_source(self.anchors[a]), grid)

        return BlockContexts(compute)

    def run_route(self, x: torch.Tensor, stitch: Stitch,
                  taps: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Run a stitch from image to its last block: (final tokens (B, N, C_last), the tap tokens (B, N, C1) of
        the ``taps`` positions in ``out_indices``, in the order of ``out_indices``).

        Inside ``sharing_prefixes`` (eval mode), the route resumes from the deepest activation it shares
        with the routes run before it on the same input."""
        every = self.route_taps(stitch) if taps else []
        taps = tuple(range(len(every))[t] for t in taps)
        wanted = Counter(every[t] for t in taps)
        steps = route_steps(stitch)
        contexts = self.block_contexts(x)
        walk, start, h, feats = None, 0, x, []
        if self.prefix_cache is not None and not self.training:
            context = (taps, torch.is_autocast_enabled(x.device.type))
            walk, start, h, feats = self.prefix_cache.resume(x, steps, context)
        for k in range(start, len(steps)):
            step = steps[k]
            h = self.run_step(step, h, contexts)
            if step.kind == "block" and (step.part, step.index) in wanted:
                f = h  # a smaller anchor's tap reaches the largest width through SL layers up the chain
                for ref in self.tap_layers(step.part, step.index):
                    f = self.stitching_layer(ref)(f)
                feats.extend([f] * wanted[(step.part, step.index)])
            if walk is not None:
                self.prefix_cache.keep(walk, k, h, feats)
        return h, feats

    def run_step(self, step: Step, x: torch.Tensor, contexts: "BlockContexts") -> torch.Tensor:
        """One operation of a route: the embedding (of images), a block (given its anchor's context for the
        input, ``block_contexts``) or a stitching layer (of tokens)."""
        if step.kind == "embed":
            return self.embed(x, step.part)
        if step.kind == "block":
            a = step.part
            return self.families[a].run_block(self.block(a, step.index), x, contexts[a])
        return self.stitching_layer(LayerRef(step.part, step.index, step.pair))(x)

    @contextmanager
    def sharing_prefixes(self, stitch_ids: Sequence[int]) -> Iterator[PrefixCache]:
        """Within the block, eval-mode routes of ``stitch_ids`` share their common prefixes: call the stitches
        in :meth:`depth_first` order and each computes only what the ones before it did not."""
        self.prefix_cache = PrefixCache(self.stitch(i) for i in stitch_ids)
        try:
            yield self.prefix_cache
        finally:
            self.prefix_cache = None

    def depth_first(self, stitch_ids: Sequence[int]) -> list[int]:
        """``stitch_ids`` in depth-first order of their route tree."""
        return [s.id for s in depth_first(self.stitch(i) for i in stitch_ids)]

    def final_norm(self, tokens: torch.Tensor, stitch: Stitch) -> torch.Tensor:
        """The route's output tokens through its last anchor's final norm (SN-Net's stitched routes have none)."""
        return self.anchors[stitch.last_anchor].norm(tokens) if stitch.final_norm else tokens

    def pool(self, x: torch.Tensor, stitch: Stitch) -> torch.Tensor:
        """timm's pre-logits of the stitch's last anchor (its pooling and ``fc_norm``): (B, N, C) -> (B, C)."""
        return self.anchors[stitch.last_anchor].forward_head(x, pre_logits=True)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The final tokens of the selected (eval) or sampled (train) stitch: (B, 3, H, W) -> (B, N, C_last)."""
        stitch = self.active_stitch()
        return self.final_norm(self.run_route(x, stitch)[0], stitch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)

    def forward_intermediates(self, x: torch.Tensor, return_prefix_tokens: bool = False,
                              taps: Sequence[int] | None = None) -> list:
        """Dense taps of the active stitch (SPEC section 6): one (B, C_large, H/p, W/p) map per out index, or per
        position of ``taps`` (e.g. ``(-1,)``: the last only; the others' blocks still run, their projections not).

        With ``return_prefix_tokens``, each item is ``(map, prefix_tokens (B, P, C_large))``.
        """
        self._check_dense()
        stitch = self.active_stitch()
        _, feats = self.run_route(x, stitch, range(len(self.out_indices)) if taps is None else taps)
        return tap_maps(feats, self.anchors[SMALL], x, return_prefix_tokens)

    # ---- weights --------------------------------------------------------------------------
    @torch.no_grad()
    def merge_lora(self) -> "SNNetBackbone":
        """Fold every low-rank update into its layer's weight (identical outputs, plain linears)."""
        for layer in [*self.sl_layers, *self.ls_layers]:
            layer.merge_()
        self.config.lora_rank = 0
        return self

    def _check_dense(self) -> None:
        if is_hierarchical(self.stages):
            if not self.dense:
                raise SNNetError("this Swin network was built to classify: its dense taps need the tap layers of a "
                                 "dense backbone (SNNetBackbone(..., dense=True), as the dense tasks build it)")
        elif self.config.version == "sn-net":
            raise SNNetError("SN-Net's networks of plain ViTs (version 'sn-net') classify only: dense tasks over "
                             "plain ViTs take version v2 or v1 (over Swin, 'sn-net')")

    def _check_out_indices(self, out_indices: Sequence[int] | None) -> list[int]:
        d1 = self.depths[-1]  # the largest anchor's
        ends = stage_ends(self.stages[-1])
        if out_indices is None:  # hierarchical anchors: every stage's end
            return ends if is_hierarchical(self.stages) else _default_out_indices(d1)
        idx = [i + d1 if i < 0 else i for i in out_indices]
        if not idx or any(not 0 <= i < d1 for i in idx) or len(set(idx)) != len(idx):
            raise SNNetError(f"out_indices {list(out_indices)} must be distinct large-anchor blocks in 0..{d1 - 1}")
        if self.dense and is_hierarchical(self.stages) and not set(idx) <= set(ends):
            raise SNNetError(f"out_indices {list(out_indices)}: a Swin backbone taps the ends of its stages, blocks "
                             f"{ends} of the largest anchor")
        return sorted(idx)


class _Backbone:
    """A stitch verb or property of the backbone, read through the task model: one mechanism, no forwarding code
    per verb (what differs for a task, such as FLOPs with its heads, the task model defines itself)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        verb = getattr(SNNetBackbone, name, None)  # None for an instance attribute such as stitches
        self.__doc__ = verb.__doc__ if verb is not None else None

    def __get__(self, model: "TaskModel | None", owner: type | None = None):
        return self if model is None else getattr(model.backbone, self.name)


class TaskModel(Pretrained, ChoosesStitches, nn.Module):
    """A task's model: the stitched ``backbone`` and the task's heads (classification: ``snnet.SNNet``; the dense
    tasks: ``snnet.DenseModel``). The stitch verbs are the backbone's; a task model adds what its heads change:
    FLOPs, parameters, the deployed network of one stitch."""

    task: ClassVar[str]

    def __init__(self, backbone: SNNetBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    # ---- stitches (the backbone's) ---------------------------------------------------------------
    stitches = _Backbone()
    stitch_ids = _Backbone()
    selected = _Backbone()
    sampler = _Backbone()
    last_stitch = _Backbone()
    stitch = _Backbone()
    describe = _Backbone()
    img_size = _Backbone()
    depths = _Backbone()
    widths = _Backbone()
    shapes = _Backbone()
    out_indices = _Backbone()
    sharing_prefixes = _Backbone()
    depth_first = _Backbone()
    forward_features = _Backbone()
    forward_intermediates = _Backbone()

    def select(self, stitch_id: int) -> "TaskModel":
        """Run ``stitch_id`` in eval mode (train mode samples instead)."""
        self.backbone.select(stitch_id)
        return self

    # ---- what the heads add (subclasses) ------------------------------------------------------
    def flops(self, stitch_id: int, img_size: tuple[int, int] | None = None) -> int:
        raise NotImplementedError

    def params(self, stitch_id: int) -> int:
        """Parameters a deployed stitch keeps, its heads included."""
        raise NotImplementedError

    def deployable(self, stitch_id: int) -> nn.Module:
        """The stitch as a standalone network (``StitchNet`` under the heads a deployed stitch runs)."""
        raise NotImplementedError

    def flops_table(self, img_size: tuple[int, int] | None = None) -> dict[int, int]:
        return {s.id: self.flops(s.id, img_size) for s in self.stitches}

    def configure_sampling(self, gap_gflops: float = DEFAULT_ROS_GAP_GFLOPS, k: float | None = None, seed: int = 0,
                           anchor_share: float = 0.0) -> None:
        """ROS over this task's FLOPs (backbone and heads), as the reference groups its stitches."""
        self.backbone.configure_sampling(gap_gflops, k, seed, flops=self.flops_table(), anchor_share=anchor_share)

    @torch.no_grad()
    def merge_lora(self) -> "TaskModel":
        """Fold every low-rank update into its layer's weight (identical outputs, plain linears)."""
        self.backbone.merge_lora()
        return self


def _copy_with(module: nn.Module, **replace: Any) -> nn.Module:
    """A deep copy of ``module`` with some attributes replaced (the originals are never copied)."""
    saved = {name: getattr(module, name) for name in replace if hasattr(module, name)}
    try:
        for name, value in replace.items():
            setattr(module, name, value)
        return copy.deepcopy(module)
    finally:
        for name in replace:
            if name in saved:
                setattr(module, name, saved[name])
            else:
                delattr(module, name)


def _linear(layer: nn.Module) -> nn.Linear:
    """A stitching layer as a plain linear layer, its low-rank update merged."""
    with torch.no_grad():
        weight = layer.effective_weight().detach().clone()
        out = nn.Linear(layer.in_features, layer.out_features, device=weight.device, dtype=weight.dtype)
        out.weight.copy_(weight)
        out.bias.copy_(layer.bias)
    return out


class StitchNet(nn.Module):
    """One stitch of the backbone as a plain network: ``forward`` gives its logits under ``head`` (``dense=False``:
    the last anchor's norm, pooling and the task model's classifier are kept) or ``forward_intermediates`` its dense
    taps (``dense=True``: the tap projections are kept), equal to the model's for that stitch."""

    def __init__(self, net: "SNNetBackbone", stitch_id: int, dense: bool = False,
                 head: nn.Module | None = None) -> None:
        super().__init__()
        s = net.stitch(stitch_id)
        self.stitch_id = s.id
        self.final_norm = s.final_norm  # SN-Net's stitched routes have none (SPEC 13)
        first, last = net.anchors[s.first_anchor], net.anchors[s.last_anchor]
        # the first anchor's embedding alone, and the last anchor's norm and head alone
        self.embed = _copy_with(first, **{net.families[s.first_anchor].block_container: nn.Sequential()},
                                norm=nn.Identity(), fc_norm=nn.Identity(), head=nn.Identity(), attn_pool=None)
        self.tail = None if dense else _copy_with(
            with_classifier(last, head if head is not None else nn.Identity()),
            **{net.families[s.last_anchor].block_container: nn.Sequential()}, patch_embed=nn.Identity(),
            pos_embed=None, cls_token=None, reg_token=None, norm_pre=nn.Identity())
        steps = route_steps(s)[1:]
        self.steps = nn.ModuleList(
            copy.deepcopy(net.block(st.part, st.index)) if st.kind == "block"
            else _linear(net.stitching_layer(LayerRef(st.part, st.index, st.pair))) for st in steps)
        # the anchor of each block step (-1: a stitching layer), the families, and what the blocks' contexts are
        # computed from (rotary embeddings: buffers, no weights)
        self.step_anchors = [st.part if st.kind == "block" else -1 for st in steps]
        self.families = net.families
        used = sorted(set(self.step_anchors) - {-1})
        sources = {a: net.families[a].context_source(net.anchors[a]) for a in used}
        self.context_sources = nn.ModuleDict({str(a): copy.deepcopy(m) for a, m in sources.items() if m is not None})
        self.fixed_contexts: dict[int, Any] | None = None  # fix_position's: each anchor's for one input size
        self.first_anchor = s.first_anchor
        # dense taps: step -> (the positions in out_indices it gives, the projections that bring it to the largest
        # width, in order: none for the largest anchor's taps)
        every = net.route_taps(s) if dense else []
        self.taps: dict[int, tuple[list[int], list[int]]] = {}
        projections = []
        for k, st in enumerate(steps):
            positions = [i for i, t in enumerate(every) if t == (st.part, st.index)]
            if st.kind == "block" and positions:
                refs = net.tap_layers(st.part, st.index)
                self.taps[k] = (positions, list(range(len(projections), len(projections) + len(refs))))
                projections += [_linear(net.stitching_layer(ref)) for ref in refs]
        self.num_taps = len(every)
        self.projections = nn.ModuleList(projections)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.embed.patch_embed.patch_size)

    @torch.no_grad()
    def fix_position(self, img_size: tuple[int, int]) -> "StitchNet":
        """In place, for inputs of ``img_size`` only: the first anchor's position table resized once to that grid,
        every anchor's block context (rotary embeddings) and what its blocks derive from their input's size
        (``Family.fix_size``: Swin's attention masks) computed once, so that an exporter writes them as
        constants rather than operations run on every call (TorchScript's ONNX exporter cannot write timm's
        antialiased resize at all, nor shape EVA02's rotary embeddings of a traced grid)."""
        if len(img_size) != 2 or not all(is_integer(v) and v > 0 for v in img_size):
            raise SNNetError(f"img_size must be (height, width) in positive pixels, got {tuple(img_size)}")
        e = self.embed
        grid = tuple(e.patch_embed.dynamic_feat_size(tuple(img_size)))
        self.fixed_contexts = {a: self._context(a, grid) for a in set(self.step_anchors) - {-1}}
        if getattr(e, "pos_embed", None) is not None and getattr(e, "dynamic_img_size", False):
            table = self.families[self.first_anchor].position_table(e, grid)
            e.pos_embed = nn.Parameter(table.detach().clone(), requires_grad=False)
            e.patch_embed.grid_size = grid
        # one call at that size, each block's modules seeing their input first (the family's fix_size)
        hooks = [m.register_forward_pre_hook(lambda m, args, family=self.families[a]: family.fix_size(m, args[0]))
                 for step, a in zip(self.steps, self.step_anchors) if a >= 0 for m in step.modules()]
        try:
            self.forward_tokens(e.patch_embed.proj.weight.new_zeros(1, e.patch_embed.proj.in_channels, *img_size))
        finally:
            for h in hooks:
                h.remove()
        return self

    def _context(self, anchor: int, grid: tuple[int, int]) -> Any:
        """What the blocks of ``anchor`` need besides their tokens on ``grid`` (its rotary embedding, or None)."""
        source = self.context_sources[str(anchor)] if str(anchor) in self.context_sources else None
        return self.families[anchor].context(source, grid)

    def forward_tokens(self, x: torch.Tensor, taps: Sequence[int] = ()) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(final tokens, the tap tokens of the ``taps`` positions in out_indices): the operations of
        ``SNNetBackbone.run_route``."""
        wanted = {range(self.num_taps)[t] for t in taps}
        images, x = x, self.families[self.first_anchor].embed(self.embed, x)  # the embedding checks the images
        grid = tuple(self.embed.patch_embed.dynamic_feat_size(images.shape[-2:]))
        contexts = self.fixed_contexts or BlockContexts(lambda a: self._context(a, grid))
        feats = []
        for k, step in enumerate(self.steps):
            a = self.step_anchors[k]
            x = step(x) if a < 0 else self.families[a].run_block(step, x, contexts[a])
            positions, projections = self.taps.get(k, ((), ()))
            n = sum(i in wanted for i in positions)
            if n:
                f = x
                for p in projections:
                    f = self.projections[p](f)
                feats.extend([f] * n)
        return x, feats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits: (B, 3, H, W) -> (B, num_classes)."""
        tokens, _ = self.forward_tokens(x)
        return self.tail.forward_head(self.tail.norm(tokens) if self.final_norm else tokens)

    def forward_intermediates(self, x: torch.Tensor, return_prefix_tokens: bool = False,
                              taps: Sequence[int] | None = None) -> list:
        """Dense taps, as ``SNNetBackbone.forward_intermediates``."""
        _, feats = self.forward_tokens(x, range(self.num_taps) if taps is None else taps)
        return tap_maps(feats, self.embed, x, return_prefix_tokens)


def tap_maps(feats: list[torch.Tensor], a: nn.Module, x: torch.Tensor, return_prefix_tokens: bool = False) -> list:
    """Tap tokens (B, N, C) as maps (B, C, H/p, W/p) on the token grid of anchor ``a`` for images ``x`` (tokens
    already on their grid, (B, h, w, C) as Swin's stages give them, are only permuted); with
    ``return_prefix_tokens``, ``(map, prefix tokens (B, P, C))`` pairs."""
    on_grid = bool(feats) and feats[0].ndim == 4
    prefix = 0 if on_grid else a.num_prefix_tokens
    if on_grid:
        maps = [f.permute(0, 3, 1, 2) for f in feats]
    else:
        gh, gw = a.patch_embed.dynamic_feat_size(x.shape[-2:])
        maps = [f[:, prefix:].reshape(f.shape[0], gh, gw, f.shape[-1]).permute(0, 3, 1, 2) for f in feats]
    if return_prefix_tokens:
        return [(m, f.flatten(1, -2)[:, :prefix]) for m, f in zip(maps, feats)]
    return maps


def _numel(module: nn.Module | None, attr: str | None = None) -> int:
    obj = getattr(module, attr, None) if attr else module
    if obj is None:
        return 0
    if isinstance(obj, torch.Tensor):
        return obj.numel()
    return sum(p.numel() for p in obj.parameters())
