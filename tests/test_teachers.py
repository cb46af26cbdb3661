"""Teachers against a real local HTTP server speaking the OpenAI and Anthropic protocols."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from stillroom.config import Price, TeacherParams
from stillroom.schema import LogRecord, Message
from stillroom.teachers import (
    AnswerCache,
    AnthropicTeacher,
    BudgetExceeded,
    OpenAITeacher,
    ReplayTeacher,
    TeacherError,
    TeacherRequest,
    make_teacher,
    request_key,
)
from tests.fake_teacher import FakeTeacher

ROOT = Path(__file__).resolve().parent.parent
PROMPT = [Message(role="system", content="Label it."), Message(role="user", content="the cat sat")]
SECRET = "sk-test-do-not-leak-4242"


def upper_last(messages: list[dict]) -> str:
    return messages[-1]["content"].upper()


def params_for(server: FakeTeacher, **overrides) -> TeacherParams:
    settings = {"backend": "openai", "base_url": server.base_url, "model": "teacher-x", "retries": 2} | overrides
    return TeacherParams(**settings)


def many(n: int) -> list[TeacherRequest]:
    return [TeacherRequest([Message(role="user", content=f"input number {i}")]) for i in range(n)]


def test_openai_teacher_speaks_http_and_caches_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeTeacher(upper_last) as server:
        teacher = OpenAITeacher(params_for(server, api_key_env="FAKE_KEY"), tmp_path)
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert len(server.requests) == 1  # the second answer came from the cache
        assert server.requests[0]["model"] == "teacher-x"
        assert server.requests[0]["messages"][0] == {"role": "system", "content": "Label it."}
        assert server.requests[0]["temperature"] == 0
        assert server.auth == ["Bearer sk-test"]
        teacher.close()
        # a new run (new process, same cache folder) costs nothing
        again = OpenAITeacher(params_for(server), tmp_path)
        assert again.answer(PROMPT) == "THE CAT SAT"
        assert again.stats()["calls"] == 0 and again.stats()["cache_hits"] == 1
        assert len(server.requests) == 1
        again.close()


def test_anthropic_teacher_speaks_the_messages_protocol(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_TEST_KEY", SECRET)
    with FakeTeacher(upper_last) as server:
        params = TeacherParams(
            backend="anthropic", base_url=server.root_url, model="claude-x", api_key_env="ANTHROPIC_TEST_KEY"
        )
        teacher = make_teacher(params, [], tmp_path)
        assert isinstance(teacher, AnthropicTeacher)
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        body = server.requests[0]
        assert body["system"] == "Label it." and body["messages"] == [{"role": "user", "content": "the cat sat"}]
        assert body["max_tokens"] == params.max_tokens
        # the key went as Anthropic's client sends it (x-api-key, or a bearer token in newer SDKs)
        assert SECRET in (server.api_keys[0], (server.auth[0] or "").removeprefix("Bearer "))
        assert teacher.stats()["input_tokens"] == 10 and teacher.stats()["output_tokens"] == 2
        teacher.close()


def image_prompt() -> list[Message]:
    from stillroom.schema import ImageRef

    photo = ImageRef(sha256="a" * 64, media_type="image/png")
    photo.body = b"\x89PNG-bytes"
    linked = ImageRef(url="https://example.com/cat.jpg")
    return [Message(role="user", content="Which is a photo?\n<IMAGE_1>\nor\n<IMAGE_2>", images=[photo, linked])]


def test_a_teacher_sees_a_turns_images_as_the_logged_model_did(tmp_path, monkeypatch):
    """Images go as parts in the placeholders' order (bytes as base64, else the URL); a text turn stays text."""
    with FakeTeacher(lambda messages: "first") as server:
        teacher = OpenAITeacher(params_for(server), tmp_path)
        assert teacher.answer(image_prompt()) == "first"
        assert server.requests[0]["messages"] == [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Which is a photo?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORy1ieXRlcw=="}},
                    {"type": "text", "text": "or"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
                ],
            }
        ]
        teacher.close()
        monkeypatch.setenv("ANTHROPIC_TEST_KEY", SECRET)
        params = TeacherParams(
            backend="anthropic", base_url=server.root_url, model="claude-x", api_key_env="ANTHROPIC_TEST_KEY"
        )
        anthropic = make_teacher(params, [], tmp_path / "anthropic")
        assert anthropic.answer(image_prompt()) == "first"
        parts = server.requests[1]["messages"][0]["content"]
        inline = {"type": "base64", "media_type": "image/png", "data": "iVBORy1ieXRlcw=="}
        assert parts[1] == {"type": "image", "source": inline}
        assert parts[3] == {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}
        anthropic.close()
    # The cache knows a text-only turn by its role and text, as before turns had images: old caches still hit.
    turns = [{"role": m.role, "content": m.content} for m in PROMPT]
    before = {"model": "m", "messages": turns, "response_format": None}
    assert request_key("m", PROMPT, None) == hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()


