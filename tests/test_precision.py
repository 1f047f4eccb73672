"""train.amp_dtype (issue 33, point 1 in part): float16 autocast with grad scaling on CUDA as the reference trains,
or bfloat16 autocast without a scaler on CUDA and on the CPU."""
import math

import pytest
import torch

from helpers import read_jsonl, snnet, tiny_vit, write_config
from snnet import SNNet, SNNetError, load_config
from snnet.distributed import autocast, grad_scaling

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
