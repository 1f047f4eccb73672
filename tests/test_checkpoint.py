import argparse
import json
import os
import re
from pathlib import Path

import pytest
import torch

from helpers import IMG, randomize_layers, tiny_vit, to_official
from reference_impl import reference_logits
from snnet import SNNet, SNNetError, load_official_checkpoint


def released_file(tmp_path, model, **extra):
    path = tmp_path / "snnetv2_tiny.pth"
    torch.save({"model": to_official(model), "optimizer": {"state": {}, "param_groups": [{"lr": 3e-5}]},
                "epoch": 49, "scaler": {"scale": 65536.0}, "args": argparse.Namespace(lora_r=3, anchors=["s", "l"]),
                **extra}, path)
    return path


@pytest.fixture
def trained(pair_s_l):
    model = SNNet(list(pair_s_l), lora_rank=3).eval()
    randomize_layers(model, seed=4)
    return model


def test_released_format_reproduces_every_stitch(tmp_path, trained, images):
    path = released_file(tmp_path, trained)
    official = to_official(trained)
    fresh = SNNet([tiny_vit(3, 32, seed=8), tiny_vit(6, 48, heads=3, seed=9)], lora_rank=3).eval()
    load_official_checkpoint(fresh, path)
    with torch.no_grad():
        for sid in fresh.stitch_ids:
            got = fresh.select(sid)(images)
            torch.testing.assert_close(got, trained.select(sid)(images), rtol=0, atol=1e-6)
            ref = reference_logits(official, sid, images, fresh.depths, (2, 3))
            assert (got - ref).abs().max() <= 1e-4, sid


def test_bare_state_dict_and_v1_names_load(tmp_path, pair_s_l, images):
    v1 = SNNet(list(pair_s_l), version="v1").eval()
    randomize_layers(v1)
    sd = {re.sub(r"^stitch_layers\.0\.", "stitch_layers.", k): v for k, v in to_official(v1).items()}
    torch.save(sd, tmp_path / "v1.pth")
    fresh = SNNet([tiny_vit(3, 32, seed=8), tiny_vit(6, 48, heads=3, seed=9)], version="v1").eval()
    load_official_checkpoint(fresh, tmp_path / "v1.pth")
    with torch.no_grad():
        torch.testing.assert_close(fresh.select(2)(images), v1.select(2)(images), rtol=0, atol=0)


def test_position_embeddings_are_resampled_to_the_model_grid(tmp_path, trained, images):
    path = released_file(tmp_path, trained)
    big = SNNet([tiny_vit(3, 32, img_size=64), tiny_vit(6, 48, heads=3, img_size=64)], lora_rank=3).eval()
    load_official_checkpoint(big, path)
    assert big.backbone.anchors[0].pos_embed.shape == (1, 64, 32)
    assert torch.isfinite(big.select(5)(torch.randn(1, 3, 64, 64))).all()


class Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/snnet_pwned",))


def test_pickled_code_is_refused_not_run(tmp_path, trained):
    path = tmp_path / "evil.pth"
    torch.save({"model": to_official(trained), "hook": Payload()}, path)
    with pytest.raises(SNNetError, match="refusing to load .*beyond weights"):
        load_official_checkpoint(trained, path)
    assert not os.path.exists("/tmp/snnet_pwned")


def test_bad_files_give_one_line_errors(tmp_path, trained):
    with pytest.raises(SNNetError, match="checkpoint not found"):
        load_official_checkpoint(trained, tmp_path / "nope.pth")
    good = released_file(tmp_path, trained)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(SNNetError, match="truncated or not a torch checkpoint"):
        load_official_checkpoint(trained, truncated)
    text = tmp_path / "notes.pth"
    text.write_text("hello, not a checkpoint\n" * 10)
    with pytest.raises(SNNetError, match="not a torch checkpoint"):
        load_official_checkpoint(trained, text)
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(SNNetError, match="holds a list"):
        load_official_checkpoint(trained, tmp_path / "list.pth")
    for err in (SNNetError,):
        try:
            load_official_checkpoint(trained, truncated)
        except err as e:
            assert "\n" not in str(e)


def test_mismatched_checkpoint_names_keys_and_shapes(tmp_path, trained):
    sd = to_official(trained)
    del sd["anchors.0.norm.bias"]
    sd["anchors.1.head.weight"] = torch.zeros(5, 48)
    sd["extra.thing"] = torch.zeros(1)
    torch.save({"model": sd}, tmp_path / "bad.pth")
    with pytest.raises(SNNetError) as e:
        load_official_checkpoint(trained, tmp_path / "bad.pth")
    msg = str(e.value)
    assert "1 missing: backbone.anchors.0.norm.bias" in msg and "1 unexpected: backbone.extra.thing" in msg
    assert "heads.1.weight (5x48 in file, 10x48 in model)" in msg and "\n" not in msg


def test_lora_rank_mismatch_is_explained(tmp_path, trained, pair_s_l):
    path = released_file(tmp_path, trained)
    plain = SNNet(list(pair_s_l), lora_rank=0)
    with pytest.raises(SNNetError, match=r"the file has LoRA rank 3, the model 0"):
        load_official_checkpoint(plain, path)


