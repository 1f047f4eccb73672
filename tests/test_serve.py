"""snnet serve (issue 29, points 2, 3, 4, 6, 8): the policy and the scheduler with an injected clock and latency
table (no timing assertions), the Open Inference Protocol in-process (every stitch equal to eager PyTorch, the
one-file ONNX too, the budget parameters, the bad requests and their status codes, metrics), and a real server on a
loopback port called by tritonclient, stopped by SIGTERM."""
import base64
import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from snnet import from_pretrained
from snnet.serve import Budget, QueueFull, RequestError, Scheduler, Served, StitchCosts, choose, create_app, read_budget
from helpers import ENV, free_port, snnet, write_config

def costs() -> StitchCosts:
    """Three stitches: 80 % at 10 ms, 75 % at 5 ms, 70 % at 1 ms (batch 1), 4.5x that at batch 8."""
    return StitchCosts(gflops={0: 1.0, 1: 4.0, 2: 2.0}, metric={0: 70.0, 1: 80.0, 2: 75.0}, higher_is_better=True,
                       ms={0: {1: 1.0, 8: 4.5}, 1: {1: 10.0, 8: 45.0}, 2: {1: 5.0, 8: 22.5}})


COSTS = costs()  # read only; a scheduler, which learns into its table, gets its own


def test_latency_is_interpolated_between_the_batches_measured():
    assert COSTS.predicted_ms(1, 1) == 10.0 and COSTS.predicted_ms(1, 8) == 45.0
    assert COSTS.predicted_ms(1, 3) == pytest.approx(20.0)  # 10 + 35 * 2 / 7
    assert COSTS.predicted_ms(1, 15) == pytest.approx(80.0)  # beyond: the last slope
    one = StitchCosts({0: 1.0}, {}, True, {0: {2: 6.0}})
    assert one.predicted_ms(0, 1) == 6.0 and one.predicted_ms(0, 4) == 12.0


def test_the_policy_moves_to_cheaper_stitches_as_the_wait_grows():
    deadline = Budget(max_latency_ms=12.0)
    assert choose(deadline, COSTS, waited_ms=0.0, batch=1) == (1, True)  # 80 % fits in 10 ms
    assert choose(deadline, COSTS, waited_ms=3.0, batch=1) == (2, True)  # 3 + 10 > 12: the 75 % stitch
    assert choose(deadline, COSTS, waited_ms=8.0, batch=1) == (0, True)
    assert choose(deadline, COSTS, waited_ms=11.5, batch=1) == (0, False)  # none fits: the fastest, said so
    assert choose(deadline, COSTS, waited_ms=0.0, batch=8) == (0, True)  # a batch of 8 takes longer
    assert choose(Budget(max_gflops=2.5), COSTS, 99.0, 1) == (2, True)
    assert choose(Budget(stitch_id=1), COSTS, 99.0, 8) == (1, True)
    assert choose(Budget(), COSTS, 99.0, 1) == (1, True)  # no budget: the best stitch
    lower = StitchCosts(COSTS.gflops, {0: 3.0, 1: 1.0, 2: 2.0}, False, COSTS.ms)  # rmse: lower is better
    assert choose(Budget(max_latency_ms=6.0), lower, 0.0, 1) == (2, True)
    by_flops = StitchCosts(COSTS.gflops, {}, True, COSTS.ms)  # no results table: the costlier, the better
    assert choose(Budget(max_latency_ms=6.0), by_flops, 0.0, 1) == (2, True)


