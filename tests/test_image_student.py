"""The image classifier rung: facts Pillow reads from real images, a head that learns the sample task's rule, and
one inference path for dataset rows (blob bytes), served requests and MLflow input (content parts)."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import pytest
from PIL import Image

from stillroom.config import ClassifierParams, SampleParams, TrainParams
from stillroom.content import turn
from stillroom.data import Layout, attach_image_bytes
from stillroom.mlflow_model import _message
from stillroom.samples import _jpeg_calls, _pictures
from stillroom.schema import DatasetRow, Message, TaskCard
from stillroom.students import load_student
from stillroom.students.image_classifier import FEATURE_NAMES, image_facts
from stillroom.students.image_classifier_train import save_image_classifier, train_image_classifier
from stillroom.train import choose_rung


def _bytes(image: Image.Image, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def _facts(body: bytes) -> dict[str, float]:
    return dict(zip(FEATURE_NAMES, image_facts(body).tolist(), strict=True))


@pytest.fixture(scope="module")
def pictures():
    return {p.name: p for p in _pictures()}


def test_facts_of_real_images(pictures):
    photo = pictures["coffee.png"].frames[0].resize((120, 80))
    png = _facts(_bytes(photo, "PNG"))
    assert png["format=image/png"] == 1 and png["log2_width"] == pytest.approx(np.log2(120))
    assert png["entropy"] > 6.5 and png["log2_colours"] > 11  # thousands of colours: a photo
    assert png["alpha_used"] == png["frames"] == png["exif"] == 0
    assert png["megapixels"] == pytest.approx(0.0096) and png["bytes_per_pixel"] > 1
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "EOS 5D"
    jpeg = _facts(_bytes(photo, "JPEG", exif=exif, quality=80))
    assert (jpeg["format=image/jpeg"], jpeg["exif"], jpeg["camera"]) == (1, 1, 1)
    assert jpeg["bytes_per_pixel"] < png["bytes_per_pixel"]
    graphic = _facts(_bytes(pictures["chessboard_RGB.png"].frames[0], "PNG"))
    assert graphic["entropy"] == pytest.approx(1.0) and graphic["log2_colours"] == pytest.approx(np.log2(3))
    logo = _facts(_bytes(pictures["logo.png"].frames[0].resize((100, 100)), "PNG"))
    assert (logo["has_alpha"], logo["alpha_used"]) == (1, 0)  # an alpha channel, every pixel opaque
    horse = _facts(_bytes(pictures["horse.png"].frames[0].resize((100, 82)), "WEBP"))
    assert (horse["format=image/webp"], horse["has_alpha"], horse["alpha_used"]) == (1, 1, 1)
    gif = _facts(pictures["no_time_for_that_tiny.gif"].raw)
    assert (gif["format=image/gif"], gif["animated"], gif["frames"]) == (1, 1, pytest.approx(np.log2(24)))
    heic = _facts(_bytes(photo, "HEIF"))
    assert heic["format=image/heif"] == 1 and heic["entropy"] > 6


def _rows(n: int, seed: int) -> list[DatasetRow]:
    """The sample convert-to-JPEG calls as dataset rows, read the way ingest reads them (bytes on each image)."""
    calls = _jpeg_calls(SampleParams(seed=seed, jpeg_images=n), datetime(2026, 9, 1, tzinfo=UTC))
    rows = []
    for i, call in enumerate(calls):
        system, user = call.messages
        prompt = [Message(role="system", content=system["content"]), turn("user", user["content"])]
        for ref in prompt[1].images:
            ref.sha256 = f"{i:064x}"
        rows.append(DatasetRow(id=f"r{i}", task_id="t", split="train", prompt=prompt,
                               input_text=prompt[1].content, target=call.answer))  # fmt: skip
    return rows


def test_the_rung_learns_the_sample_rule_and_answers_rows_requests_and_mlflow_input_alike(tmp_path):
    train, held = _rows(220, seed=1), _rows(80, seed=2)
    student, info = train_image_classifier(train, ClassifierParams(), validation=held[:40])
    assert info["n_train"] == 220 and info["thresholds"] >= 1 and info["train_accuracy"] == 1.0
    save_image_classifier(student, tmp_path / "model")
    loaded = load_student(tmp_path / "model")
    predictions = loaded.predict([row.prompt for row in held])
    agreement = np.mean([p.text == row.target for p, row in zip(predictions, held, strict=True)])
    assert agreement >= 0.95 and all(p.valid for p in predictions)

    # A dataset row as stored: the image by reference, its bytes from the blob store.
    layout = Layout(tmp_path)
    layout.blobs.mkdir(parents=True)
    stored = [row.model_copy(deep=True) for row in held[:5]]
    for row, original in zip(stored, held[:5], strict=True):
        (layout.blobs / row.prompt[1].images[0].sha256).write_bytes(original.prompt[1].images[0].body)
    stored = [DatasetRow.model_validate_json(row.model_dump_json()) for row in stored]  # bytes are not serialized
    assert all(row.prompt[1].images[0].body is None for row in stored)
    assert [p.valid for p in loaded.predict([row.prompt for row in stored])] == [False] * 5  # no bytes: not sure
    assert {p.confidence for p in loaded.predict([row.prompt for row in stored])} == {0.0}
    attach_image_bytes([row.prompt for row in stored], layout.blobs)
    from_blobs = loaded.predict([row.prompt for row in stored])
    assert [(p.text, p.confidence) for p in from_blobs] == [(p.text, p.confidence) for p in predictions[:5]]

    # MLflow input in the request's shape: content parts with data-URL images, parsed as the server parses them.
    calls = _jpeg_calls(SampleParams(seed=2, jpeg_images=80), datetime(2026, 9, 1, tzinfo=UTC))[:5]
    as_mlflow = loaded.predict([[_message(m) for m in call.messages] for call in calls])
    assert [(p.text, p.confidence) for p in as_mlflow] == [(p.text, p.confidence) for p in predictions[:5]]


def test_the_ladder_picks_the_image_rung_for_labels_over_images():
    card = TaskCard(id="t", name="t", count=400, output_type="label", labels=["no", "yes"], inputs="image+text")
    assert choose_rung(card, TrainParams())[0] == "image_classifier"
    assert choose_rung(card.model_copy(update={"inputs": "text"}), TrainParams())[0] == "classifier"
