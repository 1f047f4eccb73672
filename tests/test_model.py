from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import IMG, randomize_layers
from snnet import SNNet, SNNetError, init_stitching_layers
from reference_impl import reference_v2_ids


def _linear(model: SNNet, direction: str, k: int, x: torch.Tensor) -> torch.Tensor:
    p = dict((model.backbone.sl_layers if direction == "SL" else model.backbone.ls_layers)[k].named_parameters())
    w = p["weight"]
    if "lora_A" in p:
        w = w + (p["lora_B"] @ p["lora_A"]) / p["lora_A"].shape[0]
    return F.linear(x, w, p["bias"])


def _blocks(anchor, first: int, stop: int, x):
    for i in range(first, stop):
        x = anchor.blocks[i](x)
    return x


def hand_logits(model: SNNet, cfg: tuple, x: torch.Tensor) -> torch.Tensor:
    """The route of a reference configuration, executed step by step from its definition."""
    S, L = model.backbone.anchors  # their classifiers are the model's heads
    classify = {id(S): model.heads[0], id(L): model.heads[1]}
    kind = cfg[0]
    if kind in ("S", "L"):
        a = S if kind == "S" else L
        return classify[id(a)](a.forward_head(a.forward_features(x), pre_logits=True))
    order = {"SL": "SL", "LS": "LS", "LSL": "LSL", "SLS": "SLS"}[kind]
    anchors = [S if c == "S" else L for c in order]
    r = model.depths[1] // model.depths[0]
    h = anchors[0].patch_embed(x)
    h = anchors[0]._pos_embed(h)
    start = 0
    for step, (front, resume) in enumerate(cfg[1:]):
        h = _blocks(anchors[step], start, front + 1, h)
        direction = order[step] + order[step + 1]
        h = _linear(model, direction, front if direction == "SL" else front // r, h)
        start = resume
    last = anchors[-1]
    h = _blocks(last, start, len(last.blocks), h)
    return classify[id(last)](last.forward_head(last.norm(h), pre_logits=True))


@pytest.mark.parametrize("rank", [0, 3])
def test_every_stitch_equals_hand_execution(pair_s_l, images, rank):
    model = SNNet(list(pair_s_l), lora_rank=rank).eval()
    randomize_layers(model)
    configs = reference_v2_ids(*model.depths)
    assert len(configs) == len(model.stitch_ids) + 1
    with torch.no_grad():
        for sid in model.stitch_ids:
            expected = hand_logits(model, configs[sid], images)
            torch.testing.assert_close(model.select(sid)(images), expected, rtol=0, atol=1e-5)


def test_anchor_stitches_equal_plain_timm(pair_s_l, images):
    S, L = pair_s_l
    with torch.no_grad():
        want_s, want_l = S(images), L(images)
        model = SNNet([L, S]).eval()  # given large first: ordered by itself
        # S's weights, its classifier now the model's head (S itself keeps it)
        assert model.backbone.anchors[0].blocks is S.blocks and model.heads[0] is S.head
        torch.testing.assert_close(model.select(0)(images), want_s, rtol=0, atol=0)
        torch.testing.assert_close(model.select(1)(images), want_l, rtol=0, atol=0)


def test_dense_features_of_anchor_stitches_match_timm_intermediates(pair_s_l, images):
    S, L = pair_s_l
    model = SNNet([S, L], out_indices=(1, 3), lora_rank=2).eval()
    randomize_layers(model)
    with torch.no_grad():
        large = L.forward_intermediates(images, indices=[1, 3], intermediates_only=True)
        for got, want in zip(model.select(1).forward_intermediates(images), large):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        # small taps: blocks floor(idx/2) = 0 and 1, projected by SL layers 0 and 1
        small = S.forward_intermediates(images, indices=[0, 1], output_fmt="NLC", intermediates_only=True,
                                        return_prefix_tokens=True)
        feats = model.select(0).forward_intermediates(images, return_prefix_tokens=True)
        for k, ((fmap, fprefix), (tokens, prefix)) in enumerate(zip(feats, small)):
            proj = _linear(model, "SL", k, torch.cat([prefix, tokens], dim=1))
            assert fmap.shape == (3, 48, IMG // 8, IMG // 8)
            torch.testing.assert_close(fprefix, proj[:, :1], rtol=0, atol=1e-6)
            torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), proj[:, 1:], rtol=0, atol=1e-6)


def test_every_stitch_gives_four_large_width_maps(pair_s_l, images):
    model = SNNet(list(pair_s_l)).eval()
    assert model.out_indices == [0, 2, 3, 5]
    with torch.no_grad():
        for sid in model.stitch_ids:
            maps = model.select(sid).forward_intermediates(images)
            assert [tuple(m.shape) for m in maps] == [(3, 48, 4, 4)] * 4
            assert all(torch.isfinite(m).all() for m in maps)