@pytest.mark.parametrize("parameters, message", [
    ({"stitch_id": 7}, "stitch_id 7 is not a stitch of this network (ids: 0..2)"),
    ({"stitch_id": "1"}, "stitch_id '1' is not a stitch of this network"),
    ({"stitch_id": True}, "stitch_id True is not a stitch of this network"),
    ({"max_gflops": 0.5}, "max_gflops 0.5 is below the cheapest stitch (1 GFLOPs)"),
    ({"max_gflops": 0}, "max_gflops must be a positive number, got 0"),
    ({"max_latency_ms": -3}, "max_latency_ms must be a positive number, got -3"),
    ({"max_latency_ms": "soon"}, "max_latency_ms must be a positive number, got 'soon'"),
    ({"stitch_id": 1, "max_latency_ms": 5}, "parameters give stitch_id and max_latency_ms: give one of"),
    ([1, 2], "parameters must be an object, got list"),
])
def test_bad_budgets_are_named(parameters, message):
    with pytest.raises(RequestError, match="^" + message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        read_budget(parameters, COSTS, None)
    assert read_budget({}, COSTS, 25.0) == Budget(max_latency_ms=25.0)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_of_one_stitch_run_as_one_batch_and_the_queue_is_bounded():
    clock = Clock()
    scheduler = Scheduler(lambda sid, x: x, costs(), max_batch=4, max_queue=5, clock=clock)
    one = torch.zeros(1, 3, 2, 2)
    futures = [scheduler.submit(one, Budget(stitch_id=2)), scheduler.submit(one, Budget(stitch_id=0)),
               scheduler.submit(one, Budget(stitch_id=2)), scheduler.submit(torch.zeros(2, 3, 2, 2), Budget(stitch_id=2)),
               scheduler.submit(one, Budget(stitch_id=2))]
    with pytest.raises(QueueFull, match=r"^the queue is full \(5 requests\): retry shortly$"):
        scheduler.submit(one, Budget())
    sid, batch = scheduler.next_batch()
    assert sid == 2 and [r.images.shape[0] for r in batch] == [1, 1, 2]  # up to 4 images; the fifth waits
    assert scheduler.next_batch()[0] == 0
    sid, batch = scheduler.next_batch()
    assert sid == 2 and len(batch) == 1 and scheduler.next_batch() is None
    # deadlines: the wait so far decides, at the time the batch is formed
    scheduler.submit(one, Budget(max_latency_ms=12.0))
    clock.now = 0.004  # 4 ms later: the 80 % stitch (10 ms) no longer fits
    assert scheduler.next_batch()[0] == 2
    assert not any(f.done() for f in futures)


@pytest.mark.parametrize("queued, expected", [(1, 1), (2, 2), (10, 0)])
def test_a_longer_queue_plans_a_cheaper_stitch(queued, expected):
    """Every queued deadline request, served in order in batches of the planned stitch, must be predicted in time:
    one request alone gets the 80 % stitch (10 ms); two share a batch that only the 75 % one finishes within 12 ms
    (7.5 ms at batch 2); ten need three batches, which only the cheapest keeps within it (2.5 ms a batch of 4)."""
    scheduler = Scheduler(lambda sid, x: x, costs(), max_batch=4, clock=Clock())
    for _ in range(queued):
        scheduler.submit(torch.zeros(1, 3, 2, 2), Budget(max_latency_ms=12.0))
    sid, batch = scheduler.next_batch()
    assert sid == expected and len(batch) == min(queued, 4)


def test_batches_slower_than_profiled_make_the_plan_cheaper():
    """Predictions follow what the batches measure (a machine busier than at start-up): after batches twice as
    slow as profiled, the 80 % stitch (now about 20 ms) no longer fits a 12 ms deadline."""
    table = costs()
    assert choose(Budget(max_latency_ms=12.0), table, 0.0, 1)[0] == 1
    for _ in range(30):
        table.observe(1, 1, 20.0)
    assert table.slowdown == pytest.approx(2.0, abs=0.1) and table.predicted_ms(1, 1) == pytest.approx(20, abs=1)
    assert choose(Budget(max_latency_ms=12.0), table, 0.0, 1)[0] == 2


def test_the_worker_answers_and_reports_missed_deadlines():
    runs = []
    scheduler = Scheduler(lambda sid, x: runs.append((sid, x.shape[0])) or x + sid, costs(), max_batch=8,
                          max_wait_ms=0.0)
    scheduler.start()
    try:
        sid, out, met, _ = scheduler.submit(torch.zeros(2, 3, 2, 2), Budget(stitch_id=1)).result(timeout=10)
        assert sid == 1 and out.shape == (2, 3, 2, 2) and float(out.max()) == 1.0 and met
        sid, _, met, _ = scheduler.submit(torch.zeros(1, 3, 2, 2), Budget(max_latency_ms=1e-6)).result(timeout=10)
        assert sid == 0 and not met
    finally:
        scheduler.stop()
    assert runs == [(1, 2), (0, 1)]
    with pytest.raises(RequestError, match="shutting down"):
        scheduler.submit(torch.zeros(1, 3, 2, 2), Budget())


# ---- the protocol, in-process ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    assert snnet("train", "--config", str(write_config(tmp, train={"epochs": 0}))) == 0
    return tmp / "run"


def _client(served: Served, **kw):
    from fastapi.testclient import TestClient

    ms = {s: {1: 1.0, 8: 2.0} for s in served.rows}
    scheduler = Scheduler(served.run, served.costs(ms), max_batch=4, max_wait_ms=0.0, max_queue=kw.pop("max_queue", 8))
    scheduler.start()
    return TestClient(create_app(served, scheduler, **kw)), scheduler


def _infer(client, x: torch.Tensor, **parameters):
    body = {"id": "q", "parameters": parameters, "inputs": [
        {"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
    return client.post("/v2/models/snnet/infer", json=body)


@pytest.mark.parametrize("backend", ["pytorch", "onnx"])
def test_every_stitch_answers_as_eager_pytorch(run, tmp_path, backend):
    onnx = None
    if backend == "onnx":
        onnx = tmp_path / "net.onnx"
        assert snnet("export", "--checkpoint", str(run), "--stitch", "all", "--format", "onnx", "--output", str(onnx),
                     "--no-progress") == 0
    served = Served(str(run), str(onnx) if onnx else None)
    client, scheduler = _client(served)
    model = from_pretrained(run / "model").eval()
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    try:
        for sid in model.stitch_ids:
            reply = _infer(client, x, stitch_id=sid)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["id"] == "q" and body["model_name"] == "snnet"
            assert body["parameters"]["stitch_id"] == sid and body["parameters"]["deadline_met"] is True
            out = np.asarray(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
            with torch.no_grad():
                np.testing.assert_allclose(out, model.select(sid)(x).numpy(), rtol=0, atol=1e-5)
        meta = client.get("/v2/models/snnet").json()
        assert meta["platform"] == ("onnxruntime" if onnx else "pytorch")
        assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
        assert [s["stitch_id"] for s in meta["parameters"]["stitches"]] == model.stitch_ids
    finally:
        scheduler.stop()


def test_budgets_and_the_image_endpoint(run):
    from io import BytesIO

    from PIL import Image

    served = Served(str(run))
    client, scheduler = _client(served, slo_ms=1e-6)
    x = torch.randn(1, 3, 32, 32)
    try:
        cheapest = min(served.rows, key=lambda s: served.rows[s]["gflops"])
        body = _infer(client, x).json()  # the server's SLO: nothing fits, the fastest answers and says so
        assert body["parameters"]["deadline_met"] is False
        body = _infer(client, x, max_gflops=served.rows[cheapest]["gflops"]).json()
        assert body["parameters"]["stitch_id"] == cheapest and body["parameters"]["deadline_met"] is True
        png = BytesIO()
        Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(png, format="PNG")
        reply = client.post("/v2/models/snnet/image?stitch_id=5", content=png.getvalue())
        assert reply.status_code == 200 and reply.json()["stitch_id"] == 5
        assert len(reply.json()["top5"]) == 5 and abs(sum(reply.json()["top5"].values()) - 1) < 0.5
        metrics = client.get("/metrics").text
        assert 'snnet_requests_total{status="200"} 3.0' in metrics
        assert "snnet_deadline_misses_total 1.0" in metrics and 'snnet_stitch_requests_total{stitch_id="5"} 1.0' in metrics
    finally:
        scheduler.stop()


def test_a_mean_budget_serves_the_runs_best_cascade_within_it(run, tmp_path):
    """cascade.jsonl of the run (snnet cascade): each answer is the cascade's, with its images' exit stitches."""
    import shutil

    from snnet.cascade import Cascade

    here = tmp_path / "run"
    shutil.copytree(run, here)
    points = [{"stitches": [0], "thresholds": [], "confidence": "max_prob", "gflops": 0.003, "acc1": 30.0},
              {"stitches": [0, 5, 1], "thresholds": [0.12, 0.1], "confidence": "max_prob", "gflops": 0.01,
               "acc1": 40.0}]
    (here / "cascade.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))
    served = Served(str(here))
    client, scheduler = _client(served)
    model = from_pretrained(here / "model").eval()
    torch.manual_seed(1)
    x = torch.randn(4, 3, 32, 32)
    try:
        body = _infer(client, x, max_mean_gflops=0.02).json()
        params = body["parameters"]
        cascade = Cascade(model, [0, 5, 1], [0.12, 0.1])
        with torch.no_grad():
            expected = cascade.run(x)
        assert params["cascade"] == [0, 5, 1] and params["thresholds"] == [0.12, 0.1]
        assert params["stitch_ids"] == [[0, 5, 1][k] for k in expected.exits.tolist()]
        assert params["gflops"] == pytest.approx(float(expected.flops.mean()) / 1e9)
        out = np.asarray(body["outputs"][0]["data"], np.float32).reshape(body["outputs"][0]["shape"])
        np.testing.assert_allclose(out, expected.logits.numpy(), rtol=0, atol=1e-5)
        assert _infer(client, x[:1], max_mean_gflops=0.005).json()["parameters"]["cascade"] == [0]
        reply = _infer(client, x, max_mean_gflops=0.001)
        assert reply.status_code == 400 and reply.json()["error"] == "no cascade fits 0.001 GFLOPs (the cheapest needs 0.003)"
        meta = client.get("/v2/models/snnet").json()
        assert [c["stitches"] for c in meta["parameters"]["cascades"]] == [[0], [0, 5, 1]]
        png = client.post("/v2/models/snnet/image?max_mean_gflops=0.02", content=PNG).json()
        assert png["cascade"] == [0, 5, 1] and png["stitch_id"] in (0, 5, 1) and len(png["top5"]) == 5
        assert 'snnet_stitch_requests_total{stitch_id="cascade1"} 2.0' in client.get("/metrics").text
    finally:
        scheduler.stop()


def _images(x, **extra):
    return {"inputs": [{"name": "images", "shape": list(x.shape), "datatype": "FP32", "data": x.reshape(-1).tolist(),
                        **extra}]}


X = torch.zeros(1, 3, 32, 32)
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010802000000907753de0000000c4944415478da63f8cf"
                    "c000000301010018dd8db00000000049454e44ae426082")  # one black pixel
BAD_REQUESTS = [  # (method, path, body (JSON) or bytes, status, error)
    ("get", "/v2/models/resnet", None, 404, "unknown model 'resnet': this server serves 'snnet'"),
    ("post", "/v2/models/resnet/infer", _images(X), 404, "unknown model 'resnet'"),
    ("post", "/v2/models/snnet/infer", {"inputs": [{**_images(X)["inputs"][0], "name": "pixels"}]}, 400,
     "inputs are ['pixels']: this model takes one input, images"),
    ("post", "/v2/models/snnet/infer", {"inputs": [{**_images(X)["inputs"][0], "datatype": "UINT8"}]}, 400,
     "input images has datatype 'UINT8': send FP32"),
    ("post", "/v2/models/snnet/infer", _images(torch.zeros(1, 3, 16, 16)), 400,
     "input images has shape [1, 3, 16, 16]: send [batch, 3, 32, 32]"),
    ("post", "/v2/models/snnet/infer", {"inputs": [{**_images(X)["inputs"][0], "data": [1.0] * 7}]}, 400,
     "input images has 7 values, its shape [1, 3, 32, 32] needs 3072"),
    ("post", "/v2/models/snnet/infer", _images(torch.zeros(5, 3, 32, 32)), 400,
     "input images holds 5 images: at most 4 a request (--max-batch)"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "parameters": {"stitch_id": 4}}, 400,
     "stitch_id 4 is not a stitch of this network (ids: 0..3, 5..8)"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "parameters": {"max_gflops": 1e-9}}, 400,
     "max_gflops 1e-09 is below the cheapest stitch"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "parameters": {"max_latency_ms": 0}}, 400,
     "max_latency_ms must be a positive number, got 0"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "parameters": {"max_mean_gflops": 1}}, 400,
     "max_mean_gflops chooses a cascade, and the run has no cascades (snnet cascade --run RUN finds them)"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "parameters": {"max_mean_gflops": 1, "max_gflops": 1}}, 400,
     "parameters give max_gflops and max_mean_gflops: give one of"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "outputs": [{"name": "probs"}]}, 400,
     "unknown output 'probs': this model gives output"),
    ("post", "/v2/models/snnet/infer", {"inputs": [{**_images(X)["inputs"][0], "data": None}]}, 400,
     "input images: data must be a list of numbers, got NoneType"),
    ("post", "/v2/models/snnet/infer", {**_images(X), "outputs": "output"}, 400,
     "outputs must be a list of objects, got str"),
    ("get", "/v2/models/snnet/versions/7", None, 404, "unknown version '7' of 'snnet': it has version '1' only"),
    ("post", "/v2/models/snnet/versions/2/infer", _images(X), 404, "unknown version '2' of 'snnet'"),
    ("post", "/v2/models/snnet/image?stitch=5", PNG, 400,
     "unknown query parameter 'stitch': give one of stitch_id, max_gflops, max_latency_ms, max_mean_gflops"),
    ("post", "/v2/models/snnet/infer", b"{not json", 400, "the body is not a JSON inference request"),
    ("post", "/v2/models/snnet/infer", {"inputs": "images"}, 400, "an inference request needs an inputs list"),
    ("post", "/v2/models/snnet/image", b"GIF89a not really", 400, "the body is not an image: send a JPEG or PNG file"),
    ("post", "/v2/models/snnet/image?max_gflops=lots", b"", 400, "the body is not an image"),
    ("post", "/v2/models/snnet/infer", b"x" * (2 * 1024 * 1024), 413, "over the server's 1 MB (--max-body-mb)"),
]


