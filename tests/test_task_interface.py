"""The task interface proven by a fifth task defined here, outside ``src/``: per-image regression of the share of
pixels the built-in scenes' objects cover. It is registered like the four built-in tasks and runs through the public
entry points (``snnet train`` / ``eval`` / ``flops`` / ``export``, ``from_pretrained``) with no change to snnet."""
import json
import math
from typing import Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field
from torch.utils.data import Dataset

from snnet import SNNet, SNNetError, from_pretrained
from snnet.cli import main
from snnet.config import RunConfig, TrainSection, load_config
from snnet.data import render_scene
from snnet.export import load_exported
from snnet.results import read_results
from snnet.tasks import TASKS, Task, register_task


class CoverModel(SNNet):
    """An SNNet whose one output is the covered share."""

    task = "toy_cover"
    primary_metric = "mae"
    higher_is_better = False
    pipeline_tag = "image-feature-extraction"


class CoverScenes(Dataset):
    """Normalised scenes and the share of their pixels any object covers."""

    def __init__(self, split: str, count: int, scenes, mean, std) -> None:
        self.items = []
        for i in range(count):
            scene = render_scene(scenes, split, i)
            image = torch.from_numpy(scene.image).permute(2, 0, 1).float() / 255
            image = (image - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
            self.items.append((image, torch.tensor(float((scene.semantic > 0).mean()))))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        return self.items[index]


class CoverTrainSection(TrainSection):
    loss: Literal["mse", "l1"] = "mse"


class CoverConfig(RunConfig):
    train: CoverTrainSection = Field(default_factory=CoverTrainSection)


class CoverTask(Task):
    name = "toy_cover"
    model_class = CoverModel
    datasets = ("shapes",)
    metric_directions = {"mae": False, "rmse": False}
    plot_metrics = (("mae", False),)
    report_metrics = ("mae", "rmse")
    config_class = CoverConfig  # one key of its own: train.loss
    num_sums = 3  # absolute errors, squared errors, images

    @classmethod
    def head_classes(cls, cfg) -> int:
        return 1  # one output

    def __init__(self, cfg, input_size, mean, std, progress=True, train=True) -> None:
        super().__init__(cfg, input_size, mean, std, progress, train)
        s = cfg.data.shapes
        self.val_set = CoverScenes("val", s.num_val, s.scene_config(), mean, std)
        self.train_set = CoverScenes("train", s.num_train, s.scene_config(), mean, std) if train else None
        self.init_set = self.train_set
        self.num_classes = 1

    def training_loss(self, model, batch, device, step=0):
        images, share = (t.to(device) for t in batch)
        loss = F.mse_loss if self.cfg.train.loss == "mse" else F.l1_loss
        return loss(model(images)[:, 0].float(), share)

    def eval_batch(self, model, batch, device):
        images, share = (t.to(device) for t in batch)
        err = model(images)[:, 0].double() - share.double()
        return torch.stack([err.abs().sum(), (err * err).sum(), torch.tensor(float(len(err)), dtype=torch.float64)])

    def finalize(self, sums):
        a, s, n = sums.tolist()
        return {"mae": a / max(n, 1), "rmse": math.sqrt(s / max(n, 1)), "images": int(n)}


CONFIG = {
    "task": "toy_cover",
    "model": {"anchors": [
        {"name": "deit3_small_patch16_224",
         "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 1}},
        {"name": "deit3_small_patch16_224",
         "kwargs": {"img_size": 32, "patch_size": 8, "embed_dim": 48, "depth": 4, "num_heads": 2, "num_classes": 1}}],
        "lora_rank": 2},
    "data": {"dataset": "shapes", "batch_size": 8, "workers": 0, "mean": [0.5] * 3, "std": [0.5] * 3,
             "shapes": {"image_size": 32, "num_train": 16, "num_val": 12}},
    "train": {"epochs": 1, "steps_per_epoch": 2, "warmup_epochs": 0, "init_images": 8, "init_batch_size": 8,
              "optimizer": "adamw", "lr": 1e-3, "ros_gap": 0.0, "loss": "l1"},
}


@pytest.fixture
def toy_task(monkeypatch):
    """CoverTask (and with it CoverModel) registered for one test (the decorator, called as a function), then
    removed."""
    monkeypatch.setattr(TASKS, "_entries", dict(TASKS._entries))  # the table as it was comes back after the test
    register_task(CoverTask)
    yield CoverTask


def test_a_fifth_task_runs_through_the_public_entry_points(toy_task, tmp_path, capsys):
    run = tmp_path / "run"
    config = tmp_path / "cover.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(run)}))
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    columns, rows = read_results(run / "results.jsonl")[0], read_results(run / "results.jsonl", "mae")
    model = from_pretrained(run / "model")
    assert type(model) is CoverModel and model.num_classes == 1
    assert [r["stitch_id"] for r in rows] == model.stitch_ids and {"mae", "rmse"} <= set(columns)
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the task's own key, no other task's
    assert saved["train"]["loss"] == "l1" and "mixup" not in saved["augment"] and "head" not in saved["model"]
    with pytest.raises(SNNetError, match="^config key 'train.loss' belongs to toy_cover: a classification run does "
                                         "not read it$"):
        load_config("quickstart", ["train.loss=l1"])
    assert (run / "pareto.png").is_file() and "Pareto frontier (mae, lower is better)" in capsys.readouterr().out

    # evaluation by hand: the saved model, stitch by stitch, on the validation scenes
    cfg = load_config(str(config))
    val = CoverScenes("val", 12, cfg.data.shapes.scene_config(), (0.5,) * 3, (0.5,) * 3)
    images, share = torch.stack([v[0] for v in val.items]), torch.stack([v[1] for v in val.items])
    for r in rows[:5]:
        with torch.no_grad():
            err = model.eval().select(r["stitch_id"])(images)[:, 0].double() - share.double()
        assert r["mae"] == pytest.approx(err.abs().mean().item(), rel=1e-5)
        assert r["images"] == 12

    # snnet eval of the run again: the same table
    before = (run / "results.jsonl").read_text()
    assert main(["eval", "--config", str(run / "config.yaml"), "--checkpoint", str(run), "--no-progress"]) == 0
    again = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines()]
    assert [(r["stitch_id"], r["mae"]) for r in again] == [(r["stitch_id"], r["mae"])
                                                           for r in map(json.loads, before.splitlines())]

    capsys.readouterr()
    assert main(["flops", "--config", str(config)]) == 0
    assert f"{len(model.stitch_ids)} stitches (v2, toy_cover)" in capsys.readouterr().out

    best = min(rows, key=lambda r: r["mae"])
    out = tmp_path / "best.safetensors"
    assert main(["export", "--checkpoint", str(run), "--stitch", str(best["stitch_id"]), "--format", "safetensors",
                 "--output", str(out)]) == 0
    exported = load_exported(out)
    with torch.no_grad():
        np.testing.assert_allclose(exported(images).numpy(), model.select(best["stitch_id"])(images).numpy(),
                                   rtol=1e-5, atol=1e-6)
    assert json.loads(out.with_name(out.name + ".json").read_text())["task"] == "toy_cover"


def test_an_unregistered_task_is_a_one_line_error(tmp_path, capsys):
    config = tmp_path / "cover.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    assert main(["flops", "--config", str(config)]) == 2
    assert capsys.readouterr().err.strip() == ("snnet: error: config key 'task' must be 'classification', "
                                               "'segmentation', 'depth' or 'detection', got 'toy_cover'")


def test_a_name_registered_twice_is_refused(toy_task):
    other_task = type("OtherCover", (CoverTask,), {})
    other_model = type("OtherCoverModel", (CoverModel,), {})
    with pytest.raises(SNNetError, match="task 'toy_cover' is registered twice: CoverTask and OtherCover"):
        register_task(other_task)
    other_task.model_class = other_model
    other_model.task = "toy_other"
    with pytest.raises(SNNetError, match="task 'toy_cover' \\(OtherCover\\) names the model class OtherCoverModel, "
                                         "whose task is 'toy_other'"):
        register_task(other_task)
    assert register_task(CoverTask) is CoverTask and TASKS["toy_cover"] is CoverTask  # the same class again: a no-op
