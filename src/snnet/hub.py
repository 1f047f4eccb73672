"""Sharing trained models the Hugging Face way: safetensors + config.json + a model card (README.md) that holds
the stitch table, the frontier and the Pareto plot; ``push_to_hub`` uploads it, ``from_pretrained`` takes a
local directory or a Hub repo id (through the Hugging Face cache, so ``HF_HUB_OFFLINE=1`` works once cached)."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from huggingface_hub import HfApi, ModelCardData, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

from ._atomic import atomic_write_text
from .errors import SNNetError, first_line
from .results import frontier, result_rows

CARD_NAME = "README.md"
PLOT_NAME = "pareto.png"


def model_card(model, results: list[dict] | None = None, with_plot: bool = False) -> str:
    """The card's text: metadata (``library_name: snnet``), what the model is, how to load it, and per stitch
    its FLOPs and parameters (and metrics, when ``results`` are given) with the frontier marked."""
    task = model.task
    cfg = model.config.to_dict()
    names = [f"`{a['name']}` (depth {d}, width {w})" for a, d, w in zip(cfg["anchors"], model.depths, model.widths)]
    if cfg["version"] == "sn-net":
        between = f"its {len(names)} anchors, each a route from one anchor into the next larger one"
    elif len(names) == 2:
        between = "the two anchors, each a route through blocks of both"
    else:
        between = f"its {len(names)} anchors, each a route through blocks of up to three neighbours"
    method = {"v2": "SN-Netv2", "v1": "SN-Netv1", "sn-net": "SN-Net (CVPR 2023)"}[cfg["version"]]
    data = ModelCardData(library_name="snnet", pipeline_tag=model.pipeline_tag,
                         tags=["snnet", "sn-netv2", "stitchable-neural-networks", "vision-transformer", "timm"])
    metric = model.primary_metric
    rows = results or result_rows(model, {s.id: {} for s in model.stitches})
    has_metric = all(metric in r for r in rows)
    on_frontier = set()
    if has_metric:
        on_frontier = {r["stitch_id"] for r in frontier(rows, metric, model.higher_is_better)}
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {method} ({task}) over {', '.join(names[:-1])} and {names[-1]}", "",
        f"One stitchable network: {len(rows)} stitches between {between} with stitching layers between them "
        f"(LoRA rank {cfg['lora_rank']}). Pick a stitch at run time by "
        f"FLOPs, measured latency or accuracy. Made with snnet, an implementation of SN-Netv2 "
        f"(Pan et al., ECCV 2024, arXiv 2307.00154): `pip install snnet`.", "",
        "```python",
        "import snnet",
        "model = snnet.from_pretrained(\"<this repo id, or a local copy>\")",
        f"model.eval().select({sorted(on_frontier)[len(on_frontier) // 2] if on_frontier else rows[0]['stitch_id']})"
        "  # any stitch id below",
        "```", ""]
    if with_plot:
        lines += [f"![{metric} of every stitch against GFLOPs]({PLOT_NAME})", ""]
    metrics = [metric] if has_metric else []
    lines += ["| id | kind | GFLOPs | params (M) | " + "".join(f"{m} | " for m in metrics) + "frontier | route |",
              "| ---: | --- | ---: | ---: | " + "---: | " * len(metrics) + "--- | --- |"]
    for r in sorted(rows, key=lambda r: r["gflops"]):
        vals = "".join(f"{r[m]:.2f} | " for m in metrics)
        lines.append(f"| {r['stitch_id']} | {r['kind']} | {r['gflops']:.3f} | {r['params_m']:.2f} | {vals}"
                     f"{'yes' if r['stitch_id'] in on_frontier else ''} | `{r['route']}` |")
    if not has_metric:
        lines += ["", "No evaluation results were saved with this model."]
    return "\n".join(lines) + "\n"


def write_model_card(directory: str | Path, model, results: list[dict] | None = None,
                     plot: str | Path | None = None) -> Path:
    """``README.md`` (and a copy of the Pareto plot) in a saved model's directory."""
    directory = Path(directory)
    with_plot = plot is not None and Path(plot).is_file()
    if with_plot and Path(plot).resolve() != (directory / PLOT_NAME).resolve():
        shutil.copyfile(plot, directory / PLOT_NAME)
    path = directory / CARD_NAME
    atomic_write_text(path, model_card(model, results, with_plot))
    return path


def resolve(name_or_path: str | Path, revision: str | None = None) -> Path:
    """A local directory as it is; otherwise a Hub repo id, fetched into (or read from) the Hugging Face cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return path
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/")):
        raise SNNetError(f"no saved model at {name}: give a directory or a Hub repo id such as org/name")

    try:
        return Path(snapshot_download(name, revision=revision, allow_patterns=["*.json", "*.safetensors", "*.md", "*.png"]))
    except LocalEntryNotFoundError:
        raise SNNetError(f"{name} is not in the Hugging Face cache and the Hub cannot be reached "
                         f"(HF_HUB_OFFLINE or no network)") from None
    except RepositoryNotFoundError:
        raise SNNetError(f"no model {name} on the Hugging Face Hub (or it is private: log in)") from None
    except HfHubHTTPError as e:
        raise SNNetError(f"cannot download {name}: {first_line(e)}") from None


def push_to_hub(model, repo_id: str, results: list[dict] | None = None, plot: str | Path | None = None,
                private: bool = False, token: str | None = None, commit_message: str = "Upload snnet model") -> str:
    """Save the model with its card into a temporary folder and upload it to ``repo_id``; returns the commit URL."""
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, results=results, plot=plot)
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return str(getattr(info, "commit_url", info))
