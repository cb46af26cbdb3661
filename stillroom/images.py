"""Image parts of logged calls and served requests: checked and described with Pillow, location tags
taken out, stored once. Shared by ingest and the server, so a captured request's image is the same blob
its logged twin's would be.

Bytes sent inline (a data URL, a base64 block) are read here before their record is kept.
A body over `ingest.max_image_bytes`, a decompression bomb (over Pillow's MAX_IMAGE_PIXELS),
a truncated or corrupt file, or bytes that are not the media type they were sent as make the
whole record a quarantined entry with the reason: no call is kept with a part silently gone.
GPS and other location tags leave the bytes before they are written, by editing the file's
metadata where it lies (JPEG, TIFF, PNG, WebP): pixels, the rest of the EXIF and its maker note
stay byte for byte; a format this cannot edit is quarantined rather than stored with its location.
A kept image is written once to data/raw/blobs/<sha256 of the stored bytes>. A URL is never
fetched: its reference says so.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

import pillow_heif
from PIL import Image, ImageFile

from stillroom.content import BadRecord
from stillroom.schema import ImageRef, LogRecord, Message

_GPS_IFD = 0x8825
_MAKE, _MODEL = 0x010F, 0x0110
# XMP properties that say where a photo was taken (exif:GPS*, IPTC and Photoshop location fields)
_XMP_LOCATION = re.compile(
    rb"exif:GPS\w+|photoshop:(?:City|State|Country)\b|Iptc4xmpCore:(?:Location|CountryCode)\b|Iptc4xmpExt:Location\w*"
)
# IPTC-IIM datasets 2:90 city, 2:92 sub-location, 2:95 province, 2:100-101 country (a JPEG's APP13)
_IPTC_LOCATION = re.compile(rb"\x1c\x02[\x5a\x5c\x5f\x64\x65]")
T = TypeVar("T")
pillow_heif.register_heif_opener()  # HEIC, phones' default: read wherever images are opened (they all import this)
_MEDIA_ALIASES = {
    "image/jpg": "image/jpeg",
    "image/pjpeg": "image/jpeg",
    "image/x-png": "image/png",
    "image/heic": "image/heif",  # Pillow (through pillow-heif) names both HEIF
}
_FORMAT_MEDIA = {"MPO": "image/jpeg"}  # a multi-picture JPEG (phones' depth and gain maps) is sent as a JPEG


def _media(format_name: str | None) -> str | None:
    return _FORMAT_MEDIA.get(format_name or "") or Image.MIME.get(format_name or "")


class ImageStore:
    """Reads every image of a parsed call before it is kept, then writes the kept ones' blobs."""

    def __init__(self, blobs: Path | None, max_bytes: int, counts: Counter):
        self.blobs, self.max_bytes, self.counts = blobs, max_bytes, counts
        if blobs is not None:
            blobs.mkdir(parents=True, exist_ok=True)  # a DVC output: there even when no call has an image

    def prepare(self, records: Iterable[LogRecord]) -> None:
        """Fill in each inline image's facts and swap its bytes for the stored form; BadRecord for a bad one."""
        self.prepare_turns(m for record in records for m in record.messages)

    def prepare_turns(self, messages: Iterable[Message]) -> None:
        """`prepare` for turns; an image that names a stored blob (a captured request's) is read from it."""
        for ref in {id(ref): ref for m in messages for ref in m.images}.values():
            if ref.body is None and ref.sha256 and self.blobs is not None and (self.blobs / ref.sha256).is_file():
                ref.body, ref.sha256 = (self.blobs / ref.sha256).read_bytes(), None
            if ref.body is not None and ref.sha256 is None:  # choices of one call share their turns: read once
                _prepare(ref, self.max_bytes)

    def store(self, record: LogRecord) -> None:
        """Write the blobs of a kept record (each at most once) and let go of the bytes."""
        self.store_turns(record.messages)

    def store_turns(self, messages: Iterable[Message], keep_bytes: bool = False) -> None:
        """`store` for turns; `keep_bytes` leaves the bytes on the references (a student is about to read them)."""
        for ref in (ref for message in messages for ref in message.images):
            self.counts["parts"] += 1
            if ref.sha256 is None:
                self.counts["url_only" if ref.url else "file_id_only"] += 1
                continue
            if ref.body is None:  # another choice of the same call, stored already
                continue
            self.counts["location_removed"] += ref.location_removed > 0
            self.counts["location_tags_removed"] += ref.location_removed
            if self.blobs is not None:
                self.counts["stored" if _write_once(self.blobs / ref.sha256, ref.body) else "already_stored"] += 1
            if not keep_bytes:
                ref.body = None


