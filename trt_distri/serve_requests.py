"""Request bodies of the server's two image endpoints, read into one typed `ImageRequest`.

- native (`POST /v1/generate`, answered with a PNG): prompt, negative_prompt, steps, guidance, seed, scheduler,
  warmup_steps, width, height, timeout;
- OpenAI images (`POST /v1/images/generations`, answered with JSON): prompt, n, size ("WxH"), response_format
  (b64_json only), model and user (accepted, not used), and the native fields above except width/height as
  extensions.
Types are checked here; ranges and the work directory's size by the API's own check (`Generator.check_params`), so
that the server refuses exactly what the library refuses. Every refusal is a `BadRequestError` naming the field.
"""
from __future__ import annotations

import json
import re
import secrets
from dataclasses import dataclass

from trt_distri.api import Generator, InvalidArgumentError
from trt_distri.errors import TrtDistriError

_NUMBER = (int, float)
NATIVE_FIELDS: dict[str, type | tuple] = {
    "prompt": str, "negative_prompt": str, "steps": int, "guidance": _NUMBER, "seed": int, "scheduler": str,
    "warmup_steps": int, "width": int, "height": int, "timeout": _NUMBER}
OPENAI_FIELDS: dict[str, type | tuple] = {
    **{k: v for k, v in NATIVE_FIELDS.items() if k not in ("width", "height")},
    "n": int, "size": str, "response_format": str, "model": str, "user": str}
_PARAMS = ("steps", "guidance", "scheduler", "warmup_steps", "width", "height")
_SIZE = re.compile(r"^(\d{1,6})x(\d{1,6})$")


class BadRequestError(TrtDistriError):
    """A request the server refuses with 400; `param` names the field at fault (None: the body as a whole)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Limits:
    max_images: int  # n of the OpenAI endpoint
    timeout_s: float  # default and largest per-request timeout


@dataclass(frozen=True)
class ImageRequest:
    prompt: str
    negative_prompt: str
    params: dict  # Generator.generate keywords other than seed (checked)
    seeds: tuple[int, ...]  # one image per seed
    timeout_s: float


def parse_native(body: bytes, generator: Generator, limits: Limits) -> ImageRequest:
    fields = _fields(body, NATIVE_FIELDS)
    return _request(fields, generator, limits, 1)


def parse_openai(body: bytes, generator: Generator, limits: Limits) -> ImageRequest:
    fields = _fields(body, OPENAI_FIELDS)
    fmt = fields.pop("response_format", "b64_json")
    if fmt != "b64_json":
        raise BadRequestError(f"response_format {fmt!r} is not supported. Note: expected 'b64_json' (this server "
                              "keeps no image files to link to)", "response_format")
    for unused in ("model", "user"):  # OpenAI clients send them; one model is loaded, users are not tracked
        fields.pop(unused, None)
    n = fields.pop("n", 1)
    if not 1 <= n <= limits.max_images:
        raise BadRequestError(f"invalid n. Note: expected 1..{limits.max_images} (serve --max-images), got {n}", "n")
    if "size" in fields:
        size = fields.pop("size")
        match = _SIZE.match(size)
        if not match:
            raise BadRequestError(f"invalid size. Note: expected 'WIDTHxHEIGHT' such as '1024x1024', got {size!r}",
                                  "size")
        fields["width"], fields["height"] = int(match[1]), int(match[2])
    return _request(fields, generator, limits, n)


def _fields(body: bytes, schema: dict[str, type | tuple]) -> dict:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequestError(f"the request body is not JSON ({exc}). Note: expected a JSON object such as "
                              '{"prompt": "a red fox"}') from None
    if not isinstance(data, dict):
        raise BadRequestError(f"the request body is not a JSON object. Note: got {type(data).__name__}")
    unknown = sorted(set(data) - set(schema))
    if unknown:
        raise BadRequestError(f"unknown field(s) {', '.join(unknown)}. Note: expected some of "
                              f"{', '.join(schema)}", unknown[0])
    for name, value in data.items():
        kind = schema[name]
        if isinstance(value, bool) or not isinstance(value, kind):
            want = "a number" if kind is _NUMBER else f"a JSON {'integer' if kind is int else 'string'}"
            raise BadRequestError(f"invalid {name}. Note: expected {want}, got {json.dumps(value)[:40]}", name)
    if not isinstance(data.get("prompt"), str) or not data["prompt"].strip():
        raise BadRequestError("a prompt is needed. Note: expected a non-empty string in the field prompt", "prompt")
    return data


def _request(fields: dict, generator: Generator, limits: Limits, n: int) -> ImageRequest:
    timeout = float(fields.get("timeout", limits.timeout_s))
    if not 0 < timeout <= limits.timeout_s:
        raise BadRequestError(f"invalid timeout. Note: expected seconds in (0, {limits.timeout_s:g}] (serve "
                              f"--timeout), got {timeout:g}", "timeout")
    first = fields["seed"] if "seed" in fields else secrets.randbits(32)
    seeds = tuple(range(first, first + n))
    params = {k: fields[k] for k in _PARAMS if k in fields}
    try:
        for seed in {seeds[0], seeds[-1]}:
            generator.check_params(**params, seed=seed)
    except InvalidArgumentError as exc:
        raise BadRequestError(str(exc)) from None
    return ImageRequest(fields["prompt"], fields.get("negative_prompt", ""), params, seeds, timeout)

