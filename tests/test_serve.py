"""`stillroom serve` end to end: a real uvicorn server, the official `openai` client, the HTTP fake teacher, and a
student really trained, evaluated-as-registered and registered in a real MLflow store (SQLite in tmp_path).

The task index comes from the real ingest and detect stages run on a small log. The student is a
TF-IDF classifier (trains in a second). Tests run in file order: the last one demotes v1 and
registers v2, which the other tests must not see.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import openai
import pytest
import uvicorn
from mlflow.tracking import MlflowClient

from stillroom import detect, ingest, register
from stillroom.config import Params
from stillroom.data import Layout, read_cards, write_json, write_jsonl
from stillroom.detect.matcher import TaskMatcher
from stillroom.metrics.scoring import wilson_interval
from stillroom.schema import DatasetRow, Message, TaskCard
from stillroom.serve import check_binding
from stillroom.serve.app import Server, create_app
from stillroom.students.classifier import EmbeddingClassifier
from stillroom.train import train_task
from tests.conftest import log_line
from tests.fake_teacher import FakeTeacher
from tests.test_classifier_student import TOPICS

SYSTEM = "You file news stories. Answer with one topic label: sport, tech or business."
VARIANTS = ("{}.", "{} today.", "Report: {}.", "{}, officials said.")
LABEL_OF = {text: label for label, texts in TOPICS.items() for text in texts}
GIBBERISH = "zzq wxv qqj vvk"  # no word the TF-IDF student knows: a near-uniform, low-confidence answer
THRESHOLD = 0.55
UPSTREAM_KEY = "sk-upstream-SECRET-0123456789"
CALLER_KEY = "sk-caller-SECRET-9876543210"


def teacher_answer(messages: list[dict]) -> str:
    """The big model: knows every story's topic; anything else gets a chatty answer."""
    user = messages[-1]["content"]
    for text, label in LABEL_OF.items():
        if text in user:
            return label
    return "business" if GIBBERISH in user else f"teacher answer to: {user[:40]}"


def fault(body: dict) -> int | None:
    """Faults chosen by content, so every test knows which requests fail and how."""
    user = json.dumps(body["messages"])
    return 500 if "FAULT-500" in user else 429 if "FAULT-429" in user else None


def story_rows(task_id: str, split: str) -> list[DatasetRow]:
    rows = []
    for text, label in LABEL_OF.items():
        user = VARIANTS[0].format(text)
        prompt = [Message(role="system", content=SYSTEM), Message(role="user", content=user)]
        rows.append(DatasetRow(id=f"{split}-{text[:20]}", task_id=task_id, split=split, prompt=prompt,
                               input_text=user, target=label))
    return rows


def write_evaluation(params: Params, layout: Layout, card: TaskCard) -> None:
    """What the evaluate stage reports for this student (all test answers right, routing at THRESHOLD)."""
    test = story_rows(card.id, "test")
    n = len(test)
    low = wilson_interval(n, n)[0]
    metrics = {
        "accuracy": 1.0, "agreement": 1.0, "agreement_low": low, "agreement_high": 1.0, "n_test": n,
        "gate_metric": "accuracy", "gate": params.registry.gate.label, "passed_gate": True,
        "threshold": THRESHOLD, "coverage": 1.0, "routed_agreement": 1.0, "routed_agreement_low": low,
        "routed_n": n, "p50_ms": 2.0,
    }
    write_json(layout.report(card.id) / "metrics.json", metrics)
    write_jsonl(layout.report(card.id) / "predictions.jsonl", [
        {"id": row.id, "teacher": row.target, "student": row.target, "confidence": 0.9, "agree": 1.0} for row in test
    ])


def register_version(params: Params, layout: Layout) -> dict:
    return register.run(params, layout)["models"][0]


@dataclass
class Project:
    params: Params
    layout: Layout
    card: TaskCard
    client: MlflowClient


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Project:
    return build_project(tmp_path_factory.mktemp("serve-project"))