def test_concurrent_answers_arrive_exactly_once_in_order_and_a_rerun_makes_no_call(tmp_path):
    with FakeTeacher(upper_last, latency_s=0.05) as server:
        teacher = OpenAITeacher(params_for(server, concurrency=16), tmp_path)
        requests = many(64) + many(8)  # asked twice in one batch: one call each
        outcomes = teacher.answer_many(requests)
        assert [o.text for o in outcomes] == [f"INPUT NUMBER {i}" for i in [*range(64), *range(8)]]
        asked = Counter(body["messages"][-1]["content"] for body in server.requests)
        assert len(asked) == 64 and set(asked.values()) == {1}
        assert server.max_in_flight > 4  # calls overlapped (16 allowed)
        teacher.close()
        rerun = OpenAITeacher(params_for(server), tmp_path)
        assert [o.text for o in rerun.answer_many(requests)] == [o.text for o in outcomes]
        assert len(server.requests) == 64 and rerun.stats()["calls"] == 0
        rerun.close()


def test_rate_limit_with_retry_after_is_one_call_in_the_budget(tmp_path):
    with FakeTeacher(upper_last, fail_first=2, status=429, retry_after=0.1) as server:
        teacher = OpenAITeacher(params_for(server, max_calls=1), tmp_path)
        started = time.perf_counter()
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert time.perf_counter() - started >= 0.2  # waited as Retry-After asked, twice
        assert len(server.requests) == 3  # the client's own retries
        assert teacher.stats()["calls"] == 1  # ... and one call in the budget


def test_client_errors_are_not_retried_and_fail_only_that_request(tmp_path):
    with FakeTeacher(upper_last, fail_first=1, status=401) as server:
        teacher = OpenAITeacher(params_for(server), tmp_path)
        first, second = teacher.answer_many(many(2))
        assert len(server.requests) == 2
        assert [first.text is None, second.text is None].count(True) == 1
        failed = first if first.text is None else second
        assert "HTTP 401" in failed.error


def test_the_budget_stops_cleanly_in_calls(tmp_path):
    with FakeTeacher(upper_last, latency_s=0.02) as server:
        teacher = OpenAITeacher(params_for(server, max_calls=10, concurrency=8), tmp_path)
        outcomes = teacher.answer_many(many(30))
        assert sum(o.text is not None for o in outcomes) == 10
        assert sum(o.budget for o in outcomes) == 20
        assert len(server.requests) == 10  # no call past the cap, even with 8 in flight
        with pytest.raises(BudgetExceeded):
            teacher.answer([Message(role="user", content="one more")])


def test_the_budget_stops_cleanly_in_money(tmp_path):
    # the fake bills 2 output tokens a call: at $50,000 per 1M that is $0.10, and max_tokens=2 makes it the worst case
    prices = {"default": Price(input=0.0, output=50_000.0)}
    with FakeTeacher(upper_last) as server:
        teacher = OpenAITeacher(params_for(server, max_usd=0.35, max_tokens=2, concurrency=4), tmp_path, prices)
        outcomes = teacher.answer_many(many(20))
        assert sum(o.text is not None for o in outcomes) == 3  # a 4th call could have crossed $0.35
        assert sum(o.budget for o in outcomes) == 17 and len(server.requests) == 3
        assert teacher.stats()["cost_usd"] == pytest.approx(0.3)


