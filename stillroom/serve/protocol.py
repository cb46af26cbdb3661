"""The chat-completions wire format: what a request may hold, and the responses built from the `openai` types.

Requests are validated only as far as routing needs (the rest is the teacher's business and
passes through untouched); responses for student answers are the `openai` package's own
models, so the wire shape is exactly the one the official client parses.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any, Literal

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from stillroom.answers import estimate_tokens
from stillroom.content import turn
from stillroom.schema import Message
from stillroom.serve.errors import bad_request

# Content parts a student may read: text, and images (a task over images has an image student).
STUDENT_PARTS = ("text", "input_text", "image_url")


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[dict[str, Any]] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class ChatRequest(BaseModel):
    """The fields routing reads; everything else is kept and forwarded as sent."""

    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = Field(None, ge=1, le=128)
    tools: list[dict[str, Any]] | None = None
    functions: list[dict[str, Any]] | None = None
    tool_choice: StrictStr | dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(None, ge=0, le=20)
    response_format: dict[str, Any] | None = None
    audio: dict[str, Any] | None = None
    modalities: list[StrictStr] | None = None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


def parse_request(raw: bytes) -> tuple[dict, ChatRequest]:
    """The body as sent (forwarded unchanged) and its validated view; a 400 in OpenAI's words otherwise."""
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise bad_request(
            f"We could not parse the JSON body of your request. ({type(err).__name__}: {err})", code="invalid_json"
        ) from err
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", code="invalid_json")
    try:
        return body, ChatRequest.model_validate(body)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        message = f"Invalid value for '{param}': {first['msg']}." if param else first["msg"]
        if first["type"] == "missing":
            message = f"Missing required parameter: '{param}'."
        raise bad_request(
            message, param=param, code="missing_required_parameter" if first["type"] == "missing" else "invalid_type"
        ) from err


def passthrough_reason(chat: ChatRequest, headers: Mapping[str, str], pin_header: str) -> str | None:
    """Why the student may not answer this request whatever its task, or None when it may."""
    if headers.get(pin_header):
        return "model pinned by header"
    if chat.tools or chat.functions or chat.tool_choice not in (None, "none"):
        return "tools"
    if any(m.role in ("tool", "function") or "tool_calls" in (m.model_extra or {}) for m in chat.messages):
        return "tools"
    if (chat.n or 1) > 1:
        return "n > 1"
    if chat.logprobs or chat.top_logprobs:
        return "logprobs"
    if chat.audio or "audio" in (chat.modalities or []):
        return "audio"
    for message in chat.messages:
        if isinstance(message.content, list) and any(part.get("type") not in STUDENT_PARTS for part in message.content):
            return "audio or files"
    return None


def student_prompt(chat: ChatRequest) -> list[Message]:
    """The turns as ingest reads a logged call (system prompt first; an image part as its `<IMAGE_n>`
    placeholder, its bytes on the turn's ImageRef), so the student and the matcher see what they learnt from.
    BadRecord for an image part that is not one (bad base64, a data URL without it)."""
    return [turn(m.role, m.content) for m in chat.messages]


def completion_id() -> str:
    return f"chatcmpl-sr{uuid.uuid4().hex[:24]}"


def usage_for(prompt: list[Message], answer: str) -> CompletionUsage:
    prompt_tokens = sum(estimate_tokens(m.content) for m in prompt)
    answer_tokens = estimate_tokens(answer)
    return CompletionUsage(
        prompt_tokens=prompt_tokens, completion_tokens=answer_tokens, total_tokens=prompt_tokens + answer_tokens
    )


def student_completion(answer_id: str, model: str, text: str, usage: CompletionUsage) -> ChatCompletion:
    message = ChatCompletionMessage(role="assistant", content=text, refusal=None)
    choice = Choice(index=0, message=message, finish_reason="stop", logprobs=None)
    return ChatCompletion(
        id=answer_id, object="chat.completion", created=int(time.time()), model=model, choices=[choice], usage=usage
    )


def student_chunks(completion: ChatCompletion, include_usage: bool) -> list[ChatCompletionChunk]:
    """The answer as the API streams one: a role delta, the content, the finish reason, then the usage when asked."""
    text = completion.choices[0].message.content or ""

    def chunk(delta: ChoiceDelta, finish: Literal["stop"] | None = None) -> ChatCompletionChunk:
        choice = ChunkChoice(index=0, delta=delta, finish_reason=finish, logprobs=None)
        usage = {"usage": None} if include_usage else {}
        return ChatCompletionChunk(
            id=completion.id,
            object="chat.completion.chunk",
            created=completion.created,
            model=completion.model,
            choices=[choice],
            **usage,
        )

    chunks = [
        chunk(ChoiceDelta(role="assistant", content="")),
        chunk(ChoiceDelta(content=text)),
        chunk(ChoiceDelta(), "stop"),
    ]
    if include_usage:
        chunks.append(
            ChatCompletionChunk(
                id=completion.id,
                object="chat.completion.chunk",
                created=completion.created,
                model=completion.model,
                choices=[],
                usage=completion.usage,
            )
        )
    return chunks


def sse(data: BaseModel | dict | str) -> bytes:
    """One server-sent event line, as the API writes them."""
    if isinstance(data, BaseModel):
        data = data.model_dump_json(exclude_unset=True)
    elif isinstance(data, dict):
        data = json.dumps(data, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


DONE = b"data: [DONE]\n\n"


def completion_text(completion: Mapping[str, Any]) -> str | None:
    """The first choice's text of a chat.completion dict, or None."""
    try:
        return completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None


class StreamAssembler:
    """Builds the chat.completion a stream adds up to, so a streamed exchange is captured like a plain one."""

    def __init__(self) -> None:
        self.head: dict[str, Any] = {}
        self.choices: dict[int, dict[str, Any]] = {}
        self.usage: dict | None = None

    def feed(self, chunk: Mapping[str, Any]) -> None:
        if not self.head:
            self.head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint") if k in chunk}
        if chunk.get("usage"):
            self.usage = dict(chunk["usage"])
        for choice in chunk.get("choices") or []:
            index = int(choice.get("index", 0))
            into = self.choices.setdefault(
                index, {"index": index, "message": {"role": "assistant", "content": ""}, "finish_reason": None}
            )
            delta = choice.get("delta") or {}
            if delta.get("content"):
                into["message"]["content"] += delta["content"]
            for call in delta.get("tool_calls") or []:
                self._add_tool_call(into["message"], call)
            if choice.get("finish_reason"):
                into["finish_reason"] = choice["finish_reason"]

    @staticmethod
    def _add_tool_call(message: dict, call: Mapping[str, Any]) -> None:
        calls = message.setdefault("tool_calls", [])
        index = int(call.get("index", len(calls)))
        while len(calls) <= index:
            calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        target, function = calls[index], call.get("function") or {}
        target["id"] = call.get("id") or target["id"]
        target["function"]["name"] += function.get("name") or ""
        target["function"]["arguments"] += function.get("arguments") or ""

    def completion(self) -> dict:
        return {
            **self.head,
            "object": "chat.completion",
            "choices": [self.choices[i] for i in sorted(self.choices)],
            **({"usage": self.usage} if self.usage else {}),
        }
