"""A tiny exported pipeline, a loaded Generator and in-process servers on 127.0.0.1 (real HTTP, any free port)."""
from __future__ import annotations

import threading

import pytest

from serve_client import get_json, wait_for
from trt_distri.config import ExportRequest, Precision


@pytest.fixture(scope="session")
def serve_workdir(tmp_path_factory):
    """The tiny SDXL pipeline (random weights) exported at 128x128 for 1 rank, fp32."""
    from trt_distri.export.pipeline_export import export_pipeline

    out = tmp_path_factory.mktemp("serve") / "work"
    export_pipeline(ExportRequest(model="random:tiny-sdxl", height=128, width=128, gpus=1, out_dir=out,
                                  cfg_split=False, precision=Precision.FP32))
    return out


@pytest.fixture(scope="module")
def generator(serve_workdir):
    from trt_distri.api import Generator

    with Generator(serve_workdir, "cpu") as gen:
        yield gen


@pytest.fixture
def start_server(generator):
    """start_server(**ServeOptions fields) -> base URL of a server running in a thread; stopped after the test."""
    from trt_distri.serve import ImageServer, ServeOptions

    started = []

    def start(**options) -> str:
        server = ImageServer(generator, ServeOptions(port=0, **options))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        started.append((server, thread))
        wait_for(lambda: get_json(server.url, "/health")[0] == 200, "the server to answer")
        return server.url

    yield start
    for server, thread in started:
        server.stop()
        thread.join(15)
        assert not thread.is_alive(), "the server did not stop"
        assert server.close(timeout_s=30), "the worker did not end"

