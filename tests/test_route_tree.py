"""Prefix-shared evaluation: the same outputs as one stitch at a time, each tree node run once, bounded memory."""
import weakref

import pytest
import timm
import torch

from helpers import lora_model, tiny_vit
from snnet import SNNet
from snnet.anchors import anchor_shape
from snnet.flops import prefix_shared_flops, step_flops, stitch_flops
from snnet.route_tree import depth_first, kept_depths, tree_nodes
from snnet.stitch_space import route_steps, stitch_space


def _one_at_a_time(model: SNNet, x: torch.Tensor, ids, dense: bool = False) -> dict:
    out = {}
    for sid in ids:
        model.select(sid)
        out[sid] = model.forward_intermediates(x) if dense else model(x)
    return out


def _shared(model: SNNet, x: torch.Tensor, ids, dense: bool = False) -> dict:
    out = {}
    with model.sharing_prefixes(ids):
        for sid in model.depth_first(ids):
            model.select(sid)
            out[sid] = model.forward_intermediates(x) if dense else model(x)
    return out


PAIRS = {  # (small depth, width, heads), (large depth, width, heads)
    "unequal": ((3, 32, 2), (6, 48, 3)),
    "equal": ((4, 32, 2), (4, 48, 3)),
}


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize("pair", ["unequal", "equal"])
def test_shared_logits_equal_one_stitch_at_a_time(version, pair, images):
    (d0, c0, h0), (d1, c1, h1) = PAIRS[pair]
    model = lora_model(tiny_vit(d0, c0, h0, seed=1), tiny_vit(d1, c1, h1, seed=2), version)
    with torch.no_grad():
        plain = _one_at_a_time(model, images, model.stitch_ids)
        shared = _shared(model, images, model.stitch_ids)
    assert set(shared) == set(model.stitch_ids)
    for sid in model.stitch_ids:
        assert torch.equal(shared[sid], plain[sid]), sid


def test_a_subset_in_any_order_and_twice(pair_s_l, images):
    model = lora_model(*pair_s_l)
    ids = [8, 1, 5, 3, 6]
    with torch.no_grad():
        plain = _one_at_a_time(model, images, ids)
        with model.sharing_prefixes(ids):
            for _ in range(2):  # a second batch on the same walk; the given order, not depth-first
                for sid in ids:
                    assert torch.equal(model.select(sid)(images), plain[sid]), sid


def test_dense_taps_equal_one_stitch_at_a_time(pair_s_l, images):
    model = lora_model(*pair_s_l, out_indices=[1, 2, 4, 5])  # two taps on one small block for some routes
    with torch.no_grad():
        plain = _one_at_a_time(model, images, model.stitch_ids, dense=True)
        shared = _shared(model, images, model.stitch_ids, dense=True)
    for sid in model.stitch_ids:
        assert len(shared[sid]) == 4
        assert all(torch.equal(a, b) for a, b in zip(shared[sid], plain[sid])), sid


def test_inputs_are_told_apart_by_value(pair_s_l, images):
    """Windows and flips alternate between stitches: each input keeps its own walk."""
    model = lora_model(*pair_s_l)
    flipped = images.flip(-1)
    with torch.no_grad():
        plain = {sid: (model.select(sid)(images), model(flipped)) for sid in model.stitch_ids}
        with model.sharing_prefixes(model.stitch_ids) as cache:
            for sid in model.depth_first(model.stitch_ids):
                model.select(sid)
                a, b = model(images.clone()), model(flipped.clone())  # new tensors, equal values
                assert torch.equal(a, plain[sid][0]) and torch.equal(b, plain[sid][1]), sid
            assert len(cache.walks) == 2


def test_every_tree_node_runs_once_and_few_activations_live(pair_s_l, images):
    """Counted with hooks on the blocks: calls, and block outputs still referenced at each call."""
    model = lora_model(*pair_s_l)
    blocks = [b for a in model.backbone.anchors for b in a.blocks]
    calls, outputs, live_peak = [0], [], [0]

    def hook(module, args, out):
        calls[0] += 1
        outputs.append(weakref.ref(out))
        live_peak[0] = max(live_peak[0], sum(r() is not None for r in outputs))

    handles = [b.register_forward_hook(hook) for b in blocks]
    ids = model.stitch_ids
    with torch.no_grad():
        _one_at_a_time(model, images, ids)
        plain_calls, plain_live = calls[0], live_peak[0]
        calls[0], live_peak[0] = 0, 0
        outputs.clear()
        with model.sharing_prefixes(ids) as cache:
            for sid in model.depth_first(ids):
                model.select(sid)(images)
            shared_peak = cache.peak_kept
    for h in handles:
        h.remove()
    routes = [route_steps(model.stitch(i)) for i in ids]
    assert plain_calls == sum(1 for r in routes for step in r if step.kind == "block")
    assert calls[0] == sum(1 for node in tree_nodes(model.stitches) if node[-1].kind == "block")
    assert calls[0] < plain_calls
    # one kept activation per branch point on the current path at most, plus the one being computed
    deepest = max(len(kept_depths(model.stitches)[r]) for r in routes)
    assert plain_live <= 2 and shared_peak <= deepest and live_peak[0] <= deepest + 2
    assert deepest < max(len(r) for r in routes)


def test_depth_first_order_puts_a_route_before_its_extensions(pair_s_l):
    model = SNNet(list(pair_s_l))
    routes = [route_steps(s) for s in depth_first(model.stitches)]
    assert routes == sorted(routes)
    assert sorted(s.id for s in depth_first(model.stitches)) == model.stitch_ids
    # the walk visits each subtree once: the routes through a prefix are consecutive
    for node in tree_nodes(model.stitches):
        through = [k for k, r in enumerate(routes) if r[:len(node)] == node]
        assert through == list(range(through[0], through[-1] + 1))


def test_shared_flops_of_deit3_s_l():
    """The counts that issue 11 states: blocks only, 224x224, all 134 stitches."""
    with torch.device("meta"):
        shapes = (anchor_shape(timm.create_model("deit3_small_patch16_224")),
                  anchor_shape(timm.create_model("deit3_large_patch16_224")))
    stitches = stitch_space(12, 24)
    block_steps = [r[k] for r in map(route_steps, stitches) for k in range(len(r)) if r[k].kind == "block"]
    separate = sum(step_flops(s, shapes) for s in block_steps)
    shared = sum(step_flops(node[-1], shapes) for node in tree_nodes(stitches) if node[-1].kind == "block")
    assert round(separate / 1e9) == 4422 and round(shared / 1e9) == 1639
    assert sum(stitch_flops(s, shapes) for s in stitches) / prefix_shared_flops(stitches, shapes) > 2.6