def test_calls_that_did_not_fit_wait_for_the_money_in_flight_to_come_back(tmp_path):
    # worst case $0.10 (max_tokens 100), real cost $0.002: the cap of $0.35 holds 3 calls in flight, yet all 20 fit
    prices = {"default": Price(input=0.0, output=1000.0)}
    with FakeTeacher(upper_last, latency_s=0.02) as server:
        teacher = OpenAITeacher(params_for(server, max_usd=0.35, max_tokens=100, concurrency=8), tmp_path, prices)
        outcomes = teacher.answer_many(many(20))
        assert all(o.text is not None for o in outcomes)
        assert server.max_in_flight <= 3
        assert teacher.stats()["cost_usd"] == pytest.approx(20 * 0.002)


def test_an_unreachable_teacher_is_a_clear_error_without_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("UNREACHABLE_KEY", SECRET)
    params = TeacherParams(
        backend="openai", base_url="http://127.0.0.1:9/v1", retries=1, timeout_s=2, api_key_env="UNREACHABLE_KEY"
    )
    with pytest.raises(TeacherError, match="failed") as error:
        OpenAITeacher(params, tmp_path).answer(PROMPT)
    assert SECRET not in str(error.value)


def test_the_cache_holds_no_key(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    with FakeTeacher(upper_last) as server:
        teacher = OpenAITeacher(params_for(server, api_key_env="FAKE_KEY"), tmp_path)
        teacher.answer_many(many(5))
        teacher.close()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path



KILLED_RUN = """
import sys
from pathlib import Path
from stillroom.config import TeacherParams
from stillroom.schema import LogRecord, Message
from stillroom.teachers import OpenAITeacher, TeacherRequest
params = TeacherParams(backend="openai", base_url=sys.argv[1], model="teacher-x", concurrency=4)
teacher = OpenAITeacher(params, Path(sys.argv[2]))
requests = [TeacherRequest([Message(role="user", content=f"input number {i}")]) for i in range(40)]
teacher.answer_many(requests)
print("finished")
"""


def test_a_run_killed_midway_resumes_without_repeating_a_finished_call(tmp_path):
    with FakeTeacher(upper_last, latency_s=0.1) as server:
        run = [sys.executable, "-c", KILLED_RUN, server.base_url, str(tmp_path)]
        process = subprocess.Popen(run, cwd=ROOT, env=os.environ.copy(), start_new_session=True)
        cache = tmp_path / "answers.sqlite"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cache.exists() and len(AnswerCache.stored_keys(cache)) >= 16:
                break
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        finished = AnswerCache.stored_keys(cache)
        assert 16 <= len(finished) < 40
        done = subprocess.run(run, cwd=ROOT, env=os.environ.copy(), capture_output=True, text=True, timeout=120)
        assert "finished" in done.stdout, done.stderr[-2000:]
        asked = Counter(body["messages"][-1]["content"] for body in server.requests)
        finished_texts = [
            text for text in asked if request_key("teacher-x", [Message(role="user", content=text)], None) in finished
        ]
        assert len(finished_texts) == len(finished)
        assert all(asked[text] == 1 for text in finished_texts)  # no finished call was paid for twice
        # only calls in flight at the kill (at most `concurrency`) were asked again
        assert sum(n > 1 for n in asked.values()) <= 4
        assert len(AnswerCache.stored_keys(cache)) == 40


def test_replay_teacher_returns_logged_answers():
    record = LogRecord(id="r1", system_prompt="Label it.", messages=[PROMPT[1]], response_text="animal")
    teacher = make_teacher(TeacherParams(), [record], cache_dir=None)
    assert isinstance(teacher, ReplayTeacher)
    assert teacher.answer(PROMPT) == "animal"
    with pytest.raises(TeacherError, match="not in the logs"):
        teacher.answer([Message(role="user", content="never logged")])


def test_unknown_backend_is_rejected_at_load_with_the_allowed_values():
    with pytest.raises(ValueError, match="'replay', 'openai' or 'anthropic'"):
        TeacherParams(backend="carrier-pigeon")