@pytest.mark.parametrize("method, path, body, status, error", BAD_REQUESTS, ids=[f"{b[1]}:{b[4][:30]}" for b in BAD_REQUESTS])
def test_bad_requests_are_4xx_with_a_json_error_and_the_server_goes_on(run, method, path, body, status, error):
    served = Served(str(run))
    client, scheduler = _client(served, max_body_mb=1)
    try:
        kw = {} if body is None else {"content": body} if isinstance(body, bytes) else {"json": body}
        reply = getattr(client, method)(path, **kw)
        assert reply.status_code == status and error in reply.json()["error"], reply.text
        assert _infer(client, X, stitch_id=0).status_code == 200  # and the next request is served
    finally:
        scheduler.stop()


def test_an_image_too_large_to_decode_is_400(run, monkeypatch):
    from io import BytesIO

    from PIL import Image

    served = Served(str(run))
    client, scheduler = _client(served)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses twice that: 10000 pixels here
    png = BytesIO()
    Image.new("RGB", (100, 100)).save(png, format="PNG")
    try:
        reply = client.post("/v2/models/snnet/image", content=png.getvalue())
        assert reply.status_code == 400 and reply.json()["error"].startswith(
            "the image is too large to decode: Image size (10000 pixels) exceeds limit of 2000 pixels")
    finally:
        scheduler.stop()


