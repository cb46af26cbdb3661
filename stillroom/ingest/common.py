"""What every format parser shares: the two ways a line is not a record, and readers of common fields.

Message content (text parts, image parts as placeholders) is read by `stillroom.content`, which the
server shares; its names are re-exported here for the parsers.
"""

from __future__ import annotations

from datetime import UTC, datetime

from stillroom.content import BadRecord, text_of, tool_calls_text, turn
from stillroom.schema import Message

__all__ = ["BadRecord", "Skip", "text_of", "tool_calls_text", "turn"]


class Skip(Exception):
    """A line read fine that holds no training record (student-answered traffic, a batch request
    waiting for its answer). Counted by reason, never quarantined."""


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
        if message["role"] in ("system", "developer"):
            system.append(text_of(message.get("content")) or tool_calls_text(message.get("tool_calls")))
        else:
            turns.append(turn(message["role"], message.get("content"), message.get("tool_calls")))
    if not any(turn.role == "user" for turn in turns):
        raise BadRecord("missing: a user turn")
    return "\n\n".join(system), turns


def leftovers(mapping: object, used: frozenset[str] | set[str]) -> dict:
    """What a record carries that the canonical record has no column for (temperature, tools, metadata)."""
    if not isinstance(mapping, dict):
        return {}
    return {key: value for key, value in mapping.items() if key not in used and value is not None}