def test_last_tap_is_the_final_tokens_of_large_ending_stitches(pair_s_l, images):
    model = SNNet(list(pair_s_l)).eval()
    with torch.no_grad():
        for s in model.stitches:
            if s.last_anchor == 1:
                tokens, _ = model.backbone.run_route(images, s)
                last = model.select(s.id).forward_intermediates(images)[-1]
                torch.testing.assert_close(last.flatten(2).transpose(1, 2), tokens[:, 1:], rtol=0, atol=0)


def test_train_mode_samples_stitches_reproducibly(pair_s_l, images):
    model = SNNet(list(pair_s_l))
    model.configure_sampling(seed=7)
    model.train()
    seen = []
    for _ in range(30):
        model(images[:1])
        seen.append(model.last_stitch.id)
    assert set(seen) <= set(model.stitch_ids) and len(set(seen)) > 1
    model.configure_sampling(seed=7)
    again = []
    for _ in range(30):
        model(images[:1])
        again.append(model.last_stitch.id)
    assert again == seen
    model.eval().select(2)
    model(images[:1])
    assert model.selected.id == 2


def test_only_the_sampled_route_gets_gradients(pair_s_l, images):
    model = SNNet(list(pair_s_l), lora_rank=2).train()
    model(images).sum().backward()
    s = model.last_stitch
    used = {f"{'sl' if r.direction == 'SL' else 'ls'}_layers.{r.index}" for r in s.layers}
    for name, p in model.named_parameters():
        if name.startswith(("sl_layers", "ls_layers")) and p.requires_grad:
            has_grad = p.grad is not None
            assert has_grad == any(name.startswith(u + ".") for u in used), name
    assert not model.backbone.sl_layers[0].weight.requires_grad  # LoRA freezes the least-squares weight


def test_merge_lora_keeps_outputs(pair_s_l, images):
    model = SNNet(list(pair_s_l), lora_rank=3).eval()
    randomize_layers(model)
    with torch.no_grad():
        before = {sid: model.select(sid)(images) for sid in model.stitch_ids}
        model.merge_lora()
        assert model.config.lora_rank == 0 and not hasattr(model.backbone.sl_layers[0], "lora_A")
        for sid, want in before.items():
            torch.testing.assert_close(model.select(sid)(images), want, rtol=1e-5, atol=1e-5)


def test_unknown_stitch_id_is_a_one_line_error(pair_s_l):
    model = SNNet(list(pair_s_l))
    excluded = 2 + model.depths[0] - 1
    with pytest.raises(SNNetError, match=rf"unknown stitch id {excluded}: valid ids are 0\.\.\d+ except {excluded}$"):
        model.select(excluded)
    with pytest.raises(SNNetError, match="unknown stitch id 'x'"):
        model.flops("x")


def test_bad_constructor_arguments(pair_s_l):
    with pytest.raises(SNNetError, match="version"):
        SNNet(list(pair_s_l), version="v3")
    with pytest.raises(SNNetError, match="out_indices"):
        SNNet(list(pair_s_l), out_indices=(1, 9))


def test_params_per_stitch(pair_s_l):
    S, L = pair_s_l
    model = SNNet([S, L], lora_rank=4)
    assert model.params(0) == sum(p.numel() for p in S.parameters())
    assert model.params(1) == sum(p.numel() for p in L.parameters())
    s = model.stitch(2)  # S[0-0] -SL0-> L[2-5]
    want = sum(p.numel() for n, p in S.named_parameters() if not n.startswith(("blocks.1.", "blocks.2.", "norm.", "head.")))
    want += sum(p.numel() for n, p in L.named_parameters() if not n.startswith(("blocks.0.", "blocks.1.", "patch_embed",
                                                                                  "cls_token", "pos_embed")))
    want += 32 * 48 + 48  # merged stitching layer
    assert s.describe() == "S[0-0] -SL0-> L[2-5]" and model.params(2) == want


def test_pareto_and_budget_use_model_flops(pair_s_l):
    model = SNNet(list(pair_s_l))
    flops = model.flops_table()
    acc = {sid: float(flops[sid]) for sid in model.stitch_ids}  # accuracy rising with FLOPs
    acc[2] = -1.0  # worse than the cheaper small anchor: dominated
    frontier = model.pareto_frontier(acc)
    assert frontier[0] == 0 and frontier[-1] == 1 and 2 not in frontier
    assert [flops[i] for i in frontier] == sorted(flops[i] for i in frontier)
    best = model.best_under_budget(acc, max_flops=flops[2])
    assert flops[best] <= flops[2] and acc[best] == max(a for i, a in acc.items() if flops[i] <= flops[2])