def test_a_full_queue_is_503_with_retry_after(run):
    served = Served(str(run))
    client, scheduler = _client(served, max_queue=1)
    scheduler.stop()  # nobody takes requests off: the first fills the queue
    scheduler.stopping = False
    scheduler.queue.append(object())
    reply = _infer(client, X)
    assert reply.status_code == 503 and reply.headers["retry-after"] == "1"
    assert reply.json() == {"error": "the queue is full (1 requests): retry shortly"}


# ---- a real server, tritonclient as its client ----------------------------------------------------------------
def test_tritonclient_against_a_real_server(run):
    import tritonclient.http as httpclient

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "snnet.cli", "serve", "--checkpoint", str(run), "--port",
                               str(port), "--max-batch", "4"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{port}")
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                time.sleep(0.2)
        assert client.is_server_live() and client.is_model_ready("snnet")
        meta = client.get_model_metadata("snnet")
        assert meta["inputs"][0]["name"] == "images" and len(meta["parameters"]["stitches"]) == 8
        model = from_pretrained(run / "model").eval()
        x = torch.randn(3, 3, 32, 32)
        for binary in (True, False):
            images = httpclient.InferInput("images", list(x.shape), "FP32")
            images.set_data_from_numpy(x.numpy(), binary_data=binary)
            outputs = [httpclient.InferRequestedOutput("output", binary_data=binary)]
            result = client.infer("snnet", [images], outputs=outputs, parameters={"stitch_id": 7})
            with torch.no_grad():
                np.testing.assert_allclose(result.as_numpy("output"), model.select(7)(x).numpy(), rtol=0, atol=1e-5)
            assert result.get_response()["parameters"]["stitch_id"] == 7
        with pytest.raises(Exception, match="stitch_id 4 is not a stitch of this network"):
            client.infer("snnet", [images], parameters={"stitch_id": 4})
    finally:
        server.send_signal(signal.SIGTERM)
        out, _ = server.communicate(timeout=60)
    assert server.returncode == 0, out
    assert f"on http://127.0.0.1:{port}/v2/models/snnet" in out and "Traceback" not in out


