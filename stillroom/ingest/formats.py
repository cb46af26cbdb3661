"""One parser per log shape, and `PARSERS`, the table that tells them apart.

A parser turns one JSON object (a log line, an array element, a database row) into
zero or more records: `n > 1` choices and OTLP exports hold several calls. It raises
`BadRecord` for a line to quarantine and `Skip` for a line that holds no training record.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from stillroom.ingest.common import (
    BadRecord,
    Skip,
    latency_ms,
    leftovers,
    split_turns,
    text_of,
    timestamp,
    tokens,
    tool_calls_text,
    turn,
)
from stillroom.ingest.otel import parse_otlp
from stillroom.schema import ImageRef, LogRecord, Message, Usage, stable_id


class BatchStore(Protocol):
    """Where a Batch API request waits for its answer (the files come separately)."""

    def put_request(self, custom_id: str, body: dict) -> dict | None: ...  # the waiting output, if any

    def take_request(self, custom_id: str) -> dict | None: ...

    def put_output(self, custom_id: str, line: dict, source: str) -> None: ...


def record(
    *,
    provider_id: object,
    provider: str,
    model: object,
    system: str,
    turns: list[Message],
    answer: str,
    source: str,
    when: datetime | None,
    usage: Usage,
    response_format: object = None,
    latency: float | None = None,
    extra: dict | None = None,
) -> LogRecord:
    """A canonical record; its id is the provider's, else derived from the content (so dedupe is by content)."""
    if not answer.strip():
        raise BadRecord("missing: response text (empty answer)")
    # a turn without images dumps as it did before images were read, so those ids stay what they were
    content = [system, [t.model_dump(exclude_defaults=True) for t in turns], answer, str(model), str(when)]
    images = [_image_identity(image) for t in turns for image in t.images]
    record_id = str(provider_id) if isinstance(provider_id, str | int) and provider_id != "" else stable_id(
        json.dumps(content + images if images else content, ensure_ascii=False), prefix="rec-"
    )
    return LogRecord(
        id=record_id,
        timestamp=when,
        provider=provider,
        model=str(model or ""),
        system_prompt=system,
        messages=turns,
        response_format=response_format if isinstance(response_format, dict) else None,
        response_text=answer,
        usage=usage,
        latency_ms=latency,
        source=source,
        extra=extra or {},
    )


def _image_identity(image: ImageRef) -> str:
    """What tells two calls with the same text apart by their image: its bytes, else its blob (a captured
    request's), URL or file id."""
    if image.body is not None:
        return hashlib.sha256(image.body).hexdigest()
    return str(image.sha256 or image.url or image.file_id)


def _dict(obj: object, what: str) -> dict:
    if not isinstance(obj, dict):
        raise BadRecord(f"missing: {what}")
    return obj


# --- OpenAI chat completions -------------------------------------------------------------

_CHAT_REQUEST = frozenset({"model", "messages", "response_format"})
_TOP = frozenset({"request", "response", "timestamp", "latency_ms", "duration_ms", "response_ms", "latency"})


def parse_openai(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """`{"request": <chat.completions.create body>, "response": <chat.completion>}`; one record per choice."""
    request = _dict(obj.get("request"), "request")
    response = _dict(obj.get("response"), "response (the call failed or was not logged)")
    if response.get("object") == "response" or "output" in response:
        return parse_responses(obj, source)
    choices = response.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, dict) for c in choices):
        raise BadRecord("missing: response.choices")
    system, turns = split_turns(request.get("messages"))
    when = timestamp(obj.get("timestamp") or response.get("created"))
    usage = response.get("usage")
    extra = {**leftovers(request, _CHAT_REQUEST), **leftovers(obj, _TOP)}
    records = []
    for number, choice in enumerate(choices):
        message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
        answer = text_of(message.get("content")) or tool_calls_text(message.get("tool_calls"))
        choice_extra = dict(extra)
        if message.get("tool_calls"):
            choice_extra["tool_calls"] = message["tool_calls"]
        if choice.get("finish_reason"):
            choice_extra["finish_reason"] = choice["finish_reason"]
        if len(choices) > 1:
            choice_extra["choice"] = number
        response_id = response.get("id")
        records.append(record(
            provider_id=f"{response_id}-{number}" if response_id and number else response_id,
            provider="openai",
            model=request.get("model") or response.get("model"),
            system=system,
            turns=turns,
            answer=answer,
            source=source,
            when=when,
            usage=Usage(input_tokens=tokens(usage, "prompt_tokens"), output_tokens=tokens(usage, "completion_tokens")),
            response_format=request.get("response_format"),
            latency=latency_ms(obj),
            extra=choice_extra,
        ))
    return records


