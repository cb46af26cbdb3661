"""Read LLM call logs into one canonical record table.

A log line is whatever a program or proxy wrote for one call. Each line is parsed on
its own: a line that cannot be read is quarantined with its reason and counted, and
the rest of the file goes on. Nothing is dropped silently.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from stillroom.config import Params
from stillroom.data import Layout, write_json, write_jsonl
from stillroom.schema import LogRecord, Message, Usage, stable_id


class BadRecord(ValueError):
    """A log line that is valid JSON but not a usable LLM call."""


@dataclass
class Quarantined:
    source: str
    reason: str
    raw: str

    def as_dict(self) -> dict:
        return {"source": self.source, "reason": self.reason, "raw": self.raw[:2000]}


@dataclass
class IngestResult:
    records: list[LogRecord] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)
    duplicates: int = 0
    lines: int = 0
    formats: Counter = field(default_factory=Counter)

    def summary(self) -> dict:
        reasons = Counter(q.reason.split(":")[0] for q in self.quarantined)
        return {
            "lines": self.lines,
            "records": len(self.records),
            "quarantined": len(self.quarantined),
            "duplicates": self.duplicates,
            "quarantine_reasons": dict(reasons),
            "formats": dict(self.formats),
        }


def _text(content: object) -> str:
    """Message content as plain text: a string, or the text parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise BadRecord(f"unreadable message content of type {type(content).__name__}")


def _timestamp(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(float(value), tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise BadRecord(f"bad timestamp: {value!r}") from err
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise BadRecord(f"bad timestamp: {value!r}")


def _split_system(messages: list[dict]) -> tuple[str, list[Message]]:
    if not isinstance(messages, list) or not messages:
        raise BadRecord("missing: request.messages")
    system: list[str] = []
    turns: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or "role" not in message:
            raise BadRecord("bad message: every message needs a role")
        text = _text(message.get("content"))
        if message["role"] in ("system", "developer"):
            system.append(text)
        else:
            turns.append(Message(role=message["role"], content=text))
    if not any(turn.role == "user" for turn in turns):
        raise BadRecord("missing: a user turn")
    return "\n\n".join(system), turns


def parse_openai(obj: dict, source: str) -> LogRecord:
    """`{"request": <chat.completions.create body>, "response": <chat.completion>}`."""
    request, response = obj.get("request"), obj.get("response")
    if not isinstance(request, dict):
        raise BadRecord("missing: request")
    if not isinstance(response, dict):
        raise BadRecord("missing: response (the call failed or was not logged)")
    choices = response.get("choices") or []
    if not choices or not isinstance(choices[0], dict):
        raise BadRecord("missing: response.choices")
    answer = _text((choices[0].get("message") or {}).get("content"))
    if not answer.strip():
        raise BadRecord("missing: response text (empty answer or tool call)")
    system, turns = _split_system(request.get("messages"))
    usage = response.get("usage") or {}
    timestamp = _timestamp(obj.get("timestamp") or response.get("created"))
    record_id = str(response.get("id") or stable_id(json.dumps(obj, sort_keys=True), prefix="rec-"))
    return LogRecord(
        id=record_id,
        timestamp=timestamp,
        provider="openai",
        model=str(request.get("model") or response.get("model") or ""),
        system_prompt=system,
        messages=turns,
        response_format=request.get("response_format"),
        response_text=answer,
        usage=Usage(
            input_tokens=int(usage.get("prompt_tokens") or 0),
            output_tokens=int(usage.get("completion_tokens") or 0),
        ),
        latency_ms=_latency_ms(obj),
        source=source,
    )


def _latency_ms(obj: dict) -> float | None:
    """Call duration under the names loggers and proxies use; None when not logged."""
    for key, scale in (("latency_ms", 1.0), ("duration_ms", 1.0), ("response_ms", 1.0), ("latency", 1000.0)):
        value = obj.get(key)
        if isinstance(value, int | float) and value >= 0:
            return float(value) * scale
    return None


# Log shapes by name, each with a test for whether a parsed line is of that shape.
# Later formats (Anthropic messages, proxy logs) are added here.
PARSERS: dict[str, tuple[Callable[[dict], bool], Callable[[dict, str], LogRecord]]] = {
    "openai": (lambda obj: "request" in obj and "response" in obj, parse_openai),
}


def parse_line(line: str, source: str) -> tuple[str, LogRecord]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        raise BadRecord(f"not JSON: {err.msg}") from err
    if not isinstance(obj, dict):
        raise BadRecord("not a JSON object")
    for name, (matches, parse) in PARSERS.items():
        if matches(obj):
            return name, parse(obj, source)
    raise BadRecord(f"unknown log shape: keys {sorted(obj)[:8]}")


def log_files(path: Path) -> list[Path]:
    """A .jsonl file, or every .jsonl file below a folder, in a stable order."""
    if path.is_file():
        return [path]
    if path.is_dir():
        return sorted(p for p in path.rglob("*.jsonl") if p.is_file())
    raise FileNotFoundError(f"no logs at {path}: give a .jsonl file or a folder of them")


def _lines(files: Iterable[Path]) -> Iterator[tuple[str, str]]:
    for file in files:
        with file.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, start=1):
                if line.strip():
                    yield f"{file.name}:{number}", line


def ingest(path: Path) -> IngestResult:
    """Every record from the logs at `path`, in time order, each call once."""
    result = IngestResult()
    seen: set[str] = set()
    for source, line in _lines(log_files(path)):
        result.lines += 1
        try:
            name, record = parse_line(line, source)
        except (BadRecord, ValueError) as err:
            result.quarantined.append(Quarantined(source=source, reason=str(err), raw=line))
            continue
        if record.id in seen:
            result.duplicates += 1
            continue
        seen.add(record.id)
        result.formats[name] += 1
        result.records.append(record)
    epoch = datetime.min.replace(tzinfo=UTC)
    result.records.sort(key=lambda r: (r.timestamp or epoch, r.id))
    return result


def run(params: Params, layout: Layout) -> dict:
    """The ingest stage: logs -> data/records.jsonl (+ data/quarantine.jsonl, metrics/ingest.json)."""
    result = ingest(layout.resolve(params.ingest.logs))
    write_jsonl(layout.records, result.records)
    write_jsonl(layout.quarantine, (q.as_dict() for q in result.quarantined))
    summary = result.summary()
    write_json(layout.stage_metrics("ingest"), summary)
    return summary
