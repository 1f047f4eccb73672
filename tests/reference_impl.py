"""An independent, functional SN-Netv2 forward written from the released checkpoint format (SPEC 2, 3, 7).

It reads official key names (``gamma_1``, ``stitch_layers.{f}.{k}.transform``) and computes attention
the way the reference code does (scaled q @ k^T, softmax, @ v), sharing no code with snnet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


DEIT_NAMES = {"norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
MMSEG_NAMES = {"norm1": "ln1", "norm2": "ln2", "fc1": "ffn.layers.0.0", "fc2": "ffn.layers.1"}


def _vit_block(sd, p, x, heads, names=DEIT_NAMES, bias=0.0):
    B, N, C = x.shape
    n = {k: p + v for k, v in names.items()}
    h = F.layer_norm(x, (C,), sd[n["norm1"] + ".weight"], sd[n["norm1"] + ".bias"], eps=1e-6)
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1) + bias).softmax(dim=-1)
    h = F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    x = x + sd.get(p + "gamma_1", 1.0) * h  # DeiT (SN-Net's anchors) has no layer scale
    h = F.layer_norm(x, (C,), sd[n["norm2"] + ".weight"], sd[n["norm2"] + ".bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, sd[n["fc1"] + ".weight"], sd[n["fc1"] + ".bias"])),
                 sd[n["fc2"] + ".weight"], sd[n["fc2"] + ".bias"])
    return x + sd.get(p + "gamma_2", 1.0) * h


def _embed(sd, a, x):
    w = sd[f"anchors.{a}.patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd[f"anchors.{a}.patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    x = x + sd[f"anchors.{a}.pos_embed"]
    return torch.cat([sd[f"anchors.{a}.cls_token"].expand(x.shape[0], -1, -1), x], dim=1)


def _stitch(sd, f, k, x):
    p = f"stitch_layers.{f}.{k}.transform."
    w = sd[p + "weight"]
    if p + "lora_A" in sd:
        w = w + sd[p + "lora_B"] @ sd[p + "lora_A"] / sd[p + "lora_A"].shape[0]
    return F.linear(x, w, sd[p + "bias"])


def reference_configs(d0, d1):
    """(comb, [(front, resume), ...], [layer ids]) per configuration id, as the reference builds them."""
    r = d1 // d0
    m = [j * d0 // d1 for j in range(d1)]
    sl = [((i, (i + 1) * r), i) for i in range(d0)]
    ls = [((j, m[j] + 1), j // r) for j in range(d1 - 1) if d0 == d1 or j % 2 == 1]
    cfgs = [([0], [], []), ([1], [], [])]
    cfgs += [([0, 1], [c], [k]) for c, k in sl] + [([1, 0], [c], [k]) for c, k in ls]
    cfgs += [([1, 0, 1], [a, b], [ka, kb]) for a, ka in ls for b, kb in sl if kb != d0 - 1 and b[0] >= a[1]]
    cfgs += [([0, 1, 0], [a, b], [ka, kb]) for a, ka in sl for b, kb in ls if b[0] >= a[1]]
    return cfgs


def reference_logits(sd, cfg_id, x, depths, heads):
    comb, cuts, layer_ids = reference_configs(*depths)[cfg_id]
    h = _embed(sd, comb[0], x)
    start = 0
    for step, a in enumerate(comb):
        stop = cuts[step][0] + 1 if step < len(cuts) else depths[a]
        for i in range(start, stop):
            h = _vit_block(sd, f"anchors.{a}.blocks.{i}.", h, heads[a])
        if step < len(cuts):
            h = _stitch(sd, a, layer_ids[step], h)  # stitch_layers.0 = from small, .1 = from large
            start = cuts[step][1]
    a = comb[-1]
    C = h.shape[-1]
    h = F.layer_norm(h, (C,), sd[f"anchors.{a}.norm.weight"], sd[f"anchors.{a}.norm.bias"], eps=1e-6)
    return F.linear(h[:, 0], sd[f"anchors.{a}.head.weight"], sd[f"anchors.{a}.head.bias"])


# ---- SN-Net (CVPR 2023, SPEC section 13): DeiT anchors of equal depth, neighbours one way ----------------------
def sn_net_configs(depth, num_anchors=3):
    """(front, end, j, k, layer) per stitched id after the anchors, as SPEC 13 lists SN-Net's positions."""
    positions = [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    for i in range(1, depth - 1):
        positions += [(i, i + 1, i), (i + 1, i, i), (i + 1, i + 1, i)]
    return [(p, p + 1, j, k, l) for p in range(num_anchors - 1) for j, k, l in positions]


def sn_net_logits(sd, cfg_id, x, depth, heads, num_anchors=3):
    """Logits of one id of an SN-Net checkpoint's state dict: an anchor's full forward, or front blocks 0..j,
    ``stitch_layers.{front}.{layer}``, end blocks k.. and the end head on the class token without the final norm."""
    def embed(a):
        w = sd[f"anchors.{a}.patch_embed.proj.weight"]
        h = F.conv2d(x, w, sd[f"anchors.{a}.patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
        h = torch.cat([sd[f"anchors.{a}.cls_token"].expand(x.shape[0], -1, -1), h], dim=1)
        return h + sd[f"anchors.{a}.pos_embed"]  # DeiT: the position embedding has a class-token slot

    def blocks(a, h, first, last):
        for i in range(first, last):
            h = _vit_block(sd, f"anchors.{a}.blocks.{i}.", h, heads[a])
        return h

    def head(a, h):
        return F.linear(h[:, 0], sd[f"anchors.{a}.head.weight"], sd[f"anchors.{a}.head.bias"])

    if cfg_id < num_anchors:
        h = blocks(cfg_id, embed(cfg_id), 0, depth)
        C = h.shape[-1]
        return head(cfg_id, F.layer_norm(h, (C,), sd[f"anchors.{cfg_id}.norm.weight"],
                                         sd[f"anchors.{cfg_id}.norm.bias"], eps=1e-6))
    front, end, j, k, layer = sn_net_configs(depth, num_anchors)[cfg_id - num_anchors]
    h = blocks(front, embed(front), 0, j + 1)
    h = F.linear(h, sd[f"stitch_layers.{front}.{layer}.transform.weight"],
                 sd[f"stitch_layers.{front}.{layer}.transform.bias"])
    return head(end, blocks(end, h, k, depth))


# ---- the reference's segmentation model (SPEC section 10), from mmsegmentation key names -------------------
def _rel_pos_index(gh, gw):
    """BEiT's index, written out: patch (y1, x1) to (y2, x2) -> (y1-y2+gh-1)(2gw-1) + (x1-x2+gw-1)."""
    rows = (2 * gh - 1) * (2 * gw - 1)
    n = gh * gw + 1
    index = torch.empty(n, n, dtype=torch.long)
    for i in range(gh * gw):
        for j in range(gh * gw):
            y1, x1, y2, x2 = i // gw, i % gw, j // gw, j % gw
            index[i + 1, j + 1] = (y1 - y2 + gh - 1) * (2 * gw - 1) + (x1 - x2 + gw - 1)
    index[0, :] = rows  # class-token query row
    index[:, 0] = rows + 1  # class-token key column
    index[0, 0] = rows + 2
    return index


def _mmseg_block(sd, p, x, heads, grid):
    """A block of the reference's segmentation anchors: BEiT's relative position bias in the attention."""
    N = x.shape[1]
    table = sd[p + "attn.relative_position_bias_table"]
    bias = table[_rel_pos_index(*grid).reshape(-1)].reshape(N, N, heads).permute(2, 0, 1)
    return _vit_block(sd, p, x, heads, MMSEG_NAMES, bias)


def _setr_head(sd, p, x, num_convs):
    C = x.shape[1]
    x = F.layer_norm(x.permute(0, 2, 3, 1), (C,), sd[p + "norm.weight"], sd[p + "norm.bias"], eps=1e-6).permute(0, 3, 1, 2)
    for k in range(num_convs):
        q = f"{p}up_convs.{k}.0."
        x = F.conv2d(x, sd[q + "conv.weight"])
        x = F.batch_norm(x, sd[q + "bn.running_mean"], sd[q + "bn.running_var"], sd[q + "bn.weight"], sd[q + "bn.bias"],
                         training=False, eps=1e-5)
        x = F.interpolate(F.relu(x), scale_factor=4, mode="bilinear", align_corners=False)
    return F.conv2d(x, sd[p + "conv_seg.weight"], sd[p + "conv_seg.bias"])


def reference_seg_logits(sd, cfg_id, x, depths, heads, large_out=(9, 14, 19, 23)):
    """The decode head's logits (resized to the input) of configuration ``cfg_id``: routes as the reference
    runs them, taps of each segment's anchor inside its range, small-anchor taps through SL layer [index]."""
    sd = {k.removeprefix("backbone."): v for k, v in sd.items()}
    d0, d1 = depths
    small_out = [j * d0 // d1 for j in range(d1) if j in large_out]  # nearest interpolation of block ids
    outs_of = {0: small_out, 1: list(large_out)}
    comb, cuts, layer_ids = reference_configs(*depths)[cfg_id]
    grid = (x.shape[-2] // sd["anchors.0.patch_embed.projection.weight"].shape[-1],
            x.shape[-1] // sd["anchors.0.patch_embed.projection.weight"].shape[-1])
    a0 = comb[0]
    w = sd[f"anchors.{a0}.patch_embed.projection.weight"]
    h = F.conv2d(x, w, sd[f"anchors.{a0}.patch_embed.projection.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    h = h + sd[f"anchors.{a0}.pos_embed"]
    h = torch.cat([sd[f"anchors.{a0}.cls_token"].expand(x.shape[0], -1, -1), h], dim=1)
    taps, start = [], 0
    for step, a in enumerate(comb):
        stop = cuts[step][0] + 1 if step < len(cuts) else depths[a]
        for i in range(start, stop):
            h = _mmseg_block(sd, f"anchors.{a}.layers.{i}.", h, heads[a], grid)
            if i in outs_of[a]:
                taps.append(_stitch(sd, 0, i, h) if a == 0 else h)
        if step < len(cuts):
            h = _stitch(sd, a, layer_ids[step], h)
            start = cuts[step][1]
    assert len(taps) == len(large_out)
    last = taps[-1][:, 1:].transpose(1, 2).reshape(x.shape[0], -1, *grid)
    logits = _setr_head(sd, "decode_head.", last, 1)
    return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def reference_v2_ids(d0, d1):
    """The reference enumeration, written from its description: (comb, stitch cfgs) per id."""
    r = d1 // d0
    m = [j * d0 // d1 for j in range(d1)]
    sl = [(i, (i + 1) * r) for i in range(d0)]
    ls = [(j, m[j] + 1) for j in range(d1) if j < d1 - 1 and (d0 == d1 or j % 2 == 1)]
    cfgs = [("S",), ("L",)] + [("SL", c) for c in sl] + [("LS", c) for c in ls]
    cfgs += [("LSL", a, b) for a in ls for b in sl if b[0] != d0 - 1 and b[0] >= a[1]]
    cfgs += [("SLS", a, b) for a in sl for b in ls if b[0] >= a[1]]
    return cfgs