# --- OpenAI Responses API ----------------------------------------------------------------

_RESPONSES_REQUEST = frozenset({"model", "input", "instructions", "text"})


def _responses_turns(items: object) -> list[Message]:
    if isinstance(items, str):
        return [Message(role="user", content=items)]
    if not isinstance(items, list):
        raise BadRecord("missing: request.input")
    turns = []
    for item in items:
        if isinstance(item, str):
            turns.append(Message(role="user", content=item))
        elif isinstance(item, dict) and item.get("type") == "function_call":
            turns.append(Message(role="assistant", content=tool_calls_text([item])))
        elif isinstance(item, dict) and item.get("type") == "function_call_output":
            turns.append(turn("tool", item.get("output")))
        elif isinstance(item, dict) and isinstance(item.get("role"), str):
            turns.append(turn(item["role"], item.get("content")))
        else:
            raise BadRecord("bad message: an input item without a role or type")
    return turns


def _responses_format(text: object) -> dict | None:
    """`text.format` as a chat-completions `response_format`, so detect sees one shape."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") == "text":
        return None
    if fmt.get("type") == "json_schema":
        inner = {key: value for key, value in fmt.items() if key != "type"}
        return {"type": "json_schema", "json_schema": inner}
    return fmt


def parse_responses(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """`{"request": <responses.create body>, "response": <response>}` (`input` and `output` items)."""
    request = _dict(obj.get("request"), "request")
    response = _dict(obj.get("response"), "response (the call failed or was not logged)")
    output = response.get("output")
    if not isinstance(output, list):
        raise BadRecord("missing: response.output")
    turns = _responses_turns(request.get("input"))
    system = [m.content for m in turns if m.role in ("system", "developer")]
    if isinstance(request.get("instructions"), str):
        system.insert(0, request["instructions"])
    turns = [m for m in turns if m.role not in ("system", "developer")]
    if not any(m.role == "user" for m in turns):
        raise BadRecord("missing: a user turn")
    typed = [item for item in output if isinstance(item, dict)]
    texts = [text_of(item.get("content")) for item in typed if item.get("type") == "message"]
    calls = [item for item in typed if item.get("type") == "function_call"]
    usage = response.get("usage")
    return [record(
        provider_id=response.get("id"),
        provider="openai",
        model=request.get("model") or response.get("model"),
        system="\n\n".join(system),
        turns=turns,
        answer="".join(texts) or tool_calls_text(calls),
        source=source,
        when=timestamp(obj.get("timestamp") or response.get("created_at")),
        usage=Usage(input_tokens=tokens(usage, "input_tokens"), output_tokens=tokens(usage, "output_tokens")),
        response_format=_responses_format(request.get("text")),
        latency=latency_ms(obj),
        extra={**leftovers(request, _RESPONSES_REQUEST), **leftovers(obj, _TOP),
               **({"tool_calls": calls} if calls else {})},
    )]


# --- Anthropic Messages ------------------------------------------------------------------

_ANTHROPIC_REQUEST = frozenset({"model", "system", "messages"})


def parse_anthropic(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """`{"request": <messages.create body>, "response": <message>}`: top-level system, content blocks."""
    request = _dict(obj.get("request"), "request")
    response = _dict(obj.get("response"), "response (the call failed or was not logged)")
    if response.get("type") == "error":
        raise BadRecord(f"error: {text_of((response.get('error') or {}).get('message'))[:200]}")
    system = request.get("system")
    system_text = text_of(system) if system else ""
    system_prompt, turns = split_turns(request.get("messages"), [system_text] if system_text else [])
    blocks = response.get("content")
    calls = [block for block in blocks or [] if isinstance(block, dict) and block.get("type") == "tool_use"]
    usage = response.get("usage")
    extra = {**leftovers(request, _ANTHROPIC_REQUEST), **leftovers(obj, _TOP)}
    for key in ("stop_reason", "stop_sequence"):
        if response.get(key):
            extra[key] = response[key]
    if calls:
        extra["tool_calls"] = calls
    texts = [block for block in blocks if isinstance(block, dict) and block.get("type") == "text"] \
        if isinstance(blocks, list) else blocks
    answer = text_of(texts) or tool_calls_text([{"name": c.get("name"), "arguments": c.get("input")} for c in calls])
    return [record(
        provider_id=response.get("id"),
        provider="anthropic",
        model=request.get("model") or response.get("model"),
        system=system_prompt,
        turns=turns,
        answer=answer,
        source=source,
        when=timestamp(obj.get("timestamp")),
        usage=Usage(input_tokens=tokens(usage, "input_tokens"), output_tokens=tokens(usage, "output_tokens")),
        latency=latency_ms(obj),
        extra=extra,
    )]


# --- fine-tuning files -------------------------------------------------------------------

def parse_chat_finetune(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """`{"messages": [...]}`: the last assistant turn is the answer, the turns before it the request."""
    messages = obj.get("messages")
    if not isinstance(messages, list):
        raise BadRecord("missing: messages")
    answers = [i for i, m in enumerate(messages) if isinstance(m, dict) and m.get("role") == "assistant"]
    last = answers[-1] if answers else None
    if last is None:
        raise BadRecord("missing: an assistant turn (the answer)")
    answer = messages[last]
    system, turns = split_turns(messages[:last])
    return [record(
        provider_id=None,
        provider="finetune",
        model=obj.get("model"),
        system=system,
        turns=turns,
        answer=text_of(answer.get("content")) or tool_calls_text(answer.get("tool_calls")),
        source=source,
        when=timestamp(obj.get("timestamp")),
        usage=Usage(),
        response_format=obj.get("response_format"),
        extra=leftovers(obj, {"messages", "model", "timestamp", "response_format"}),
    )]


def parse_prompt_completion(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """`{"prompt": ..., "completion" | "response": ...}` (legacy fine-tuning and many home-made loggers)."""
    prompt = obj.get("prompt")
    answer = obj.get("completion", obj.get("response"))
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRecord("missing: prompt")
    if not isinstance(answer, str):
        raise BadRecord("missing: completion")
    return [record(
        provider_id=obj.get("id"),
        provider=str(obj.get("provider") or "unknown"),
        model=obj.get("model"),
        system=str(obj.get("system") or ""),
        turns=[Message(role="user", content=prompt)],
        answer=answer,
        source=source,
        when=timestamp(obj.get("timestamp")),
        usage=Usage(),
        latency=latency_ms(obj),
        extra=leftovers(obj, {"prompt", "completion", "response", "id", "provider", "model", "system", "timestamp",
                              "latency_ms", "duration_ms", "latency"}),
    )]


# --- OpenAI Batch API --------------------------------------------------------------------

def _batch_join(request: dict, output: dict, source: str) -> list[LogRecord]:
    """A batch request and its output line as one call; an error line is quarantined with its error."""
    error = output.get("error")
    response = output.get("response") if isinstance(output.get("response"), dict) else {}
    status = response.get("status_code", 200)
    if error or (isinstance(status, int) and status >= 400):
        detail = error if isinstance(error, dict) else (response.get("body") or {}).get("error") or {}
        detail = detail if isinstance(detail, dict) else {}
        raise BadRecord(f"batch error: {detail.get('code') or status}: {str(detail.get('message') or '')[:200]}")
    body = _dict(response.get("body"), "batch response.body")
    line = {"request": request, "response": body, "custom_id": output.get("custom_id")}
    parse = parse_responses if body.get("object") == "response" else parse_openai
    return parse(line, source)


def parse_batch_input(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """A request line of a batch input file: held until its output line is read."""
    body = _dict(obj.get("body"), "batch body")
    if store is None:
        raise Skip("batch request")
    waiting = store.put_request(str(obj["custom_id"]), body)
    if waiting is None:
        raise Skip("batch request waiting for its output")
    return _batch_join(body, waiting["line"], waiting["source"])


def parse_batch_output(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """A line of a batch output file, joined to its request by `custom_id`."""
    custom_id = str(obj["custom_id"])
    request = store.take_request(custom_id) if store is not None else None
    if request is None:
        if store is None:
            raise BadRecord("response without request: batch output with no input file")
        store.put_output(custom_id, obj, source)
        raise Skip("batch output waiting for its request")
    return _batch_join(request, obj, source)


# --- stillroom's own serve capture log ---------------------------------------------------

def parse_capture(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """The serve endpoint's capture log: teacher answers are new teacher data; student answers are
    traffic only, never training labels (a student must not learn from itself)."""
    meta = obj.get("stillroom") if isinstance(obj.get("stillroom"), dict) else {}
    if meta.get("route") == "student":
        raise Skip(f"traffic: student-answered ({meta.get('task') or 'no task'})")
    records = parse_openai({key: value for key, value in obj.items() if key != "stillroom"}, source)
    for one in records:
        one.extra["stillroom"] = meta
    return records


def _is(obj: object, key: str, kind: type) -> bool:
    return isinstance(obj, dict) and isinstance(obj.get(key), kind)


def _response_of(obj: dict) -> dict:
    return obj["response"] if isinstance(obj.get("response"), dict) else {}


Parser = Callable[[dict, str, BatchStore | None], list[LogRecord]]
# Log shapes by name, each with a test for whether a parsed object is of that shape, most specific first.
# `stillroom ingest --format NAME` skips the tests and reads every line as NAME.
PARSERS: dict[str, tuple[Callable[[dict], bool], Parser]] = {
    "capture": (lambda o: _is(o, "stillroom", dict) and "request" in o, parse_capture),
    "otlp": (lambda o: _is(o, "resourceSpans", list), lambda o, s, _=None: parse_otlp(o, s)),
    "batch_output": (lambda o: "custom_id" in o and ("response" in o or "error" in o), parse_batch_output),
    "batch_input": (lambda o: "custom_id" in o and "body" in o, parse_batch_input),
    "anthropic": (
        lambda o: "request" in o and (_response_of(o).get("type") in ("message", "error") or _is(o.get("request") or {},
                                                                                                  "system", list)),
        parse_anthropic,
    ),
    "responses": (
        lambda o: "request" in o and (_response_of(o).get("object") == "response" or "output" in _response_of(o)),
        parse_responses,
    ),
    "openai": (lambda o: "request" in o and "response" in o, parse_openai),
    "chat_finetune": (lambda o: _is(o, "messages", list), parse_chat_finetune),
    "prompt_completion": (lambda o: "prompt" in o and ("completion" in o or "response" in o), parse_prompt_completion),
}


def detect_format(obj: dict) -> str:
    for name, (matches, _) in PARSERS.items():
        if matches(obj):
            return name
    raise BadRecord(f"unknown log shape: keys {sorted(str(k)[:40] for k in obj)[:8]}")


def parse_object(obj: object, source: str, store: BatchStore | None = None, fmt: str = "auto") -> tuple[str, list]:
    """(format name, records) of one JSON value: the format detected, or the one forced."""
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    if fmt != "auto" and fmt not in PARSERS:
        raise BadRecord(f"unknown format: {fmt}")
    name = fmt
    try:
        name = detect_format(obj) if fmt == "auto" else fmt
        return name, PARSERS[name][1](obj, source, store)
    except (BadRecord, Skip):
        raise
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as err:  # a shape the parser did not expect
        raise BadRecord(f"unreadable {name} line: {type(err).__name__}") from err


def parse_line(line: str, source: str, store: BatchStore | None = None, fmt: str = "auto") -> tuple[str, LogRecord]:
    """The first record of one JSON log line (what tests and callers of a single line want)."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadRecord(f"not JSON: {err.msg}") from err
    name, records = parse_object(obj, source, store, fmt)
    return name, records[0]


