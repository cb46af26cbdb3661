"""Image parts in logged calls: parsed in each provider's shape, stored once without location, bad ones quarantined."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image, TiffImagePlugin

from stillroom.config import DetectParams, IngestParams, Params
from stillroom.data import Layout, read_jsonl
from stillroom.detect.cards import build_card
from stillroom.detect.templates import candidates, mask
from stillroom.ingest import ingest, run
from stillroom.schema import LogRecord, stable_id

GPS_IFD, EXIF_IFD, DATE_TAKEN, MAKER_NOTE = 0x8825, 0x8769, 0x9003, 0x927C
GPS = {1: "N", 2: (51.0, 30.0, 0.0), 3: "W", 4: (0.0, 7.0, 0.0)}
QUESTION = "Does this image need converting to JPEG?"


def picture(fmt: str = "PNG", size: tuple[int, int] = (12, 8), gps: bool = False, mode: str = "RGBA") -> bytes:
    """Real image bytes: a small gradient, with camera EXIF (and a GPS position when asked)."""
    image = Image.new(mode, size)
    image.putdata([(x * 20, y * 30, 90, 255 - x)[: len(mode)] for y in range(size[1]) for x in range(size[0])])
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    exif[MAKER_NOTE] = b"Canon maker note: offsets into the EXIF"
    exif.get_ifd(EXIF_IFD)[DATE_TAKEN] = "2026:09:01 10:00:00"
    if gps:
        exif.get_ifd(GPS_IFD).update(GPS)
    out = io.BytesIO()
    image.save(out, fmt, exif=exif)
    return out.getvalue()


def data_url(body: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64,{base64.b64encode(body).decode()}"


def openai_line(index: int, image: dict, text: str = QUESTION) -> str:
    """An OpenAI chat call whose user turn is a text part and an `image_url` part."""
    return json.dumps({
        "timestamp": f"2026-09-01T10:{index:02d}:00Z",
        "request": {"model": "gpt-4o-mini", "messages": [
            {"role": "system", "content": "Answer yes or no."},
            {"role": "user", "content": [{"type": "text", "text": text}, {"type": "image_url", "image_url": image}]},
        ]},
        "response": {"id": f"chatcmpl-{index}", "object": "chat.completion", "model": "gpt-4o-mini",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": "yes"}}]},
    })


def responses_line(index: int, image_url: str) -> str:
    return json.dumps({
        "timestamp": f"2026-09-01T11:{index:02d}:00Z",
        "request": {"model": "gpt-4.1-mini", "instructions": "Answer yes or no.", "input": [{"role": "user",
            "content": [{"type": "input_text", "text": QUESTION}, {"type": "input_image", "image_url": image_url}]}]},
        "response": {"id": f"resp-{index}", "object": "response", "output": [
            {"type": "message", "content": [{"type": "output_text", "text": "no"}]}]},
    })


def anthropic_line(index: int, source: dict) -> str:
    return json.dumps({
        "timestamp": f"2026-09-01T12:{index:02d}:00Z",
        "request": {"model": "claude-haiku", "system": "Answer yes or no.", "messages": [{"role": "user", "content": [
            {"type": "image", "source": source}, {"type": "text", "text": QUESTION}]}]},
        "response": {"id": f"msg-{index}", "type": "message", "content": [{"type": "text", "text": "yes"}]},
    })


def stage(tmp_path: Path, lines: list[str], **ingest: object) -> tuple[dict, Layout, list[LogRecord]]:
    """The ingest stage over one log file of these lines: (metrics, layout, records on disk)."""
    logs = tmp_path / "logs" / "calls.jsonl"
    logs.parent.mkdir(parents=True, exist_ok=True)
    logs.write_text("\n".join(lines) + "\n")
    params = Params()
    params.ingest = IngestParams(logs=str(logs.parent), capture=str(tmp_path / "capture"), **ingest)
    layout = Layout(tmp_path)
    summary = run(params, layout)
    assert json.loads(layout.stage_metrics("ingest").read_text())["images"] == summary["images"]
    return summary, layout, list(read_jsonl(layout.records, LogRecord))


def test_image_parts_in_every_provider_shape_are_read_and_the_bytes_stored_once(tmp_path):
    png = picture()
    url = "https://example.com/cat.png"
    summary, layout, records = stage(tmp_path, [
        openai_line(1, {"url": data_url(png), "detail": "low"}),
        openai_line(2, {"url": url}),
        responses_line(3, data_url(png)),
        anthropic_line(4, {"type": "base64", "media_type": "image/png", "data": base64.b64encode(png).decode()}),
        anthropic_line(5, {"type": "url", "url": url}),
    ])
    assert summary["records"] == 5 and summary["quarantined"] == 0
    assert summary["images"] == {"parts": 5, "stored": 1, "already_stored": 2, "url_only": 2, "file_id_only": 0,
                                 "location_removed": 0, "location_tags_removed": 0}
    by_id = {r.id: r for r in records}
    inline = [by_id[i].messages[0].images[0] for i in ("chatcmpl-1", "resp-3", "msg-4")]
    digest = hashlib.sha256(png).hexdigest()  # no location tags: stored exactly as sent
    assert {ref.sha256 for ref in inline} == {digest}
    assert sorted(p.name for p in layout.blobs.iterdir()) == [digest]
    assert layout.blob(digest).read_bytes() == png
    ref = inline[0]
    assert (ref.media_type, ref.bytes, ref.width, ref.height, ref.mode) == ("image/png", len(png), 12, 8, "RGBA")
    assert (ref.has_alpha, ref.alpha_used, ref.frames, ref.animated) == (True, True, 1, False)
    assert (ref.exif, ref.camera_make, ref.camera_model, ref.url, ref.fetched) == (True, "Canon", "EOS 5D", None, False)
    # the placeholder stands where the image was, on its own line beside the text
    assert by_id["chatcmpl-1"].user_text == f"{QUESTION}\n<IMAGE_1>"
    assert by_id["msg-4"].user_text == f"<IMAGE_1>\n{QUESTION}"
    assert by_id["resp-3"].system_prompt == "Answer yes or no." and by_id["resp-3"].response_text == "no"


def test_records_never_hold_the_image_bytes(tmp_path):
    png = picture(size=(40, 40))
    _, layout, _ = stage(tmp_path, [openai_line(1, {"url": data_url(png)}), responses_line(2, data_url(png))])
    text = layout.records.read_text()
    assert base64.b64encode(png).decode()[:80] not in text
    assert not re.search(r"[A-Za-z0-9+/]{100,}", text)


def test_a_url_only_image_is_referenced_and_never_fetched(tmp_path, monkeypatch):
    def no_network(*args: object) -> None:
        raise AssertionError("ingest opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    url = "https://user:hunter22@images.example.com/a/photo.jpg?size=large"
    summary, layout, [record] = stage(tmp_path, [openai_line(1, {"url": url})])
    [ref] = record.messages[0].images
    assert ref.sha256 is None and ref.fetched is False and ref.width is None and ref.media_type is None
    assert ref.url == "https://<URL_PASSWORD_1>@images.example.com/a/photo.jpg?size=large"  # scrubbed like text
    assert summary["images"]["url_only"] == 1 and summary["images"]["stored"] == 0
    assert list(layout.blobs.iterdir()) == []  # the folder DVC tracks is there, empty


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_gps_is_gone_from_the_stored_blob_and_everything_else_is_kept(tmp_path, fmt):
    mode = "RGB" if fmt == "JPEG" else "RGBA"
    sent = picture(fmt, gps=True, mode=mode)
    media_type = Image.MIME[fmt]
    assert len(Image.open(io.BytesIO(sent)).getexif().get_ifd(GPS_IFD)) == 4
    summary, layout, [record] = stage(tmp_path, [openai_line(1, {"url": data_url(sent, media_type)})])
    [ref] = record.messages[0].images
    stored = layout.blob(ref.sha256).read_bytes()
    assert hashlib.sha256(stored).hexdigest() == ref.sha256 and stored != sent
    kept = Image.open(io.BytesIO(stored))
    exif = kept.getexif()
    assert exif.get_ifd(GPS_IFD) == {} and GPS_IFD not in exif
    camera = (exif[0x010F], exif[0x0110], exif.get_ifd(EXIF_IFD)[DATE_TAKEN], exif[MAKER_NOTE])
    assert camera == ("Canon", "EOS 5D", "2026:09:01 10:00:00", b"Canon maker note: offsets into the EXIF")
    original = Image.open(io.BytesIO(sent))
    assert kept.format == fmt and kept.tobytes() == original.tobytes()  # rewritten, not re-encoded: same pixels
    assert ref.location_removed == 4 and ref.bytes == len(sent) and ref.media_type == media_type
    assert (summary["images"]["location_removed"], summary["images"]["location_tags_removed"]) == (1, 4)


def _frames(fmt: str) -> bytes:
    """Two pictures in one file, each with its own GPS: a multi-picture JPEG (as phones write depth
    and gain maps) or a two-page TIFF."""
    first, second = Image.new("RGB", (8, 8), (250, 0, 0)), Image.new("RGB", (8, 8), (0, 0, 250))
    out = io.BytesIO()
    if fmt == "MPO":
        exif = Image.Exif()
        exif[0x010F] = "Canon"
        exif.get_ifd(GPS_IFD).update(GPS)
        first.save(out, "MPO", save_all=True, append_images=[second], exif=exif)
    else:
        tags = TiffImagePlugin.ImageFileDirectory_v2()
        tags[0x010F], tags[GPS_IFD] = "Canon", GPS
        first.save(out, "TIFF", save_all=True, append_images=[second], tiffinfo=tags)
    return out.getvalue()


@pytest.mark.parametrize(("fmt", "media_type"), [("MPO", "image/jpeg"), ("TIFF", "image/tiff")])
def test_gps_is_gone_from_every_picture_of_a_file_and_its_offsets_still_hold(tmp_path, fmt, media_type):
    sent = _frames(fmt)
    _, layout, [record] = stage(tmp_path, [openai_line(1, {"url": data_url(sent, media_type)})])
    [ref] = record.messages[0].images
    stored = layout.blob(ref.sha256).read_bytes()
    assert len(stored) == len(sent) and ref.frames == 2 and ref.location_removed == 8  # 4 tags in each picture
    kept = Image.open(io.BytesIO(stored))
    for frame, colour in enumerate([(250, 0, 0), (0, 0, 250)]):
        kept.seek(frame)
        assert kept.getexif().get_ifd(GPS_IFD) == {} and kept.getexif()[0x010F] == "Canon"
        assert max(abs(a - b) for a, b in zip(kept.getpixel((3, 3)), colour, strict=True)) <= 2


def test_location_in_xmp_is_removed_too(tmp_path):
    xmp = (b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           b'<rdf:Description xmlns:exif="http://ns.adobe.com/exif/1.0/" exif:GPSLatitude="51,30.0N" '
           b'exif:GPSLongitude="0,7.0W"/></rdf:RDF></x:xmpmeta>')
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 120, 200)).save(out, "JPEG", xmp=xmp)
    _, layout, [record] = stage(tmp_path, [openai_line(1, {"url": data_url(out.getvalue(), "image/jpeg")})])
    [ref] = record.messages[0].images
    assert ref.location_removed == 2
    assert b"GPSLatitude" not in layout.blob(ref.sha256).read_bytes()


def _bomb() -> bytes:
    """A real 1x1 PNG whose header claims 100,000 x 100,000 pixels (CRC fixed, so Pillow believes it)."""
    out = io.BytesIO()
    Image.new("L", (1, 1)).save(out, "PNG")
    png = bytearray(out.getvalue())
    header = struct.pack(">II", 100_000, 100_000) + bytes(png[24:29])
    png[16:29], png[29:33] = header, struct.pack(">I", zlib.crc32(b"IHDR" + header))
    return bytes(png)


def test_bad_images_quarantine_their_record_with_a_reason_and_the_rest_of_the_file_is_kept(tmp_path):
    jpeg = picture("JPEG", size=(32, 32), mode="RGB")
    big = picture("TIFF", size=(64, 64), mode="RGB")  # uncompressed: 12 kB
    summary, layout, records = stage(tmp_path, [
        openai_line(1, {"url": data_url(picture())}),
        openai_line(2, {"url": data_url(_bomb())}),
        anthropic_line(3, {"type": "base64", "media_type": "image/jpeg",
                           "data": base64.b64encode(jpeg[: len(jpeg) // 2]).decode()}),
        responses_line(4, data_url(jpeg, "image/png")),
        openai_line(5, {"url": data_url(big, "image/tiff")}),
        openai_line(6, {"url": "data:image/png;base64,@@not-base64@@"}),
        openai_line(7, {"url": data_url(jpeg, "image/jpeg")}),
    ], max_image_bytes=len(jpeg))
    assert sorted(r.id for r in records) == ["chatcmpl-1", "chatcmpl-7"]
    assert summary["quarantined"] == 5 and summary["lost"] == 0
    assert summary["quarantine_reasons"] == {"image decompression bomb": 1, "truncated image": 1,
                                             "image media type mismatch": 1, "image too large": 1, "bad image": 1}
    quarantined = {q["source"]: q for q in map(json.loads, layout.quarantine.read_text().splitlines())}
    assert set(quarantined) == {f"calls.jsonl:{n}" for n in (2, 3, 4, 5, 6)}
    assert "MAX_IMAGE_PIXELS" in quarantined["calls.jsonl:2"]["reason"]
    assert quarantined["calls.jsonl:4"]["reason"] == (
        "image media type mismatch: sent as image/png, the bytes are image/jpeg")
    assert quarantined["calls.jsonl:5"]["reason"].startswith(f"image too large: {len(big)} bytes")
    assert "<base64: " in quarantined["calls.jsonl:4"]["raw"]  # the line is kept for a look, its image as a length
    assert not any(re.search(r"[A-Za-z0-9+/]{200,}", q["raw"]) for q in quarantined.values())
    assert len(list(layout.blobs.iterdir())) == 2  # only the kept records' images


def test_the_image_tells_apart_two_calls_with_the_same_text(tmp_path):
    red, blue = picture(size=(4, 4)), picture(size=(5, 4))
    same = [json.loads(openai_line(1, {"url": data_url(body)})) for body in (red, blue, red)]
    for line in same:
        del line["response"]["id"]  # ids derived from the content, as for a logger that keeps none
    logs = tmp_path / "calls.jsonl"
    logs.write_text("\n".join(map(json.dumps, same)) + "\n")
    result = ingest(logs, blobs=tmp_path / "blobs")
    assert len(result.records) == 2 and result.duplicates == 1
    assert {r.messages[0].images[0].width for r in result.records} == {4, 5}
    assert len(list((tmp_path / "blobs").iterdir())) == 2


def test_a_text_only_call_keeps_the_id_it_had_before_images_were_read(tmp_path, make_log_line):
    line = json.loads(make_log_line("Sys", "hello", "hi", index=3))
    del line["response"]["id"]
    logs = tmp_path / "calls.jsonl"
    logs.write_text(json.dumps(line) + "\n")
    [record] = ingest(logs).records
    turns = [{"role": "user", "content": "hello"}]
    when = "2026-09-01 00:03:00+00:00"
    assert record.id == stable_id(json.dumps(["Sys", turns, "hi", "gpt-4o-mini", when]), prefix="rec-")
    assert LogRecord.model_validate_json(record.model_dump_json()).messages[0].images == []


def test_detect_sees_the_image_as_a_slot_and_the_card_says_image_inputs(tmp_path):
    turn = f"{QUESTION}\n<IMAGE_1>"
    assert mask(turn) == "does this image need converting to jpeg? <redacted>"
    assert mask(turn) in candidates(turn)  # a whole short turn with a slot: a template of its own
    logs = tmp_path / "calls.jsonl"
    logs.write_text("\n".join(openai_line(i, {"url": data_url(picture(size=(4 + i, 4)))}) for i in range(3)) + "\n")
    records = ingest(logs).records
    card = build_card(records, task_id="t", name="convert", detected_by="structure", templates=[],
                      params=DetectParams())
    assert card.inputs == "image+text" and card.count == 3
    for record in records:
        record.messages[0].images = []
    text_card = build_card(records, task_id="t", name="convert", detected_by="structure", templates=[],
                           params=DetectParams())
    assert text_card.inputs == "text"


def test_a_heic_photo_is_read_through_pillow_heif(tmp_path):
    """HEIC (a phone's default) sent as image/heic is read, described and stored, not quarantined."""
    heic = picture("HEIF", size=(32, 24), mode="RGB")
    summary, layout, records = stage(tmp_path, [openai_line(1, {"url": data_url(heic, "image/heic")})])
    assert summary["records"] == 1 and summary["quarantined"] == 0
    ref = records[0].messages[0].images[0]
    assert (ref.media_type, ref.width, ref.height, ref.frames, ref.alpha_used) == ("image/heif", 32, 24, 1, False)
    assert ref.camera_make == "Canon" and (layout.blobs / ref.sha256).read_bytes() == heic
