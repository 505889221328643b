"""`trt-distri serve` over real HTTP on 127.0.0.1 (trt_distri.serve): order, images, refusals, queue, cancellation."""
from __future__ import annotations

import base64
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import numpy as np
import pytest

from serve_client import get_json, metrics, post, wait_for
from trt_distri.cli import main
from trt_distri.png import read_png

PROMPT = "a red fox in the snow"
LONG = {"prompt": PROMPT, "steps": 150, "seed": 9}  # a few seconds on the CPU: holds the worker


def cli_image(workdir, tmp_path, seed: int, steps: int = 3) -> np.ndarray:
    out = tmp_path / f"cli-{seed}.png"
    assert main(["run", str(workdir), "--prompt", PROMPT, "--negative-prompt", "blurry", "--device", "cpu",
                 "--steps", str(steps), "--seed", str(seed), "-o", str(out), "--overwrite"]) == 0
    return read_png(out.read_bytes())


def _post_in_thread(url: str, path: str, body, results: dict, key) -> threading.Thread:
    def go():
        results[key] = post(url, path, body)
        results.setdefault("order", []).append(key)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_concurrent_requests_answered_in_order_with_the_cli_images(start_server, serve_workdir, tmp_path):
    url = start_server()
    results: dict = {}
    threads = []
    for i, seed in enumerate([4, 5, 6, 7]):  # each sent once the previous one is queued: a known arrival order
        body = {"prompt": PROMPT, "negative_prompt": "blurry", "steps": 3, "seed": seed}
        threads.append(_post_in_thread(url, "/v1/generate", body, results, seed))
        wait_for(lambda: metrics(url)["counts"]["accepted"] == i + 1, f"request {i} to be queued")
    for t in threads:
        t.join(120)
    assert results["order"] == [4, 5, 6, 7]
    for seed in [4, 5, 6, 7]:
        status, headers, png = results[seed]
        assert status == 200 and headers["content-type"] == "image/png" and headers["x-seed"] == str(seed)
        np.testing.assert_array_equal(read_png(png), cli_image(serve_workdir, tmp_path, seed))
    m = metrics(url)
    assert m["counts"]["completed"] == 4 and m["latency_s"]["count"] == 4 and m["queue_depth"] == 0


def test_openai_shape_gives_the_cli_images(start_server, serve_workdir, tmp_path):
    url = start_server()
    status, _, body = post(url, "/v1/images/generations", {"prompt": PROMPT, "n": 2, "size": "128x128",
                                                           "response_format": "b64_json", "negative_prompt": "blurry",
                                                           "steps": 3, "seed": 20, "model": "any"})
    assert status == 200
    data = json.loads(body)["data"]
    assert [d["seed"] for d in data] == [20, 21]
    for d in data:
        np.testing.assert_array_equal(read_png(base64.b64decode(d["b64_json"])),
                                      cli_image(serve_workdir, tmp_path, d["seed"]))


BAD = [
    ("/v1/generate", b"{not json", "not JSON", None),
    ("/v1/generate", b"[1, 2]", "not a JSON object", None),
    ("/v1/generate", {"steps": 3}, "a prompt is needed", "prompt"),
    ("/v1/generate", {"prompt": PROMPT, "steps": 0}, "invalid steps", None),
    ("/v1/generate", {"prompt": PROMPT, "steps": 1001}, "invalid steps", None),
    ("/v1/generate", {"prompt": PROMPT, "steps": "ten"}, "invalid steps", "steps"),
    ("/v1/generate", {"prompt": PROMPT, "seed": True}, "invalid seed", "seed"),
    ("/v1/generate", {"prompt": PROMPT, "width": 256}, "invalid size", None),
    ("/v1/generate", {"prompt": PROMPT, "scheduler": "lms"}, "unknown scheduler", None),
    ("/v1/generate", {"prompt": PROMPT, "timeout": 10_000}, "invalid timeout", "timeout"),
    ("/v1/generate", {"prompt": PROMPT, "cfg": 3}, "unknown field", "cfg"),
    ("/v1/images/generations", {"prompt": PROMPT, "size": "256x256"}, "invalid size", None),
    ("/v1/images/generations", {"prompt": PROMPT, "size": "big"}, "invalid size", "size"),
    ("/v1/images/generations", {"prompt": PROMPT, "response_format": "url"}, "not supported", "response_format"),
    ("/v1/images/generations", {"prompt": PROMPT, "n": 5}, "invalid n", "n"),
    ("/v1/images/generations", {"prompt": PROMPT, "n": 0}, "invalid n", "n"),
]


