"""Each task reads its config through its own schema: its keys declared in its folder, other tasks' keys refused
unless a run's config.yaml of an earlier snnet holds them at their defaults, and what is saved lists only its own."""
import typing
from pathlib import Path

import pytest
import yaml

from snnet.config import RunConfig, Section, _section_of, dump_config, load_config, read_config
from snnet.errors import SNNetError
from snnet.tasks import TASKS

SAVED = Path(__file__).parent / "data" / "saved"
QUICKSTARTS = ["quickstart", "quickstart_segmentation", "quickstart_depth", "quickstart_detection"]


def dotted_keys(schema: type[Section], prefix: str = "") -> set[str]:
    """Every key of a schema, sections walked into (a list of sections once, as ``name.N``; an optional section,
    None by default, is one key)."""
    keys = set()
    for name, field in schema.model_fields.items():
        inner = _section_of(field.annotation)
        if inner is None or field.default is None:
            keys.add(prefix + name)
        else:
            many = typing.get_origin(field.annotation) is list
            keys |= dotted_keys(inner, f"{prefix}{name}.{'N.' if many else ''}")
    return keys


def dumped_keys(node, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node and not prefix.endswith("kwargs.") and not prefix.endswith("scene."):
        return set().union(*(dumped_keys(v, f"{prefix}{k}.") for k, v in node.items()))
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return set().union(*(dumped_keys(v, f"{prefix}N.") for v in node))
    return {prefix[:-1]}


@pytest.mark.parametrize("name", QUICKSTARTS)
def test_a_config_yaml_of_every_tasks_keys_loads_as_todays(name):
    """Runs saved before each task owned its keys list every task's keys, at defaults where not theirs, and depth's
    range twice (data.min_depth / max_depth, now model.head's): they load as the packaged config does."""
    old = load_config(SAVED / f"{name}.config.yaml")
    assert type(old) is TASKS[old.task].config_class
    assert dump_config(old) == dump_config(load_config(name))


@pytest.mark.parametrize("name", QUICKSTARTS)
def test_a_run_saves_only_its_tasks_keys_and_they_load_back(name):
    cfg = load_config(name)
    saved = yaml.safe_load(dump_config(cfg))
    assert dumped_keys(saved) == dotted_keys(type(cfg))
    assert read_config(saved) == cfg


def test_each_key_is_declared_once_and_in_its_tasks_folder():
    """A task's own keys are declared in ``snnet/tasks/<task>/config.py`` (or, shared by the dense tasks, in
    ``tasks/dense.py``); the core sections in ``snnet/config.py`` hold what every task reads."""
    core = dotted_keys(RunConfig)
    owners: dict[str, set[str]] = {}
    for name, task in TASKS.items():
        keys = dotted_keys(task.config_class)
        assert core <= keys
        for key in keys - core:
            owners.setdefault(key, set()).add(name)
        for section in _sections(task.config_class):
            for field in section.__annotations__:
                if field in section.model_fields:
                    assert section.__module__ in ("snnet.config", f"snnet.tasks.{name}.config", "snnet.tasks.dense"), \
                        (name, section, field)
    assert owners["model.head.min_depth"] == owners["model.head.max_depth"] == {"depth"}
    assert not any(k.endswith(("min_depth", "max_depth")) for k in core | set(owners) - {"model.head.min_depth",
                                                                                          "model.head.max_depth"})
    assert owners["augment.mixup"] == owners["train.distillation"] == {"classification"}
    assert owners["model.head.channels"] == {"segmentation", "depth", "detection"}
    assert owners["model.head.aux_weight"] == owners["eval.stride"] == {"segmentation"}
    assert "model.head.channels" not in dotted_keys(TASKS["classification"].config_class)


def _sections(schema: type[Section]) -> list[type[Section]]:
    """The schema and every section class under it, with their bases up to Section."""
    found = [c for c in schema.__mro__ if isinstance(c, type) and issubclass(c, Section) and c is not Section]
    for field in schema.model_fields.values():
        inner = _section_of(field.annotation)
        if inner is not None:
            found += _sections(inner)
    return found


@pytest.mark.parametrize("name,overrides,message", [
    ("quickstart", ["model.head.channels=8"],
     "config key 'model.head' belongs to segmentation, depth and detection: a classification run does not read it"),
    ("quickstart", ["eval.flip=false"],
     "config key 'eval.flip' belongs to depth: a classification run does not read it"),
    ("quickstart_depth", ["model.head.aux_weight=0.2"],
     "config key 'model.head.aux_weight' belongs to segmentation: a depth run does not read it"),
    ("quickstart_detection", ["augment.scale=[64,16]"],
     "config key 'augment.scale' belongs to segmentation: a detection run does not read it"),
    ("quickstart_detection", ["data.min_depth=1"],
     "config key 'data.min_depth' belongs to depth: a detection run does not read it"),
    ("quickstart_depth", ["augment.mixp=1"], "unknown config key 'augment.mixp' (known: hflip, repeated_aug, rotation, "
                                             "color_prob)"),
    ("quickstart", ["augment.mixp=1"], "unknown config key 'augment.mixp' (did you mean 'augment.mixup'?)"),
    ("quickstart", ["task=pose"], "config key 'task' must be 'classification', 'segmentation', 'depth' or 'detection', "
                                  "got 'pose'"),
])
def test_another_tasks_key_set_is_a_one_line_error(name, overrides, message):
    with pytest.raises(SNNetError) as e:
        load_config(name, overrides)
    assert str(e.value) == message


def test_another_tasks_key_at_its_default_is_dropped_and_the_earlier_depth_range_moves():
    assert load_config("quickstart", ["augment.rotation=2.5", "model.head.max_depth=10.0"]) == load_config("quickstart")
    raw = yaml.safe_load(dump_config(load_config("quickstart_depth")))
    del raw["model"]["head"]["max_depth"]
    raw["data"]["max_depth"] = 12
    moved = read_config(raw)
    assert moved.model.head.max_depth == 12.0 and "max_depth" not in moved.data.model_dump()


def test_read_config_takes_a_mapping():
    with pytest.raises(SNNetError, match="^a config is a mapping of sections, got a list$"):
        read_config([{"task": "depth"}])


def test_the_base_schema_refuses_a_task_with_keys_of_its_own():
    raw = yaml.safe_load(dump_config(load_config("quickstart_depth")))
    core = {"task": "depth", "model": {"anchors": raw["model"]["anchors"]}, "data": {"dataset": "shapes"}}
    with pytest.raises(ValueError, match="a depth config is read with DepthConfig, not RunConfig"):
        RunConfig.model_validate(core)


def test_a_config_without_a_dataset_reads_its_tasks_first(tmp_path):
    """data.dataset defaults to the task's benchmark layout (it was imagefolder for every task: a depth config without
    one was refused as 'not a depth dataset')."""
    anchors = [{"name": "deit3_small_patch16_224"}, {"name": "deit3_base_patch16_224"}]
    for task in ("classification", "segmentation", "depth", "detection"):  # the built-in tasks
        path = tmp_path / f"{task}.yaml"
        path.write_text(yaml.safe_dump({"task": task, "model": {"anchors": anchors}, "data": {"root": "/data"}}))
        cfg = load_config(str(path))
        assert cfg.data.dataset == TASKS[task].datasets[0], task
        assert load_config(str(path), ["data.dataset=shapes"]).data.dataset == "shapes"
