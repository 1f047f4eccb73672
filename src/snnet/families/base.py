"""The anchor-family interface: what the route runner, FLOPs, least squares and saving ask of one kind of timm ViT.

A family is a ``Family`` subclass registered with ``register_family``, as a task is a ``Task``. It holds no state:
every answer is read off the anchor module it is given. What it defines:

- which modules it takes (``takes``) and the variants it cannot stitch (``check``: one line each);
- the embedding (``position``: position embeddings and prefix tokens on the patch tokens), the prefix layout
  neighbours must share (``prefix_layout``: class tokens, registers);
- its blocks as routes number them (``block``, ``stage_depths``: one stage for a plain ViT; Swin's run across its
  stages), the attribute holding them (``block_container``) and where its classifier sits (``classifier_path``);
- how a block runs (``context``: what every block of one anchor needs for an input's token grid, computed once per
  anchor and forward from the anchor's ``context_source`` module, e.g. rotary embeddings; ``run_block``);
- FLOPs (``shape``: the ``AnchorShape`` the pure FLOPs functions read), the kwargs that rebuild the architecture
  (``rebuild_kwargs``) and the key filter of its foreign checkpoints (``filter_state``);
- what an export at one input size computes once (``fix_size``: Swin's attention masks).

The final norm (``norm``), pooling and classifier (``forward_head``) and the dense taps (prefix tokens first, then
the patch grid) are timm's, the same attributes in every family.
"""
from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

from ..errors import SNNetError
from ..flops import AnchorShape


