"""``charlstm serve``: the playground page and an HTTP API in the shapes local model servers use.

A thin shell, like the CLI: a JSON body becomes a :class:`GenerationRequest` (one
function, :func:`sample_request`, for both generation routes), which the
model's :class:`BatchedSampler` steps in its worker thread together with every
other live request; ``/api/score`` is :func:`surprisal`. What comes back is
turned into the two shapes clients already speak:

- ``POST /api/generate``: newline-delimited JSON, one line per batch of
  characters and a last line with the finish reasons, counts and timing (as
  Ollama streams); ``"stream": false`` gives one object;
- ``POST /v1/completions`` and ``GET /v1/models``: the OpenAI completions
  subset, streamed as server-sent events ending in ``data: [DONE]`` (as
  llama.cpp's server does), so an OpenAI client works by changing its base URL.

Every refusal is JSON, ``{"error": {"message", "type", "param", "code"}}``,
with a 4xx status and a message that says what to change. A client that goes
away cancels its request at the sampler's next step: the streaming response
listens for the disconnect itself rather than waiting for a write to fail.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import math
import os
import secrets
import socket
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable

import anyio
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from ..analysis.scoring import surprisal
from ..base.errors import CharlstmError, name_chars
from ..base.runtime import LN2, ThreadGovernor
from ..generation.batching import CANCELLED, BatchedSampler, Outcome, Ticket
from ..generation.controls import (
    MAX_LOGPROBS,
    MAX_STOP_CHARS,
    CharLogprob,
    GenerationRequest,
    SamplingOptions,
    TextDelta,
)
from ..generation.generator import Generator
from ..training.checkpoint import LoadedModel
from . import terminal as console

STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "CHARLSTM_API_KEY"
UNKNOWN_POLICIES = ("error", "skip", "replace")
MAX_STOPS = 4  # as OpenAI's API takes
# The least time between two writes of one stream. A write per character would keep the event loop
# busy, and every moment it holds the GIL the sampler's thread waits: 50 writes a second read as
# smooth typing and cost the sampler almost nothing.
FLUSH_SECONDS = 0.05
# How often a request answered in one piece checks that its client is still there.
DISCONNECT_CHECK_SECONDS = 0.25
# Fields OpenAI clients may send that this server cannot honour: refused unless they hold a value that asks for nothing.
OPENAI_UNSUPPORTED: dict[str, tuple[Any, ...]] = {"echo": (False,), "suffix": ("",), "presence_penalty": (0,),
                                                  "frequency_penalty": (0,), "logit_bias": ({},)}


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; anything over is refused with a 413 or 422 naming the option."""

    max_length: int = 4096
    max_body_bytes: int = 1_000_000
    max_samples: int = 16
    max_rows: int = 64  # samples stepped at once per model; requests beyond wait their turn


@dataclass
class ServedModel:
    """One run the server answers for, under its name."""

    name: str
    loaded: LoadedModel
    sampler: BatchedSampler
    created: int = field(default_factory=lambda: int(time.time()))

    def describe(self) -> dict[str, Any]:
        config = self.loaded.model.config
        metrics = self.loaded.config.get("metrics", {})
        val_loss = metrics.get("val_loss")
        return {
            "name": self.name,
            "cell": config.cell,
            "layers": config.num_layers,
            "hidden_size": config.hidden_size,
            "embedding_size": config.emb_size,
            "parameters": self.loaded.model.num_parameters(),
            "vocab_size": len(self.loaded.vocab),
            "val_loss": val_loss,
            "val_bpc": val_loss / LN2 if isinstance(val_loss, (int, float)) else None,
            "step": metrics.get("step"),
            "checkpoint": str(self.loaded.path),
        }


