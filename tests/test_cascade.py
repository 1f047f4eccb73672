"""Cascades over stitches: exits, the FLOPs ledger, prefix reuse, the search on training images only, the command."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
import yaml

from helpers import TINY, lora_model, read_jsonl, tiny_vit
from snnet import SNNet
from snnet.cascade import Cascade, StageScores, exit_flops, resume_points, search, spread
from snnet.cli import main
from snnet.errors import SNNetError
from snnet.flops import step_flops, stitch_flops
from snnet.stitch_space import route_steps


@pytest.fixture(scope="module")
def model():
    return lora_model(tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2))


def stitch_of(model, kind: str, nth: int = 0) -> int:
    return [s.id for s in model.stitches if s.kind == kind][nth]


def eager(model, sid: int, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.select(sid)(x)


def test_never_exiting_early_gives_the_last_stage_and_always_the_first(model):
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    small, sl, large = 0, stitch_of(model, "SL", 1), 1
    never = Cascade(model, [small, sl, large], [1.0, 1.0]).run(x)  # a softmax of 10 classes never reaches 1
    assert torch.allclose(never.logits, eager(model, large, x), atol=1e-5)
    assert never.exits.tolist() == [2] * 6
    always = Cascade(model, [small, sl, large], [0.0, 0.0]).run(x)
    assert torch.allclose(always.logits, eager(model, small, x), atol=1e-5)
    assert always.exits.tolist() == [0] * 6
    assert always.flops.tolist() == [model.flops(small)] * 6


def test_each_image_gets_its_exit_stages_answer_and_cost(model):
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    first, second = 0, stitch_of(model, "SL", 1)
    conf = eager(model, first, x).softmax(-1).max(-1).values
    threshold = float(conf.median())
    out = Cascade(model, [first, second], [threshold]).run(x)
    leave = conf >= threshold
    assert 0 < int(leave.sum()) < 8
    assert out.exits.tolist() == [0 if b else 1 for b in leave.tolist()]
    assert torch.allclose(out.logits[leave], eager(model, first, x)[leave], atol=1e-5)
    assert torch.allclose(out.logits[~leave], eager(model, second, x)[~leave], atol=1e-5)
    costs = exit_flops([model.stitch(first), model.stitch(second)], model.shapes)
    assert out.flops.tolist() == [costs[0] if b else costs[1] for b in leave.tolist()]


def test_a_stage_resumes_from_the_stage_that_ran_the_shared_step(model):
    """SL stitches leaving the small anchor later, then earlier: the third shares the first's blocks only, which the
    second never ran itself (it resumed from the first past them)."""
    sls = sorted((s for s in model.stitches if s.kind == "SL"), key=lambda s: -s.segments[0].last)
    late, early = sls[0], sls[-1]
    assert late.segments[0].last > early.segments[0].last
    cascade = Cascade(model, [0, late.id, early.id], [1.0, 1.0])
    assert cascade.resume[2][0] == 0
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(cascade(x), eager(model, early.id, x), atol=1e-5)


def test_the_flops_ledger_against_a_hand_count(model):
    small, sl = model.stitch(0), model.stitch(stitch_of(model, "SL", 1))
    steps_small, steps_sl = route_steps(small), route_steps(sl)
    shared = [a for a, b in zip(steps_small, steps_sl) if a == b]
    assert len(shared) >= 2  # the embedding and the small anchor's first block at least
    by_hand = stitch_flops(small, model.shapes) + stitch_flops(sl, model.shapes) - sum(
        step_flops(s, model.shapes) for s in shared)
    assert exit_flops([small, sl], model.shapes) == [stitch_flops(small, model.shapes), by_hand]
    assert resume_points([small, sl]) == [(None, 0), (0, len(shared))]


def test_a_later_stage_runs_only_the_blocks_it_does_not_share(model):
    """Block calls counted by hooks: the second stage runs its route past the shared prefix, for the images left."""
    first, second = model.stitch(0), model.stitch(stitch_of(model, "SL", 1))
    ran = Counter()
    hooks = [b.register_forward_hook(lambda mod, inp, out, key=(a, i): ran.update({key: inp[0].shape[0]}))
             for a, anchor in enumerate(model.backbone.anchors) for i, b in enumerate(anchor.blocks)]
    try:
        x = torch.randn(5, 3, 32, 32)
        Cascade(model, [first.id, second.id], [1.0]).run(x)
    finally:
        for h in hooks:
            h.remove()
    blocks = lambda st: {(s.part, s.index) for s in route_steps(st) if s.kind == "block"}
    assert ran == Counter({key: 5 for key in blocks(first) | blocks(second)})  # shared blocks once, not twice
    assert sum(ran.values()) < 5 * (len(blocks(first)) + len(blocks(second)))


@pytest.mark.parametrize("stages, thresholds, message", [
    ([0, 999], [0.5], "the network has no stitch 999"),
    ([0, 1], [1.5], "a cascade threshold is a confidence in [0, 1], got 1.5"),
    ([0, 1], [float("nan")], "a cascade threshold is a confidence in [0, 1], got nan"),
    ([0, 1], [-0.1], "got -0.1"),
    ([0, 1], [], "2 stages take 1 thresholds"),
    ([0, 0], [0.5], "a cascade's stages repeat a stitch"),
    ([], [], "a cascade needs at least one stage"),
])
def test_bad_cascades_are_one_line_errors(model, stages, thresholds, message):
    with pytest.raises(SNNetError, match=None) as e:
        Cascade(model, stages, thresholds)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_search_finds_the_frontier_of_a_hand_made_case():
    """Stage A is right on the images it is sure of; B on all: leaving A at 0.9 keeps B's accuracy at less cost."""
    conf_a = np.array([0.95, 0.95, 0.5, 0.5])
    scores = {0: StageScores(conf_a, np.array([1, 1, 0, 0], bool), np.ones(4, bool)),
              1: StageScores(np.full(4, 0.99), np.ones(4, bool), np.ones(4, bool))}
    costs = lambda stages: [1e9 * {(0,): [1], (1,): [4], (0, 1): [1, 4.5]}[stages][k] for k in range(len(stages))]
    front = search(scores, costs, max_stages=2, grid=5)
    assert front[0] == {"stitches": [0], "thresholds": [], "gflops": 1.0, "acc1": 50.0}
    best = front[-1]
    assert best["stitches"] == [0, 1] and best["acc1"] == 100.0
    assert best["gflops"] == pytest.approx(0.5 * 1 + 0.5 * 4.5) and best["thresholds"][0] > 0.5
    assert all(a["gflops"] < b["gflops"] and a["acc1"] < b["acc1"] for a, b in zip(front, front[1:]))
    assert len(spread(front, 1)) == 1 and spread(front, 10) == front


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cascade")
    cfg = json.loads(json.dumps(TINY))
    cfg["data"]["shapes"].update(num_train=64, num_val=24)
    cfg["train"].update(init_images=16)
    cfg["output_dir"] = str(root / "run")
    (root / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(root / "tiny.yaml"), "--no-progress"]) == 0
    return root / "run"


