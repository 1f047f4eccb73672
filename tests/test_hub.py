"""Sharing on the Hugging Face Hub: model cards, loading a repo id from the cache offline, the upload call."""
import shutil

import huggingface_hub
import pytest
import torch
import yaml

import snnet
from snnet import SNNet
from snnet.errors import SNNetError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache, repo_id: str, folder) -> None:
    """What a download leaves in the Hugging Face cache: the files in a snapshot, and refs/main naming it."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)


def card_metadata(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_model_card_holds_the_table_frontier_and_plot(pair_s_l, tmp_path):
    model = SNNet(list(pair_s_l))
    plain = model.save_pretrained(tmp_path / "plain")
    card = (plain / "README.md").read_text()
    assert card_metadata(card)["library_name"] == "snnet"
    assert card_metadata(card)["pipeline_tag"] == "image-classification"
    assert "No evaluation results" in card and "pareto.png" not in card
    assert sum(line.startswith("| ") and "`" in line for line in card.splitlines()) == len(model.stitch_ids)
    rows = [{"stitch_id": s.id, "kind": s.kind, "route": s.describe(), "flops": model.flops(s.id),
             "gflops": model.flops(s.id) / 1e9, "params_m": model.params(s.id) / 1e6, "acc1": float(s.id)}
            for s in model.stitches]  # accuracy rising with the id: the frontier is computable by hand
    plot = tmp_path / "pareto.png"
    plot.write_bytes(b"\x89PNG fake")
    saved = model.save_pretrained(tmp_path / "full", results=rows, plot=plot)
    card = (saved / "README.md").read_text()
    assert "![acc1 of every stitch against GFLOPs](pareto.png)" in card and (saved / "pareto.png").is_file()
    marked = {int(line.split("|")[1]) for line in card.splitlines() if "| yes |" in line}
    expected, best = set(), float("-inf")
    for r in sorted(rows, key=lambda r: (r["flops"], -r["acc1"])):
        if r["acc1"] > best:
            expected.add(r["stitch_id"])
            best = r["acc1"]
    assert marked == expected


def test_from_pretrained_reads_a_repo_id_from_the_cache_offline(pair_s_l, tmp_path, monkeypatch, images):
    assert huggingface_hub.constants.HF_HUB_OFFLINE  # conftest: nothing may reach a hub
    model = SNNet(list(pair_s_l), lora_rank=2).eval()
    model.save_pretrained(tmp_path / "saved")
    cache = tmp_path / "hf-cache"
    fill_cache(cache, "org/tiny-snnet", tmp_path / "saved")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    for loaded in (SNNet.from_pretrained("org/tiny-snnet"), snnet.from_pretrained("org/tiny-snnet")):
        with torch.no_grad():
            assert torch.equal(loaded.eval().select(5)(images), model.select(5)(images))
    with pytest.raises(SNNetError, match="org/other is not in the Hugging Face cache and the Hub cannot be reached"):
        SNNet.from_pretrained("org/other")
    with pytest.raises(SNNetError, match="no saved model at a/b/c: give a directory or a Hub repo id"):
        SNNet.from_pretrained("a/b/c")


def test_push_to_hub_uploads_weights_config_and_card(pair_s_l, tmp_path, monkeypatch, images):
    calls = []

    def create_repo(self, repo_id, private=False, exist_ok=False, **kw):
        calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, repo_id, folder_path, commit_message=None, **kw):
        calls.append(("upload_folder", repo_id, commit_message))
        shutil.copytree(folder_path, tmp_path / "uploaded")
        return "https://huggingface.co/org/tiny/commit/1"

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    model = SNNet(list(pair_s_l)).eval()
    assert model.push_to_hub("org/tiny", private=True) == "https://huggingface.co/org/tiny/commit/1"
    assert calls == [("create_repo", "org/tiny", True, True), ("upload_folder", "org/tiny", "Upload snnet model")]
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert card_metadata((uploaded / "README.md").read_text())["library_name"] == "snnet"
    with torch.no_grad():
        assert torch.equal(SNNet.from_pretrained(uploaded).eval().select(3)(images), model.select(3)(images))