def _write_once(path: Path, body: bytes) -> bool:
    """Content-addressed: a blob that exists already holds these bytes. Written whole or not at all."""
    if path.exists():
        return False
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_bytes(body)
    os.replace(partial, path)
    return True


def _prepare(ref: ImageRef, max_bytes: int) -> None:
    body = ref.body or b""
    if len(body) > max_bytes:
        raise BadRecord(f"image too large: {len(body)} bytes, over ingest.max_image_bytes ({max_bytes})")
    image = _open(body)
    actual = _media(image.format)
    declared = _MEDIA_ALIASES.get(ref.media_type or "", ref.media_type)
    if declared and declared != actual:
        raise BadRecord(f"image media type mismatch: sent as {declared}, the bytes are {actual or image.format}")
    _describe(ref, image, _read(image.getexif), actual)
    location = _read(lambda: _location_tags(image))
    if location:
        body = _read(lambda: _without_location(body, image.format))
        cleaned = _open(body)
        if _read(lambda: _location_tags(cleaned)):  # never store a blob that still says where
            raise BadRecord(f"image location tags could not be removed ({image.format})")
    ref.location_removed = location
    ref.sha256 = hashlib.sha256(body).hexdigest()
    ref.body = body


def _read(call: Callable[[], T]) -> T:
    """A Pillow call on untrusted bytes: whatever it raises means the file is broken."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return call()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        limit = f"over Pillow's MAX_IMAGE_PIXELS ({Image.MAX_IMAGE_PIXELS})"
        raise BadRecord(f"image decompression bomb: {limit}: {err}") from err
    except Image.UnidentifiedImageError as err:
        raise BadRecord("unreadable image: not a format Pillow reads") from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... on bad data
        kind = "truncated image" if "truncated" in str(err).lower() or isinstance(err, EOFError) else "corrupt image"
        raise BadRecord(f"{kind}: {type(err).__name__}: {str(err)[:120]}") from err


def _open(body: bytes) -> ImageFile.ImageFile:
    """The image, decoded once in full (a truncated file only shows when its pixels are read)."""
    image = _read(lambda: Image.open(io.BytesIO(body)))
    _read(image.load)
    _read(lambda: getattr(image, "n_frames", 1))  # reads every frame's header: a cut-off animation shows here
    return image


def _describe(ref: ImageRef, image: ImageFile.ImageFile, exif: Image.Exif, media_type: str | None) -> None:
    """What later stages want to know of the image, read once here so none of them re-opens the blob."""
    bands = image.getbands()
    transparent = "transparency" in image.info
    ref.media_type = media_type
    ref.width, ref.height = image.size
    ref.mode = image.mode
    ref.has_alpha = "A" in bands or "a" in bands or transparent
    ref.alpha_used = bool(ref.has_alpha) and _read(lambda: _alpha_used(image, transparent))
    ref.frames = int(getattr(image, "n_frames", 1))
    ref.animated = bool(getattr(image, "is_animated", False))
    ref.exif = len(exif) > 0
    ref.camera_make, ref.camera_model = _tag_text(exif.get(_MAKE)), _tag_text(exif.get(_MODEL))


# The side of the nearest-neighbour thumbnail colours and entropy are counted on: what they tell (a photo or
# a graphic) shows at this size, and counting it costs well under a millisecond whatever the image's size.
STATS_SIDE = 64


def describe(body: bytes) -> tuple[ImageRef, ImageFile.ImageFile]:
    """An image's reference with what Pillow reads from its bytes (as ingest records it), and the open image.
    BadRecord when the bytes are not a readable image."""
    image = _open(body)
    ref = ImageRef(bytes=len(body), sha256=hashlib.sha256(body).hexdigest())
    _describe(ref, image, _read(image.getexif), _media(image.format))
    return ref, image


def colour_stats(image: Image.Image) -> tuple[int, float]:
    """(distinct colours, luminance entropy in bits) of the first frame's STATS_SIDE-pixel thumbnail: a photo
    has thousands of colours and 6-8 bits, a graphic, a scan or a screenshot few colours and a few bits."""
    image.seek(0)
    small = image.convert("RGB")  # a palette, grey or alpha image counted by the colours it shows
    small = small.resize((min(STATS_SIDE, small.width), min(STATS_SIDE, small.height)), Image.Resampling.NEAREST)
    colours = len(small.getcolors(STATS_SIDE * STATS_SIDE) or ())
    histogram = small.convert("L").histogram()
    total = sum(histogram)
    entropy = -sum(n / total * math.log2(n / total) for n in histogram if n)
    return colours, entropy


def _alpha_used(image: Image.Image, transparent: bool) -> bool:
    rgba = image.convert("RGBA") if transparent or image.mode not in ("RGBA", "LA", "PA") else image
    return rgba.getchannel(rgba.getbands()[-1]).getextrema()[0] < 255


def _tag_text(value: object) -> str | None:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    text = str(value).strip("\x00 \t\r\n") if value is not None else ""
    return text or None


def _xmp(image: Image.Image) -> bytes:
    packet = image.info.get("xmp") or image.info.get("XML:com.adobe.xmp") or b""
    return packet.encode() if isinstance(packet, str) else packet


def _location_tags(image: ImageFile.ImageFile) -> int:
    """How many location tags the image carries (GPS IFD entries, XMP location properties), in every
    frame whose metadata is its own (the images of a multi-picture JPEG, the pages of a TIFF)."""
    frames = getattr(image, "n_frames", 1) if image.format in ("MPO", "TIFF") else 1
    found = 0
    for frame in range(frames):
        image.seek(frame)
        exif = image.getexif()
        found += len(exif.get_ifd(_GPS_IFD)) or int(_GPS_IFD in exif)
        found += len(_XMP_LOCATION.findall(_xmp(image)))
    image.seek(0)
    return found


def _without_location(body: bytes, format_name: str | None) -> bytes:
    """The bytes with the GPS IFD and location-bearing XMP (and, in a JPEG, IPTC) taken out. JPEG and
    TIFF are edited in place at the same length, so every offset in them (a multi-picture JPEG's
    images, a maker note's values) still holds; PNG and WebP chunks carry no offsets."""
    data = bytearray(body)
    if format_name in ("JPEG", "MPO"):
        _jpeg(data)
    elif format_name == "TIFF":
        _strip_tiff(data, 0, len(data))
    elif format_name == "PNG":
        data = _png(data)
    elif format_name == "WEBP":
        data = _webp(data)
    return bytes(data)


_TIFF_TYPE_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}
_XMP_TAG = 700


