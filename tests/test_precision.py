"""train.amp_dtype and train.compile (issue 33, point 1): float16 autocast with grad scaling on CUDA as the reference
trains, or bfloat16 autocast without a scaler on CUDA and on the CPU; blocks compiled in place."""
import math

import pytest
import torch

from helpers import read_jsonl, snnet, tiny_vit, write_config
from snnet import SNNet, SNNetError, load_config
from snnet.distributed import autocast, grad_scaling
from snnet.training import compile_blocks

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_bfloat16_autocasts_on_the_cpu_and_float16_leaves_it_alone():
    model = SNNet([tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)]).eval().select(7)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        with autocast(CPU, True, "bfloat16"):
            assert model(x).dtype == torch.bfloat16
        with autocast(CPU, True, "float16"):
            assert model(x).dtype == torch.float32
        with autocast(CPU, False, "bfloat16"):
            assert model(x).dtype == torch.float32
    # a scaler only where float16 needs one
    assert [grad_scaling(d, True, t) for d in (CPU, CUDA) for t in ("float16", "bfloat16")] == [False, False, True,
                                                                                                 False]
    assert not grad_scaling(CUDA, False, "float16")


def test_an_unknown_dtype_is_a_one_line_error():
    with pytest.raises(SNNetError, match=r"^config key 'train.amp_dtype' must be 'float16' or 'bfloat16', "
                                         r"got 'float8'$"):
        load_config("quickstart", ["train.amp_dtype=float8"])


def test_a_bfloat16_run_trains_on_the_cpu_and_resumes(tmp_path):
    cfg = write_config(tmp_path, train={"amp_dtype": "bfloat16", "steps_per_epoch": 2})
    assert snnet("train", "--config", str(cfg)) == 0
    assert snnet("train", "--config", str(cfg), "train.epochs=2") == 0  # resumes after epoch 0
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1] and all(math.isfinite(r["train_loss"]) for r in log)
    assert load_config(str(tmp_path / "run" / "config.yaml")).train.amp_dtype == "bfloat16"


def test_compiled_blocks_train_resume_and_keep_the_state_dict(tmp_path):
    """train.compile: each block and stitching layer compiled in place; the run saves the same keys, resumes, and a
    compiled block gives the eager block's outputs."""
    model = SNNet([tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)]).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        eager = model.select(7)(x)
        assert compile_blocks(model) == 3 + 6 + 3 + 2  # blocks, SL and LS layers
        torch.testing.assert_close(model(x), eager, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == keys
    assert all(blk._compiled_call_impl is not None for a in model.backbone.anchors for blk in a.blocks)
    cfg = write_config(tmp_path, train={"compile": True, "steps_per_epoch": 1})
    assert snnet("train", "--config", str(cfg)) == 0
    assert snnet("train", "--config", str(cfg), "train.epochs=2") == 0  # resumes after epoch 0
    log = read_jsonl(tmp_path / "run" / "log.jsonl")
    assert [r["epoch"] for r in log] == [0, 1] and all(math.isfinite(r["train_loss"]) for r in log)
    assert load_config(str(tmp_path / "run" / "config.yaml")).train.compile is True


def test_compile_takes_a_boolean():
    with pytest.raises(SNNetError, match=r"^config key 'train.compile' must be true or false, got 'fast'$"):
        load_config("quickstart", ["train.compile=fast"])


def test_a_compiler_that_fails_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """train.compile where torch.compile cannot compile (no C compiler, say): one line naming the key."""
    def failing(gm, inputs):
        raise RuntimeError("no C compiler found\ncc: command not found")

    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: original(self, backend=failing))
    cfg = write_config(tmp_path, train={"compile": True, "steps_per_epoch": 1})
    assert snnet("train", "--config", str(cfg)) == 2
    err = capsys.readouterr().err
    assert err == ("snnet: error: train.compile: torch.compile failed (RuntimeError: no C compiler found); set "
                   "train.compile=false\n")
