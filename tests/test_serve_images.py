"""`stillroom serve` with an image task: the real server, the official `openai` client, a real image student
trained on the sample convert-to-JPEG calls and registered in a real MLflow store."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import openai
import pytest

from stillroom import detect, ingest, register
from stillroom.config import Params, SampleParams
from stillroom.data import Layout, attach_image_bytes, read_cards, read_jsonl, write_json, write_jsonl
from stillroom.metrics.scoring import wilson_interval
from stillroom.samples import JPEG_PROMPT, _completion_id, _jpeg_calls, _log_line, jpeg_answer
from stillroom.schema import DatasetRow, LogRecord
from stillroom.train import train_task
from tests.fake_teacher import FakeTeacher
from tests.test_serve import capture_rows, running

THRESHOLD = 0.5


def calls(seed: int, n: int) -> list:
    return _jpeg_calls(SampleParams(seed=seed, jpeg_images=n), datetime(2026, 9, 1, tzinfo=UTC))


def image_of(body: dict) -> bytes:
    url = body["messages"][-1]["content"][1]["image_url"]["url"]
    return base64.b64decode(url.partition(",")[2])


def teacher_answer(messages: list[dict]) -> str:
    try:
        return jpeg_answer(image_of({"messages": messages}))
    except ValueError:  # not an image: the big model would say so
        return "no"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> tuple[Params, Layout]:
    """Sample image calls -> real ingest (blobs) and detect (task index) -> an image student, champion v1."""
    root = tmp_path_factory.mktemp("serve-images")
    layout = Layout(root)
    params = Params.model_validate({
        "register": {"tracking_uri": "sqlite:///mlflow.db",
                     "gate": {"label": 0.5, "min_test_rows": 5, "beat_baselines": False, "routed": {"low": 0.5}}},
    })
    logged = calls(seed=3, n=120)
    (root / "data/raw/logs").mkdir(parents=True)
    lines = [json.dumps(_log_line(c, _completion_id(3, "jpeg", i))) for i, c in enumerate(logged)]
    (root / "data/raw/logs/calls.jsonl").write_text("\n".join(lines) + "\n")
    ingest.run(params, layout)
    detect.run(params, layout)
    (card,) = read_cards(layout.cards)
    assert card.inputs == "image+text" and card.labels == ["no", "yes"]
    records = list(read_jsonl(layout.records, LogRecord))
    rows = [DatasetRow(id=r.id, task_id=card.id, split="train", prompt=r.prompt(), input_text=r.user_text,
                       target=r.response_text) for r in records]  # fmt: skip
    attach_image_bytes([row.prompt for row in rows], layout.blobs)
    train_task(card, rows[:100], [], params.train, layout.model(card.id), progress=False)
    test = [row.model_copy(update={"split": "test"}) for row in rows[100:]]
    write_jsonl(layout.dataset(card.id, "test"), test)
    low = wilson_interval(len(test), len(test))[0]
    write_json(layout.report(card.id) / "metrics.json", {
        "accuracy": 1.0, "agreement": 1.0, "agreement_low": low, "agreement_high": 1.0, "n_test": len(test),
        "gate_metric": "accuracy", "gate": 0.5, "passed_gate": True, "threshold": THRESHOLD, "coverage": 1.0,
        "routed_agreement": 1.0, "routed_agreement_low": low, "routed_n": len(test), "p50_ms": 3.0,
    })
    write_jsonl(layout.report(card.id) / "predictions.jsonl", [
        {"id": row.id, "teacher": row.target, "student": row.target, "confidence": 0.9, "agree": 1.0} for row in test
    ])
    assert register.run(params, layout)["models"][0]["alias"] == "champion"
    return params, layout


@pytest.fixture(scope="module")
def served(project: tuple[Params, Layout]) -> Iterator[str]:
    params, layout = project
    with FakeTeacher(teacher_answer, retry_after=0) as teacher, pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", "sk-upstream-test")
        params = params.model_copy(deep=True)
        params.serve = params.serve.model_validate({
            **params.serve.model_dump(), "upstream_base_url": teacher.base_url, "shadow_rate": 0.0,
            "shadow_min_per_hour": 0, "student_timeout_s": 10,
        })
        with running(params, layout) as (url, _):
            yield url


def test_an_image_request_for_an_image_task_is_answered_by_its_student(project, served):
    _, layout = project
    client = openai.OpenAI(base_url=served, api_key="sk-caller-test", timeout=30)
    fresh = [c for c in calls(seed=4, n=30) if c.messages[0]["content"] == JPEG_PROMPT]
    routes, agree = [], []
    for call in fresh:
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=call.messages)
        routes.append(raw.headers["x-stillroom-route"])
        agree.append(raw.parse().choices[0].message.content == call.answer)
        assert raw.headers["x-stillroom-task"] == read_cards(layout.cards)[0].name
    assert routes.count("student") >= 20 and sum(agree) >= 27  # the student answers most, and agrees

    rows = capture_rows(layout)
    assert len(rows) == 30 and "base64" not in json.dumps(rows)  # blob references, never the bytes
    for row, call in zip(rows, fresh, strict=True):
        part = row["request"]["messages"][1]["content"][1]
        sha = part["image_url"]["url"].removeprefix("stillroom-blob:")
        assert (layout.blobs / sha).read_bytes() == image_of({"messages": call.messages})  # no location: as sent

    # Ingest reads the capture back: teacher answers become records whose image has its Pillow facts.
    summary = ingest.run(*project)
    assert summary["quarantined"] == 0
    captured = [r for r in read_jsonl(layout.records, LogRecord) if r.source.startswith("capture")]
    assert len(captured) == routes.count("fallback") + routes.count("teacher")
    assert all(r.messages[0].images[0].width and r.messages[0].images[0].sha256 for r in captured)


def test_an_image_that_is_not_one_goes_to_the_teacher_with_the_reason(project, served):
    client = openai.OpenAI(base_url=served, api_key="sk-caller-test", timeout=30)
    call = calls(seed=5, n=1)[0]
    body = Path(__file__).read_bytes()[:300]  # text sent as a PNG
    url = f"data:image/png;base64,{base64.b64encode(body).decode()}"
    messages = [call.messages[0], {"role": "user", "content": [call.messages[1]["content"][0],
                                                               {"type": "image_url", "image_url": {"url": url}}]}]
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert raw.headers["x-stillroom-route"] == "teacher" and raw.parse().choices[0].message.content == "no"
    assert raw.headers["x-stillroom-reason"] == "unreadable image: not a format Pillow reads"
