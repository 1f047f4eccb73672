"""What the segmentation tests share: the tiny SETR model's shapes, a tiny segmentation run config, dataset layouts
on disk, and a state dict and mmengine checkpoint in the reference's released format."""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image
from reference_impl import _rel_pos_index

DEPTHS, WIDTHS, HEADS, PATCH, IMG = (3, 6), (32, 48), (2, 3), 8, 32
OUT = (1, 3, 5)  # large taps; small ones (0, 1, 2): every stitch has three
CLASSES, CHANNELS, RANK = 5, 16, 4


ANCHORS = [
    {"name": "deit3_small_patch16_224", "rel_pos_bias": True,
     "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 3, "num_heads": 2}},
    {"name": "deit3_small_patch16_224", "rel_pos_bias": True,
     "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 6, "num_heads": 3}},
]
TINY = {
    "task": "segmentation",
    "model": {"anchors": ANCHORS, "lora_rank": 4, "out_indices": [1, 3, 5], "head": {"channels": 16}},
    "data": {"dataset": "shapes", "input_size": 32, "batch_size": 8, "workers": 0, "mean": [0.5] * 3,
             "std": [0.5] * 3, "shapes": {"image_size": 32, "num_classes": 4, "num_train": 24, "num_val": 11}},
    "augment": {"scale": [128, 32], "ratio_range": [0.5, 2.0]},
    "train": {"iterations": 3, "checkpoint_interval": 2, "optimizer": "adamw", "lr": 1e-3, "scheduler": "poly",
              "init_images": 16, "ros_gap": 0.0001},
    "eval": {"visualize": 2},
}


def write_config(tmp_path: Path, **sections) -> Path:
    cfg = json.loads(json.dumps(TINY))
    for name, values in sections.items():
        if isinstance(values, dict):
            cfg.setdefault(name, {}).update(values)
        else:
            cfg[name] = values
    cfg["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "tiny_seg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def write_layout(root, split, names, label_suffix=".png", size=(12, 10), values=(0, 1, 2), image_ext=".jpg"):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(root / "images" / split / f"{n}{image_ext}")
        lab = rng.choice(values, size).astype(np.uint8)
        Image.fromarray(lab).save(root / "annotations" / split / f"{n}{label_suffix}")
    return root


def reference_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Every key SPEC section 10 lists, with random values, for the tiny model above."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g) * 0.3  # noqa: E731
    grid = (IMG // PATCH, IMG // PATCH)
    sd = {}
    for a, (d, c, h) in enumerate(zip(DEPTHS, WIDTHS, HEADS)):
        p = f"backbone.anchors.{a}."
        sd[p + "cls_token"], sd[p + "pos_embed"] = r(1, 1, c), r(1, grid[0] * grid[1], c)
        sd[p + "patch_embed.projection.weight"], sd[p + "patch_embed.projection.bias"] = r(c, 3, PATCH, PATCH), r(c)
        for i in range(d):
            q = f"{p}layers.{i}."
            for ln in ("ln1", "ln2"):
                sd[f"{q}{ln}.weight"], sd[f"{q}{ln}.bias"] = 1 + r(c), r(c)
            sd[q + "attn.qkv.weight"], sd[q + "attn.qkv.bias"] = r(3 * c, c), r(3 * c)
            sd[q + "attn.proj.weight"], sd[q + "attn.proj.bias"] = r(c, c), r(c)
            sd[q + "attn.relative_position_bias_table"] = r((2 * grid[0] - 1) * (2 * grid[1] - 1) + 3, h)
            sd[q + "attn.relative_position_index"] = _rel_pos_index(*grid)
            sd[q + "ffn.layers.0.0.weight"], sd[q + "ffn.layers.0.0.bias"] = r(4 * c, c), r(4 * c)
            sd[q + "ffn.layers.1.weight"], sd[q + "ffn.layers.1.bias"] = r(c, 4 * c), r(c)
            sd[q + "gamma_1"], sd[q + "gamma_2"] = r(c) / 3, r(c) / 3
    for f, (cin, cout, n) in enumerate(((WIDTHS[0], WIDTHS[1], DEPTHS[0]), (WIDTHS[1], WIDTHS[0], 2))):
        for k in range(n):
            q = f"backbone.stitch_layers.{f}.{k}.transform."
            sd[q + "weight"], sd[q + "bias"] = r(cout, cin) / 3, r(cout)
            sd[q + "lora_A"], sd[q + "lora_B"] = r(RANK, cin), r(cout, RANK)
    heads = [("decode_head.", 1)] + [(f"auxiliary_head.{i}.", 2) for i in range(len(OUT) - 1)]
    for p, convs in heads:
        sd[p + "norm.weight"], sd[p + "norm.bias"] = 1 + r(WIDTHS[1]), r(WIDTHS[1])
        for k in range(convs):
            q = f"{p}up_convs.{k}.0."
            sd[q + "conv.weight"] = r(CHANNELS, WIDTHS[1] if k == 0 else CHANNELS, 1, 1)
            sd[q + "bn.weight"], sd[q + "bn.bias"] = 1 + r(CHANNELS), r(CHANNELS)
            sd[q + "bn.running_mean"], sd[q + "bn.running_var"] = r(CHANNELS), 0.5 + r(CHANNELS).abs()
            sd[q + "bn.num_batches_tracked"] = torch.tensor(1000)
        sd[p + "conv_seg.weight"], sd[p + "conv_seg.bias"] = r(CLASSES, CHANNELS, 1, 1), r(CLASSES)
    return sd


class _FakeMMEngine:
    """A stand-in ``mmengine`` (and its HistoryBuffer) present only while the test file is written."""

    def __enter__(self):
        mod = types.ModuleType("mmengine.logging.history_buffer")

        class HistoryBuffer:
            def __init__(self):
                self._log_history = np.array([1.5, 1.25])
                self._count_history = np.array([1, 1])
                self.max_length = 1000000

            def update(self, value):
                raise AssertionError("a loader ran mmengine code")

        HistoryBuffer.__module__, HistoryBuffer.__qualname__ = mod.__name__, "HistoryBuffer"
        mod.HistoryBuffer = HistoryBuffer
        self.names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
        for name in self.names:
            sys.modules[name] = mod if name == mod.__name__ else types.ModuleType(name)
        self.cls = HistoryBuffer
        return self

    def __exit__(self, *exc):
        for name in self.names:
            sys.modules.pop(name, None)


def write_mmengine_checkpoint(path, state_dict):
    with _FakeMMEngine() as mm:
        buf = mm.cls()
        torch.save({
            "meta": {"dataset_meta": {"classes": tuple(f"c{i}" for i in range(CLASSES)), "palette": [[0, 0, 0]] * CLASSES},
                     "cfg": "model = dict(type='EncoderDecoder')", "iter": 160000, "seed": np.int64(0)},
            "state_dict": state_dict,
            "message_hub": {"log_scalars": {"train/loss": buf}, "runtime_info": {"iter": 160000, "lr": np.float64(1e-4)},
                            "resumed_keys": {"iter": True}, "hook": buf.update},  # a bound method pickles via getattr
            "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0, 1]}]},
            "param_schedulers": [{"eta_min": 1e-4, "power": 0.9, "last_step": 160000}],
        }, path)
    assert "mmengine" not in sys.modules
