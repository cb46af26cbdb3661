"""What every format parser shares: the two ways a line is not a record, and readers of common fields."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re
from datetime import UTC, datetime

from stillroom.schema import IMAGE_PLACEHOLDER, ImageRef, Message


class BadRecord(ValueError):
    """A log line that is not a usable LLM call: quarantined with this reason."""


class Skip(Exception):
    """A line read fine that holds no training record (student-answered traffic, a batch request
    waiting for its answer). Counted by reason, never quarantined."""


def text_of(content: object, images: list[ImageRef] | None = None) -> str:
    """Message content as plain text: a string, or the text (and tool) parts of a content list.
    With `images`, each image part is appended to it and stands in the text as its placeholder."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return _join([_part_text(part, images) for part in content])
    if isinstance(content, dict):
        return _part_text(content, images)
    raise BadRecord(f"unreadable message content of type {type(content).__name__}")


class _Slot(str):
    """An image's placeholder among the text parts of a content list."""

    __slots__ = ()


def _join(pieces: list[str]) -> str:
    """Text parts run together as logged; a placeholder sits on its own line beside its text, never as
    a paragraph of its own (a paragraph that is only a slot would be a template every image call shares)."""
    text, after_slot = "", False
    for piece in filter(None, pieces):
        slot = isinstance(piece, _Slot)
        text = f"{text.rstrip()}\n{piece.lstrip()}" if (slot or after_slot) and text.strip() else text + piece
        after_slot = slot
    return text


def _part_text(part: object, images: list[ImageRef] | None) -> str:
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
        return text_of(part.get("content"), images)
    if kind in IMAGE_PARTS and images is not None:
        images.append(image_ref(part))
        return _Slot(IMAGE_PLACEHOLDER.format(len(images)))
    return ""


# OpenAI chat `image_url`, Responses `input_image`, Anthropic `image`
IMAGE_PARTS = frozenset({"image_url", "input_image", "image"})
_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(?:;[^,;]*)*),", re.ASCII)


def image_ref(part: dict) -> ImageRef:
    """The reference of one image part; bytes sent inline ride along on it until ingest stores them."""
    if part.get("type") == "image":
        source = part.get("source") if isinstance(part.get("source"), dict) else {}
        if source.get("type") == "base64":
            return _inline(source.get("data"), source.get("media_type"))
        if source.get("type") == "url" and isinstance(source.get("url"), str):
            return ImageRef(url=source["url"])
        if source.get("type") == "file" and source.get("file_id"):
            return ImageRef(file_id=str(source["file_id"]))
        raise BadRecord("bad image: an image block without a base64, url or file source")
    url = part.get("image_url")
    url = url.get("url") if isinstance(url, dict) else url  # chat: {"url", "detail"}; Responses: the URL itself
    if not url and part.get("file_id"):
        return ImageRef(file_id=str(part["file_id"]))
    if not isinstance(url, str) or not url:
        raise BadRecord("bad image: an image part without a URL")
    header = _DATA_URL.match(url)
    if header is None:
        return ImageRef(url=url)
    if ";base64" not in header["params"]:
        raise BadRecord("bad image: a data URL that is not base64")
    return _inline(url[header.end():], header["type"])


def _inline(data: object, media_type: object) -> ImageRef:
    if not isinstance(data, str) or not data:
        raise BadRecord("bad image: no base64 data")
    try:
        body = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise BadRecord("bad image: invalid base64") from err
    ref = ImageRef(media_type=str(media_type).lower() if media_type else None, bytes=len(body))
    ref.body = body
    return ref


def turn(role: str, content: object, tool_calls: object = None) -> Message:
    """One non-system turn: its text (image parts as placeholders) and its images."""
    images: list[ImageRef] = []
    text = text_of(content, images) or tool_calls_text(tool_calls)
    return Message(role=role, content=text, images=images)


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
