"""A local server standing in for a cloud teacher: OpenAI chat completions and Anthropic Messages.

Real HTTP on 127.0.0.1, the same request and response shapes as the two APIs
(`/v1/chat/completions`, `/v1/messages`); the answers come from a function the test
supplies, given the messages in OpenAI's shape (an Anthropic `system` becomes a system
message). It can also be slow, and fail on purpose (`fail_first` answers with `status`,
with a `Retry-After` header when `retry_after` is set).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Answer = Callable[[list[dict]], str]


class FakeTeacher:
    def __init__(
        self,
        answer: Answer,
        fail_first: int = 0,
        status: int = 500,
        latency_s: float = 0.0,
        retry_after: float | None = None,
    ):
        self.answer = answer
        self.fail_first = fail_first
        self.status = status
        self.latency_s = latency_s
        self.retry_after = retry_after
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.api_keys: list[str | None] = []  # Anthropic's x-api-key header
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def root_url(self) -> str:
        """What the Anthropic client takes as base_url (it adds /v1/messages itself)."""
        return self.base_url.removesuffix("/v1")

    def __enter__(self) -> FakeTeacher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self):
        teacher = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                if self.path not in ("/v1/chat/completions", "/v1/messages"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with teacher._lock:
                    teacher.requests.append(body)
                    teacher.auth.append(self.headers.get("Authorization"))
                    teacher.api_keys.append(self.headers.get("x-api-key"))
                    failing = teacher.fail_first > 0
                    teacher.fail_first -= failing
                if teacher.latency_s:
                    time.sleep(teacher.latency_s)
                if failing:
                    retry = {"Retry-After": f"{teacher.retry_after:g}"} if teacher.retry_after is not None else {}
                    return self._send(teacher.status, {"error": {"message": "try again"}}, retry)
                if self.path == "/v1/messages":
                    return self._anthropic(body)
                text = teacher.answer(body["messages"])
                self._send(
                    200,
                    {
                        "id": f"chatcmpl-fake{len(teacher.requests)}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": body["model"],
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                        ],
                        "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
                    },
                )

            def _anthropic(self, body: dict) -> None:
                system = body.get("system")
                messages = ([{"role": "system", "content": system}] if system else []) + body["messages"]
                text = teacher.answer(messages)
                self._send(
                    200,
                    {
                        "id": f"msg_fake{len(teacher.requests)}",
                        "type": "message",
                        "role": "assistant",
                        "model": body["model"],
                        "content": [{"type": "text", "text": text}],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 10, "output_tokens": 2},
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