def _strip_tiff(data: bytearray, base: int, end: int) -> None:
    """In the TIFF structure at data[base:end], in place: every IFD's GPS pointer entry removed (the
    entries after it move up, the freed 12 bytes are zeroed), the GPS IFD and its values zeroed, and an
    XMP packet with a location blanked. Raises ValueError on a structure that does not add up."""
    order = {b"II": "little", b"MM": "big"}.get(bytes(data[base : base + 2]))
    if order is None or end - base < 8:
        raise ValueError("EXIF is not a TIFF structure")

    def number(at: int, size: int) -> int:
        if at < 0 or base + at + size > end:
            raise ValueError("EXIF offset outside its segment")
        return int.from_bytes(data[base + at : base + at + size], order)

    def value_span(entry: int) -> tuple[int, int]:
        size = _TIFF_TYPE_BYTES.get(number(entry + 2, 2), 1) * number(entry + 4, 4)
        at = entry + 8 if size <= 4 else number(entry + 8, 4)
        number(at, size)  # in bounds
        return base + at, base + at + size

    def zero(start: int, stop: int) -> None:
        data[start:stop] = bytes(stop - start)

    ifd, seen = number(4, 4), set()
    while ifd and ifd not in seen:
        seen.add(ifd)
        count = number(ifd, 2)
        for n in range(count):
            entry = ifd + 2 + 12 * n
            tag = number(entry, 2)
            if tag == _XMP_TAG and _XMP_LOCATION.search(data[slice(*value_span(entry))]):
                zero(*value_span(entry))
            if tag != _GPS_IFD:
                continue
            gps = number(entry + 8, 4)
            for g in range(number(gps, 2)):
                zero(*value_span(gps + 2 + 12 * g))
            zero(base + gps, base + gps + 2 + 12 * number(gps, 2) + 4)
            table_end = base + ifd + 2 + 12 * count + 4  # the entries and the next-IFD offset
            data[base + entry : table_end - 12] = data[base + entry + 12 : table_end]
            zero(table_end - 12, table_end)
            count -= 1
            data[base + ifd : base + ifd + 2] = count.to_bytes(2, order)
            break
        ifd = number(ifd + 2 + 12 * count, 4)


