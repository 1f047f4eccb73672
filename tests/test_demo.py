"""The Gradio demo in a real browser: headless Debian Chromium driven by Playwright (nothing downloaded).

Screenshots go to ``artifacts/demo/`` at the repository root (or ``$SNNET_ARTIFACTS``)."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from PIL import Image

from snnet.cli import main
from snnet.data.scenes import SceneConfig, render_scene
from helpers import ENV, free_port, write_config

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(os.environ.get("SNNET_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")) / "demo"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-quic"]


@contextmanager
def serving(run: Path, log_path: Path):
    """`snnet demo` of ``run`` on a free port, its output in ``log_path``: yields the page's address."""
    port = free_port()
    log = open(log_path, "w")
    server = subprocess.Popen([sys.executable, "-m", "snnet.cli", "demo", "--run", str(run), "--port", str(port)],
                              env=ENV, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                assert server.poll() is None, log_path.read_text()
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


@pytest.fixture
def demo_url(tmp_path):
    """A run trained for zero epochs (least squares, then every stitch evaluated), served by `snnet demo`. Its
    accuracies are all at chance, so the results get hand-made ones that rise with FLOPs: the best stitch under
    a budget is then the costliest that fits."""
    cfg = write_config(tmp_path, train={"epochs": 0, "init_images": 16})
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 0
    results = tmp_path / "run" / "results.jsonl"
    rows = sorted(map(json.loads, results.read_text().splitlines()), key=lambda r: r["flops"])
    results.write_text("".join(json.dumps({**r, "acc1": 10.0 + k}) + "\n" for k, r in enumerate(rows)))
    with serving(tmp_path / "run", tmp_path / "demo.log") as url:
        yield url


def test_missing_run_names_the_quickstart_command(tmp_path, capsys):
    assert main(["demo", "--run", str(tmp_path / "nothing")]) == 2
    assert "train one first with `snnet train --config quickstart`" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("SNNET_REQUIRE_BROWSER"),
                    reason="needs Debian's chromium (.ci/run installs it)")