def test_the_command_calibrates_on_training_images_only_and_writes_its_table(run, monkeypatch, capsys):
    import snnet.cascade
    import snnet.data.scenes as scenes

    rendered, seen_before_validation = [], []
    render = scenes.render_scene
    monkeypatch.setattr(scenes, "render_scene", lambda config, split, index: rendered.append(split) or render(
        config, split, index))
    evaluate = snnet.cascade.evaluate_cascades

    def validating(*a, **k):
        seen_before_validation.extend(rendered)
        return evaluate(*a, **k)

    monkeypatch.setattr(snnet.cascade, "evaluate_cascades", validating)
    assert main(["cascade", "--run", str(run), "--calibration-images", "40", "--max-stages", "2", "--points", "4",
                 "--no-progress"]) == 0
    assert seen_before_validation and set(seen_before_validation) == {"train"}  # the search saw no validation image
    assert len(seen_before_validation) == 40 and rendered.count("val") == 24  # each validation image read once
    rows = read_jsonl(run / "cascade.jsonl")
    assert 1 <= len(rows) <= 4
    model = SNNet.from_pretrained(run / "model")
    for r in rows:
        assert set(r) == {"stitches", "thresholds", "confidence", "gflops", "acc1", "acc5", "loss", "images",
                          "exit_share", "calibration_gflops", "calibration_acc1", "calibration_images"}
        assert r["images"] == 24 and r["calibration_images"] == 40 and r["confidence"] == "max_prob"
        assert len(r["thresholds"]) == len(r["stitches"]) - 1 and len(r["exit_share"]) == len(r["stitches"])
        assert sum(r["exit_share"]) == pytest.approx(1.0)
        costs = exit_flops([model.stitch(s) for s in r["stitches"]], model.shapes)
        assert r["gflops"] == pytest.approx(sum(s * c for s, c in zip(r["exit_share"], costs)) / 1e9)
    assert (run / "pareto_cascade.png").stat().st_size > 10_000
    assert "operating points" in capsys.readouterr().out