def build_project(root: Path) -> Project:
    """Logs -> real ingest and detect (task index) -> a TF-IDF student -> registered as champion v1."""
    layout = Layout(root)
    params = Params.model_validate({
        "register": {"tracking_uri": "sqlite:///mlflow.db",
                     "gate": {"label": 0.5, "min_test_rows": 5, "routed": {"low": 0.8}}},
        "train": {"classifier": {"features": ["tfidf"]}},
    })
    lines = [log_line(SYSTEM, variant.format(text), label, index=i * 10 + j)
             for i, (text, label) in enumerate(LABEL_OF.items()) for j, variant in enumerate(VARIANTS)]
    lines += [log_line(None, f"what should I cook tonight with {thing}?", "Soup.", index=1000 + k)
              for k, thing in enumerate(["leeks", "rice", "eggs"])]
    (root / "data/raw/logs").mkdir(parents=True)
    (root / "data/raw/logs/calls.jsonl").write_text("\n".join(lines) + "\n")
    ingest.run(params, layout)
    detect.run(params, layout)
    (card,) = [c for c in read_cards(layout.cards) if c.output_type == "label"]
    for split in ("train", "validation", "test"):
        write_jsonl(layout.dataset(card.id, split), story_rows(card.id, split))
    train_task(card, story_rows(card.id, "train"), [], params.train, layout.model(card.id), progress=False)
    write_evaluation(params, layout, card)
    assert register_version(params, layout)["alias"] == "champion"
    uri = register.tracking_uri(params, layout)
    return Project(params, layout, card, MlflowClient(tracking_uri=uri, registry_uri=uri))


@pytest.fixture(scope="module")
def teacher() -> Iterator[FakeTeacher]:
    with FakeTeacher(teacher_answer, retry_after=0, fault=fault) as server:
        yield server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_params(project: Project, upstream: str, **serve: object) -> Params:
    params = project.params.model_copy(deep=True)
    settings = {"upstream_base_url": upstream, "reload_s": 0.3, "shadow_rate": 0.0, "shadow_min_per_hour": 0,
                "student_timeout_s": 10, **serve}
    params.serve = params.serve.model_validate({**params.serve.model_dump(), **settings})
    return params


@contextlib.contextmanager
def running(params: Params, layout: Layout) -> Iterator[tuple[str, Server]]:
    """A real uvicorn server on 127.0.0.1, in a thread (so a test can reach into the process it serves from)."""
    app = create_app(params, layout)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    while app.state.server.registry_error is not None and time.monotonic() < deadline:
        time.sleep(0.1)  # on a loaded machine the first registry read can wait on the SQLite store
    try:
        yield f"http://127.0.0.1:{port}/v1", app.state.server
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@pytest.fixture(scope="module")
def served(project: Project, teacher: FakeTeacher) -> Iterator[tuple[str, Server]]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("OPENAI_API_KEY", UPSTREAM_KEY)
        env.delenv("STILLROOM_API_KEY", raising=False)
        with running(serve_params(project, teacher.base_url), project.layout) as server:
            yield server


@pytest.fixture
def client(served: tuple[str, Server]) -> openai.OpenAI:
    return openai.OpenAI(base_url=served[0], api_key=CALLER_KEY, timeout=30)


def ask(user: str, system: str | None = SYSTEM, **extra) -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return {"model": "gpt-4o-mini", "messages": messages, **extra}


