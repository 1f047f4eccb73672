"""Run by torchrun from test_sampling.py: ``snnet train`` (arguments after the first), every ROS draw of this rank
written to ``<first argument>/rank<R>.json``."""
import json
import os
import sys
from pathlib import Path

from snnet.cli import main
from snnet.sampling import ROSSampler

draws: list[int] = []
sample = ROSSampler.sample


def recorded(self) -> int:
    draws.append(sample(self))
    return draws[-1]


ROSSampler.sample = recorded
code = main(sys.argv[2:])
Path(sys.argv[1], f"rank{os.environ['RANK']}.json").write_text(json.dumps(draws))
sys.exit(code)
