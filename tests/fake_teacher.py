"""A local server standing in for a cloud teacher: OpenAI chat completions and Anthropic Messages.

Real HTTP on 127.0.0.1, the same request and response shapes as the two APIs
(`/v1/chat/completions`, `/v1/messages`); the answers come from a function the test
supplies, given the messages in OpenAI's shape (an Anthropic `system` becomes a system
message). It can also be slow, and fail on purpose (`fail_first` answers with `status`,
with a `Retry-After` header when `retry_after` is set; `fault` picks failing requests by
their body). Chat completions also stream (SSE), answer `n` choices, and call the first
tool when `tools` are offered; GET /v1/models lists one model.
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
        fault: Callable[[dict], int | None] | None = None,
    ):
        self.answer = answer
        self.fail_first = fail_first
        self.status = status
        self.latency_s = latency_s
        self.retry_after = retry_after
        self.fault = fault  # body -> a status to fail this request with (or None): faults chosen per request
        self.requests: list[dict] = []
        self.auth: list[str | None] = []
        self.api_keys: list[str | None] = []  # Anthropic's x-api-key header
        self._lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0  # the most requests it was answering at once
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

    def completion(self, body: dict, number: int) -> dict:
        """The chat.completion for a request: `n` choices, or a call of the first tool when tools are offered."""
        text = self.answer(body["messages"])
        if body.get("tools"):
            name = body["tools"][0]["function"]["name"]
            call = {"id": f"call_{number}", "type": "function",
                    "function": {"name": name, "arguments": json.dumps({"answer": text})}}
            choices = [{"index": 0, "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                        "finish_reason": "tool_calls"}]
        else:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
                       for i in range(int(body.get("n") or 1))]
        return {
            "id": f"chatcmpl-fake{number}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body["model"],
            "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 2, "total_tokens": 12},
        }

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
                    number = len(teacher.requests)
                    teacher.auth.append(self.headers.get("Authorization"))
                    teacher.api_keys.append(self.headers.get("x-api-key"))
                    failing = teacher.fail_first > 0
                    teacher.fail_first -= failing
                    teacher.in_flight += 1
                    teacher.max_in_flight = max(teacher.max_in_flight, teacher.in_flight)
                status = teacher.status if failing else (teacher.fault(body) if teacher.fault else None)
                if teacher.latency_s:
                    time.sleep(teacher.latency_s)
                with teacher._lock:
                    teacher.in_flight -= 1
                if status:
                    retry = {"Retry-After": f"{teacher.retry_after:g}"} if teacher.retry_after is not None else {}
                    return self._send(status, {"error": {"message": "try again"}}, retry)
                if self.path == "/v1/messages":
                    return self._anthropic(body)
                completion = teacher.completion(body, number)
                if body.get("stream"):
                    return self._stream(completion, bool((body.get("stream_options") or {}).get("include_usage")))
                self._send(200, completion)

            def do_GET(self) -> None:
                if self.path != "/v1/models":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                model = {"id": "teacher-x", "object": "model", "created": 0, "owned_by": "fake"}
                self._send(200, {"object": "list", "data": [model]})

            def _stream(self, completion: dict, include_usage: bool) -> None:
                """Server-sent chunks as the API streams them, the connection closed after `[DONE]`."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                head = {k: completion[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
                for choice in completion["choices"]:
                    message, index = choice["message"], choice["index"]
                    text = message.get("content") or ""
                    deltas = [{"role": "assistant", "content": ""}, {"content": text[: len(text) // 2]},
                              {"content": text[len(text) // 2 :]}]
                    if message.get("tool_calls"):
                        deltas.append({"tool_calls": [{"index": 0, **message["tool_calls"][0]}]})
                    for delta in deltas:
                        self._event({**head, "choices": [{"index": index, "delta": delta, "finish_reason": None}]})
                    end = {"index": index, "delta": {}, "finish_reason": choice["finish_reason"]}
                    self._event({**head, "choices": [end]})
                if include_usage:
                    self._event({**head, "choices": [], "usage": completion["usage"]})
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()

            def _event(self, payload: dict) -> None:
                self.wfile.write(f"data: {json.dumps(payload)}\n\n".encode())
                self.wfile.flush()

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