def serving_threads() -> ThreadGovernor:
    """Torch's threads for a server: one core is left to the event loop and the HTTP work, and fewer
    still while other programs take cores. Threads that share a core wait on each other at every step:
    a 2x384 step for 32 streams took 100 ms with two threads on two busy cores, 9 ms with one."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) - 1))
    return ThreadGovernor(every=5.0)


def serve_models(loaded: list[LoadedModel], precision: str, max_rows: int,
                 threads: ThreadGovernor | None = None) -> list[ServedModel]:
    """A sampler for each run, named after its run directory (a second run of the same name gets ``-2``)."""
    served: list[ServedModel] = []
    for model in loaded:
        name, number = model.name, 2
        while any(other.name == name for other in served):
            name, number = f"{model.name}-{number}", number + 1
        generator = Generator(model.model, model.vocab, precision=precision)  # type: ignore[arg-type]
        served.append(ServedModel(name, model, BatchedSampler(generator, max_rows=max_rows, threads=threads)))
    return served


# -- requests ---------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request the server refuses: the status, and a message saying what to change."""

    def __init__(self, status: int, message: str, param: str | None = None, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.kind = kind


def error_response(status: int, message: str, param: str | None = None, kind: str = "invalid_request_error",
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status, headers=headers)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object, refused (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"the request body is {int(declared):,} bytes, over this server's limit of {limit:,} bytes "
                            "(--max-body); send less text", kind="request_too_large")
    body = bytearray()
    async for piece in request.stream():
        body += piece
        if len(body) > limit:
            raise ApiError(413, f"the request body is over this server's limit of {limit:,} bytes (--max-body); "
                                "send less text", kind="request_too_large")
    try:
        parsed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise ApiError(400, f"the body is not valid JSON ({error}); send a JSON object such as "
                            '{"prompt": "ROMEO:", "length": 200}') from None
    if not isinstance(parsed, dict):
        raise ApiError(400, f"the body must be a JSON object, not {type(parsed).__name__}")
    return parsed


def _number(body: dict[str, Any], name: str, default: Any, low: float, high: float, integer: bool = False,
            low_open: bool = False, hint: str = "") -> Any:
    """``body[name]`` checked to be a number in range; ``default`` when absent or null."""
    value = body.get(name)
    if value is None:
        return default
    kind = "an integer" if integer else "a number"
    bounds = f"{'above' if low_open else 'at least'} {low:g} and at most {high:g}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ApiError(422, f"{name} must be {kind} {bounds}, not {json.dumps(value)}", name)
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        raise ApiError(422, f"{name} must be {bounds}, not {value}{hint}", name)
    return value


def _flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = body.get(name, default)
    if not isinstance(value, bool):
        raise ApiError(422, f"{name} must be true or false, not {json.dumps(value)}", name)
    return value


def _text(body: dict[str, Any], name: str, default: str = "") -> str:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ApiError(422, f"{name} must be a string, not {json.dumps(value)[:60]}", name)
    return value


def _stops(body: dict[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(stop, str) and stop for stop in stops):
        raise ApiError(422, "stop must be a non-empty string or a list of them", "stop")
    if len(stops) > MAX_STOPS or any(len(stop) > MAX_STOP_CHARS for stop in stops):
        raise ApiError(422, f"stop takes at most {MAX_STOPS} strings of at most {MAX_STOP_CHARS} characters", "stop")
    return tuple(stops)


@dataclass(frozen=True)
class GenerationFields:
    """The generation controls of a request, whichever route and field names it came with."""

    prompt: str
    length: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    stop: tuple[str, ...] = ()
    keep_stop: bool = False
    lines: int | None = None
    seed: int | None = None
    n: int = 1
    logprobs: int | None = None
    unknown: str = "error"
    stream: bool = True


def generation_fields(body: dict[str, Any], limits: ServeLimits, length_field: str, default_length: int,
                      stream_default: bool) -> GenerationFields:
    length_hint = f" (this server's --max-length is {limits.max_length})"
    unknown = _text(body, "unknown", "error")
    if unknown not in UNKNOWN_POLICIES:
        raise ApiError(422, f"unknown must be one of {', '.join(UNKNOWN_POLICIES)}, not {json.dumps(unknown)}", "unknown")
    return GenerationFields(
        prompt=_prompt(body),
        length=_number(body, length_field, default_length, 1, limits.max_length, integer=True, hint=length_hint),
        temperature=_number(body, "temperature", 1.0, 0, 100),
        top_k=_number(body, "top_k", None, 1, 1_000_000, integer=True),
        top_p=_number(body, "top_p", None, 0, 1, low_open=True),
        min_p=_number(body, "min_p", None, 0, 1),
        stop=_stops(body),
        keep_stop=_flag(body, "keep_stop", False),
        lines=_number(body, "lines", None, 1, limits.max_length, integer=True),
        seed=_number(body, "seed", None, 0, 2**63 - 1, integer=True),
        n=_number(body, "n", 1, 1, limits.max_samples, integer=True, hint=f" (this server's limit is {limits.max_samples})"),
        logprobs=_number(body, "logprobs", None, 0, MAX_LOGPROBS, integer=True),
        unknown=unknown,
        stream=_flag(body, "stream", stream_default),
    )


def _prompt(body: dict[str, Any]) -> str:
    value = body.get("prompt", "")
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str):
        return value[0]  # OpenAI clients may send a list of one prompt
    if isinstance(value, list):
        raise ApiError(422, "prompt must be one string (this server answers one prompt per request)", "prompt")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ApiError(422, f"prompt must be a string, not {json.dumps(value)[:60]}", "prompt")
    return value


def sample_request(served: ServedModel, fields: GenerationFields) -> GenerationRequest:
    """The one mapping from a request's fields to the generation it asks for."""
    vocab = served.loaded.vocab
    if fields.unknown == "error" and vocab.unknown_id is None:
        unknown = vocab.unknown_chars(fields.prompt)
        if unknown:
            raise ApiError(422, f"the prompt has {len(unknown)} character(s) model {served.name!r} never saw: "
                                f"{name_chars(unknown)}; remove them or send \"unknown\": \"skip\" or \"replace\"",
                           "prompt", "unknown_characters")
    if fields.top_k is not None and fields.top_k > len(vocab):
        raise ApiError(422, f"top_k {fields.top_k} is larger than the vocabulary of model {served.name!r} "
                            f"({len(vocab)} characters); use at most {len(vocab)}", "top_k")
    try:
        sampling = SamplingOptions(fields.temperature, fields.top_k, fields.top_p, fields.min_p)
        return GenerationRequest(fields.prompt, fields.length, sampling, fields.n, fields.seed, fields.unknown,  # type: ignore[arg-type]
                                 fields.stop, fields.keep_stop, fields.lines, fields.logprobs)
    except CharlstmError as problem:
        raise ApiError(422, str(problem)) from None


def pick_model(models: dict[str, ServedModel], body: dict[str, Any]) -> ServedModel:
    name = body.get("model")
    if name is None and len(models) == 1:
        return next(iter(models.values()))
    if name is None:
        raise ApiError(422, f"this server has several models; name one with \"model\": one of {', '.join(models)}", "model")
    if not isinstance(name, str) or name not in models:
        raise ApiError(404, f"there is no model {json.dumps(name)} here; the models are: {', '.join(models)} "
                            "(GET /api/models lists them)", "model", "model_not_found")
    return models[name]


# -- following a request ----------------------------------------------------------------------------

class _Waiter:
    """Wakes an asyncio task from the sampler's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.ready = asyncio.Event()

    def wake(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self.ready.set)
        except RuntimeError:  # the loop is closed: the server is going away, nobody waits
            pass


async def follow(ticket: Ticket, waiter: _Waiter, request: Request | None = None) -> AsyncIterator[list[TextDelta]]:
    """What the sampler releases for ``ticket``, until it ends; with ``request``, cancels when its client goes."""
    checked = time.monotonic()
    while not ticket.done:
        with anyio.move_on_after(DISCONNECT_CHECK_SECONDS if request is not None else math.inf):
            await waiter.ready.wait()
        if request is not None and time.monotonic() - checked >= DISCONNECT_CHECK_SECONDS:
            checked = time.monotonic()
            if await request.is_disconnected():
                ticket.cancel()
                return
        waiter.ready.clear()
        drawn = ticket.take()
        if drawn:
            yield drawn
            await asyncio.sleep(FLUSH_SECONDS)  # let characters gather: fewer, larger writes
    drawn = ticket.take()
    if drawn:
        yield drawn


class CancellingStream(StreamingResponse):
    """A streaming response that cancels its ticket the moment the client disconnects, or when it ends
    for any other reason, rather than at the next write that fails."""

    def __init__(self, content: AsyncIterator[str], ticket: Ticket, media_type: str):
        super().__init__(content, media_type=media_type, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.ticket = ticket

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def watch() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(watch)
                try:
                    await self.stream_response(send)
                except OSError:  # the client went away mid-write
                    pass
                group.cancel_scope.cancel()
        finally:
            self.ticket.cancel()


def _summary(served: ServedModel, outcome: Outcome, with_text: bool) -> dict[str, Any]:
    samples = []
    for sample in outcome.samples:
        item: dict[str, Any] = {"index": sample.index, "finish_reason": sample.finish_reason,
                                "chars": sample.characters, "generated": sample.generated, "seed": sample.seed}
        if sample.stop is not None:
            item["stop"] = sample.stop
        if with_text:
            item["text"] = sample.text
            if sample.logprobs is not None:
                item["logprobs"] = [entry.to_dict() for entry in sample.logprobs]
        samples.append(item)
    return {
        "model": served.name,
        "samples": samples,
        "prompt_chars": outcome.prime_chars,
        "generated_chars": outcome.generated_chars,
        "seconds": outcome.seconds,
        "first_char_seconds": outcome.first_char_seconds,
        "chars_per_sec": outcome.generated_chars / outcome.seconds if outcome.seconds > 0 else None,
    }


def _failure(ticket: Ticket) -> dict[str, Any]:
    message = str(ticket.error) if ticket.error is not None else "the generation ended without a result"
    return {"error": {"message": message, "type": "generation_error", "param": None, "code": 422}}


# -- the app ----------------------------------------------------------------------------------------

Handler = Callable[[Request], Awaitable[Response]]


def create_app(models: list[ServedModel], limits: ServeLimits = ServeLimits(), api_key: str | None = None) -> Starlette:
    """The Starlette app for ``models``; closing it (its lifespan's end) stops their samplers."""
    by_name = {model.name: model for model in models}

    def api(handler: Handler) -> Handler:
        """The API key check and the JSON refusals every API route shares."""
        async def route(request: Request) -> Response:
            if api_key is not None:
                given = request.headers.get("authorization", "")
                token = given[7:] if given.lower().startswith("bearer ") else ""
                if not hmac.compare_digest(token.encode(), api_key.encode()):
                    problem = "the API key is wrong" if token else "this server needs an API key"
                    return error_response(401, f"{problem}: send the header 'Authorization: Bearer <key>' with the "
                                               f"key the server was started with (--api-key or {API_KEY_ENV})",
                                          kind="authentication_error", headers={"WWW-Authenticate": "Bearer"})
            try:
                return await handler(request)
            except ApiError as problem:
                return error_response(problem.status, problem.message, problem.param, problem.kind)
            except CharlstmError as problem:
                return error_response(422, str(problem))

        return route

    async def start(served: ServedModel, fields: GenerationFields) -> tuple[Ticket, _Waiter]:
        waiter = _Waiter()
        request = sample_request(served, fields)
        return served.sampler.submit(request, waiter.wake), waiter

    async def generate(request: Request) -> Response:
        body = await read_json(request, limits.max_body_bytes)
        served = pick_model(by_name, body)
        _refuse_unknown_fields(body, GENERATE_FIELDS)
        fields = generation_fields(body, limits, "length", 500, stream_default=True)
        ticket, waiter = await start(served, fields)
        if not fields.stream:
            async for _ in follow(ticket, waiter, request):
                pass
            if ticket.outcome is None:
                return JSONResponse(_failure(ticket), status_code=422)
            return JSONResponse(_summary(served, ticket.outcome, with_text=True))

        async def lines() -> AsyncIterator[str]:
            async for drawn in follow(ticket, waiter):
                yield "".join(json.dumps(_chunk(piece)) + "\n" for piece in _merged(drawn))
            if ticket.outcome is None:
                yield json.dumps({**_failure(ticket), "done": True}) + "\n"
            else:
                yield json.dumps({**_summary(served, ticket.outcome, with_text=False), "done": True}) + "\n"

        return CancellingStream(lines(), ticket, "application/x-ndjson")

    async def completions(request: Request) -> Response:
        body = await read_json(request, limits.max_body_bytes)
        served = pick_model(by_name, body)
        for name, harmless in OPENAI_UNSUPPORTED.items():
            if body.get(name) is not None and body.get(name) not in harmless:
                raise ApiError(422, f"{name} is not supported by this server; leave it out", name)
        if body.get("best_of") not in (None, body.get("n", 1)):
            raise ApiError(422, "best_of is not supported by this server; leave it out (or equal to n)", "best_of")
        fields = generation_fields(body, limits, "max_tokens", 16, stream_default=False)
        ticket, waiter = await start(served, fields)
        ident, created = f"cmpl-{secrets.token_hex(12)}", int(time.time())
        base = {"id": ident, "object": "text_completion", "created": created, "model": served.name}
        offsets = [len(fields.prompt)] * fields.n
        if not fields.stream:
            async for _ in follow(ticket, waiter, request):
                pass
            if ticket.outcome is None:
                return JSONResponse(_failure(ticket), status_code=422)
            choices = [{"text": sample.text, "index": sample.index,
                        "logprobs": _openai_logprobs(sample.logprobs, offsets, sample.index) if fields.logprobs is not None else None,
                        "finish_reason": _openai_finish(sample.finish_reason)} for sample in ticket.outcome.samples]
            usage = {"prompt_tokens": len(fields.prompt), "completion_tokens": ticket.outcome.generated_chars,
                     "total_tokens": len(fields.prompt) + ticket.outcome.generated_chars}
            return JSONResponse({**base, "choices": choices, "usage": usage})

        async def events() -> AsyncIterator[str]:
            async for drawn in follow(ticket, waiter):
                for piece in _merged(drawn):
                    logprobs = _openai_logprobs(piece.logprobs, offsets, piece.sample) if fields.logprobs is not None else None
                    choice = {"text": piece.text, "index": piece.sample, "logprobs": logprobs, "finish_reason": None}
                    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
            if ticket.outcome is None:
                yield f"data: {json.dumps(_failure(ticket))}\n\n"
            else:
                for sample in ticket.outcome.samples:
                    choice = {"text": "", "index": sample.index, "logprobs": None,
                              "finish_reason": _openai_finish(sample.finish_reason)}
                    yield f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"
            yield "data: [DONE]\n\n"

        return CancellingStream(events(), ticket, "text/event-stream")

    async def score(request: Request) -> Response:
        body = await read_json(request, limits.max_body_bytes)
        served = pick_model(by_name, body)
        _refuse_unknown_fields(body, {"model", "text"})
        text = _text(body, "text")
        if not text:
            raise ApiError(422, "text is empty; send the text to score as \"text\"", "text")
        result = await anyio.to_thread.run_sync(surprisal, served.loaded, text)
        bits = [None if math.isnan(value) else round(float(value), 4) for value in result.bits]
        return JSONResponse({
            "model": served.name,
            "text": text,
            "bits": bits,
            "mean_bits": None if math.isnan(result.mean_bits) else result.mean_bits,
            "total_bits": result.total_bits,
            "scored_chars": len(result.scored),
            "unknown": result.unknown,
            "spans": [{"text": span.text, "bits": span.bits, "peak_bits": span.peak_bits, "line": span.line,
                       "column": span.column, "start": span.start, "end": span.end} for span in result.spans(10)],
        })

    async def list_models(request: Request) -> Response:
        return JSONResponse({"models": [model.describe() for model in models]})

    async def openai_models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [
            {"id": model.name, "object": "model", "created": model.created, "owned_by": "charlstm"} for model in models]})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": list(by_name),
                             "live_requests": sum(model.sampler.live_requests for model in models)})

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def refused(request: Request, problem: Exception) -> Response:
        assert isinstance(problem, HTTPException)
        hint = {404: f"there is no {request.url.path} here; the routes are /, /health, /api/models, /api/generate, "
                     "/api/score, /v1/models and /v1/completions",
                405: f"{request.method} is not allowed on {request.url.path}"}
        return error_response(problem.status_code, hint.get(problem.status_code, str(problem.detail)))

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        for model in models:
            model.sampler.close()

    routes = [
        Route("/", page),
        Route("/health", health),
        Route("/api/models", api(list_models)),
        Route("/api/generate", api(generate), methods=["POST"]),
        Route("/api/score", api(score), methods=["POST"]),
        Route("/v1/models", api(openai_models)),
        Route("/v1/completions", api(completions), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: refused},
                     lifespan=asynccontextmanager(lifespan))


