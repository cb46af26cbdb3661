"""OpenTelemetry GenAI spans exported as OTLP/JSON (what OpenLLMetry, Langfuse and Phoenix export).

Three generations of the semantic conventions carry the messages, all read here:
`gen_ai.input.messages` / `gen_ai.output.messages` JSON attributes (current),
`gen_ai.*.message` and `gen_ai.choice` events (older), and OpenLLMetry's indexed
`gen_ai.prompt.N.role` / `gen_ai.completion.N.content` attributes.
"""

from __future__ import annotations

import json
import re

from stillroom.ingest.common import BadRecord, Skip, text_of, timestamp, tool_calls_text
from stillroom.schema import LogRecord, Message, Usage

_USED = re.compile(r"gen_ai\.(?:prompt|completion)\.\d+\.|gen_ai\.(?:input|output)\.messages"
                   r"|gen_ai\.system_instructions|gen_ai\.usage\.(?:input|output|prompt|completion)_tokens|gen_ai\.(?:request|response)\.model"
                   r"|gen_ai\.response\.id")


def _value(value: object) -> object:
    """An OTLP AnyValue as a plain value."""
    if not isinstance(value, dict):
        return value
    for key in ("stringValue", "boolValue", "doubleValue"):
        if key in value:
            return value[key]
    if "intValue" in value:
        return int(value["intValue"])
    if "arrayValue" in value:
        return [_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
    if "kvlistValue" in value:
        return _attributes((value["kvlistValue"] or {}).get("values", []))
    return None


def _attributes(items: object) -> dict:
    if not isinstance(items, list):
        return {}
    return {item["key"]: _value(item.get("value")) for item in items if isinstance(item, dict) and "key" in item}


def _json(value: object) -> object:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _message_text(message: dict) -> str:
    """A semconv message: `parts` ([{type: text, content}]) or plain `content`."""
    parts = message.get("parts")
    if isinstance(parts, list):
        texts = [str(p.get("content", "")) for p in parts if isinstance(p, dict) and p.get("type") == "text"]
        calls = [p for p in parts if isinstance(p, dict) and p.get("type") == "tool_call"]
        return "".join(texts) or tool_calls_text(calls)
    return text_of(_json(message.get("content"))) or tool_calls_text(message.get("tool_calls"))


def _messages(attrs: dict, events: list) -> tuple[list[dict], list[dict]]:
    """(input messages, output messages) as {role, text}, from whichever convention the span uses."""
    if "gen_ai.input.messages" in attrs or "gen_ai.output.messages" in attrs:
        inputs = _json(attrs.get("gen_ai.input.messages")) or []
        outputs = _json(attrs.get("gen_ai.output.messages")) or []
        system = _json(attrs.get("gen_ai.system_instructions"))
        found_in = [{"role": "system", "text": text_of(system) if not isinstance(system, list)
                     else "".join(str(p.get("content", "")) for p in system if isinstance(p, dict))}] if system else []
        found_in += [{"role": m.get("role", "user"), "text": _message_text(m)} for m in inputs if isinstance(m, dict)]
        found_out = [{"role": "assistant", "text": _message_text(m)} for m in outputs if isinstance(m, dict)]
        return found_in, found_out
    indexed = [k for k in attrs if k.startswith(("gen_ai.prompt.", "gen_ai.completion."))]
    if indexed:
        def numbered(prefix: str) -> list[dict]:
            parts = [k[len(prefix):].split(".")[0] for k in indexed if k.startswith(prefix)]
            numbers = sorted({int(part) for part in parts if part.isdigit()})
            return [{"role": attrs.get(f"{prefix}{n}.role", "user"), "text": str(attrs.get(f"{prefix}{n}.content", ""))}
                    for n in numbers]
        return numbered("gen_ai.prompt."), numbered("gen_ai.completion.")
    found_in, found_out = [], []
    for event in events:
        name = event.get("name", "") if isinstance(event, dict) else ""
        body = _attributes(event.get("attributes")) if isinstance(event, dict) else {}
        if "body" in event and isinstance(event, dict):
            body.update(_json(_value(event["body"])) if isinstance(_json(_value(event["body"])), dict) else {})
        if name == "gen_ai.choice":
            message = _json(body.get("message")) if "message" in body else body
            found_out.append({"role": "assistant", "text": _message_text(message if isinstance(message, dict) else {})})
        elif name.startswith("gen_ai.") and name.endswith(".message"):
            found_in.append({"role": name.split(".")[1], "text": _message_text(body)})
    return found_in, found_out


def _span_record(span: dict, resource: dict, source: str) -> LogRecord:
    attrs = _attributes(span.get("attributes"))
    if not any(key.startswith("gen_ai.") for key in attrs):
        raise Skip("span without gen_ai attributes")
    inputs, outputs = _messages(attrs, span.get("events") or [])
    system = "\n\n".join(m["text"] for m in inputs if m["role"] in ("system", "developer"))
    turns = [Message(role=str(m["role"]), content=m["text"]) for m in inputs
             if m["role"] not in ("system", "developer")]
    if not any(t.role == "user" for t in turns):
        raise BadRecord("missing: a user turn")
    answer = "".join(m["text"] for m in outputs[:1])
    if not answer.strip():
        raise BadRecord("missing: response text (empty answer)")
    start, end = span.get("startTimeUnixNano"), span.get("endTimeUnixNano")
    latency = (int(end) - int(start)) / 1e6 if start and end else None
    provider = attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system") or "otel"
    extra = {k: v for k, v in attrs.items() if not _USED.match(k)}
    extra.update({"trace_id": span.get("traceId"), "span_id": span.get("spanId"), "span": span.get("name")})
    extra.update({f"resource.{k}": v for k, v in resource.items()})
    return LogRecord(
        id=str(attrs.get("gen_ai.response.id") or f"otel-{span.get('traceId')}-{span.get('spanId')}"),
        timestamp=timestamp(int(start)) if start else None,
        provider=str(provider),
        model=str(attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model") or ""),
        system_prompt=system,
        messages=turns,
        response_text=answer,
        usage=Usage(
            input_tokens=int(attrs.get("gen_ai.usage.input_tokens") or attrs.get("gen_ai.usage.prompt_tokens") or 0),
            output_tokens=int(attrs.get("gen_ai.usage.output_tokens")
                              or attrs.get("gen_ai.usage.completion_tokens") or 0),
        ),
        latency_ms=latency if latency is not None and latency >= 0 else None,
        source=f"{source}#{span.get('spanId') or ''}",
        extra={k: v for k, v in extra.items() if v is not None},
    )


def parse_otlp(obj: dict, source: str) -> list[LogRecord]:
    """Every GenAI span of one ExportTraceServiceRequest; spans of other work are skipped.

    One bad span does not cost the others: it is quarantined only when no span of the line is usable.
    """
    records, problems = [], []
    for resource_spans in obj.get("resourceSpans") or []:
        if not isinstance(resource_spans, dict):
            continue
        resource = _attributes((resource_spans.get("resource") or {}).get("attributes"))
        for scope in resource_spans.get("scopeSpans") or resource_spans.get("instrumentationLibrarySpans") or []:
            for span in (scope or {}).get("spans") or [] if isinstance(scope, dict) else []:
                try:
                    records.append(_span_record(span, resource, source))
                except Skip:
                    continue
                except (BadRecord, KeyError, TypeError, ValueError, AttributeError) as err:
                    problems.append(str(err))
    if not records:
        raise BadRecord(problems[0] if problems else "missing: no gen_ai spans in the export")
    return records
