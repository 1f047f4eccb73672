"""Progress bars: tqdm on a terminal, whole lines in a log file (issue 28, point 4)."""
import io
import subprocess
import sys

from snnet.progress import LineBar
from helpers import ENV, write_config


def test_a_line_bar_writes_one_line_at_its_end():
    out = io.StringIO()
    bar = LineBar(total=5, desc="epoch 1/2", unit="step", stream=out)
    for _ in range(5):
        bar.update()
        bar.set_postfix(loss="0.5000")
    bar.close()
    bar.close()  # once only
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("epoch 1/2: 5/5 step in ") and lines[0].endswith(", loss=0.5000")


def test_a_long_bar_also_writes_a_line_per_interval():
    out = io.StringIO()
    items = list(LineBar(range(3), desc="evaluating", unit="batch", stream=out, interval_s=0.0))
    assert items == [0, 1, 2]
    lines = out.getvalue().splitlines()  # one per update (interval 0), then the closing one
    assert [line.split(" in ")[0] for line in lines] == ["evaluating: 1/3 batch", "evaluating: 2/3 batch",
                                                         "evaluating: 3/3 batch", "evaluating: 3/3 batch"]


def test_training_into_a_log_file_writes_lines_not_frames(tmp_path):
    cfg = write_config(tmp_path, train={"epochs": 2, "init_images": 16})
    with open(tmp_path / "log.txt", "w") as log:
        done = subprocess.run([sys.executable, "-m", "snnet.cli", "train", "--config", str(cfg)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=log, timeout=600)
    assert done.returncode == 0
    text = (tmp_path / "log.txt").read_text()
    assert "\r" not in text
    lines = text.splitlines()
    for desc in ("rendering train scenes: 96/96 img", "least-squares init: 16 img", "epoch 1/2: 6/6 step",
                 "epoch 2/2: 6/6 step", "evaluating 8 stitches: 2/2 batch"):
        assert sum(line.startswith(desc) for line in lines) == 1, (desc, lines)