def test_a_run_without_results_is_a_one_line_error(run, tmp_path, capsys):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(run, bare)
    (bare / "results.jsonl").unlink()
    assert main(["cascade", "--run", str(bare)]) == 2
    err = capsys.readouterr().err.strip()
    assert "no results.jsonl beside" in err and "evaluate the run first" in err and "\n" not in err


def test_select_picks_the_most_accurate_cascade_within_a_mean_budget(run, tmp_path, capsys):
    rows = [{"stitches": [0, 5], "thresholds": [0.4], "confidence": "max_prob", "gflops": 0.002, "acc1": 40.0},
            {"stitches": [0, 1], "thresholds": [0.6], "confidence": "max_prob", "gflops": 0.004, "acc1": 45.0,
             "acc5": 90.0, "exit_share": [0.25, 0.75]},
            {"stitches": [1], "thresholds": [], "confidence": "max_prob", "gflops": 0.005, "acc1": 44.0}]
    path = tmp_path / "cascade.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["select", "--results", str(path), "--cascade", "--max-gflops", "0.0045"]) == 0
    out = capsys.readouterr().out
    assert "stitches [0, 1], thresholds [0.6]" in out and "acc1 45.00, acc5 90.00" in out and "25 %, 75 %" in out
    assert main(["select", "--results", str(path), "--cascade", "--max-gflops", "0.0025"]) == 0
    assert "stitches [0, 5]" in capsys.readouterr().out


@pytest.mark.parametrize("content, extra, message", [
    (None, ["--max-gflops", "1"], "no cascades at"),
    ('{"stitches": [0, 1], "thresholds": [1.5], "gflops": 0.1, "acc1": 40}\n', ["--max-gflops", "1"],
     "a cascade threshold is a confidence in [0, 1], got 1.5"),
    ('{"stitches": [0, 1], "thresholds": [0.5], "gflops": -1, "acc1": 40}\n', ["--max-gflops", "1"],
     "line 1: gflops is -1, not a number of at least 0"),
    ('{"stitches": "0,1", "thresholds": [0.5], "gflops": 1, "acc1": 40}\n', ["--max-gflops", "1"],
     "line 1: stitches is '0,1', not a list of stitch ids"),
    ("not json\n", ["--max-gflops", "1"], "line 1 is not a JSON object"),
    ('{"stitches": [0, 1], "thresholds": [0.5], "gflops": 0.1, "acc1": 40}\n', ["--max-gflops", "0.01"],
     "no cascade fits 0.01 GFLOPs (the cheapest needs 0.100)"),
    ('{"stitches": [0, 1], "thresholds": [0.5], "gflops": 0.1, "acc1": 40}\n', ["--max-latency-ms", "5"],
     "a cascade's budget is its mean GFLOPs per image: give --max-gflops"),
])
def test_select_cascade_bad_input_is_one_line(tmp_path, capsys, content, extra, message):
    path = tmp_path / "cascade.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["select", "--results", str(path), "--cascade", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_a_cascade_over_sn_net_v1_stitches_equals_its_stages(images):
    model = SNNet([tiny_vit(3, 32, seed=1), tiny_vit(6, 48, heads=3, seed=2)], version="v1", lora_rank=4).eval()
    later = [s.id for s in model.stitches if s.kind != "anchor"][-1]
    assert torch.allclose(Cascade(model, [0, later], [1.0])(images), eager(model, later, images), atol=1e-5)
    assert torch.allclose(Cascade(model, [0, later], [0.0])(images), eager(model, 0, images), atol=1e-5)


def test_the_command_refuses_torchrun_and_a_table_of_another_network(run, tmp_path, monkeypatch, capsys):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(run, other)
    rows = read_jsonl(other / "results.jsonl")
    (other / "results.jsonl").write_text("".join(json.dumps({**r, "stitch_id": r["stitch_id"] + 1000}) + "\n"
                                                 for r in rows))
    assert main(["cascade", "--run", str(other)]) == 2
    assert "has no row for a stitch of" in capsys.readouterr().err
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["cascade", "--run", str(run)]) == 2
    assert capsys.readouterr().err.strip() == "snnet: error: snnet cascade runs in one process: start it without torchrun"


@pytest.mark.parametrize("stages", ["0", "4", "99999999999999999999"])
def test_a_search_over_too_many_stages_is_one_line_before_any_work(run, capsys, stages):
    assert main(["cascade", "--run", str(run), "--max-stages", stages]) == 2
    err = capsys.readouterr().err.strip()
    assert ("--max-stages must be 1 to 3, got 4" in err if stages == "4" else "--max-stages" in err) and "\n" not in err
    with pytest.raises(SNNetError, match="--max-stages must be 1 to 3, got 10"):
        search({}, lambda stages: [], max_stages=10)
