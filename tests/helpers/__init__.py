"""What the tests share (every test module imports its helpers from here, none from another test module): tiny
anchors built on the fly (DeiT-3 style: layer scale, position embedding without class slot), the one tiny run
config and the snnet command, torchrun on a free port, reference formulas the tests compare with; the segmentation
tests' tiny SETR run and released-format files in ``helpers.segmentation``."""
from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing in the tests may reach a hub; set before timm reads it

import timm  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

from snnet import SNNet  # noqa: E402
from snnet.cli import main  # noqa: E402
from snnet.config import load_config  # noqa: E402
from snnet.flops import AnchorShape, block_flops, embed_flops, head_flops, num_tokens  # noqa: E402

IMG = 32


def tiny_vit(depth: int, width: int, heads: int = 2, arch: str = "deit3_small_patch16_224", seed: int = 0,
             **kwargs) -> torch.nn.Module:
    """A small timm ViT with random but non-trivial weights (layer scales 0.1 so blocks matter)."""
    torch.manual_seed(seed)
    kw = dict(img_size=IMG, patch_size=8, embed_dim=width, depth=depth, num_heads=heads, num_classes=10)
    kw.update(kwargs)
    model = timm.create_model(arch, **kw)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.fill_(0.1)
            elif name.endswith("norm1.weight") or name.endswith("norm2.weight") or name == "norm.weight":
                p.uniform_(0.5, 1.5)
            elif name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()


def lora_model(small, large, version="v2", rank=4, **kw) -> SNNet:
    """A model whose stitching layers and low-rank updates are all non-trivial."""
    model = SNNet([small, large], version=version, lora_rank=rank, **kw).eval()
    torch.manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "layers" in name:
                p.normal_(0, 0.1)
    return model


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TINY = {
    "model": {"anchors": [
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}},
        {"name": "deit3_small_patch16_224", "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 3}},
    ], "lora_rank": 4},
    "data": {"dataset": "shapes", "batch_size": 16, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
             "shapes": {"image_size": 32, "num_train": 96, "num_val": 40}},
    "augment": {"crop": "simple", "auto_augment": "3a", "color_jitter": 0.3, "cutmix": 1.0, "label_smoothing": 0.1,
                "eval_crop_ratio": 1.0},
    "train": {"epochs": 1, "optimizer": "adamw", "lr": 1e-3, "warmup_epochs": 0, "init_images": 32, "ros_gap": 0.0005},
}
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def write_config(tmp_path: Path, **sections) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def snnet(*args: str) -> int:
    return main([*args, "--no-progress"] if args[0] in ("train", "eval") else list(args))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def torchrun_train(cfg: Path) -> None:
    """``snnet train`` under torchrun, two CPU processes (on a free port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "snnet.cli", "train", "--config", str(cfg), "--no-progress"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "training on 2 x cpu" in done.stdout


def torchrun_then_single(cfg: Path, out: Path) -> tuple[list[dict], list[dict]]:
    """Train under torchrun into the config's run directory (its evaluation shares route prefixes), then
    evaluate its model in one process into ``out``: (rows of torchrun, rows of one process). Three of the
    stitches are evaluated once more one at a time: their rows must equal the shared ones to the last digit."""
    torchrun_train(cfg)
    run = Path(load_config(cfg).output_dir)
    single = main(["eval", "--config", str(cfg), "--output-dir", str(out), "--checkpoint", str(run / "model"),
                   "--no-progress"])
    assert single == 0
    rows = read_jsonl(out / "results.jsonl")
    some = [rows[0]["stitch_id"], rows[len(rows) // 2]["stitch_id"], rows[-1]["stitch_id"]]
    plain = out.with_name(out.name + "_plain")
    assert main(["eval", "--config", str(cfg), "--output-dir", str(plain), "--checkpoint", str(run / "model"),
                 "--no-progress", "--no-share-prefixes", "--stitches", ",".join(map(str, some))]) == 0
    assert read_jsonl(plain / "results_subset.jsonl") == [r for r in rows if r["stitch_id"] in some]
    return read_jsonl(run / "results.jsonl"), rows


def to_official(model: SNNet) -> dict:
    """Our state dict under the released key names (the inverse of the filter being tested)."""
    out = {}
    for k, v in model.state_dict().items():
        k = re.sub(r"^heads\.(\d+)\.", r"anchors.\1.head.", k.removeprefix("backbone."))
        k = re.sub(r"\.ls([12])\.gamma$", r".gamma_\1", k)
        k = re.sub(r"^sl_layers\.(\d+)\.", r"stitch_layers.0.\1.transform.", k)
        k = re.sub(r"^ls_layers\.(\d+)\.", r"stitch_layers.1.\1.transform.", k)
        out[k] = v.clone()
    return out


def randomize_layers(model: SNNet, seed: int = 0) -> None:
    """Stitching layers with non-zero LoRA so every parameter affects outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in [*model.backbone.sl_layers, *model.backbone.ls_layers]:
            for p in layer.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)


def snapshot(directory: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``directory``: its hash and modification time."""
    return {str(p.relative_to(directory)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(directory.rglob("*")) if p.is_file()}


def drop_path_rates(model: torch.nn.Module) -> list[float]:
    """Each block of a timm ViT: its stochastic-depth rate (0 where it has none)."""
    return [getattr(blk.drop_path1, "drop_prob", 0.0) for blk in model.blocks]


def anchor_flops(shape: AnchorShape, img_size: tuple[int, int] | None = None) -> int:
    """A plain anchor at ``img_size`` (default: its own input size), summed by hand from the per-part formulas."""
    n = num_tokens(shape, img_size)
    return embed_flops(shape, img_size) + shape.depth * block_flops(shape, n) + head_flops(shape, n)
