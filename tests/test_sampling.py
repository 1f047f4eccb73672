import json
from collections import Counter
from pathlib import Path

import pytest

from snnet import ROSSampler, ros_groups, best_under_budget, pareto_frontier
from snnet.config import load_config
from snnet.sampling import group_probabilities

TABLE = {r["stitch_id"]: r for r in map(json.loads, (Path(__file__).parent / "data" / "imagenet_deit3_s_l.jsonl").read_text().splitlines())}
FLOPS = {sid: r["flops"] for sid, r in TABLE.items()}


def test_s_l_groups_at_gap_1():
    groups = ros_groups(FLOPS, 1.0)
    assert [len(g) for g in groups] == [1] + [12] * 11 + [1]
    assert groups[0] == [0] and groups[-1] == [1]
    for g in groups:  # each group spans at most the gap
        gf = [FLOPS[i] / 1e9 for i in g]
        assert max(gf) - min(gf) <= 1.0
    assert sorted(i for g in groups for i in g) == sorted(FLOPS)


def test_group_rule_measures_from_the_first_stitch_of_a_group():
    flops = {0: 1.0e9, 1: 1.6e9, 2: 2.05e9, 3: 2.4e9, 4: 3.3e9}
    assert ros_groups(flops, 1.0) == [[0, 1], [2, 3], [4]]


def test_uniform_group_then_uniform_stitch_frequencies():
    groups = ros_groups(FLOPS, 1.0)
    sampler = ROSSampler(groups, seed=3)
    n = 65000
    counts = Counter(sampler.sample() for _ in range(n))
    group_of = {i: gi for gi, g in enumerate(groups) for i in g}
    per_group = Counter()
    for sid, c in counts.items():
        per_group[group_of[sid]] += c
    for gi in range(len(groups)):  # each group 1/13 (5000 draws), binomial sd ~ 68
        assert abs(per_group[gi] - n / 13) < 5 * 68
    for sid in groups[5]:  # each of the 12 stitches ~ 1/156 of draws
        assert abs(counts[sid] - n / 156) < 5 * (n / 156) ** 0.5


def test_k_weighted_group_probabilities():
    p = group_probabilities(4, k=2.0)
    raw = [0 / 2 + 1 / 4, 1 / 2 + 1 / 4, 2 / 2 + 1 / 4, 3 / 2 + 1 / 4]
    assert p == pytest.approx([r / sum(raw) for r in raw])
    sampler = ROSSampler([[0], [1], [2], [3]], k=2.0, seed=0)
    counts = Counter(sampler.sample() for _ in range(40000))
    for i in range(4):
        assert abs(counts[i] / 40000 - p[i]) < 0.01


def test_a_minimum_share_per_anchor():
    """Each anchor alone gets its share plus ROS's (its group's probability over the group's size), exactly the
    mixture; without a share the draws are ROS's own, number for number."""
    groups = ros_groups(FLOPS, 1.0)
    plain, shared = ROSSampler(groups, seed=7), ROSSampler(groups, seed=7, anchors=[0, 1], anchor_share=0.0)
    assert [plain.sample() for _ in range(200)] == [shared.sample() for _ in range(200)]
    sampler = ROSSampler(groups, seed=7, anchors=[0, 1], anchor_share=0.25)
    n = 40000
    counts = Counter(sampler.sample() for _ in range(n))
    for anchor in (0, 1):  # alone in its group of 13: 0.25 + 0.5 / 13
        p = 0.25 + 0.5 * (1 / 13)
        assert abs(counts[anchor] / n - p) < 5 * (p * (1 - p) / n) ** 0.5
    stitch = groups[5][0]
    p = 0.5 / 13 / 12
    assert abs(counts[stitch] / n - p) < 5 * (p / n) ** 0.5
    with pytest.raises(ValueError, match="anchor share 0.6 for 2 anchors is not a share of the steps"):
        ROSSampler(groups, anchors=[0, 1], anchor_share=0.6)