class Family:
    """One kind of timm ViT that snnet stitches (see the module's docstring)."""

    name: ClassVar[str]
    model_class: ClassVar[type[nn.Module]]
    examples: ClassVar[str]  # timm names, for error messages and docs
    # timm kwargs that build an anchor as a backbone of dense heads: no classifier (and, where timm can leave it
    # out, no final norm: the taps are block outputs)
    backbone_kwargs: ClassVar[dict[str, Any]] = {"num_classes": 0}
    block_container: ClassVar[str] = "blocks"  # emptied where a single stitch keeps an anchor's embedding or head
    classifier_path: ClassVar[str] = "head"  # the module a task model takes out of the anchor as its classifier

    @classmethod
    def takes(cls, a: nn.Module) -> bool:
        """Whether ``a`` is of this family."""
        return isinstance(a, cls.model_class)

    @classmethod
    def check(cls, a: nn.Module) -> None:
        """An SNNetError naming what in ``a`` the family cannot stitch; nothing when it can."""

    @classmethod
    def prefix_layout(cls, a: nn.Module) -> tuple[int, int]:
        """(class tokens, register tokens) before the patch tokens; neighbouring anchors must agree."""
        classes = 0 if getattr(a, "cls_token", None) is None else 1
        return classes, a.num_prefix_tokens - classes

    @classmethod
    def embed(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, N, C): the checks, patch embedding, ``position``, the pre-norm."""
        return a.norm_pre(cls.position(a, a.patch_embed(cls.check_images(a, x))))

    @classmethod
    def fixed_size(cls, a: nn.Module) -> bool:
        """Whether the anchor takes only the image size it was built for."""
        return not a.dynamic_img_size

    @classmethod
    def check_images(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """One line for input the anchor cannot embed; the images in the weights' precision otherwise."""
        if not isinstance(x, torch.Tensor):
            raise SNNetError(f"expected an image tensor (B, {a.patch_embed.proj.in_channels}, H, W), "
                             f"got {type(x).__name__}")
        channels = a.patch_embed.proj.in_channels
        if x.ndim != 4 or x.shape[1] != channels:
            raise SNNetError(f"expected images of shape (B, {channels}, H, W), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise SNNetError(f"expected float images (normalised as the anchors were trained), got {x.dtype}")
        x = x.to(a.patch_embed.proj.weight.dtype)  # float16/bfloat16/float64 in, the weights' precision out
        if cls.fixed_size(a) and tuple(x.shape[-2:]) != tuple(a.patch_embed.img_size):
            h, w = a.patch_embed.img_size
            raise SNNetError(f"images are {x.shape[-2]}x{x.shape[-1]}, the anchors take {h}x{w} "
                             f"(build them with dynamic_img_size=True for other sizes)")
        ph, pw = a.patch_embed.patch_size
        if x.shape[-2] % ph or x.shape[-1] % pw:
            raise SNNetError(f"images are {x.shape[-2]}x{x.shape[-1]}, not a multiple of the anchors' "
                             f"{ph}x{pw} patches")
        return x

    @classmethod
    def position(cls, a: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens ((B, H, W, C) for a dynamic size, else (B, N, C)) -> tokens with position embeddings and
        the prefix tokens, (B, prefix + N, C)."""
        raise NotImplementedError

    @classmethod
    def position_table(cls, a: nn.Module, grid: tuple[int, int]) -> torch.Tensor | None:
        """``a.pos_embed`` for a token grid: the table itself on the anchor's own grid, else resized as timm
        resizes it (bicubic, antialiased). timm resizes even on its own grid while exporting: an antialiased resize
        that TorchScript's ONNX exporter cannot write."""
        pos = getattr(a, "pos_embed", None)
        native = tuple(a.patch_embed.grid_size)
        if pos is None or tuple(grid) == native:
            return pos
        return resample_abs_pos_embed(pos, list(grid), list(native),
                                      num_prefix_tokens=0 if a.no_embed_class else a.num_prefix_tokens)

    @classmethod
    def stage_depths(cls, a: nn.Module) -> tuple[int, ...]:
        """Blocks per stage (a plain ViT: one stage)."""
        return (len(a.blocks),)

    @classmethod
    def block(cls, a: nn.Module, index: int) -> nn.Module:
        """Block ``index`` as a route runs it."""
        return a.blocks[index]

    @classmethod
    def merging(cls, a: nn.Module, index: int) -> nn.Module | None:
        """What runs before block ``index`` as part of it (Swin: the patch merging that starts a stage)."""
        return None

    @classmethod
    def width(cls, a: nn.Module) -> int:
        """The width of the anchor's last block."""
        return a.embed_dim

    @classmethod
    def context_source(cls, a: nn.Module) -> nn.Module | None:
        """The submodule of ``a`` its blocks' context is computed from (None: the blocks need none). A single
        stitch exported alone keeps it beside the blocks."""
        return None

    @classmethod
    def context(cls, source: nn.Module | None, grid: tuple[int, int]) -> Any:
        """What every block of an anchor needs for inputs on a ``grid`` token grid, from its ``context_source``."""
        return None

    @classmethod
    def run_block(cls, block: nn.Module, x: torch.Tensor, context: Any) -> torch.Tensor:
        """One block of an anchor of this family on tokens ``x``, given its anchor's ``context``."""
        return block(x)

    @classmethod
    def fix_size(cls, module: nn.Module, x: torch.Tensor) -> None:
        """Before an export at one input size, called as each submodule of the family's blocks is about to run on
        ``x`` at that size: what the module computes from its input's size on every call becomes a constant (Swin:
        a block's attention mask). Nothing by default."""

    @classmethod
    def shape(cls, a: nn.Module) -> AnchorShape:
        """The numbers the anchor's FLOPs are computed from (``snnet.flops``), read off its modules."""
        raise NotImplementedError

    @classmethod
    def rebuild_kwargs(cls, a: nn.Module) -> dict[str, Any]:
        """``timm.create_model`` kwargs that rebuild ``a``'s architecture under its timm name (weights apart)."""
        raise NotImplementedError

    @classmethod
    def filter_state(cls, state: dict[str, torch.Tensor], a: nn.Module) -> dict[str, torch.Tensor]:
        """A foreign checkpoint's state dict in ``a``'s names: timm's filter for the family."""
        return state


FAMILIES: list[type[Family]] = []


def register_family(cls: type[Family]) -> type[Family]:
    """Class decorator: anchors ``cls.takes`` are stitched as that family; a name taken by another class is
    refused."""
    held = next((f for f in FAMILIES if f.name == cls.name), None)
    if held is not None and held is not cls:
        raise SNNetError(f"anchor family {cls.name!r} is registered twice: {held.__qualname__} and "
                         f"{cls.__qualname__}")
    if held is None:
        FAMILIES.append(cls)
    return cls


def family_of(a: nn.Module) -> type[Family]:
    """The family that stitches ``a``, after its ``check``; one line naming the families otherwise."""
    family = next((f for f in FAMILIES if f.takes(a)), None)
    if family is None:
        known = "; ".join(f"{f.name} ({f.examples})" for f in FAMILIES)
        raise SNNetError(f"anchor {name_of(a)} is a {type(a).__name__} that no anchor family stitches: {known}")
    family.check(a)
    return family


def name_of(a: nn.Module) -> str:
    """The timm architecture name of an anchor module, else its class name."""
    cfg = getattr(a, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or type(a).__name__


def classifier_of(a: nn.Module) -> nn.Module:
    """The anchor's classifier (its family's ``classifier_path``)."""
    return a.get_submodule(family_of(a).classifier_path)


def with_classifier(a: nn.Module, classifier: nn.Module) -> nn.Module:
    """A shallow copy of ``a`` whose classifier is ``classifier``, every other submodule and parameter shared (the
    module passed in keeps its own)."""
    def swap(module: nn.Module, path: list[str]) -> nn.Module:
        bare = copy.copy(module)
        inner = classifier if len(path) == 1 else swap(module.get_submodule(path[0]), path[1:])
        bare._modules = {**module._modules, path[0]: inner}
        return bare

    return swap(a, family_of(a).classifier_path.split("."))


def linear_macs(module: nn.Module) -> int:
    """Multiply-adds per token of the linear layers in ``module``."""
    return sum(m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def norm_elements(module: nn.Module, multiplier: int = 1) -> int:
    """Elements a norm layer normalises per token (0 for anything else)."""
    shape = getattr(module, "normalized_shape", None)
    if shape is None:
        return 0
    n = 1
    for s in shape:
        n *= s
    return n * multiplier


def block_costs(a: nn.Module) -> tuple[int, int, int]:
    """Per token and block, read off the modules: multiply-adds of the linear layers, elements the norms normalise
    (q/k norms per head), and the width of the attention products (heads x head dim). One line when the blocks
    differ or have no attention with ``num_heads`` and ``head_dim``."""
    costs = set()
    for block in a.blocks:
        attn = getattr(block, "attn", None)
        if attn is None or not hasattr(attn, "num_heads") or not hasattr(attn, "head_dim"):
            raise SNNetError(f"anchor {name_of(a)} uses {type(block).__name__} blocks without a timm attention "
                             f"(num_heads, head_dim)")
        linear = linear_macs(block)
        norms = sum(norm_elements(m, attn.num_heads if name.endswith(("q_norm", "k_norm")) else 1)
                    for name, m in block.named_modules())
        costs.add((linear, norms, attn.num_heads * attn.head_dim))
    if len(costs) != 1:
        raise SNNetError(f"anchor {name_of(a)} has blocks of different sizes")
    return costs.pop()


def with_position(cls: type[Family], a: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm's ``_pos_embed`` of a dynamic-size ViT or Eva over patch tokens (B, H, W, C), its table from
    ``cls.position_table``: the class and register tokens before the patches, the table added to the patches alone
    (``no_embed_class``, DeiT-3) or to every token, then ``pos_drop``."""
    b, h, w, c = x.shape
    table = cls.position_table(a, (h, w))
    x = x.reshape(b, h * w, c)
    prefix = [t.expand(b, -1, -1) for t in (a.cls_token, a.reg_token) if t is not None]
    if table is not None and a.no_embed_class:
        x = x + table
    x = torch.cat([*prefix, x], dim=1)
    if table is not None and not a.no_embed_class:
        x = x + table
    return a.pos_drop(x)


def common_shape(a: nn.Module, **extra: Any) -> AnchorShape:
    """The ``AnchorShape`` fields every family reads the same way, plus the family's ``extra`` ones."""
    linear, norms, attn_dim = block_costs(a)
    pe = a.patch_embed
    head = getattr(a, "head", None)
    fields = dict(
        embed_dim=a.embed_dim, depth=len(a.blocks), patch_size=tuple(pe.patch_size), img_size=tuple(pe.img_size),
        in_chans=pe.proj.in_channels, num_prefix_tokens=a.num_prefix_tokens,
        num_classes=head.out_features if isinstance(head, nn.Linear) else 0,
        block_linear_macs=linear, block_norm_elements=norms, attn_dim=attn_dim,
        embed_norm_elements=norm_elements(getattr(pe, "norm", nn.Identity())),
        pre_norm=not isinstance(a.norm_pre, nn.Identity), final_norm=not isinstance(a.norm, nn.Identity),
        fc_norm=not isinstance(getattr(a, "fc_norm", None) or nn.Identity(), nn.Identity),
    )
    return AnchorShape(**{**fields, **extra})
