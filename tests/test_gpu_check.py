"""benchmarks/gpu_check.py (issue 33, point 4) runs on the CPU on tiny shapes: its figures, its JSON file."""
import json
import subprocess
import sys
from pathlib import Path

from helpers import ENV

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_the_gpu_check_runs_on_the_cpu_and_writes_its_figures(tmp_path):
    out = tmp_path / "figures.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--steps", "5", "--output", str(out)], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(out.read_text())
    assert figures["device"] == "cpu" and figures["tiny"] is True and figures["failures"] == []
    # float32 and bfloat16 (float16 autocast is CUDA's): the same five seeded steps, close
    assert sorted(figures["losses"]) == ["bfloat16", "float32"] and all(len(v) == 5 for v in figures["losses"].values())
    assert figures["bfloat16_worst_relative_loss_difference"] <= 0.05
    for key in ("step_ms_stitch", "step_ms_by_hand", "step_ms_large_anchor_timm", "eval_images_per_s_shared",
                "eval_images_per_s_one_at_a_time", "step_ms_compiled", "peak_memory_mb",
                "loader_images_per_s_prefetcher_false", "loader_images_per_s_prefetcher_true"):
        assert figures[key] > 0, key
    assert "all targets met" in done.stdout
