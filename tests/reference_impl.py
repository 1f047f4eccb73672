"""An independent, functional SN-Netv2 forward written from the released checkpoint format (SPEC 2, 3, 7).

It reads official key names (``gamma_1``, ``stitch_layers.{f}.{k}.transform``) and computes attention
the way the reference code does (scaled q @ k^T, softmax, @ v), sharing no code with snnet.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def _vit_block(sd, p, x, heads):
    B, N, C = x.shape
    h = F.layer_norm(x, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps=1e-6)
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    q, k, v = qkv.reshape(B, N, 3, heads, C // heads).permute(2, 0, 3, 1, 4)
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    h = F.linear((attn @ v).transpose(1, 2).reshape(B, N, C), sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    x = x + sd[p + "gamma_1"] * h
    h = F.layer_norm(x, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps=1e-6)
    h = F.linear(F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"])),
                 sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
    return x + sd[p + "gamma_2"] * h


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