def test_demo_in_a_browser(demo_url, tmp_path):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    scene = tmp_path / "scene.png"
    Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 3).image).save(scene)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not pixels")
    caption = "(document.querySelector('#caption') || {innerText: ''}).innerText"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        requested = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(demo_url)
        page.wait_for_function(f"{caption}.includes('Stitch 1 ')")  # the full budget: the large anchor
        page.set_input_files("input[type=file]", str(scene))
        page.wait_for_function("(document.querySelector('#prediction') || {innerText: ''}).innerText.includes('%')")
        before = (page.inner_text("#caption"), page.inner_text("#prediction"))
        page.screenshot(path=str(ARTIFACTS / "1_full_budget.png"))

        page.locator("input[type=range]").fill("0.001")  # the slider to its lowest budget: the small anchor
        page.wait_for_function(f"{caption}.includes('Stitch 0 ')")
        page.wait_for_function(f"document.querySelector('#prediction').innerText != {before[1]!r}")
        after = (page.inner_text("#caption"), page.inner_text("#prediction"))
        page.screenshot(path=str(ARTIFACTS / "2_lowest_budget.png"))
        assert after[0] != before[0] and after[1] != before[1]
        assert "route S[0-2]" in after[0] and "route L[0-5]" in before[0]
        assert len([line for line in after[1].splitlines() if line.endswith("%")]) == 5  # top-5 classes

        # a typed budget outside the slider's range is clamped, not answered with error badges
        box = page.locator("#budget input[type=number]")
        box.fill("99")
        box.press("Enter")
        page.wait_for_function(f"{caption}.includes('Stitch 1 ')")
        box.fill("-5")
        box.press("Enter")
        page.wait_for_function(f"{caption}.includes('Stitch 0 ')")
        page.wait_for_function("Number(document.querySelector('#budget input[type=number]').value) > 0")
        page.wait_for_function("(document.querySelector('#prediction') || {innerText: ''}).innerText.includes('%')")
        page.wait_for_timeout(500)  # the clamped value's second update settles
        page.screenshot(path=str(ARTIFACTS / "2b_clamped_budget.png"))
        assert "Error" not in page.inner_text("body")
        budget_shown = float(page.inner_text("#caption").split(" under ")[1].split()[0])
        assert budget_shown > 0  # the caption's budget is the clamped one, never below the stitch it picks

        # two budgets typed in quick succession: the second one is answered and stays in the box (the first answer
        # must not write its budget back over it)
        top = box.get_attribute("max")
        box.fill(box.get_attribute("min"))
        box.press("Enter")
        box.fill(top)
        box.press("Enter")
        page.wait_for_function(f"{caption}.includes('Stitch 1 ')")
        page.wait_for_timeout(1000)  # every answer still queued arrives
        assert "Stitch 1 " in page.inner_text("#caption") and box.input_value() == top

        # the int8 checkbox: the same stitch answers through its quantised ONNX file
        page.locator("#int8 input[type=checkbox]").check()
        page.wait_for_function(f"{caption}.includes('int8 ONNX file')")
        page.wait_for_function("(document.querySelector('#prediction') || {innerText: ''}).innerText.includes('%')")
        page.wait_for_function("!document.querySelector('.pending')")  # gradio dims outputs while it works
        page.wait_for_timeout(500)
        page.screenshot(path=str(ARTIFACTS / "2c_int8.png"))
        assert "Stitch 1 " in page.inner_text("#caption") and "Error" not in page.inner_text("body")

        page.reload()
        page.wait_for_function(f"{caption}.includes('Stitch')")
        page.set_input_files("input[type=file]", str(not_image))
        page.wait_for_function(f"{caption}.includes('is not an image')")
        body = page.inner_text("body")
        page.screenshot(path=str(ARTIFACTS / "3_not_an_image.png"))
        assert "notes.png is not an image: upload a PNG, JPEG or another image file." in body
        assert "Traceback" not in body
        browser.close()
    # fully offline: every request the page made went to the demo itself (no fonts, labels or assets fetched)
    assert requested and all(u.startswith((demo_url, "data:", "blob:")) for u in requested), \
        [u for u in requested if not u.startswith((demo_url, "data:", "blob:"))]
    assert all((ARTIFACTS / n).stat().st_size > 10_000 for n in ("1_full_budget.png", "2_lowest_budget.png"))
    assert "Traceback" not in (tmp_path / "demo.log").read_text()  # nothing the page sent broke the server


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("SNNET_REQUIRE_BROWSER"),
                    reason="needs Debian's chromium (.ci/run installs it)")
