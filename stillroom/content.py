"""Message content as text: what ingest records and what the server routes on, read one way.

A content list's text parts run together; each image part becomes an `ImageRef` (its bytes riding
along while they are checked and stored, see `stillroom.images`) and stands in the text as its
`<IMAGE_n>` placeholder. Ingest and the server both parse requests here, so a served request is
read exactly as its logged twin was, and the matcher's templates fit it.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import re

from stillroom.schema import IMAGE_PLACEHOLDER, ImageRef, Message


class BadRecord(ValueError):
    """A log line that is not a usable LLM call: quarantined with this reason."""




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


# How the capture log holds an image the server stored: a URL naming its blob, never the base64 it came as.
BLOB_URL = "stillroom-blob:"
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
    if url.startswith(BLOB_URL):  # a captured request's image, stored by the server
        if not _SHA256.fullmatch(url[len(BLOB_URL) :]):
            raise BadRecord("bad image: a blob reference that is not a SHA-256")
        return ImageRef(sha256=url[len(BLOB_URL) :])
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


def with_blob_references(messages: list[dict], turns: list[Message]) -> list[dict]:
    """The request's messages with each stored image part replaced by its blob reference (what the capture
    log keeps, in the shape ingest reads back); `turns` are the same messages as `turn` read them."""
    out = []
    for message, parsed in zip(messages, turns, strict=True):
        content = message.get("content")
        if not parsed.images or not isinstance(content, list):
            out.append(message)
            continue
        refs, parts = iter(parsed.images), []
        for part in content:
            ref = next(refs, None) if isinstance(part, dict) and part.get("type") in IMAGE_PARTS else None
            if ref is not None and ref.sha256:
                part = {"type": "image_url", "image_url": {"url": BLOB_URL + ref.sha256}}
            parts.append(part)
        out.append({**message, "content": parts})
    return out


_PLACEHOLDER = re.compile(re.escape(IMAGE_PLACEHOLDER).replace(r"\{\}", r"(\d+)"))


def wire_message(message: Message, provider: str = "openai") -> dict:
    """A turn as a provider's API takes it: plain text, or, when it has images, text and image parts in
    the order the placeholders give (inline bytes as base64, else the URL); an image with neither stays
    its placeholder. The inverse of `turn`, so a teacher sees what the logged model saw."""
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict] = []
    position = 0
    for match in _PLACEHOLDER.finditer(message.content):
        index = int(match.group(1)) - 1
        image = message.images[index] if 0 <= index < len(message.images) else None
        part = _image_part(image, provider) if image is not None else None
        if part is None:
            continue
        text = message.content[position : match.start()].strip("\n")
        if text:
            parts.append({"type": "text", "text": text})
        parts.append(part)
        position = match.end()
    tail = message.content[position:].strip("\n")
    if tail or not parts:
        parts.append({"type": "text", "text": tail})
    return {"role": message.role, "content": parts}


def data_url(body: bytes, media_type: str) -> str:
    """An image's bytes as the data URL an OpenAI `image_url` part carries."""
    return f"data:{media_type};base64,{base64.b64encode(body).decode('ascii')}"


def _image_part(image: ImageRef, provider: str) -> dict | None:
    media_type = image.media_type or "image/png"
    if image.body is not None:
        if provider == "anthropic":
            data = base64.b64encode(image.body).decode("ascii")
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image_url", "image_url": {"url": data_url(image.body, media_type)}}
    if image.url:
        if provider == "anthropic":
            return {"type": "image", "source": {"type": "url", "url": image.url}}
        return {"type": "image_url", "image_url": {"url": image.url}}
    return None