def test_the_model_gives_its_anchors_their_share():
    from snnet import SNNet
    from helpers import tiny_vit

    model = SNNet([tiny_vit(2, 32), tiny_vit(4, 48)])
    model.configure_sampling(0.0, seed=1, anchor_share=0.5)
    assert model.sampler.anchors == [0, 1]
    assert set(model.sampler.sample() for _ in range(50)) == {0, 1}  # every step an anchor alone
    assert load_config("quickstart", ["train.ros_anchor_share=0.2"]).train.ros_anchor_share == 0.2


def test_seeded_and_resumable():
    groups = ros_groups(FLOPS, 1.0)
    a, b = ROSSampler(groups, seed=5), ROSSampler(groups, seed=5)
    assert [a.sample() for _ in range(50)] == [b.sample() for _ in range(50)]
    state = a.state_dict()
    ahead = [a.sample() for _ in range(20)]
    c = ROSSampler(groups, seed=99)
    c.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip (lists for tuples)
    assert [c.sample() for _ in range(20)] == ahead
    assert [ROSSampler(groups, seed=6).sample() for _ in range(50)] != [ROSSampler(groups, seed=5).sample() for _ in range(50)]


def test_pareto_frontier_of_published_table():
    acc = {sid: r["acc1"] for sid, r in TABLE.items()}
    front = pareto_frontier(FLOPS, acc)
    assert front[0] == 0 and front[-1] == 1
    for a, b in zip(front, front[1:]):
        assert FLOPS[a] < FLOPS[b] and acc[a] < acc[b]
    for sid in FLOPS:  # nothing off the frontier beats a frontier point at equal or lower cost
        assert not any(FLOPS[sid] <= FLOPS[f] and acc[sid] > acc[f] for f in front) or sid in front


def test_pareto_hand_case_and_lower_is_better():
    flops = {0: 10, 1: 20, 2: 20, 3: 30, 4: 40}
    acc = {0: 50.0, 1: 60.0, 2: 65.0, 3: 64.0, 4: 70.0}
    assert pareto_frontier(flops, acc) == [0, 2, 4]
    err = {0: 5.0, 1: 4.0, 2: 4.5, 3: 3.0, 4: 3.5}
    assert pareto_frontier(flops, err, higher_is_better=False) == [0, 1, 3]


def test_best_under_budget():
    flops = {0: 10, 1: 20, 2: 20, 3: 30}
    acc = {0: 50.0, 1: 60.0, 2: 60.0, 3: 70.0}
    assert best_under_budget(flops, acc, 25) == 1  # tie on accuracy and FLOPs: lower id
    assert best_under_budget(flops, acc, 30) == 3
    assert best_under_budget(flops, acc, 9) is None


@pytest.mark.parametrize("same", [True, False])
def test_torchrun_ranks_draw_one_stitch_or_their_own(tmp_path, same):
    """train.ros_same_on_all_ranks (the segmentation recipes: mmengine seeded every rank alike) trains one stitch
    per step on all ranks; otherwise each rank draws its own (seed + rank)."""
    import subprocess
    import sys
    from helpers import ENV, free_port, write_config
    cfg = write_config(tmp_path, train={"ros_same_on_all_ranks": same, "init_images": 8},
                       data={"batch_size": 4, "shapes": {"image_size": 32, "num_train": 96, "num_val": 4}})
    script = Path(__file__).with_name("record_ros_draws.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(free_port()), str(script), str(tmp_path), "train", "--config", str(cfg), "--no-progress"]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    a, b = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(a) == len(b) == 12  # 96 images, 2 ranks of batch 4
    assert len(set(a)) > 1
    assert (a == b) == same
    for name in ("ade20k_setr_deit3_s_l", "coco_stuff10k_setr_deit3_b_l"):
        assert load_config(name).train.ros_same_on_all_ranks
    assert not load_config("imagenet_deit3_s_l").train.ros_same_on_all_ranks
    assert not load_config("nyuv2_dpt_deit3_s_l").train.ros_same_on_all_ranks
