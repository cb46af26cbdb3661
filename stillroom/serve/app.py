"""The OpenAI-compatible app: POST /v1/chat/completions, GET /v1/models, /healthz and /metrics.

Each request is routed before its first byte: which task is it (detect's matcher, on the request read
as ingest reads a logged call, an image part as its `<IMAGE_n>` slot), may a student answer it (a
servable version, nothing in the request it cannot honour), and is the student sure (its confidence
clears the version's routing threshold). Otherwise the teacher answers. Every exchange is captured
once, under its request id, before the response leaves; its images as blob references, stored as
ingest stores them.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from stillroom.config import Params
from stillroom.content import BadRecord, with_blob_references
from stillroom.data import Layout
from stillroom.detect.matcher import Match, TaskMatcher
from stillroom.images import ImageStore
from stillroom.mlflow_model import download_student, registry_client
from stillroom.schema import Message, Prediction
from stillroom.serve.audit import AuditJob, ShadowAuditor, caller_headers
from stillroom.serve.capture import CaptureWriter
from stillroom.serve.errors import NO_RETRY, ApiError, bad_request
from stillroom.serve.live import LiveStats
from stillroom.serve.metrics import ServeMetrics
from stillroom.serve.pool import ModelPool
from stillroom.serve.protocol import (
    DONE,
    ChatRequest,
    StreamAssembler,
    completion_id,
    parse_request,
    passthrough_reason,
    sse,
    student_chunks,
    student_completion,
    student_prompt,
    usage_for,
)
from stillroom.serve.registry import Refusal, Registry, Servable
from stillroom.serve.upstream import Upstream, UpstreamFailure

log = logging.getLogger("stillroom.serve")
# Registry refreshes tried at start-up before serving with what there is (the poller keeps trying after).
_START_ATTEMPTS = 10
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


@dataclass
class Exchange:
    """What the server learned about one request on its way through; becomes headers and the capture row."""

    request_id: str
    started: float
    timestamp: datetime
    body: dict | None = None
    prompt: list[Message] | None = None  # the request as ingest would read it; None when an image part is bad
    captured_body: dict | None = None  # the body with each image as its stored blob's reference: what is logged
    route: str = "teacher"
    reason: str = ""
    match: Match | None = None
    servable: Servable | None = None
    prediction: Prediction | None = None
    student_ms: float | None = None
    teacher_ms: float | None = None
    cold: bool = False
    degraded: str | None = None

    def headers(self) -> dict[str, str]:
        out = {"x-request-id": self.request_id, "x-stillroom-route": self.route}
        if self.match is not None:
            out["x-stillroom-task"] = self.match.task_name
        if self.prediction is not None:
            out["x-stillroom-confidence"] = f"{self.prediction.confidence:.4f}"
        if self.servable is not None and self.prediction is not None:
            out["x-stillroom-model-version"] = self.servable.label
        if self.reason:
            out["x-stillroom-reason"] = self.reason[:200]
        if self.degraded:
            out["x-stillroom-degraded"] = "teacher-unavailable"
        return out

    def elapsed_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000


async def read_body(request: Request, limit: int) -> bytes:
    """The body, or a 400 when it is over the limit. An oversized body is still read to its end (up to a hard
    cap), so the client, still sending, gets the 400 instead of a reset connection."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > 16 * limit:
        raise bad_request(
            f"The request body ({declared} bytes) is over the limit of {limit} bytes.", code="request_too_large"
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
    if size > limit:
        raise bad_request(
            f"The request body ({size} bytes) is over the limit of {limit} bytes.", code="request_too_large"
        )
    return b"".join(chunks)


class Server:
    """Everything one running app holds: matcher, registry view, students, teacher client, capture, live stats.

    `only_tasks` (task ids) keeps the other tasks' students unloaded and unfetched: the folder watcher
    runs this app in its own process for one task, and its memory bound should not pay for the rest.
    """

    def __init__(self, params: Params, layout: Layout, only_tasks: frozenset[str] | None = None):
        self.params = params
        self.layout = layout
        self.only_tasks = only_tasks
        self.settings = settings = params.serve
        self.api_key = os.environ.get(settings.api_key_env) or None
        self.metrics = ServeMetrics()
        self.executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="stillroom-student")
        self.stats = LiveStats(layout.resolve(settings.live_stats))
        self.capture = CaptureWriter(
            layout.resolve(settings.capture_dir),
            settings.capture_batch,
            on_batch=self._captured,
            fsync_first=settings.capture_fsync_first,
        )
        self.upstream = Upstream(settings, os.environ.get(settings.upstream_api_key_env) or None)
        self.images = ImageStore(layout.blobs, params.ingest.max_image_bytes, Counter())  # as ingest stores them
        self.registry = Registry(registry_client(params, layout), settings)
        self.pool = ModelPool(
            layout.resolve(settings.model_cache),
            lambda servable, folder: download_student(
                self.registry.client, servable.model_name, servable.version, folder
            ),
            self.executor,
            max_models=settings.max_models,
            max_memory_mb=settings.max_memory_mb,
            max_batch=settings.max_batch,
            torch_threads=settings.torch_threads,
            on_load=self._loaded,
        )
        self.auditor = ShadowAuditor(
            settings,
            params.registry.gate.routed.low,
            self.stats,
            self.upstream,
            self.capture,
            self.metrics,
            self.demote,
            self.capture_row,
        )
        self.matcher: TaskMatcher | None = None
        self._index_mtime: float | None = None
        self.servable: dict[str, Servable] = {}
        self.refused: list[Refusal] = []
        self.registry_error: str | None = None
        self.demoted: set[tuple[str, str]] = set(self.stats.demotions())
        self._reloader: asyncio.Task | None = None
        self._prefetcher: asyncio.Task | None = None
        self.prefetched = False  # /healthz `ready`: every servable version fetched, its libraries imported

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        self.capture.start()
        await self.refresh()
        for _ in range(_START_ATTEMPTS):  # a registry busy at start-up (a locked SQLite store) gets a few tries
            if self.registry_error is None:
                break
            await asyncio.sleep(0.5)
            await self.refresh()
        self._reloader = asyncio.create_task(self._reload_forever())
        self._prefetcher = asyncio.create_task(self._prefetch())

    async def _prefetch(self) -> None:
        """Download every servable version and import its libraries in the background, so the first
        request to a task loads only its weights (the server answers meanwhile)."""
        for servable in list(self.servable.values()):
            try:
                await asyncio.to_thread(self.pool.prefetch, servable)
            except Exception:
                log.exception("prefetching %s failed; its first request will fetch it", servable.label)
        self.prefetched = True

    async def stop(self) -> None:
        for background in (self._reloader, self._prefetcher):
            if background is not None:
                background.cancel()
        await self.auditor.drain()
        await asyncio.to_thread(self.capture.close)
        await self.upstream.close()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.stats.close()

    async def _reload_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reload_s)
            await self.refresh()

    def _load_index(self) -> None:
        """The task index detect wrote; re-read when detect rewrites it. Without one, every request goes upstream."""
        path = self.layout.task_index
        mtime = path.stat().st_mtime if path.exists() else None
        if mtime == self._index_mtime:
            return
        self._index_mtime = mtime
        if mtime is None:
            self.matcher = None
            log.warning("no task index at %s: every request goes to the teacher until detect runs", path)
            return
        embed_fn = None
        if self.settings.match_by_embedding:
            from stillroom.embeddings import embed

            def embed_fn(texts: list[str]):
                return embed(texts, self.params.detect.embedder)

        self.matcher = TaskMatcher.load(path, embed_fn)

    async def refresh(self) -> None:
        """Re-read what may serve; unload what no longer does, and warm a task's new version when its old one was
        loaded, so a new champion is served without a restart and without a cold request."""
        try:
            self._load_index()
            tasks = self.matcher.tasks if self.matcher else {}
            if self.only_tasks is not None:
                tasks = {task_id: task for task_id, task in tasks.items() if task_id in self.only_tasks}
            servable, refused = await asyncio.to_thread(self.registry.servable, tasks, set(self.demoted))
        except Exception as error:  # a registry hiccup keeps the last good view
            self.registry_error = f"{type(error).__name__}: {error}"[:300]
            log.warning("registry refresh failed, keeping what was serving: %s", self.registry_error)
            return
        self.registry_error = None
        was_loaded = set(self.pool.loaded)
        previous, self.servable, self.refused = self.servable, servable, refused
        self.pool.retain({s.key for s in servable.values()})
        for task_id, now in servable.items():
            before = previous.get(task_id)
            if before is not None and before.key != now.key:
                log.info("%s: now serving %s (%s), was %s", now.task, now.label, now.alias, before.label)
                if before.key in was_loaded:
                    await self._warm(now)  # on the reloader task: requests keep flowing meanwhile
        self.metrics.servable.set(len(servable))
        self._memory_gauges()

    async def _warm(self, servable: Servable) -> None:
        try:
            await self.pool.get(servable)
        except Exception:
            log.exception("warming %s failed; its first request will load it", servable.label)

    def _loaded(self, servable: Servable, load_s: float) -> None:
        self.metrics.load_seconds.labels(servable.task, servable.version, servable.kind).observe(load_s)
        self._memory_gauges()

    def _memory_gauges(self) -> None:
        self.metrics.models_loaded.set(len(self.pool.loaded))
        self.metrics.models_memory_mb.set(self.pool.memory_mb())

    async def demote(self, servable: Servable, reason: str) -> None:
        """Teacher-only for this task at once; the reason goes on the model version and into the live stats."""
        key = (servable.task_id, servable.version)
        if key in self.demoted:
            return
        self.demoted.add(key)
        if self.servable.get(servable.task_id) == servable:
            del self.servable[servable.task_id]
        self.pool.retain({s.key for s in self.servable.values()})
        self.metrics.demotions.labels(servable.task).inc()
        log.warning("%s demoted to teacher-only: %s", servable.label, reason)
        await asyncio.to_thread(self.stats.demote, servable.task_id, servable.task, servable.version, reason)
        try:
            await asyncio.to_thread(self.registry.demote, servable, reason)
        except Exception:
            log.exception("could not tag %s as demoted in MLflow (the live stats have it)", servable.label)

    # ------------------------------------------------------------------ one request

    async def chat(self, request: Request) -> Response:
        exchange = Exchange(f"req_{uuid.uuid4().hex}", time.perf_counter(), datetime.now(UTC))
        try:
            raw = await read_body(request, int(self.settings.max_body_mb * 1e6))
            body, chat = parse_request(raw)
        except ApiError as error:  # not an exchange with any model: counted, not captured
            return self._error_response(error, exchange)
        exchange.body = body
        image_problem = await asyncio.to_thread(self._read_prompt, body, chat, exchange)
        try:
            return await self._answer(request.headers, body, chat, exchange, image_problem)
        except ApiError as error:
            await self.capture.write(self.exchange_row(exchange, None, status=error.status, error=error.message))
            return self._error_response(error, exchange)

    def _read_prompt(self, body: dict, chat: ChatRequest, exchange: Exchange) -> str | None:
        """Read the request as ingest reads a logged call; its images checked, cleared of location tags and
        stored as blobs the way ingest stores them (the capture log names them, never holds their base64).
        Off the event loop: decoding images takes milliseconds. Returns why an image part is unusable."""
        try:
            prompt = student_prompt(chat)
            images = any(m.images for m in prompt)
            if images:
                self.images.prepare_turns(prompt)
                self.images.store_turns(prompt, keep_bytes=True)
        except BadRecord as error:
            return str(error)
        exchange.prompt = prompt
        if images:
            exchange.captured_body = {**body, "messages": with_blob_references(body["messages"], prompt)}
        return None

    async def _answer(
        self, headers: Mapping[str, str], body: dict, chat: ChatRequest, exchange: Exchange, image_problem: str | None
    ) -> Response:
        not_for_students = passthrough_reason(chat, headers, self.settings.pin_header) or image_problem
        if self.matcher is not None:
            messages = body["messages"]
            if exchange.prompt is not None:  # the text ingest would keep, `<IMAGE_n>` where an image sat
                messages = [{"role": m.role, "content": m.content} for m in exchange.prompt]
            exchange.match = self.matcher.match(messages, body.get("response_format"))
        servable = self.servable.get(exchange.match.task_id) if exchange.match else None
        if not_for_students:
            exchange.reason = not_for_students
        elif exchange.match is None:
            exchange.reason = "unknown task"
        elif servable is None:
            exchange.reason = "no student may serve this task"
        else:
            exchange.servable = servable
            await self._ask_student(exchange, chat, servable)
            prediction = exchange.prediction
            if prediction is not None and prediction.valid and prediction.confidence >= servable.threshold:
                return await self._student_response(exchange, chat, headers)
            exchange.route = "fallback"
        pinned = headers.get(self.settings.pin_header)
        return await self._teacher_response(headers, {**body, "model": pinned} if pinned else body, chat, exchange)

    async def _ask_student(self, exchange: Exchange, chat: ChatRequest, servable: Servable) -> None:
        started = time.perf_counter()
        try:
            assert exchange.prompt is not None  # a request whose prompt could not be read never reaches a student
            exchange.prediction, exchange.cold = await self.pool.predict(
                servable, exchange.prompt, self.settings.student_timeout_s
            )
        except TimeoutError:
            exchange.reason = f"student timed out after {self.settings.student_timeout_s:g} s"
        except Exception as error:  # a broken student never breaks the request: the teacher answers
            exchange.reason = f"student failed: {type(error).__name__}"
            log.warning("%s raised %s: %s", servable.label, type(error).__name__, error)
        exchange.student_ms = (time.perf_counter() - started) * 1000
        state = "cold" if exchange.cold else "warm"
        self.metrics.student_seconds.labels(servable.task, servable.version, servable.kind, state).observe(
            exchange.student_ms / 1000
        )
        if exchange.prediction is None:
            self.metrics.student_failures.labels(servable.task, servable.kind).inc()
        elif not exchange.prediction.valid:
            exchange.reason = "student answer outside the task's format"
        elif exchange.prediction.confidence < servable.threshold:
            exchange.reason = f"confidence {exchange.prediction.confidence:.4f} < threshold {servable.threshold:.4f}"

    async def _student_response(self, exchange: Exchange, chat: ChatRequest, headers: Mapping[str, str]) -> Response:
        servable, prediction = exchange.servable, exchange.prediction
        assert servable is not None and prediction is not None
        exchange.route = "student"
        prompt = exchange.prompt or []
        completion = student_completion(
            completion_id(), servable.model_name, prediction.text, usage_for(prompt, prediction.text)
        )
        payload = completion.model_dump(mode="json", exclude_unset=True)
        await self.capture.write(self.exchange_row(exchange, payload))
        if exchange.degraded is None and self.auditor.wanted(servable.task_id):
            self.auditor.submit(
                AuditJob(
                    exchange.request_id,
                    servable,
                    exchange.body or {},
                    caller_headers(headers),
                    prediction.text,
                    exchange.captured_body,
                )
            )
        self._count(exchange)
        if chat.stream:
            events = [sse(chunk) for chunk in student_chunks(completion, chat.include_usage)] + [DONE]
            return StreamingResponse(
                iter(events), media_type="text/event-stream", headers={**SSE_HEADERS, **exchange.headers()}
            )
        return JSONResponse(payload, headers=exchange.headers())

    async def _teacher_response(
        self, headers: Mapping[str, str], body: dict, chat: ChatRequest, exchange: Exchange
    ) -> Response:
        started = time.perf_counter()
        try:
            if chat.stream:
                upstream = await self.upstream.open_stream(body, headers)
                exchange.teacher_ms = (time.perf_counter() - started) * 1000
                self.metrics.teacher_seconds.labels("answer").observe(exchange.teacher_ms / 1000)
                self._count(exchange)
                return StreamingResponse(
                    self._relay(upstream, exchange, chat.include_usage),
                    media_type="text/event-stream",
                    headers={**SSE_HEADERS, **exchange.headers()},
                )
            completion, exchange.teacher_ms = await self.upstream.complete(body, headers)
        except UpstreamFailure as failure:
            prediction = exchange.prediction
            if failure.degradable and self.settings.degrade_to_student and prediction is not None and prediction.valid:
                exchange.degraded = failure.message
                exchange.reason = f"teacher unavailable ({failure.status}); {exchange.reason}"
                return await self._student_response(exchange, chat, headers)
            raise
        self.metrics.teacher_seconds.labels("answer").observe(exchange.teacher_ms / 1000)
        await self.capture.write(self.exchange_row(exchange, completion))
        self._count(exchange)
        return JSONResponse(completion, headers=exchange.headers())

    async def _relay(self, upstream: httpx.Response, exchange: Exchange, include_usage: bool) -> AsyncIterator[bytes]:
        """The teacher's stream as it comes; the exchange is captured before `[DONE]` is passed on."""
        assembled, captured, error = StreamAssembler(), False, None
        try:
            async for line in self.upstream.lines(upstream):
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    await self.capture.write(self.exchange_row(exchange, assembled.completion()))
                    captured = True
                    yield DONE
                    continue
                try:
                    chunk = json.loads(data)
                except json.JSONDecodeError:
                    yield f"data: {data}\n\n".encode()
                    continue
                assembled.feed(chunk)
                if not include_usage and chunk.get("usage") and not chunk.get("choices"):
                    continue  # the usage chunk the server asked for, not the caller
                yield f"data: {data}\n\n".encode()
        except httpx.HTTPError as err:
            error = f"the teacher's stream broke: {type(err).__name__}"
            yield sse({"error": {"message": error, "type": "server_error", "param": None, "code": "upstream_error"}})
        finally:
            if not captured:  # the stream broke or the caller left: the row still goes in (not awaited: cancelled)
                self.capture.submit(
                    self.exchange_row(
                        exchange,
                        assembled.completion() if assembled.head else None,
                        status=502 if error else 499,
                        error=error or "stream ended before [DONE]",
                    )
                )

    # ------------------------------------------------------------------ capture rows, errors, counts

    def capture_row(
        self,
        *,
        request_id: str,
        body: dict | None,
        response: dict | None,
        latency_ms: float | None,
        route: str,
        servable: Servable | None = None,
        match: Match | None = None,
        timestamp: datetime | None = None,
        status: int = 200,
        **details: object,
    ) -> dict:
        """A line in the log shape ingest reads, plus what the server decided under `stillroom`."""
        task = servable.task if servable else (match.task_name if match else None)
        task_id = servable.task_id if servable else (match.task_id if match else None)
        return {
            "timestamp": (timestamp or datetime.now(UTC)).isoformat(),
            "request": body,
            "response": response,
            "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            "status": status,
            "stillroom": {
                "request_id": request_id,
                "route": route,
                "task_id": task_id,
                "task": task,
                "matched_by": match.by if match else None,
                "model_name": servable.model_name if servable else None,
                "model_version": servable.version if servable else None,
                "threshold": servable.threshold if servable else None,
                **{key: value for key, value in details.items() if value is not None},
            },
        }

    def exchange_row(
        self, exchange: Exchange, response: dict | None, status: int = 200, error: str | None = None
    ) -> dict:
        # latency_ms is the teacher's time when it answered (what evaluate reads as the teacher's latency).
        latency = exchange.elapsed_ms() if exchange.route == "student" else exchange.teacher_ms
        prediction = exchange.prediction
        return self.capture_row(
            request_id=exchange.request_id,
            body=exchange.captured_body or exchange.body,
            response=response,
            latency_ms=latency,
            route=exchange.route,
            servable=exchange.servable,
            match=exchange.match,
            timestamp=exchange.timestamp,
            status=status,
            reason=exchange.reason or None,
            error=error,
            confidence=None if prediction is None else round(prediction.confidence, 6),
            student_answer=None if prediction is None or exchange.route == "student" else prediction.text,
            student_ms=None if exchange.student_ms is None else round(exchange.student_ms, 3),
            cold=exchange.cold or None,
            degraded=exchange.degraded,
            total_ms=round(exchange.elapsed_ms(), 3),
        )

    def _count(self, exchange: Exchange) -> None:
        task = exchange.match.task_name if exchange.match else "-"
        self.metrics.requests.labels(exchange.route, task).inc()
        self.metrics.request_seconds.labels(exchange.route).observe(exchange.elapsed_ms() / 1000)

    def _captured(self, rows: list[dict]) -> None:
        """On the capture writer's thread, after each fsynced batch."""
        self.metrics.capture_rows.inc(len(rows))
        self.stats.count_traffic(rows)

    def _error_response(self, error: ApiError, exchange: Exchange) -> Response:
        self.metrics.errors.labels(str(error.status), error.code or error.type).inc()
        if exchange.body is not None:
            self._count(exchange)
        return error.response(exchange.headers())

    # ------------------------------------------------------------------ the other endpoints

    async def models(self, request: Request) -> dict:
        students = [
            {
                "id": s.model_name,
                "object": "model",
                "created": 0,
                "owned_by": "stillroom",
                "stillroom": {
                    "task": s.task,
                    "task_id": s.task_id,
                    "version": s.version,
                    "alias": s.alias,
                    "threshold": s.threshold,
                    "kind": s.kind,
                },
            }
            for s in sorted(self.servable.values(), key=lambda s: s.task)
        ]
        return {"object": "list", "data": students + await self.upstream.models(request.headers)}

    def health(self) -> dict:
        return {
            "status": "ok",
            "ready": self.prefetched,  # it serves before this too; a first request may then wait on imports
            "task_index": self.matcher is not None,
            "tasks": len(self.matcher.tasks) if self.matcher else 0,
            "serving": {
                s.task: {"version": s.label, "alias": s.alias, "threshold": s.threshold, "kind": s.kind}
                for s in self.servable.values()
            },
            "not_serving": {r.task: r.reason for r in self.refused},
            "demoted": sorted(f"{task_id}/v{version}" for task_id, version in self.demoted),
            "loaded": [
                {
                    "model": loaded.servable.label,
                    "memory_mb": round(loaded.memory_mb, 1),
                    "load_s": round(loaded.load_s, 3),
                }
                for loaded in self.pool.loaded.values()
            ],
            "registry_error": self.registry_error,
            "capture_rows": self.capture.rows_written,
        }