def test_segmentation_demo_in_a_browser(tmp_path):
    """A segmentation run's page: the answer at a readable size, its class legend, and no error anywhere."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    assert main(["train", "--config", "quickstart_segmentation", "--no-progress", "train.iterations=1",
                 "train.checkpoint_interval=1", "train.init_images=16", "data.shapes.num_train=32",
                 "data.shapes.num_val=8", "eval.visualize=0",
                 f"output_dir={tmp_path / 'run'}"]) == 0
    scene = tmp_path / "scene.png"
    Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 3).image).save(scene)
    with serving(tmp_path / "run", tmp_path / "demo.log") as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1100})
        page.goto(url)
        page.wait_for_function("(document.querySelector('#caption') || {innerText: ''}).innerText.includes('Stitch')")
        page.set_input_files("input[type=file]", str(scene))
        page.wait_for_function("document.querySelector('#legend') && document.querySelector('#legend').innerText.includes('%')")
        page.wait_for_function("document.querySelector('#prediction img') && document.querySelector('#prediction img').complete")
        width = page.evaluate("document.querySelector('#prediction img').naturalWidth")
        shown = page.evaluate("document.querySelector('#prediction img').getBoundingClientRect().width")
        legend = page.inner_text("#legend")
        page.screenshot(path=str(ARTIFACTS / "4_segmentation.png"))
        assert width >= 384 and shown >= 300, (width, shown)  # the 32x32 answer drawn large enough to read
        shares = [float(line.rsplit(":", 1)[1].strip(" %")) for line in legend.splitlines() if line.strip()]
        assert shares and abs(sum(shares) - 100) < 0.5 and ("background" in legend or "circle" in legend)
        assert "Error" not in page.inner_text("body")
        browser.close()
    assert "Traceback" not in (tmp_path / "demo.log").read_text()


@pytest.mark.parametrize("config", ["quickstart_segmentation", "quickstart_depth"])
def test_dense_runs_show_an_overlay_or_a_depth_map(config, tmp_path):
    """What the page shows for dense runs, without the browser: the model's own prediction, coloured."""
    import numpy as np
    import torch

    from snnet import build_model, load_config
    from snnet.config import dump_config
    from snnet.demo import DemoRun

    cfg = load_config(config)
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    metric = "mIoU" if config.endswith("segmentation") else "rmse"
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(
        {"stitch_id": s.id, "kind": s.kind, "route": s.describe(), "flops": model.flops(s.id),
         "gflops": model.flops(s.id) / 1e9, "params_m": 1.0, metric: float(s.id)}) + "\n" for s in model.stitches))
    run = DemoRun(tmp_path)
    image = Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 1).image)
    assert run.choose(1e9, None) == (max(run.by_id) if metric == "mIoU" else 0)  # rmse: lower is better
    shown, legend = run.predict(image, 20)
    assert shown.shape == (384, 384, 3) and 0 <= shown.min() and shown.max() <= 1  # 32x32 shown 12x larger
    x = run.transform(image)[None]
    with torch.no_grad():
        out = model.select(20)(x)
    pixels = np.asarray(image.resize((384, 384), Image.BILINEAR), dtype=np.float32) / 255
    if metric == "mIoU":
        from snnet.tasks._grid import palette
        labels = out[0].argmax(0).numpy()
        big = labels.repeat(12, 0).repeat(12, 1)  # nearest neighbour: every label pixel a 12x12 block
        expected = 0.5 * pixels + 0.5 * palette(out.shape[1], 255)[big] / 255
        np.testing.assert_allclose(shown, expected, atol=1e-6)
        ids, counts = np.unique(labels, return_counts=True)
        from snnet.data.scenes import SHAPES
        names = ["background", *SHAPES]
        for i, n in zip(ids, counts):  # the legend: every predicted class, its colour and share of the pixels
            assert f"{names[i] if i < len(names) else f'class {i}'}: {100 * n / labels.size:.1f} %" in legend
        assert legend.count("<li>") == len(ids)
    else:  # depth resized to the display, scaled to 0..1 over the image, magma_r: nearest brightest, farthest darkest
        from matplotlib import colormaps
        depth = torch.nn.functional.interpolate(out[:, :1], size=(384, 384), mode="bilinear",
                                                align_corners=False)[0, 0].numpy()
        assert np.ptp(depth) > 1e-3
        np.testing.assert_allclose(shown, colormaps["magma_r"]((depth - depth.min()) / np.ptp(depth))[..., :3], atol=1e-5)
        near, far = np.unravel_index(depth.argmin(), depth.shape), np.unravel_index(depth.argmax(), depth.shape)
        assert shown[near].sum() > shown[far].sum()
        assert f"{depth.min():.2f} m (near)" in legend and f"{depth.max():.2f} m (far)" in legend
    lo, hi = run.budget_range()
    cheapest = min(r["gflops"] for r in run.rows)
    assert cheapest <= lo < cheapest + 0.001 and hi >= max(r["gflops"] for r in run.rows)
    menu = run.choices()
    assert menu[0] == "best under the budget" and len(menu) == len(run.rows) + 1
    r0 = run.by_id[int(menu[1].split()[0])]
    assert menu[1] == f"{r0['stitch_id']} ({r0['kind']}, {r0['gflops']:.3f} GFLOPs, {metric} {r0[metric]:.2f})"