# --- the llm CLI's logs.db ---------------------------------------------------------------

def parse_llm_row(obj: dict, source: str, store: BatchStore | None = None) -> list[LogRecord]:
    """A row of the `responses` table of `llm`'s logs.db (https://llm.datasette.io/en/stable/logging.html)."""
    row = _dict(obj.get("llm_row"), "llm_row")
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadRecord("missing: prompt")
    schema = _json_or_none(row.get("schema"))
    options = _json_or_none(row.get("options_json"))
    extra = {key: value for key, value in {"options": options, "conversation_id": row.get("conversation_id"),
                                           "response_json": _json_or_none(row.get("response_json"))}.items() if value}
    return [record(
        provider_id=f"llm-{row.get('id')}",
        provider="llm",
        model=row.get("model"),
        system=str(row.get("system") or ""),
        turns=[Message(role="user", content=prompt)],
        answer=str(row.get("response") or ""),
        source=source,
        when=timestamp(row.get("datetime_utc")),
        usage=Usage(input_tokens=tokens(row, "input_tokens"), output_tokens=tokens(row, "output_tokens")),
        response_format={"type": "json_schema", "json_schema": {"schema": schema}} if isinstance(schema, dict)
        else None,
        latency=latency_ms(row),
        extra=extra,
    )]


def _json_or_none(value: object) -> object:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


PARSERS["llm_db"] = (lambda o: _is(o, "llm_row", dict), parse_llm_row)
