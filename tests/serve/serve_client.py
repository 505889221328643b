"""A plain HTTP client for the serve tests (the standard library's http.client, bounded timeouts)."""
from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit


def request(url: str, method: str, path: str, body: bytes | dict | None = None,
            timeout_s: float = 120.0) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of one request on a new connection."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout_s)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data else {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def get_json(url: str, path: str) -> tuple[int, dict]:
    status, _, body = request(url, "GET", path, timeout_s=10.0)
    return status, json.loads(body)


def post(url: str, path: str, body: bytes | dict, timeout_s: float = 120.0) -> tuple[int, dict, bytes]:
    return request(url, "POST", path, body, timeout_s)


def metrics(url: str) -> dict:
    return get_json(url, "/metrics")[1]


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.02)
