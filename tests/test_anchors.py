import argparse
import re

import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import IMG, tiny_vit
from snnet import AnchorConfig, SNNet, SNNetError, create_anchor
from snnet.anchors import anchor_config_of, order_anchors


def test_anchors_are_ordered_small_to_large():
    S, L = tiny_vit(3, 32), tiny_vit(6, 48, heads=3)
    assert order_anchors([L, S]) == [S, L]
    B = tiny_vit(3, 48, heads=3)  # same depth, wider: the large one
    assert order_anchors([B, S]) == [S, B]


@pytest.mark.parametrize("other,message", [
    (dict(depth=6, embed_dim=48, num_heads=3, patch_size=4), "patch sizes differ"),
    (dict(depth=6, embed_dim=48, num_heads=3, img_size=48), "token grids differ"),
    (dict(depth=5, embed_dim=48, num_heads=3), "depth ratio 5/3 is not an integer"),
    (dict(depth=6, embed_dim=48, num_heads=3, class_token=False, global_pool="avg"), "one class token"),
    # DINOv2 with registers beside one without: the prefix layouts differ
    (dict(depth=6, embed_dim=48, num_heads=3, reg_tokens=4),
     "prefix tokens differ (1 class and 0 register tokens against 1 and 4)"),
])
def test_incompatible_anchors_name_both_and_the_mismatch(other, message):
    small = tiny_vit(3, 32)
    kw = dict(img_size=IMG, patch_size=8, num_classes=10)
    kw.update(other)
    large = timm.create_model("deit3_small_patch16_224", **kw)
    with pytest.raises(SNNetError) as e:
        SNNet([small, large])
    msg = str(e.value)
    assert message in msg and "\n" not in msg
    if "one class token" not in message:
        assert "depth 3, width 32" in msg and "width 48" in msg


def test_non_vit_anchor_is_rejected():
    cnn = timm.create_model("resnet10t", num_classes=10)
    with pytest.raises(SNNetError, match=r"^anchor resnet10t is a ResNet that no anchor family stitches: vit \("):
        SNNet([tiny_vit(3, 32), cnn])
    with pytest.raises(SNNetError, match="at least two anchors, got 1"):
        SNNet([tiny_vit(3, 32)])


def test_unknown_timm_name():
    with pytest.raises(SNNetError, match="unknown timm model 'deit3_tiniest_patch16_224'"):
        create_anchor("deit3_tiniest_patch16_224")


def test_pretrained_without_network_is_a_one_line_error():
    cfg = AnchorConfig("deit3_small_patch16_224.fb_in22k_ft_in1k", pretrained=True,
                       kwargs=dict(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2))
    with pytest.raises(SNNetError, match="cannot load pretrained weights for 'deit3_small_patch16_224.fb_in22k_ft_in1k'") as e:
        create_anchor(cfg)
    assert "\n" not in str(e.value) and "checkpoint_path" in str(e.value)


def _deit3_release(model) -> dict:
    """A DeiT-3 style training checkpoint: 'model' key, gamma_1/gamma_2, argparse args."""
    sd = {re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k): v.clone() for k, v in model.state_dict().items()}
    return {"model": sd, "epoch": 399, "args": argparse.Namespace(model="deit_small_patch16_LS")}


def test_local_checkpoints_load_through_timm_filter(tmp_path, images):
    src = tiny_vit(3, 32, seed=5)
    kwargs = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10)
    torch.save(_deit3_release(src), tmp_path / "deit3.pth")
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    with torch.no_grad():
        want = src(images)
        for name in ("deit3.pth", "w.safetensors"):
            got = create_anchor(AnchorConfig("deit3_small_patch16_224", checkpoint_path=str(tmp_path / name),
                                             kwargs=kwargs)).eval()
            torch.testing.assert_close(got(images), want, rtol=0, atol=0)


def test_local_checkpoint_with_other_head_keeps_backbone(tmp_path, images):
    src = tiny_vit(3, 32, seed=5)
    torch.save(_deit3_release(src), tmp_path / "deit3.pth")
    kwargs = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=4)
    model = create_anchor(AnchorConfig("deit3_small_patch16_224", checkpoint_path=str(tmp_path / "deit3.pth"),
                                       kwargs=kwargs))
    assert model.head.out_features == 4
    assert torch.equal(model.blocks[2].ls2.gamma, src.blocks[2].ls2.gamma)


