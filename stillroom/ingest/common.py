"""What every format parser shares: the two ways a line is not a record, and readers of common fields."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime

from stillroom.schema import Message


class BadRecord(ValueError):
    """A log line that is not a usable LLM call: quarantined with this reason."""


class Skip(Exception):
    """A line read fine that holds no training record (student-answered traffic, a batch request
    waiting for its answer). Counted by reason, never quarantined."""


def text_of(content: object) -> str:
    """Message content as plain text: a string, or the text (and tool) parts of a content list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(_part_text(part) for part in content)
    if isinstance(content, dict):
        return _part_text(content)
    raise BadRecord(f"unreadable message content of type {type(content).__name__}")


def _part_text(part: object) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        return ""
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text") or (kind is None and "text" in part):
        return str(part.get("text", ""))
    if kind == "tool_use":  # Anthropic: the call, as the tool-call text OpenAI calls get
        return tool_calls_text([{"name": part.get("name"), "arguments": part.get("input")}])
    if kind == "tool_result":
        return text_of(part.get("content"))
    return ""


def tool_calls_text(calls: object) -> str:
    """Tool calls as one canonical JSON text, so an answer that is a call is still an answer."""
    if not isinstance(calls, list):
        return ""
    canonical = []
    for call in calls:
        if not isinstance(call, dict):
            continue
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            with contextlib.suppress(json.JSONDecodeError):
                arguments = json.loads(arguments)
        canonical.append({"name": function.get("name"), "arguments": arguments})
    return json.dumps(canonical, ensure_ascii=False, sort_keys=True) if canonical else ""


def timestamp(value: object) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise BadRecord(f"bad timestamp: {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
        while seconds > 1e11:  # milli-, micro- or nanoseconds since the epoch
            seconds /= 1000
        try:
            return datetime.fromtimestamp(seconds, tz=UTC)
        except (OverflowError, OSError, ValueError) as err:
            raise BadRecord(f"bad timestamp: {value!r}") from err
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError as err:
            raise BadRecord(f"bad timestamp: {value[:40]!r}") from err
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise BadRecord(f"bad timestamp: of type {type(value).__name__}")


def latency_ms(obj: dict) -> float | None:
    """Call duration under the names loggers and proxies use; None when not logged."""
    for key, scale in (("latency_ms", 1.0), ("duration_ms", 1.0), ("response_ms", 1.0), ("latency", 1000.0)):
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
            return float(value) * scale
    return None


def tokens(usage: object, *names: str) -> int:
    """The first of `names` in a usage object that is a count (providers name them differently)."""
    if not isinstance(usage, dict):
        return 0
    for name in names:
        value = usage.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return 0


def split_turns(messages: object, system: list[str] | None = None) -> tuple[str, list[Message]]:
    """(system prompt, the other turns) of a chat; tool calls and tool results are turns too."""
    if not isinstance(messages, list) or not messages:
        raise BadRecord("missing: request.messages")
    system = list(system or [])
    turns: list[Message] = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRecord("bad message: every message needs a role")
        text = text_of(message.get("content")) or tool_calls_text(message.get("tool_calls"))
        if message["role"] in ("system", "developer"):
            system.append(text)
        else:
            turns.append(Message(role=message["role"], content=text))
    if not any(turn.role == "user" for turn in turns):
        raise BadRecord("missing: a user turn")
    return "\n\n".join(system), turns


def leftovers(mapping: object, used: frozenset[str] | set[str]) -> dict:
    """What a record carries that the canonical record has no column for (temperature, tools, metadata)."""
    if not isinstance(mapping, dict):
        return {}
    return {key: value for key, value in mapping.items() if key not in used and value is not None}