def _jpeg(data: bytearray) -> None:
    """Each embedded JPEG's segments before its first scan, edited in place: EXIF stripped, location
    XMP or IPTC blanked (a segment of zeros, which readers skip). Scan data never holds FF D8 FF
    (0xFF is stuffed there), so the next such run starts the next image of a multi-picture file."""
    start = 0
    while start >= 0:
        i = start + 2
        while i + 4 <= len(data) and data[i] == 0xFF and data[i + 1] != 0xDA:  # 0xDA: start of scan
            end = i + 2 + int.from_bytes(data[i + 2 : i + 4], "big")
            marker, payload = data[i + 1], data[i + 4 : end]
            if marker == 0xE1 and payload[:6] == b"Exif\x00\x00":
                _strip_tiff(data, i + 10, end)
            elif (marker == 0xE1 and _XMP_LOCATION.search(payload)) or (
                marker == 0xED and _IPTC_LOCATION.search(payload)
            ):
                data[i + 4 : end] = bytes(end - i - 4)
            i = end
        start = data.find(b"\xff\xd8\xff", i)


def _png(data: bytearray) -> bytearray:
    """The eXIf chunk stripped (its CRC redone) and a location-bearing XMP text chunk dropped."""
    out, i = bytearray(data[:8]), 8
    while i + 12 <= len(data):
        end = i + 12 + int.from_bytes(data[i : i + 4], "big")
        kind = bytes(data[i + 4 : i + 8])
        if kind in (b"iTXt", b"tEXt") and _XMP_LOCATION.search(data[i:end]):
            i = end
            continue
        chunk = data[i:end]
        if kind == b"eXIf":
            _strip_tiff(chunk, 8, len(chunk) - 4)
            chunk[-4:] = zlib.crc32(chunk[4:-4]).to_bytes(4, "big")
        out += chunk
        i = end
    return out + data[i:]


def _webp(data: bytearray) -> bytearray:
    """The EXIF chunk stripped and a location-bearing XMP chunk dropped (its VP8X flag cleared)."""
    out, i, xmp_dropped = bytearray(), 12, False
    while i + 8 <= len(data):
        kind, size = bytes(data[i : i + 4]), int.from_bytes(data[i + 4 : i + 8], "little")
        chunk, i = data[i : i + 8 + size + (size & 1)], i + 8 + size + (size & 1)
        if kind == b"XMP " and _XMP_LOCATION.search(chunk):
            xmp_dropped = True
            continue
        if kind == b"EXIF":  # the TIFF structure, after an "Exif\0\0" some writers put first
            _strip_tiff(chunk, 14 if chunk[8:14] == b"Exif\x00\x00" else 8, 8 + size)
        out += chunk
    flags = out.find(b"VP8X")
    if xmp_dropped and flags >= 0:
        out[flags + 8] &= ~0x04 & 0xFF
    return bytearray(data[:4]) + (4 + len(out)).to_bytes(4, "little") + b"WEBP" + out