def test_bad_local_checkpoints(tmp_path):
    kwargs = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2)
    with pytest.raises(SNNetError, match="anchor checkpoint not found"):
        create_anchor(AnchorConfig("deit3_small_patch16_224", checkpoint_path=str(tmp_path / "x.pth"), kwargs=kwargs))
    torch.save({"model": {"blocks.0.norm1.weight": torch.ones(32)}}, tmp_path / "partial.pth")
    with pytest.raises(SNNetError, match="does not fit deit3_small_patch16_224: missing"):
        create_anchor(AnchorConfig("deit3_small_patch16_224", checkpoint_path=str(tmp_path / "partial.pth"), kwargs=kwargs))


@pytest.mark.parametrize("arch", ["deit3_small_patch16_224", "vit_small_patch16_224"])
def test_inferred_config_rebuilds_the_architecture(arch):
    src = tiny_vit(3, 32, arch=arch, seed=3)
    cfg = anchor_config_of(src)
    rebuilt = create_anchor(cfg)
    rebuilt.load_state_dict(src.state_dict())  # strict: same parameters and shapes
    x = torch.randn(2, 3, IMG, IMG)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), src(x), rtol=0, atol=0)


def test_named_anchors_keep_their_config(tmp_path, images):
    kw_s = dict(img_size=IMG, patch_size=8, embed_dim=32, depth=3, num_heads=2, num_classes=10, drop_path_rate=0.05)
    kw_l = dict(img_size=IMG, patch_size=8, embed_dim=48, depth=6, num_heads=3, num_classes=10, drop_path_rate=0.4)
    model = SNNet([AnchorConfig("deit3_base_patch16_224", kwargs=kw_l), AnchorConfig("deit3_small_patch16_224", kwargs=kw_s)])
    assert [a.name for a in model.config.anchors] == ["deit3_small_patch16_224", "deit3_base_patch16_224"]
    assert model.config.anchors[1].kwargs["drop_path_rate"] == 0.4
    loaded = SNNet.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.backbone.anchors[1].blocks[-1].drop_path1.drop_prob == pytest.approx(0.4)


def test_heads_trained_on_other_classes_are_named_and_replaced_on_request(tmp_path):
    """Issue 28, point 3: the quickstart anchors record the shapes they were trained on; data of the same count
    of other classes gets a note before training, and model.replace_head=true gives new heads whatever the count."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    from snnet.anchors import head_class_names
    from snnet.config import load_config
    from snnet.data.scenes import SHAPES
    from snnet.tasks import build_model, check_heads

    cfg = load_config("quickstart")
    shipped = cfg.model.anchors[0].checkpoint_path
    assert head_class_names(AnchorConfig(cfg.model.anchors[0].name, checkpoint_path=shipped)) == list(SHAPES[:10])
    assert check_heads(cfg, load_weights=True) == []  # the same shapes: nothing to say
    # the same weights recording ten other classes
    state = load_file(shipped)
    for i, anchor in enumerate(cfg.model.anchors):
        path = tmp_path / f"anchor{i}.safetensors"
        save_file(load_file(anchor.checkpoint_path), str(path),
                  metadata={"class_names": json.dumps([f"class{k}" for k in range(10)])})
        anchor.checkpoint_path = str(path)
    notes = check_heads(cfg, load_weights=True)
    assert notes[0] == ("note: anchor 0's head was trained on other classes than the data's (class 0: 'class0' "
                        "there, 'circle' here); it is kept, read by index: set model.replace_head=true to train new "
                        "heads") and len(notes) == 2
    # a checkpoint that records nothing: the count decides, and the note says so
    bare = tmp_path / "bare.safetensors"
    save_file(state, str(bare))
    cfg.model.anchors[0].checkpoint_path = str(bare)
    assert check_heads(cfg, load_weights=True)[0] == (
        "note: anchor 0's checkpoint records no class names: its 10-class head is kept because the data has 10 "
        "classes (set model.replace_head=true if they are others)")
    with safe_open(str(bare), "pt") as f:
        assert not (f.metadata() or {}).get("class_names")
    # model.replace_head=true: new heads although the count matches, the backbone as loaded
    cfg = load_config("quickstart", ["model.replace_head=true"])
    assert check_heads(cfg, load_weights=True) == [
        f"model.replace_head: anchor {i}'s 10-class head is replaced by a new 10-class head" for i in (0, 1)]
    kept, fresh = build_model(load_config("quickstart"), 10), build_model(cfg, 10)
    for a, b in zip(kept.backbone.anchors, fresh.backbone.anchors):
        assert torch.equal(a.blocks[0].attn.qkv.weight, b.blocks[0].attn.qkv.weight)
    for a, b in zip(kept.heads, fresh.heads):  # the anchors' classifiers, held by the classification model
        assert not torch.equal(a.weight, b.weight) and torch.all(b.bias == 0)
        assert b.weight.std() < 0.03  # timm's classifier init (std 0.02), not the trained head
    torch.testing.assert_close(kept.heads[0].weight, state["head.weight"].float())
