import pytest

from stillroom.config import TeacherParams
from stillroom.ingest import parse_line
from stillroom.schema import Message
from stillroom.teachers import BudgetExceeded, OpenAITeacher, ReplayTeacher, TeacherError, make_teacher
from tests.fake_teacher import FakeTeacher

PROMPT = [Message(role="system", content="Label it."), Message(role="user", content="the cat sat")]


def upper_last(messages: list[dict]) -> str:
    return messages[-1]["content"].upper()


def params_for(server: FakeTeacher, **overrides) -> TeacherParams:
    return TeacherParams(backend="openai", base_url=server.base_url, model="teacher-x", retries=2, **overrides)


def test_openai_teacher_speaks_http_and_caches_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KEY", "sk-test")
    with FakeTeacher(upper_last) as server:
        teacher = OpenAITeacher(params_for(server, api_key_env="FAKE_KEY"), tmp_path)
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert len(server.requests) == 1  # the second answer came from the cache
        assert server.requests[0]["model"] == "teacher-x"
        assert server.requests[0]["messages"][0] == {"role": "system", "content": "Label it."}
        assert server.auth == ["Bearer sk-test"]
        teacher.close()
        # a new run (new process, same cache folder) costs nothing
        again = OpenAITeacher(params_for(server), tmp_path)
        assert again.answer(PROMPT) == "THE CAT SAT"
        assert again.stats() == {"teacher": "openai", "calls": 0, "cache_hits": 1}
        assert len(server.requests) == 1
        again.close()


def test_openai_teacher_retries_server_errors(tmp_path, monkeypatch):
    monkeypatch.setattr("stillroom.teachers.time.sleep", lambda s: None)
    with FakeTeacher(upper_last, fail_first=2, status=503) as server:
        teacher = OpenAITeacher(params_for(server), tmp_path)
        assert teacher.answer(PROMPT) == "THE CAT SAT"
        assert len(server.requests) == 3


def test_openai_teacher_gives_up_on_client_errors_without_retrying(tmp_path):
    with FakeTeacher(upper_last, fail_first=5, status=401) as server:
        teacher = OpenAITeacher(params_for(server), tmp_path)
        with pytest.raises(TeacherError, match="HTTP 401"):
            teacher.answer(PROMPT)
        assert len(server.requests) == 1


def test_openai_teacher_respects_the_budget(tmp_path):
    with FakeTeacher(upper_last) as server:
        teacher = OpenAITeacher(params_for(server, max_calls=1), tmp_path)
        teacher.answer(PROMPT)
        with pytest.raises(BudgetExceeded):
            teacher.answer([Message(role="user", content="another")])
        assert len(server.requests) == 1


def test_unreachable_teacher_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("stillroom.teachers.time.sleep", lambda s: None)
    params = TeacherParams(backend="openai", base_url="http://127.0.0.1:9/v1", retries=1, timeout_s=2)
    with pytest.raises(TeacherError, match="failed"):
        OpenAITeacher(params, tmp_path).answer(PROMPT)


def test_replay_teacher_returns_logged_answers(make_log_line):
    _, record = parse_line(make_log_line("Label it.", "the cat sat", "animal"), "f:1")
    teacher = make_teacher(TeacherParams(), [record], cache_dir=None)
    assert isinstance(teacher, ReplayTeacher)
    assert teacher.answer(PROMPT) == "animal"
    with pytest.raises(TeacherError, match="not in the logs"):
        teacher.answer([Message(role="user", content="never logged")])


def test_unknown_backend_is_rejected_at_load_with_the_allowed_values():
    with pytest.raises(ValueError, match="'replay' or 'openai'"):
        TeacherParams(backend="carrier-pigeon")
