"""`trt-distri serve`: an HTTP server on one loaded `trt_distri.api.Generator` (Starlette app, uvicorn server).

Endpoints (docs/serve.md):
- `POST /v1/images/generations`: OpenAI's images shape (prompt, n, size, response_format b64_json) -> JSON;
- `POST /v1/generate`: every parameter (steps, guidance, seed, negative_prompt, scheduler, ...) -> one PNG;
- `GET /health` (200, or 503 while stopping) and `GET /metrics` (queue depth, counts, latency percentiles).
Generations run one at a time, in arrival order, in the queue's worker thread (trt_distri.serve_queue), so the event
loop stays responsive. Bad requests get 400 with an OpenAI-style JSON error, a full queue 503 with Retry-After, a
request past its timeout 504; a client that disconnects before its job starts takes the job out of the queue.
SIGTERM (or Ctrl-C) stops taking work, fails the queued jobs with 503, gives the running one `drain_s` to finish,
and the caller then closes the generator (its rank processes).
"""
from __future__ import annotations

import asyncio
import base64
import logging
import socket
import time
from dataclasses import dataclass

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from trt_distri.api import Generator
from trt_distri.errors import ConfigError, TrtDistriError
from trt_distri.png import png_bytes
from trt_distri.serve_queue import GenerationQueue, QueueFullError, StoppingError
from trt_distri.serve_requests import BadRequestError, ImageRequest, Limits, parse_native, parse_openai

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    max_queue: int = 8  # jobs waiting behind the running one
    timeout_s: float = 600.0  # default and largest per-request timeout
    max_images: int = 4  # n of the OpenAI endpoint
    drain_s: float = 5.0  # after SIGTERM: how long the running generation may still take


def error_response(status: int, message: str, kind: str, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": None}}, status,
                        headers=headers)