def test_bad_requests_get_400_with_a_json_error(start_server):
    url = start_server(max_images=4, timeout_s=60)
    for path, body, message, param in BAD:
        status, headers, raw = post(url, path, body)
        assert status == 400, (body, raw)
        error = json.loads(raw)["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error" and error["param"] == param
    m = metrics(url)
    assert m["bad_requests"] == len(BAD) and m["counts"]["accepted"] == 0


def test_full_queue_gets_503_and_the_loop_stays_responsive(start_server):
    url = start_server(max_queue=1)
    results: dict = {}
    long = _post_in_thread(url, "/v1/generate", LONG, results, "long")
    wait_for(lambda: metrics(url)["running"] == 1, "the long generation to start")
    queued = _post_in_thread(url, "/v1/generate", {"prompt": PROMPT, "steps": 2}, results, "queued")
    wait_for(lambda: metrics(url)["queue_depth"] == 1, "the second request to be queued")
    start = time.monotonic()
    assert get_json(url, "/health")[0] == 200
    assert time.monotonic() - start < 1.0  # answered while the worker generates
    status, headers, raw = post(url, "/v1/generate", {"prompt": PROMPT, "steps": 2})
    assert status == 503 and int(headers["retry-after"]) >= 1
    assert json.loads(raw)["error"]["type"] == "server_busy"
    assert metrics(url)["running"] == 1  # the refusal came while the long generation still ran
    long.join(120), queued.join(120)
    assert results["long"][0] == 200 and results["queued"][0] == 200 and results["order"] == ["long", "queued"]
    assert metrics(url)["counts"]["rejected_full"] == 1


def test_a_client_that_disconnects_leaves_the_queue(start_server):
    url = start_server()
    results: dict = {}
    long = _post_in_thread(url, "/v1/generate", LONG, results, "long")
    wait_for(lambda: metrics(url)["running"] == 1, "the long generation to start")
    parts = urlsplit(url)
    body = json.dumps({"prompt": PROMPT, "steps": 2}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: metrics(url)["queue_depth"] == 1, "the request to be queued")
    wait_for(lambda: metrics(url)["counts"]["cancelled_disconnect"] == 1, "the queued request to be dropped")
    assert metrics(url)["queue_depth"] == 0 and metrics(url)["running"] == 1
    long.join(120)
    m = metrics(url)
    assert results["long"][0] == 200 and m["counts"]["completed"] == 1 and m["counts"]["accepted"] == 2


def test_a_request_past_its_timeout_gets_504(start_server):
    url = start_server()
    results: dict = {}
    long = _post_in_thread(url, "/v1/generate", LONG, results, "long")
    wait_for(lambda: metrics(url)["running"] == 1, "the long generation to start")
    status, _, raw = post(url, "/v1/generate", {"prompt": PROMPT, "steps": 2, "timeout": 0.3})
    assert status == 504 and json.loads(raw)["error"]["type"] == "timeout"
    long.join(120)
    m = metrics(url)
    assert m["counts"]["cancelled_timeout"] == 1 and m["counts"]["completed"] == 1


@pytest.mark.parametrize("argv, message", [
    (["--max-queue", "-1"], "invalid --max-queue"),
    (["--drain", "30"], "invalid --timeout or --drain"),
])
def test_serve_refuses_bad_options(serve_workdir, capsys, argv, message):
    assert main(["serve", str(serve_workdir), "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err