def test_two_ray_serve_replicas(run):
    """``snnet serve --replicas 2``: Ray's proxy spreads the protocol's requests over two replicas, each answering
    as eager PyTorch; SIGTERM stops Ray and the command."""
    pytest.importorskip("ray.serve")
    import urllib.request

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "snnet.cli", "serve", "--checkpoint", str(run), "--port",
                               str(port), "--replicas", "2"], env={**ENV, "RAY_USAGE_STATS_ENABLED": "0"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any("stops it" in line for line in lines):
            line = server.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert any("on 2 Ray Serve replicas" in line for line in lines), "".join(lines)
        model = from_pretrained(run / "model").eval()
        x = torch.randn(1, 3, 32, 32)
        replicas = set()
        for k in range(24):
            sid = model.stitch_ids[k % len(model.stitch_ids)]
            body = {"parameters": {"stitch_id": sid}, "inputs": [
                {"name": "images", "shape": [1, 3, 32, 32], "datatype": "FP32", "data": x.reshape(-1).tolist()}]}
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/snnet/infer",
                                             json.dumps(body).encode(), {"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=60) as reply:
                replicas.add(reply.headers["x-snnet-replica"])
                out = json.loads(reply.read())["outputs"][0]
            with torch.no_grad():
                np.testing.assert_allclose(np.asarray(out["data"], np.float32).reshape(out["shape"]),
                                           model.select(sid)(x).numpy(), rtol=0, atol=1e-5)
        assert len(replicas) == 2, replicas
    finally:
        server.send_signal(signal.SIGTERM)
        rest, _ = server.communicate(timeout=180)
    assert server.returncode == 0 and "snnet serve: stopped" in rest, "".join(lines) + rest


def test_max_replicas_autoscales_between_the_two_counts():
    """The deployment ``--replicas 1 --max-replicas 3`` builds (Ray not started): autoscaled from 1 to 3 replicas,
    each taking its queue's worth of requests."""
    pytest.importorskip("ray.serve")
    from snnet.serve import ray_application

    options = {"checkpoint": "unused", "max_batch": 4, "max_queue": 32}
    deployment = ray_application(options, 1, 3)._bound_deployment
    scaling = deployment._deployment_config.autoscaling_config
    assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 3, 4)
    assert deployment.max_ongoing_requests == 32
    fixed = ray_application(options, 2, 2)._bound_deployment
    assert fixed.num_replicas == 2 and fixed._deployment_config.autoscaling_config is None


@pytest.mark.parametrize("extra, message", [
    (["--max-replicas", "2"], "--max-replicas needs --replicas N, and at least N"),
    (["--replicas", "3", "--max-replicas", "2"], "--max-replicas 2 is below --replicas 3"),
])
def test_max_replicas_without_replicas_is_one_line(run, capsys, extra, message):
    assert snnet("serve", "--checkpoint", str(run), *extra) == 2
    assert capsys.readouterr().err.strip() == f"snnet: error: {message}"


@pytest.mark.parametrize("config", ["quickstart_segmentation", "quickstart_depth"])
def test_the_image_endpoint_answers_dense_runs_with_a_png(config, tmp_path):
    """Segmentation and depth answer an uploaded image with the demo's picture as a PNG (it was a 500: the tasks
    draw in floats, which PIL does not write) and its legend."""
    from io import BytesIO

    from PIL import Image

    from snnet import build_model, load_config
    from snnet.demo import DemoRun

    torch.manual_seed(0)
    build_model(load_config(config), load_weights=False).eval().save_pretrained(tmp_path / "model")
    served = Served(str(tmp_path / "model"))
    client, scheduler = _client(served)
    try:
        png = BytesIO()
        Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(png, format="PNG")
        sid = served.model.stitch_ids[2]
        reply = client.post(f"/v2/models/snnet/image?stitch_id={sid}", content=png.getvalue())
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["stitch_id"] == sid and body["summary"]
        picture = np.asarray(Image.open(BytesIO(base64.b64decode(body["png_base64"]))))
        # the demo's picture of the same answer (floats in [0, 1]), as 8-bit RGB
        (tmp_path / "results.jsonl").write_text("".join(json.dumps(
            {"stitch_id": s.id, "kind": s.kind, "route": s.describe(), "flops": 1, "gflops": 1e-9,
             served.model.primary_metric: 1.0}) + "\n" for s in served.model.stitches))
        shown, legend = DemoRun(tmp_path).predict(Image.open(BytesIO(png.getvalue())), sid)
        assert picture.dtype == np.uint8 and picture.shape == shown.shape and legend == body["summary"]
        assert np.abs(picture.astype(float) - np.round(shown * 255)).max() <= 1
    finally:
        scheduler.stop()