class ImageService:
    """The routes' shared state: the generator, its queue, the limits and the bad-request count."""

    def __init__(self, generator: Generator, queue: GenerationQueue, options: ServeOptions) -> None:
        self.generator, self.queue, self.options = generator, queue, options
        self.limits = Limits(options.max_images, options.timeout_s)
        self.bad_requests = 0

    def routes(self) -> list[Route]:
        return [Route("/health", self.health), Route("/metrics", self.metrics),
                Route("/v1/generate", self.native, methods=["POST"]),
                Route("/v1/images/generations", self.openai, methods=["POST"])]

    async def health(self, request: Request) -> JSONResponse:
        info, stopping = self.generator.info, self.queue.stopping
        body = {"status": "stopping" if stopping else "ok", "workdir": str(self.generator.workdir),
                "size": f"{info.width}x{info.height}", "device": self.generator.device,
                "backend": self.generator.backend, "ranks": info.world}
        return JSONResponse(body, 503 if stopping else 200)

    async def metrics(self, request: Request) -> JSONResponse:
        return JSONResponse({**self.queue.metrics(), "bad_requests": self.bad_requests})

    async def native(self, request: Request) -> Response:
        outcome = await self._generate(request, parse_native)
        if isinstance(outcome, Response):
            return outcome
        (seed, png, seconds), = outcome
        return Response(png, media_type="image/png",
                        headers={"X-Seed": str(seed), "X-Generation-Seconds": f"{seconds:.3f}"})

    async def openai(self, request: Request) -> Response:
        outcome = await self._generate(request, parse_openai)
        if isinstance(outcome, Response):
            return outcome
        data = [{"b64_json": base64.b64encode(png).decode("ascii"), "seed": seed} for seed, png, _ in outcome]
        return JSONResponse({"created": int(time.time()), "data": data})

    async def _generate(self, request: Request, parse) -> list | Response:
        """Read, check and queue the request; its images [(seed, png, seconds)], or the error response."""
        try:
            body = await request.body()
            if len(body) > MAX_BODY:
                raise BadRequestError(f"the request body is too large. Note: expected at most {MAX_BODY} bytes, "
                                      f"got {len(body)}")
            image_request = parse(body, self.generator, self.limits)
        except BadRequestError as exc:
            self.bad_requests += 1
            return error_response(400, str(exc), "invalid_request_error", exc.param)
        try:
            job = self.queue.submit(lambda: self._run(image_request))
        except QueueFullError as exc:
            return error_response(503, str(exc), "server_busy", headers={"Retry-After": str(exc.retry_after_s)})
        except StoppingError as exc:
            return error_response(503, str(exc), "shutting_down")
        return await self._wait(request, job, image_request.timeout_s)

    async def _wait(self, request: Request, job, timeout_s: float) -> list | Response:
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            await asyncio.wait({job.future, gone}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if job.future.done():
            return _result(job.future)
        if gone.done() and not gone.cancelled():
            self.queue.cancel(job, "disconnect")
            return Response(status_code=499)  # nobody reads it: the client is gone
        self.queue.cancel(job, "timeout")
        return error_response(504, f"the request did not finish within {timeout_s:g} s (queue wait included). "
                                   "Fix: raise the request's timeout (up to serve --timeout), or retry when the "
                                   "queue is shorter (GET /metrics)", "timeout")

    def _run(self, req: ImageRequest) -> list[tuple[int, bytes, float]]:
        """In the worker thread: every image of the request, PNG-encoded."""
        out = []
        for seed in req.seeds:
            result = self.generator.generate(req.prompt, req.negative_prompt, seed=seed, **req.params)
            out.append((seed, png_bytes(result.image), result.seconds))
        return out


def _result(future: asyncio.Future) -> list | Response:
    try:
        return future.result()
    except StoppingError as exc:
        return error_response(503, str(exc), "shutting_down")
    except TrtDistriError as exc:
        log.warning("generation failed: %s", exc)
        return error_response(500, f"the generation failed: {exc}", "server_error")
    except Exception as exc:  # noqa: BLE001 - a bug: still a JSON answer, and the server keeps serving
        log.exception("generation failed")
        return error_response(500, f"internal error: {type(exc).__name__}: {exc}. This is a bug in trt-distri",
                              "server_error")


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read: the next message is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def create_app(generator: Generator, queue: GenerationQueue, options: ServeOptions) -> Starlette:
    return Starlette(routes=ImageService(generator, queue, options).routes())


def check_servable(generator: Generator) -> None:
    missing = [part for part in ("text_encoders", "vae") if getattr(generator.manifest, part) is None]
    if missing:
        raise ConfigError(f"{generator.workdir} has no {' or '.join(missing)}: it was exported from a UNet alone. "
                          "Note: serve needs a work directory exported from a pipeline. Fix: trt-distri export "
                          "MODEL (a pipeline folder, model id or random:<name>) without --unet-only")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port), so that clients can connect as soon as this returns."""
    try:
        sock = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port}: {exc}. Fix: choose another --port (or stop the "
                          "program using it)") from None
    return sock


class ImageServer:
    """The app served by uvicorn on a listening socket. `run` blocks until SIGTERM, Ctrl-C or `stop`; `close` then
    ends the queue's worker. The generator stays the caller's: close it when `close` returns True."""

    def __init__(self, generator: Generator, options: ServeOptions) -> None:
        self.queue = GenerationQueue(options.max_queue)
        self.sock = listen(options.host, options.port)
        host, port = self.sock.getsockname()[:2]
        self.url = f"http://{f'[{host}]' if ':' in host else host}:{port}"
        config = uvicorn.Config(create_app(generator, self.queue, options), log_config=None, lifespan="off",
                                loop="asyncio", http="h11", timeout_graceful_shutdown=options.drain_s)
        self._server = _Uvicorn(config, self.queue)

    def run(self) -> None:
        try:
            self._server.run(sockets=[self.sock])
        except KeyboardInterrupt:  # uvicorn raises the stopping signal again once it has shut down
            pass

    def stop(self) -> None:
        """Stop as SIGTERM does (from any thread)."""
        self._server.request_stop()

    def close(self, timeout_s: float = 1.0) -> bool:
        """End the worker; False when a generation still runs after `timeout_s` (then leave the generator open:
        its rank processes are daemons, stopped when this process exits)."""
        self.sock.close()
        return self.queue.stop(timeout_s)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, which also fails the queued jobs as soon as a stop is asked for."""

    def __init__(self, config: uvicorn.Config, queue: GenerationQueue) -> None:
        super().__init__(config)
        self.queue, self.loop = queue, None

    async def startup(self, sockets=None) -> None:
        self.loop = asyncio.get_running_loop()
        await super().startup(sockets)

    def handle_exit(self, sig, frame) -> None:  # the signal handler: the event loop fails the queue
        self.request_stop()
        super().handle_exit(sig, frame)

    def request_stop(self) -> None:
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.queue.begin_stop)
        else:
            self.queue.begin_stop()
        self.should_exit = True