def test_save_and_from_pretrained_round_trip(tmp_path, trained, images):
    trained.select(7)
    out = trained.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["version"] == "v2" and config["lora_rank"] == 3
    assert config["anchors"][0]["name"] == "deit3_small_patch16_224"
    loaded = SNNet.from_pretrained(out).eval()
    mine, theirs = trained.state_dict(), loaded.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with torch.no_grad():
        for sid in trained.stitch_ids:
            torch.testing.assert_close(loaded.select(sid)(images), trained.select(sid)(images), rtol=0, atol=0)


def test_from_pretrained_errors(tmp_path, trained):
    with pytest.raises(SNNetError, match="not a saved snnet model"):
        SNNet.from_pretrained(tmp_path)
    out = trained.save_pretrained(tmp_path / "m")
    (out / "model.safetensors").write_bytes(b"\x00" * 16)
    with pytest.raises(SNNetError, match="cannot read .*model.safetensors"):
        SNNet.from_pretrained(out)
    (out / "config.json").write_text("{not json")
    with pytest.raises(SNNetError, match="not a valid snnet config"):
        SNNet.from_pretrained(out)


def test_failed_save_keeps_the_previous_file(tmp_path, trained, monkeypatch):
    out = trained.save_pretrained(tmp_path / "m")
    before = (out / "model.safetensors").read_bytes()
    import snnet.pretrained as ck

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(SNNetError, match=f"^cannot write {out / 'model.safetensors'}: disk full$"):
        trained.save_pretrained(out)
    assert (out / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]  # no temp left


def _plain_vit(width: int, depth: int, heads: int, **kwargs):
    from timm.models.vision_transformer import VisionTransformer
    torch.manual_seed(width)
    return VisionTransformer(img_size=IMG, patch_size=8, embed_dim=width, depth=depth, num_heads=heads,
                             num_classes=10, **kwargs)


@pytest.mark.parametrize("build", ["plain", "timm_name"])
def test_anchors_given_as_modules_save_and_load(tmp_path, images, capsys, build):
    """A plain VisionTransformer is rebuilt from its constructor arguments, a model timm made by name from that
    name and its kwargs: the loaded model gives every stitch's logits exactly, and `snnet export` takes it."""
    from snnet.cli import main

    if build == "plain":
        small, large = _plain_vit(32, 3, 2), _plain_vit(48, 6, 3)
    else:
        small, large = tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)
    model = SNNet([large, small], lora_rank=2).eval()
    randomize_layers(model)
    model.save_pretrained(tmp_path / "m")
    names = [a["name"] for a in json.loads((tmp_path / "m" / "config.json").read_text())["anchors"]]
    assert names == (["VisionTransformer"] * 2 if build == "plain" else ["deit3_small_patch16_224"] * 2)
    loaded = SNNet.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        for sid in model.stitch_ids:
            assert torch.equal(loaded.select(sid)(images), model.select(sid)(images)), sid
    assert main(["export", "--checkpoint", str(tmp_path / "m"), "--stitch", "3", "--format", "safetensors",
                 "--output", str(tmp_path / "s3.safetensors")]) == 0


@pytest.mark.parametrize("odd,message", [
    ("act_layer", "its config rebuilds \"(act): GELU(approximate='none')\" where it has '(act): SiLU()'"),
    ("subclass", "config key 'anchors.1.name': unknown timm model 'MyViT'"),
])
def test_a_module_its_config_cannot_rebuild_is_refused_before_writing(tmp_path, odd, message):
    from timm.models.vision_transformer import VisionTransformer

    class MyViT(VisionTransformer):
        pass

    large = (_plain_vit(48, 6, 3, act_layer="silu") if odd == "act_layer" else
             MyViT(img_size=IMG, patch_size=8, embed_dim=48, depth=6, num_heads=3, num_classes=10))
    model = SNNet([_plain_vit(32, 3, 2), large])
    with pytest.raises(SNNetError) as e:
        model.save_pretrained(tmp_path / "m")
    assert str(e.value).startswith("cannot save the model: ") and message in str(e.value)
    assert str(e.value).endswith("give such anchors as timm model names or AnchorConfigs") and "\n" not in str(e.value)
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("name", ["quickstart", "quickstart_segmentation", "quickstart_depth", "quickstart_detection"])
def test_config_files_saved_before_the_registry_still_load(name):
    """tests/data/saved/: the config.json of each quickstart model as commit c368ae2 saved it (before the model
    classes registered themselves): it rebuilds the network the config builds today, FLOPs included."""
    from snnet import build_model, load_config
    from snnet.pretrained import _structure, model_from_config

    raw = json.loads((Path(__file__).parent / "data" / "saved" / f"{name}.config.json").read_text())
    old = model_from_config(raw, name)
    new = build_model(load_config(name), load_weights=False)
    assert type(old) is type(new) and _structure(old) == _structure(new)
    assert old.flops_table() == new.flops_table()


def test_every_task_has_one_registered_model_class_with_its_metric():
    from snnet.tasks import TASKS

    assert sorted(TASKS) == ["classification", "depth", "detection", "segmentation"]
    for name, task in TASKS.items():
        model = task.model_class
        assert model.task == name and model.primary_metric == task.primary_metric
        assert model.higher_is_better == task.metric_directions[task.primary_metric] == task.higher_is_better
