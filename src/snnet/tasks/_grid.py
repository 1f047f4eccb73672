"""The prediction grid of a dense run: per validation image a row of input, ground truth and the predictions of
the smallest, middle and largest stitch on the frontier of the task's metric."""
from __future__ import annotations

from pathlib import Path

from .._atomic import atomic_path
from ..results import frontier


def frontier_picks(rows: list[dict], metric: str, higher_is_better: bool) -> list[dict]:
    """The smallest, middle and largest stitch of the frontier (fewer when it is shorter)."""
    front = frontier(rows, metric, higher_is_better)
    return list({r["stitch_id"]: r for r in (front[0], front[len(front) // 2], front[-1])}.values())


def save_grid(path: Path, panels: list[list[tuple[str, object, dict]]]) -> Path:
    """``panels[i][j]`` = (title shown on the first row, pixels, ``imshow`` options); written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, cols = len(panels), max(len(r) for r in panels)
    fig = Figure(figsize=(2.3 * cols, 2.1 * rows + 0.4), dpi=100)
    FigureCanvasAgg(fig)
    for i, row in enumerate(panels):
        for j, (title, pixels, options) in enumerate(row):
            ax = fig.add_subplot(rows, cols, i * cols + j + 1)
            ax.imshow(pixels, **options)
            ax.set_axis_off()
            if i == 0:
                ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return path