GENERATE_FIELDS = {"model", "prompt", "length", "temperature", "top_k", "top_p", "min_p", "stop", "keep_stop", "lines",
                   "seed", "n", "logprobs", "unknown", "stream"}


def _refuse_unknown_fields(body: dict[str, Any], known: set[str]) -> None:
    """A misspelt field would otherwise be silently ignored; name it and the fields there are."""
    unknown = sorted(set(body) - known)
    if unknown:
        raise ApiError(422, f"unknown field(s) {', '.join(map(json.dumps, unknown))}; the fields are "
                            f"{', '.join(sorted(known))}", unknown[0])


def _merged(drawn: list[TextDelta]) -> list[TextDelta]:
    """One piece per sample, in sample order: what arrived since the last look, joined."""
    pieces: dict[int, list[TextDelta]] = {}
    for piece in drawn:
        pieces.setdefault(piece.sample, []).append(piece)
    merged = []
    for sample in sorted(pieces):
        parts = pieces[sample]
        logprobs = None if parts[0].logprobs is None else tuple(e for part in parts for e in part.logprobs or ())
        merged.append(TextDelta(sample, "".join(part.text for part in parts), logprobs))
    return merged


def _chunk(piece: TextDelta) -> dict[str, Any]:
    chunk: dict[str, Any] = {"index": piece.sample, "text": piece.text}
    if piece.logprobs is not None:
        chunk["logprobs"] = [entry.to_dict() for entry in piece.logprobs]
    return chunk


