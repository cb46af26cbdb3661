"""The bundled sample logs: what the later stages are tried on must be real, readable and stable."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from PIL import Image

from stillroom.config import SampleParams
from stillroom.ingest import IngestResult, ingest
from stillroom.samples import (
    BBC_PROMPTS,
    DOWNLOAD_FOLDERS,
    DOWNLOADS_PROMPT,
    HEADLINE_MAX_BODY,
    HEADLINE_PROMPT,
    JPEG_PROMPT,
    WNUT_PROMPT,
    _bbc_articles,
    _pictures,
    build_sample_logs,
    downloads_answer,
    downloads_folder,
    jpeg_answer,
)
from stillroom.schema import LogRecord

PARAMS = SampleParams(
    seed=5,
    bbc_articles=40,
    wnut_tweets=40,
    oneoff_prompts=60,
    downloads_files=80,
    jpeg_images=60,
    bbc_headlines=30,
    days=45,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, IngestResult]:
    out = tmp_path_factory.mktemp("logs")
    stats = build_sample_logs(PARAMS, out)
    return out, stats, ingest(out)


def _task(record: LogRecord) -> str:
    if record.system_prompt in BBC_PROMPTS:
        return "bbc_topics"
    if record.system_prompt == WNUT_PROMPT:
        return "wnut_people"
    if record.system_prompt == DOWNLOADS_PROMPT:
        return "downloads"
    if record.system_prompt == JPEG_PROMPT:
        return "jpeg"
    if record.system_prompt == HEADLINE_PROMPT:
        return "bbc_headlines"
    return "oneoff"


def test_same_seed_same_bytes(built: tuple[Path, dict, IngestResult], tmp_path: Path) -> None:
    out, stats, _ = built
    again = build_sample_logs(PARAMS, tmp_path)
    assert again == stats
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in tmp_path.iterdir()) == ["openai-2026-09.jsonl", "openai-2026-10.jsonl"]
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / name).read_bytes()


def test_other_seed_other_sample(built: tuple[Path, dict, IngestResult], tmp_path: Path) -> None:
    out, _, _ = built
    build_sample_logs(PARAMS.model_copy(update={"seed": 6}), tmp_path)
    assert (out / "openai-2026-09.jsonl").read_bytes() != (tmp_path / "openai-2026-09.jsonl").read_bytes()


def test_counts_match_params(built: tuple[Path, dict, IngestResult]) -> None:
    _, stats, result = built
    expected = {"bbc_topics": 40, "wnut_people": 40, "oneoff": 60, "downloads": 80, "jpeg": 60, "bbc_headlines": 30}
    assert stats["records"] == expected
    assert Counter(_task(r) for r in result.records) == expected
    assert sum(f["records"] for f in stats["files"].values()) == 310
    assert sum(f["malformed"] for f in stats["files"].values()) == stats["malformed_lines"]


def test_every_good_line_is_read_and_every_bad_one_quarantined(built: tuple[Path, dict, IngestResult]) -> None:
    _, stats, result = built
    assert result.lines == 310 + stats["malformed_lines"]
    assert len(result.records) == 310
    assert result.duplicates == 0
    assert len(result.quarantined) == stats["malformed_lines"] >= 3
    assert set(stats["malformed"]) == {"truncated", "no_choices", "error"}
    reasons = Counter(q.reason.split(":")[0] for q in result.quarantined)
    assert reasons == {
        "not JSON": stats["malformed"]["truncated"],
        "missing": stats["malformed"]["no_choices"] + stats["malformed"]["error"],
    }


def test_files_sorted_and_inside_the_period(built: tuple[Path, dict, IngestResult]) -> None:
    out, _, result = built
    start = datetime(2026, 9, 1, tzinfo=UTC)
    for record in result.records:
        assert start <= record.timestamp < start + timedelta(days=PARAMS.days + 1)
        assert record.id.startswith("chatcmpl-")
        assert record.usage.input_tokens > 0 and record.usage.output_tokens > 0
        assert record.model in {"gpt-4o", "gpt-4o-mini"}
    for path in out.iterdir():
        stamps = [line.split('"timestamp": "')[1][:24] for line in path.read_text().splitlines()]
        assert stamps == sorted(stamps)


def test_bbc_labels_and_the_reworded_prompt(built: tuple[Path, dict, IngestResult]) -> None:
    _, _, result = built
    bbc = [r for r in result.records if _task(r) == "bbc_topics"]
    assert {r.response_text for r in bbc} == {"business", "entertainment", "politics", "sport", "tech"}
    assert {r.system_prompt for r in bbc} == set(BBC_PROMPTS)
    last_v1 = max(r.timestamp for r in bbc if r.system_prompt == BBC_PROMPTS[0])
    first_v2 = min(r.timestamp for r in bbc if r.system_prompt == BBC_PROMPTS[1])
    assert last_v1 < first_v2
    assert max(len(r.user_text) for r in bbc) < 1800


def test_wnut_answers_are_json_people_lists(built: tuple[Path, dict, IngestResult]) -> None:
    _, stats, result = built
    wnut = [r for r in result.records if _task(r) == "wnut_people"]
    named = 0
    for record in wnut:
        assert record.response_format == {"type": "json_object"}
        people = json.loads(record.response_text)["people"]
        assert isinstance(people, list) and all(isinstance(p, str) and p in record.user_text for p in people)
        named += bool(people)
    assert named == stats["wnut_with_people"] == 20


def test_oneoffs_are_varied_real_chat(built: tuple[Path, dict, IngestResult]) -> None:
    _, stats, result = built
    oneoff = [r for r in result.records if _task(r) == "oneoff"]
    openings = Counter(" ".join(r.user_text.lower().split()[:5]) for r in oneoff)
    assert openings.most_common(1)[0][1] <= 2
    assert len({r.response_text for r in oneoff}) == len(oneoff)
    assert {r.system_prompt for r in oneoff} == {"", "You are a helpful assistant."}
    assert sum(not r.system_prompt for r in oneoff) > len(oneoff) / 2
    assert stats["oneoff_shapes"]["multi_turn"] > 0
    for record in oneoff:
        roles = [m.role for m in record.messages]
        assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]


def test_downloads_names_are_varied_and_answered_by_the_documented_rule(built: tuple[Path, dict, IngestResult]) -> None:
    _, stats, result = built
    downloads = [r for r in result.records if _task(r) == "downloads"]
    assert all(r.response_text == downloads_answer(r.user_text) for r in downloads)
    assert set(stats["download_folders"]) <= {*DOWNLOAD_FOLDERS, "other"} and len(stats["download_folders"]) >= 6
    names = [r.user_text.removeprefix("File: ").removeprefix("Which folder does this go in? ") for r in downloads]
    assert any(n.startswith(("IMG_", "DSC", "PXL_")) for n in names)  # camera
    assert any(n.startswith(("Screenshot", "Screen Recording")) for n in names)
    assert any(" (1)." in n or " (2)." in n or " (3)." in n for n in names)  # a second copy
    assert any(n.rpartition(".")[2].isupper() for n in names)  # upper-case extensions
    assert {r.user_text[:6] for r in downloads} >= {"File: "}


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("IMG_0001.JPG", "images"),
        ("Screenshot 2026-09-01 at 10.00.00.png", "images"),
        ("node-v20.16.0-linux-x64.tar.xz", "archives"),
        ("backup (1).tar.gz", "archives"),
        ("Firefox Setup 128.0.3.exe", "installers"),
        ("report.pdf.exe", "installers"),
        ("Obsidian-1.6.7.AppImage", "installers"),
        ("Voice Memo 3.m4a", "audio"),
        ("GX010042.MP4", "video"),
        ("main.py", "code"),
        ("invite.ics", "other"),
        ("README", "other"),
        (".bashrc", "other"),
    ],
)
def test_the_downloads_rule(name: str, folder: str) -> None:
    assert downloads_folder(name) == folder
    assert downloads_answer(f"File: {name}") == downloads_answer(f"Which folder does this go in? {name}") == folder


def test_asking_for_more_than_the_corpus_holds_fails_by_name(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="bbc_articles"):
        build_sample_logs(SampleParams(bbc_articles=100_000, wnut_tweets=0, oneoff_prompts=0), tmp_path)


def test_rebuild_replaces_old_sample_months_only(tmp_path: Path) -> None:
    (tmp_path / "openai-2026-12.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine\n")
    build_sample_logs(SampleParams(bbc_articles=5, wnut_tweets=2, oneoff_prompts=0, jpeg_images=0, days=3), tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "openai-2026-09.jsonl"]


def _jpeg_calls(out: Path) -> list[tuple[bytes, str, str]]:
    """(image bytes, media type sent, answer) of every good convert-to-JPEG line in the logs."""
    calls = []
    for path in sorted(out.iterdir()):
        for line in path.read_text().splitlines():
            try:
                call = json.loads(line)
            except json.JSONDecodeError:
                continue
            messages = call["request"]["messages"]
            if messages[0]["content"] != JPEG_PROMPT or not (call.get("response") or {}).get("choices"):
                continue
            header, _, data = messages[1]["content"][1]["image_url"]["url"].partition(",")
            answer = call["response"]["choices"][0]["message"]["content"]
            calls.append((base64.b64decode(data), header.removeprefix("data:").removesuffix(";base64"), answer))
    return calls


def test_jpeg_images_are_real_varied_small_and_answered_by_the_documented_rule(
    built: tuple[Path, dict, IngestResult],
) -> None:
    out, stats, result = built
    calls = _jpeg_calls(out)
    assert len(calls) == 60 and stats["jpeg_answers"] == dict(sorted(Counter(a for _, _, a in calls).items()))
    assert all(jpeg_answer(body) == answer for body, _, answer in calls)
    assert 0.2 <= stats["jpeg_answers"]["yes"] / 60 <= 0.6
    sent = Counter(media for _, media, _ in calls)
    assert set(sent) >= {"image/png", "image/jpeg", "image/webp", "image/heif", "image/gif", "image/tiff"}
    assert max(len(body) for body, _, _ in calls) <= 120_000
    jpeg = [r for r in result.records if _task(r) == "jpeg"]
    assert all(r.messages[0].content.endswith("\n<IMAGE_1>") and len(r.messages[0].images) == 1 for r in jpeg)
    refs = [(r.messages[0].images[0], r.response_text) for r in jpeg]
    unfit = [answer for ref, answer in refs if ref.media_type == "image/jpeg" or ref.alpha_used or ref.frames > 1]
    assert set(unfit) == {"no"} and len(unfit) >= 15  # the rule's "no" cases, as ingest reads them
    assert sum(ref.alpha_used for ref, _ in refs) >= 3 and sum(ref.frames > 1 for ref, _ in refs) >= 2


def _encoded(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def test_the_jpeg_rule_on_real_images() -> None:
    pictures = {p.name: p for p in _pictures()}
    assert len(pictures) == 31  # scikit-image's 29 images and scikit-learn's two photos
    photo = pictures["astronaut.png"].frames[0].resize((96, 96))
    assert jpeg_answer(_encoded(photo, "PNG")) == "yes"
    assert jpeg_answer(_encoded(photo, "WEBP", quality=80)) == jpeg_answer(_encoded(photo, "HEIF")) == "yes"
    assert jpeg_answer(_encoded(photo, "JPEG")) == "no"  # a JPEG already
    cut_out = photo.convert("RGBA")
    cut_out.putalpha(Image.linear_gradient("L").resize(photo.size))
    assert jpeg_answer(_encoded(cut_out, "PNG")) == "no"  # transparency JPEG cannot keep
    assert jpeg_answer(_encoded(photo.convert("RGBA"), "PNG")) == "yes"  # an alpha channel nobody uses
    frames = [photo, photo.rotate(90)]
    assert jpeg_answer(_encoded(frames[0], "GIF", save_all=True, append_images=frames[1:])) == "no"  # animated
    assert jpeg_answer(_encoded(pictures["chessboard_RGB.png"].frames[0], "PNG")) == "no"  # a graphic
    assert jpeg_answer(_encoded(pictures["phantom.png"].frames[0], "BMP")) == "no"
    assert jpeg_answer(_encoded(pictures["china.jpg"].frames[0].resize((64, 43)), "TIFF")) == "yes"
    assert jpeg_answer(pictures["no_time_for_that_tiny.gif"].raw) == "no"


def test_headline_calls_answer_with_the_articles_real_headline(built: tuple[Path, dict, IngestResult]) -> None:
    """The short-text task: a story's opening in, the BBC's own headline out."""
    _, _, result = built
    titles = {title: body for _, title, body in _bbc_articles()}
    calls = [r for r in result.records if _task(r) == "bbc_headlines"]
    assert len(calls) == 30 and len({r.response_text for r in calls}) == 30
    for record in calls:
        assert record.response_text in titles
        assert titles[record.response_text][:80] in record.user_text  # the story's opening
        assert len(record.user_text) <= HEADLINE_MAX_BODY + 20
