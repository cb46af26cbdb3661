"""Asking the task: the official `openai` client against `stillroom serve`, so a file is routed exactly as
a request is (student when sure, teacher otherwise, one capture row per exchange).

With `--base-url` the watcher asks a server already running; without it, the same app runs in this
process on an ephemeral loopback port for the duration of the watch, limited to the watched task.
Either way there is one routing implementation, the server's.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import openai

from stillroom.config import Params
from stillroom.data import Layout

_START_TIMEOUT_S = 120


@dataclass(frozen=True)
class Answer:
    """What the endpoint said about one file, with the routing it reported in its x-stillroom-* headers."""

    text: str | None
    route: str | None = None
    task: str | None = None
    confidence: float | None = None
    request_id: str | None = None
    reason: str | None = None
    error: str | None = None


def _answer(headers, text: str | None = None, error: str | None = None) -> Answer:
    confidence = headers.get("x-stillroom-confidence")
    return Answer(
        text=text,
        route=headers.get("x-stillroom-route"),
        task=headers.get("x-stillroom-task"),
        confidence=float(confidence) if confidence else None,
        request_id=headers.get("x-request-id"),
        reason=headers.get("x-stillroom-reason"),
        error=error,
    )


class Endpoint:
    """One chat completion per file; failures become an Answer with `error`, never an exception."""

    def __init__(self, base_url: str, api_key: str | None, timeout_s: float):
        # No client retries: the server tells a client not to retry an answered request (x-should-retry).
        self.client = openai.OpenAI(
            base_url=base_url, api_key=api_key or "not-needed", timeout=timeout_s, max_retries=0
        )
        self.base_url = base_url

    def ask(self, body: dict) -> Answer:
        try:
            raw = self.client.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as error:
            said = error.body.get("message") if isinstance(error.body, dict) else None
            return _answer(error.response.headers, error=f"{error.status_code} {said or error.message}"[:300])
        except openai.APIConnectionError as error:
            return Answer(text=None, error=f"{self.base_url} unreachable: {type(error).__name__}")
        completion = raw.parse()
        return _answer(raw.headers, text=completion.choices[0].message.content or "")

    def close(self) -> None:
        self.client.close()


def watch_serve_params(params: Params) -> Params:
    """The server's settings within the watcher's bounds: one inference thread, its torch threads and memory."""
    bounded = params.model_copy(deep=True)
    watch = params.watch
    bounded.serve = params.serve.model_copy(
        update={
            "inference_threads": 1,
            "torch_threads": watch.threads,
            "max_memory_mb": min(params.serve.max_memory_mb, watch.max_memory_mb),
        }
    )
    return bounded


@contextmanager
def local_endpoint(params: Params, layout: Layout, task_id: str) -> Iterator[str]:
    """`stillroom serve`'s app on 127.0.0.1 (a free port) in a thread of this process; yields its base URL."""
    import uvicorn

    from stillroom.serve.app import create_app

    os.environ.setdefault("OMP_NUM_THREADS", str(params.watch.threads))
    app = create_app(watch_serve_params(params), layout, only_tasks=frozenset({task_id}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="stillroom-watch-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + _START_TIMEOUT_S
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the in-process stillroom serve did not start (see the log above)")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        server.should_exit = True  # its shutdown closes the capture writer: every row is on disk after this
        thread.join(timeout=30)


@contextmanager
def endpoint_for(params: Params, layout: Layout, task_id: str, base_url: str | None) -> Iterator[Endpoint]:
    """The endpoint at base_url, else the in-process one; callers send serve.api_key_env's key when it is set."""
    with ExitStack() as stack:
        url = base_url or stack.enter_context(local_endpoint(params, layout, task_id))
        endpoint = Endpoint(url, os.environ.get(params.serve.api_key_env), params.watch.request_timeout_s)
        stack.callback(endpoint.close)
        yield endpoint