def _openai_finish(reason: str) -> str:
    """OpenAI's clients know "stop" and "length": a line count is a stop too."""
    return "length" if reason in ("length", CANCELLED) else "stop"


def _openai_logprobs(entries: tuple[CharLogprob, ...] | None, offsets: list[int], index: int) -> dict[str, Any]:
    """OpenAI's legacy completions logprobs, one "token" per character; advances ``offsets[index]``."""
    entries = entries or ()
    start = offsets[index]
    offsets[index] += len(entries)
    return {"tokens": [entry.char for entry in entries],
            "token_logprobs": [entry.logprob for entry in entries],
            "top_logprobs": [dict(entry.top) for entry in entries],
            "text_offset": list(range(start, start + len(entries)))}


# -- running it -------------------------------------------------------------------------------------

def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound before the server starts so a taken port is one clear line."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as error:
        listener.close()
        raise CharlstmError(f"cannot listen on {host}:{port} ({error.strerror}); pick another --port or --host") from None
    listener.listen(128)
    return listener


def run_server(app: Starlette, listener: socket.socket) -> None:
    """Serve until Ctrl-C / SIGTERM (uvicorn's own handling), then close the samplers."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3, lifespan="on")
    uvicorn.Server(config).run(sockets=[listener])


def announce(models: list[ServedModel], host: str, port: int, api_key: str | None) -> None:
    shown = f"[{host}]" if ":" in host else host
    names = ", ".join(model.name for model in models)
    console.note(f"serving {names} at http://{shown}:{port}/ (API: /api/generate, /v1/completions; Ctrl-C stops)")
    if api_key is None and not is_loopback(host):
        console.warn(f"{host} is reachable from other machines and no API key is set: anyone who can reach it can "
                     f"use it; set --api-key or {API_KEY_ENV}")