def test_api_calls_with_values_the_page_never_sends(demo_url, tmp_path):
    """The page's endpoint called directly: bad values are answered in the caption, files outside gradio's upload
    folder are refused, and the server logs no traceback."""
    from gradio_client import Client, handle_file

    client = Client(demo_url, verbose=False)
    scene = tmp_path / "scene.png"
    Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 3).image).save(scene)
    ok = client.predict(handle_file(str(scene)), 99, "best under the budget", api_name="/update")
    assert ok[3].startswith("**Stitch 1**") and ok[5] < 99  # clamped to the slider's top
    for budget, explicit, message in [("lots", "best under the budget", "could not convert string to float"),
                                      (None, "best under the budget", "float() argument must be"),
                                      (1, "999 (made up)", "stitch 999 is not among the 8 stitches"),
                                      (1, "several", "invalid literal for int()")]:
        answer = client.predict(None, budget, explicit, api_name="/update")
        assert answer[0] is None and message in answer[3], answer
    assert "Traceback" not in (tmp_path / "demo.log").read_text()
    secret = tmp_path / "secret.png"
    Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 1).image).save(secret)
    forged = {"path": str(secret), "meta": {"_type": "gradio.FileData"}}  # a server path, not an upload
    call = urllib.request.Request(f"{demo_url}gradio_api/call/update", method="POST",
                                  data=json.dumps({"data": [forged, 1, "best under the budget", False]}).encode(),
                                  headers={"Content-Type": "application/json"})
    event = json.loads(urllib.request.urlopen(call, timeout=30).read())["event_id"]
    stream = urllib.request.urlopen(f"{demo_url}gradio_api/call/update/{event}", timeout=60).read().decode()
    assert "event: error" in stream and "event: complete" not in stream, stream
    time.sleep(0.5)
    log = (tmp_path / "demo.log").read_text()  # gradio's own refusal, which it logs with a traceback
    assert log.count("Traceback") == 1 and "because it was not uploaded by a user" in log.splitlines()[-1]


def test_a_detection_run_shows_boxes_with_class_names_and_scores(tmp_path):
    """The detections the page draws: those scoring at least 0.5, on the enlarged image, each box and mask in
    its class's colour, labelled with class name and score, and listed best first."""
    import numpy as np
    import torch

    from snnet import build_model, load_config
    from snnet.config import dump_config
    from snnet.demo import DemoRun
    from snnet.tasks.detection.visualize import COLOURS

    cfg = load_config("quickstart_detection")
    torch.manual_seed(0)
    model = build_model(cfg, load_weights=False).eval()
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(
        {"stitch_id": s.id, "kind": s.kind, "route": s.describe(), "flops": model.flops(s.id),
         "gflops": model.flops(s.id) / 1e9, "params_m": 1.0, "bbox_AP": float(s.id)}) + "\n" for s in model.stitches))
    run = DemoRun(tmp_path)
    assert run.metric == "bbox_AP" and run.classes == ["circle", "square", "triangle", "star"]
    image = Image.fromarray(render_scene(SceneConfig(image_size=64), "val", 1).image)
    shown, legend = run.predict(image, 5)  # an untrained head: whatever it finds, drawn at 384 pixels
    assert shown.shape == (384, 384, 3) and "detection" in legend

    found = {"boxes": torch.tensor([[4.0, 8.0, 20.0, 30.0], [30.0, 30.0, 60.0, 50.0], [0.0, 0.0, 10.0, 10.0]]),
             "labels": torch.tensor([2, 4, 1]), "scores": torch.tensor([0.7, 0.9, 0.3]),
             "masks": torch.zeros(3, 1, 64, 64)}
    found["masks"][1, 0, 35:45, 35:55] = 1.0
    base = np.full((384, 384, 3), 0.5, np.float32)
    drawn, legend = run.spec.draw_answer([found], base, 6, run.classes, 0.5)
    assert legend.index("star: 0.90") < legend.index("square: 0.70") and "circle" not in legend  # 0.3: not shown
    assert "2 detections scoring 0.5 or more" in legend
    square, star = COLOURS[2] / 255, COLOURS[4] / 255
    np.testing.assert_allclose(drawn[8 * 6 + 60, 4 * 6], square, atol=1 / 255)  # the left edge of box 1, x 6
    np.testing.assert_allclose(drawn[40 * 6, 45 * 6], 0.55 * 0.5 + 0.45 * star, atol=2 / 255)  # inside its mask
    np.testing.assert_allclose(drawn[100, 300], 0.5, atol=1 / 255)  # outside every box and mask
    label = drawn[8 * 6 + 4:8 * 6 + 18, 4 * 6 + 4:4 * 6 + 60]  # box 1's label: text on a band of its colour
    assert (np.abs(label - square).sum(-1) < 0.02).mean() > 0.3 and (np.abs(label - square).sum(-1) > 0.3).any()
    assert run.spec.draw_answer([{k: v[2:] for k, v in found.items()}], base, 6, run.classes, 0.5)[1].count("<li>") == 0
    assert run.spec.draw_answer([found], base, 6, run.classes, 0.2)[1].count("<li>") == 3  # the page's minimum-score slider
