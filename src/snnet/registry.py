"""The tasks snnet knows, by name, each with its model class (``Task.model_class``). Task classes add themselves
(``snnet.tasks.register_task``), as timm's models do; the config schema reads the table to check a config's task,
dataset and task keys, the commands to build one, ``config.json`` loading to rebuild a saved model."""
from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from .errors import SNNetError

BUILTIN = "snnet.tasks"  # importing it registers the built-in tasks


class Registry(Mapping):
    """Task name -> task class. The first read imports the built-in tasks (``import snnet`` imports nothing); a name
    registered twice by different classes is refused."""

    def __init__(self) -> None:
        self._entries: dict[str, type] = {}
        self._loaded = False

    def register(self, cls: type) -> type:
        model = cls.model_class
        if model.task != cls.name:
            raise SNNetError(f"task {cls.name!r} ({cls.__qualname__}) names the model class {model.__qualname__}, "
                             f"whose task is {model.task!r}")
        held = self._entries.setdefault(cls.name, cls)
        if held is not cls:
            raise SNNetError(f"task {cls.name!r} is registered twice: {held.__qualname__} and {cls.__qualname__}")
        return cls

    def _load(self) -> None:
        if not self._loaded:
            self._loaded = True  # first: the import reads the table while it fills it
            try:
                importlib.import_module(BUILTIN)
            except BaseException:
                self._loaded = False
                raise

    def __getitem__(self, name: str) -> type:
        self._load()
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(dict(self._entries))

    def __len__(self) -> int:
        self._load()
        return len(self._entries)


TASKS = Registry()
