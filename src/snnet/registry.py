"""The tasks snnet knows, by name. Task classes add themselves (``snnet.tasks.register_task``), as timm's models
do; the config schema reads the table to check a config's task, dataset and task keys, the commands to build one."""
from __future__ import annotations

TASKS: dict[str, type] = {}  # task name -> its class (a snnet.tasks.Task)