class KeyCheck:
    """The caller's Bearer key, checked before any route when the server has one (`/healthz` needs none).
    Plain ASGI: Starlette's `BaseHTTPMiddleware` runs every request in a task of its own behind a stream."""

    def __init__(self, app: ASGIApp, server: Server):
        self.app, self.server = app, server

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self.server.api_key
        if scope["type"] == "http" and key and scope["path"] != "/healthz":
            given = next((value for name, value in scope["headers"] if name == b"authorization"), b"")
            if not hmac.compare_digest(given, f"Bearer {key}".encode()):
                self.server.metrics.errors.labels("401", "invalid_api_key").inc()
                response = ApiError(401, "Incorrect API key provided.", code="invalid_api_key").response()
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(params: Params, layout: Layout, only_tasks: frozenset[str] | None = None) -> FastAPI:
    server = Server(params, layout, only_tasks)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await server.start()
        try:
            yield
        finally:
            await server.stop()

    app = FastAPI(title="stillroom serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    app.add_middleware(KeyCheck, server=server)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        message = (
            f"Unknown request URL: {request.method} {request.url.path}." if exc.status_code == 404 else str(exc.detail)
        )
        return ApiError(exc.status_code, message, code="unknown_url" if exc.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("unexpected error on %s", request.url.path)
        server.metrics.errors.labels("500", "internal_error").inc()
        return ApiError(
            500, "The server had an error while processing your request.", "server_error", "internal_error"
        ).response()

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await server.chat(request)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        return await server.models(request)

    @app.get("/healthz")
    async def healthz() -> dict:
        return server.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(
            server.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8", headers=NO_RETRY
        )

    return app