def test_v1_model(pair_s_l, images):
    model = SNNet(list(pair_s_l), version="v1").eval()
    assert model.stitch_ids == [0, 1, 2, 3] and len(model.backbone.ls_layers) == 0
    S, L = pair_s_l
    with torch.no_grad():
        torch.testing.assert_close(model.select(0)(images), L(images), rtol=0, atol=0)
    assert model.sampler.groups == [[0, 1, 2, 3]]


def test_least_squares_init_makes_stitches_close_to_anchors(pair_s_l, images):
    """A freshly fitted SL layer reproduces the large block it replaces better than a random one."""
    S, L = pair_s_l
    model = SNNet([S, L]).eval()
    torch.manual_seed(0)
    data = [torch.randn(8, 3, IMG, IMG) for _ in range(4)]
    with torch.no_grad():
        target = L(images)
        before = (model.select(2)(images) - target).pow(2).mean()
        assert init_stitching_layers(model, data, progress=False) == 32
        after = (model.select(2)(images) - target).pow(2).mean()
    assert after < before


def test_wrong_input_shapes_are_one_line_errors(pair_s_l):
    model = SNNet(list(pair_s_l)).eval()
    with pytest.raises(SNNetError, match=r"images are 48x48, the anchors take 32x32"):
        model(torch.randn(1, 3, 48, 48))
    with pytest.raises(SNNetError, match=r"expected images of shape \(B, 3, H, W\), got \(1, 1, 32, 32\)"):
        model(torch.randn(1, 1, 32, 32))
    with pytest.raises(SNNetError, match=r"got \(3, 32, 32\)"):
        model.forward_intermediates(torch.randn(3, 32, 32))


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    """README's "The method in code", statement by statement, over two tiny anchors of depth 6 and 12 (32 stitches,
    25 among them) instead of the DeiT3-S/L download; its released file is one in SN-Netv2's layout."""
    import ast

    import snnet
    from helpers import tiny_vit, to_official

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = readme.split("## The method in code", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    statements = ast.parse(code).body
    first = statements[1]  # model = snnet.SNNet([...], pretrained=True, lora_rank=64)
    assert isinstance(first, ast.Assign) and ast.unparse(first.value).startswith("snnet.SNNet(")
    anchors = [tiny_vit(6, 32, seed=1), tiny_vit(12, 48, heads=3, seed=2)]
    monkeypatch.chdir(tmp_path)
    released = snnet.SNNet([tiny_vit(6, 32, seed=3), tiny_vit(12, 48, heads=3, seed=4)], lora_rank=4)
    torch.save({"model": to_official(released)}, tmp_path / "snnetv2_deit3_s_l.pth")
    scope = {"batches": [torch.randn(4, 3, IMG, IMG)], "criterion": torch.nn.CrossEntropyLoss(),
             "images": torch.randn(2, 3, IMG, IMG), "targets": torch.tensor([1, 2])}
    exec(compile(ast.Module([statements[0]], []), "README", "exec"), scope)  # import torch, snnet
    scope["model"] = snnet.SNNet(anchors, lora_rank=4)  # the example's model, tiny
    scope["acc1_by_stitch"] = {sid: float(sid % 7) for sid in scope["model"].stitch_ids}
    for statement in statements[2:]:
        exec(compile(ast.Module([statement], []), "README", "exec"), scope)
    model = scope["model"]
    assert isinstance(model, snnet.SNNet) and isinstance(model.backbone, snnet.SNNetBackbone)
    assert scope["logits"].shape == (2, 10) and len(scope["feats"]) == 4
    with torch.no_grad():  # the released weights were loaded, then saved and loaded back
        torch.testing.assert_close(model.eval().select(25)(scope["images"]), released.eval().select(25)(scope["images"]))
    assert scope["best"] in model.stitch_ids


def test_forward_head_in_train_mode_before_any_call_is_a_one_line_error(pair_s_l, images):
    model = SNNet(list(pair_s_l)).train()
    tokens = torch.randn(3, 17, 48)
    with pytest.raises(SNNetError, match="^forward_head in train mode follows forward_features, which draws the stitch"):
        model.forward_head(tokens)
    feats = model.forward_features(images)  # draws a stitch: forward_head then uses it
    assert model.forward_head(feats).shape == (3, 10)
    assert model.forward_head(tokens, stitch=model.stitch(1)).shape == (3, 10)