def capture_rows(layout: Layout) -> list[dict]:
    rows = []
    for path in sorted((layout.root / "data/raw/capture").glob("*.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def row_of(layout: Layout, request_id: str) -> dict:
    (row,) = [r for r in capture_rows(layout) if r["stillroom"]["request_id"] == request_id]
    return row


STORY = "The striker scored twice in the cup final"


# ------------------------------------------------------------------ the student path


def test_a_known_task_is_answered_by_its_student_plain_and_streamed(client, project, served):
    raw = client.chat.completions.with_raw_response.create(**ask(VARIANTS[1].format(STORY)))
    answer = raw.parse()
    assert answer.choices[0].message.content == "sport" and answer.choices[0].finish_reason == "stop"
    assert answer.usage.total_tokens > 0 and answer.model == f"stillroom-{project.card.name}"
    assert raw.headers["x-stillroom-route"] == "student"
    assert raw.headers["x-stillroom-task"] == project.card.name
    assert float(raw.headers["x-stillroom-confidence"]) >= THRESHOLD
    assert raw.headers["x-stillroom-model-version"] == f"stillroom-{project.card.name}/1"
    row = row_of(project.layout, raw.headers["x-request-id"])  # written before the answer came back
    assert row["stillroom"]["route"] == "student" and row["response"]["choices"][0]["message"]["content"] == "sport"
    assert row["request"]["messages"][1]["content"] == VARIANTS[1].format(STORY)

    with client.chat.completions.with_streaming_response.create(
        **ask(VARIANTS[2].format(STORY)), stream=True, stream_options={"include_usage": True}
    ) as stream:
        assert stream.headers["x-stillroom-route"] == "student"
        chunks = list(stream.parse())
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "sport"
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens >= 1
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)


def test_a_low_confidence_answer_falls_back_to_the_teacher(client, project, teacher):
    raw = client.chat.completions.with_raw_response.create(**ask(GIBBERISH))
    assert raw.parse().choices[0].message.content == "business"  # the teacher's answer
    assert raw.headers["x-stillroom-route"] == "fallback"
    assert float(raw.headers["x-stillroom-confidence"]) < THRESHOLD
    assert raw.headers["x-stillroom-reason"].startswith("confidence ")
    row = row_of(project.layout, raw.headers["x-request-id"])
    assert row["stillroom"]["route"] == "fallback" and row["response"]["id"].startswith("chatcmpl-fake")
    assert row["stillroom"]["student_answer"] and row["latency_ms"] > 0


def test_a_student_that_raises_falls_back_and_keeps_serving(client, monkeypatch):
    real = EmbeddingClassifier.predict

    def explode(self, prompts, batch_size=32):
        if any("EXPLODE" in p[-1].content for p in prompts):
            raise RuntimeError("the student broke")
        return real(self, prompts, batch_size)

    monkeypatch.setattr(EmbeddingClassifier, "predict", explode)
    raw = client.chat.completions.with_raw_response.create(**ask(f"EXPLODE {STORY}"))
    assert raw.headers["x-stillroom-route"] == "fallback"
    assert raw.headers["x-stillroom-reason"] == "student failed: RuntimeError"
    assert raw.parse().choices[0].message.content == "sport"
    again = client.chat.completions.with_raw_response.create(**ask(STORY))
    assert again.headers["x-stillroom-route"] == "student"


# ------------------------------------------------------------------ the teacher path


def test_an_unknown_task_goes_to_the_teacher_plain_and_streamed(client, project, teacher):
    raw = client.chat.completions.with_raw_response.create(**ask("Write a haiku about leeks", system=None))
    assert raw.parse().choices[0].message.content.startswith("teacher answer to: Write a haiku")
    assert raw.headers["x-stillroom-route"] == "teacher" and raw.headers["x-stillroom-reason"] == "unknown task"
    assert "x-stillroom-task" not in raw.headers and "x-stillroom-confidence" not in raw.headers
    assert teacher.auth[-1] == f"Bearer {UPSTREAM_KEY}"  # the server's own key, not the caller's

    stream = client.chat.completions.create(**ask("Name three rivers", system=None), stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "teacher answer to: Name three rivers"
    assert all(c.choices for c in chunks)  # the usage chunk the server asked for is not passed on
    streamed = [r for r in capture_rows(project.layout) if (r["request"] or {}).get("stream")][-1]
    assert streamed["response"]["choices"][0]["message"]["content"] == "teacher answer to: Name three rivers"
    assert streamed["response"]["usage"]["total_tokens"] == 12  # captured with its usage all the same


def test_tools_and_several_choices_pass_through_to_the_teacher(client):
    tool = {"type": "function", "function": {"name": "file_story", "parameters": {"type": "object"}}}
    raw = client.chat.completions.with_raw_response.create(**ask(STORY), tools=[tool])
    assert raw.headers["x-stillroom-route"] == "teacher" and raw.headers["x-stillroom-reason"] == "tools"
    assert raw.headers["x-stillroom-task"]  # the task is known; the student just may not answer this
    call = raw.parse().choices[0].message.tool_calls[0]
    assert call.function.name == "file_story" and json.loads(call.function.arguments) == {"answer": "sport"}

    raw = client.chat.completions.with_raw_response.create(**ask(STORY), n=2)
    assert raw.headers["x-stillroom-reason"] == "n > 1" and len(raw.parse().choices) == 2
    pinned = client.chat.completions.with_raw_response.create(
        **ask(STORY), extra_headers={"x-stillroom-pin-model": "gpt-4.1"}
    )
    assert pinned.headers["x-stillroom-route"] == "teacher" and pinned.parse().model == "gpt-4.1"


def test_teacher_errors_are_answered_once_and_never_retried_by_the_client(client, project, teacher):
    before = len(teacher.requests)
    with pytest.raises(openai.InternalServerError) as failed:
        client.chat.completions.create(**ask("FAULT-500 please", system=None))
    assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
    assert failed.value.response.headers["x-should-retry"] == "false"
    assert len(teacher.requests) == before + 1  # no retry by the client (default max_retries=2) nor the server

    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(**ask("FAULT-429 please", system=None))
    assert len(teacher.requests) == before + 3  # the server waited out one short Retry-After, the client none
    request_id = limited.value.response.headers["x-request-id"]
    row = row_of(project.layout, request_id)
    assert row["status"] == 429 and row["response"] is None and "rate limited" in row["stillroom"]["error"]


def test_an_unreachable_teacher_is_a_502_or_a_degraded_student_answer(project):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    for degrade in (False, True):
        with running(serve_params(project, closed, degrade_to_student=degrade), project.layout) as (url, _):
            caller = openai.OpenAI(base_url=url, api_key="x", max_retries=0)
            with pytest.raises(openai.InternalServerError) as down:
                caller.chat.completions.create(**ask("Write a haiku", system=None))
            assert down.value.code == "upstream_unreachable"
            low = ask(GIBBERISH)
            if degrade:
                raw = caller.chat.completions.with_raw_response.create(**low)
                assert raw.headers["x-stillroom-route"] == "student"
                assert raw.headers["x-stillroom-degraded"] == "teacher-unavailable"
            else:
                with pytest.raises(openai.InternalServerError):
                    caller.chat.completions.create(**low)


# ------------------------------------------------------------------ capture integrity under load


def test_concurrent_requests_with_teacher_faults_give_one_capture_row_each(client, project):
    kinds = [ask(STORY), ask(GIBBERISH), ask("a one-off question", system=None),
             ask("FAULT-500 now", system=None), ask(f"FAULT-429 {GIBBERISH}")]  # the last falls back into a 429
    bodies = [kinds[i % len(kinds)] for i in range(80)]

    def send(body: dict) -> tuple[str, int]:
        try:
            raw = client.chat.completions.with_raw_response.create(**body)
            return raw.headers["x-request-id"], 200
        except openai.APIStatusError as error:
            return error.response.headers["x-request-id"], error.status_code

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(send, bodies))
    ids = [request_id for request_id, _ in results]
    assert len(set(ids)) == len(bodies)
    assert Counter(status for _, status in results) == {200: 48, 502: 16, 429: 16}
    rows = capture_rows(project.layout)
    all_ids = [r["stillroom"]["request_id"] for r in rows]
    assert len(all_ids) == len(set(all_ids))  # no duplicate request id anywhere in the log
    mine = {r["stillroom"]["request_id"]: r for r in rows if r["stillroom"]["request_id"] in set(ids)}
    assert set(mine) == set(ids)  # no lost row
    assert Counter(r["stillroom"]["route"] for r in mine.values()) == {"student": 16, "fallback": 32, "teacher": 32}


# ------------------------------------------------------------------ bad input


def test_bad_input_gets_a_400_in_openais_shape_and_the_server_keeps_serving(client, served):
    url = served[0]
    for body, param in (
        (b"{not json", None),
        (json.dumps({"model": "gpt-4o-mini"}).encode(), "messages"),
        (json.dumps({"model": "gpt-4o-mini", "messages": "hello"}).encode(), "messages"),
        (json.dumps(ask(STORY, stream="yes")).encode(), "stream"),
        (json.dumps(ask(STORY, n="two")).encode(), "n"),
        (json.dumps({"model": "m", "messages": [{"role": "wizard", "content": "hi"}]}).encode(), "messages.0.role"),
        (json.dumps([1, 2]).encode(), None),
    ):
        response = httpx.post(f"{url}/chat/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
        assert error["param"] == param and response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.BadRequestError) as too_big:
        client.chat.completions.create(**ask("x" * 10_000_000))
    assert too_big.value.code == "request_too_large"
    assert httpx.get(f"{url}/nowhere").json()["error"]["code"] == "unknown_url"
    assert client.chat.completions.create(**ask(STORY)).choices[0].message.content == "sport"


def test_no_key_is_ever_logged(client, project, caplog):
    caplog.set_level(logging.DEBUG)
    client.chat.completions.create(**ask(STORY))
    client.chat.completions.create(**ask("something new", system=None))
    logged = "\n".join(r.getMessage() for r in caplog.records)
    stored = [p.read_bytes() for p in (project.layout.data / "raw/capture").glob("*")]
    stored += [p.read_bytes() for p in (project.layout.data / "serve").glob("*.sqlite*")]
    for key in (UPSTREAM_KEY, CALLER_KEY):
        assert key not in logged and all(key.encode() not in blob for blob in stored)


def test_off_loopback_needs_a_key_and_then_checks_it(project, teacher, monkeypatch):
    monkeypatch.delenv("STILLROOM_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="STILLROOM_API_KEY"):
        check_binding(project.params, "0.0.0.0")
    check_binding(project.params, "127.0.0.1")
    monkeypatch.setenv("STILLROOM_API_KEY", "sr-local-key")
    check_binding(project.params, "0.0.0.0")
    with running(serve_params(project, teacher.base_url), project.layout) as (url, _):
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url, api_key="wrong").chat.completions.create(**ask(STORY))
        answer = openai.OpenAI(base_url=url, api_key="sr-local-key").chat.completions.create(**ask(STORY))
        assert answer.choices[0].message.content == "sport"
        assert httpx.get(f"{url.removesuffix('/v1')}/healthz").status_code == 200  # health needs no key


# ------------------------------------------------------------------ models, health, metrics, matching cost


def test_models_health_and_metrics(client, served, project):
    ids = [m.id for m in client.models.list().data]
    assert ids == [f"stillroom-{project.card.name}", "teacher-x"]  # the servable task, then the teacher's models
    root = served[0].removesuffix("/v1")
    health = httpx.get(f"{root}/healthz").json()
    assert health["serving"][project.card.name]["version"].endswith("/1") and health["capture_rows"] > 0
    metrics = httpx.get(f"{root}/metrics").text
    assert 'kind="classifier",state="cold"' in metrics
    assert 'state="warm"' in metrics and "stillroom_student_load_seconds_bucket" in metrics
    assert 'stillroom_requests_total{route="student"' in metrics


def test_servable_versions_are_fetched_at_start_up_before_any_request(project, teacher, tmp_path):
    params = serve_params(project, teacher.base_url, model_cache=str(tmp_path / "models"))
    with running(params, project.layout) as (_, server):
        (servable,) = server.servable.values()
        fetched = tmp_path / "models" / servable.model_name / servable.version / "student.json"
        deadline = time.monotonic() + 20
        while not fetched.exists():
            assert time.monotonic() < deadline, "the servable version was not prefetched"
            time.sleep(0.05)
        assert server.pool.loaded == {}  # fetched and its libraries imported, not loaded: no memory spent yet
        while not server.health()["ready"]:
            assert time.monotonic() < deadline, "/healthz never said ready"
            time.sleep(0.05)


def test_matching_a_request_costs_under_2_ms(project):
    matcher = TaskMatcher.load(project.layout.task_index)
    request = ask(VARIANTS[3].format(STORY))["messages"]
    assert matcher.match(request).task_id == project.card.id
    started = time.perf_counter()
    for _ in range(200):
        matcher.match(request)
    assert (time.perf_counter() - started) / 200 < 0.002


# ------------------------------------------------------------------ closing the loop


def test_ingest_reads_the_capture_teacher_answers_become_records_student_answers_traffic(project, served):
    summary = ingest.run(project.params, project.layout)
    skipped = sum(n for reason, n in summary["skipped"].items() if reason.startswith("traffic: student-answered"))
    rows = capture_rows(project.layout)
    assert skipped == sum(r["stillroom"]["route"] == "student" for r in rows) > 0
    records = [json.loads(line) for line in project.layout.records.read_text().splitlines()]
    teacher_ids = {r["response"]["id"] for r in rows if r["response"] and r["stillroom"]["route"] != "student"}
    assert teacher_ids <= {record["id"] for record in records}


def test_live_audits_demote_a_task_and_a_new_champion_is_served_without_restart(project, teacher, monkeypatch):
    """Runs last: it demotes v1 in MLflow and registers v2."""
    params = serve_params(project, teacher.base_url, shadow_rate=1.0, demote_min_audits=8, shadow_max_inflight=16)
    monkeypatch.setattr(teacher, "answer", lambda messages: "tech")  # the teacher now disagrees with the student
    with running(params, project.layout) as (url, server):
        caller = openai.OpenAI(base_url=url, api_key="x")
        for _ in range(8):
            assert caller.chat.completions.with_raw_response.create(**ask(STORY)).headers["x-stillroom-route"] == \
                "student"
        deadline = time.monotonic() + 10
        while not server.demoted and time.monotonic() < deadline:
            time.sleep(0.05)
        raw = caller.chat.completions.with_raw_response.create(**ask(STORY))
        assert raw.headers["x-stillroom-route"] == "teacher"  # teacher-only at once
        assert raw.headers["x-stillroom-reason"] == "no student may serve this task"
        name = f"stillroom-{project.card.name}"
        while "serve_demoted_reason" not in (tags := project.client.get_model_version(name, "1").tags):
            assert time.monotonic() < deadline, "the demotion never reached MLflow"
            time.sleep(0.05)
        assert tags["serve_demoted"] == "true" and "live agreement lower bound" in tags["serve_demoted_reason"]
        from stillroom.report import changes_since

        events = changes_since(project.params, project.layout, datetime.now(UTC) - timedelta(minutes=5))
        assert [(e["event"], e["version"]) for e in events if e["event"] == "demoted"] == [("demoted", "1")]
        live = sqlite3.connect(project.layout.data / "serve/live.sqlite")
        assert live.execute("SELECT COUNT(*) FROM audits WHERE agreement = 0").fetchone()[0] == 8

        from stillroom.serve.status import status_report

        (status,) = status_report(params, project.layout)
        assert status["serving"] is None and "demoted" in status["not_serving_because"]
        assert status["demoted"] and status["traffic_24h"]["student"] >= 8

        monkeypatch.setattr(teacher, "answer", teacher_answer)
        assert register_version(project.params, project.layout)["alias"] == "champion"  # v2, no restart
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            raw = caller.chat.completions.with_raw_response.create(**ask(STORY))
            if raw.headers["x-stillroom-route"] == "student":
                break
            time.sleep(0.1)
        assert raw.headers["x-stillroom-model-version"] == f"stillroom-{project.card.name}/2"
