import json

import pytest

from stillroom.config import Params
from stillroom.data import Layout, read_jsonl
from stillroom.ingest import ingest, parse_line, run
from stillroom.schema import LogRecord


def test_reads_openai_lines_into_records(tmp_path, make_log_line):
    logs = tmp_path / "calls.jsonl"
    logs.write_text(
        "\n".join(
            [
                make_log_line("Label the email.", "Win a prize now", "spam", index=2),
                make_log_line(None, "hello there", "Hi! How can I help?", index=1),
            ]
        )
        + "\n"
    )
    result = ingest(logs)
    assert [r.id for r in result.records] == ["chatcmpl-000001", "chatcmpl-000002"]  # time order
    first, second = result.records
    assert first.system_prompt == "" and first.user_text == "hello there"
    assert second.system_prompt == "Label the email."
    assert second.response_text == "spam"
    assert second.usage.input_tokens == len("Win a prize now") // 4
    assert second.source == "calls.jsonl:1"
    assert result.summary()["records"] == 2 and result.summary()["quarantined"] == 0


def test_content_parts_and_developer_role_are_read(make_log_line):
    line = json.loads(make_log_line("ignored", "x", "ok"))
    line["request"]["messages"] = [
        {"role": "developer", "content": "Be terse."},
        {"role": "user", "content": [{"type": "text", "text": "part one, "}, {"type": "text", "text": "part two"}]},
    ]
    _, record = parse_line(json.dumps(line), "f:1")
    assert record.system_prompt == "Be terse."
    assert record.user_text == "part one, part two"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda d: "{not json", "not JSON"),
        (lambda d: json.dumps([1, 2]), "not a JSON object"),
        (lambda d: json.dumps({**d, "response": None}), "missing: response"),
        (lambda d: json.dumps({**d, "response": {**d["response"], "choices": []}}), "missing: response.choices"),
        (lambda d: json.dumps({"error": {"message": "rate limited"}}), "unknown log shape"),
        (lambda d: json.dumps({**d, "timestamp": "yesterday"}), "bad timestamp"),
        (
            lambda d: json.dumps({**d, "request": {**d["request"], "messages": [{"role": "system", "content": "s"}]}}),
            "missing: a user turn",
        ),
    ],
)
def test_bad_lines_are_quarantined_with_a_reason_and_the_rest_survive(tmp_path, make_log_line, mutate, reason):
    good = make_log_line("Sys", "keep me", "fine", index=1)
    bad = mutate(json.loads(make_log_line("Sys", "bad", "x", index=2)))
    (tmp_path / "a.jsonl").write_text(f"{good}\n{bad}\n{make_log_line('Sys', 'me too', 'ok', index=3)}\n")
    result = ingest(tmp_path)
    assert [r.user_text for r in result.records] == ["keep me", "me too"]
    assert len(result.quarantined) == 1
    assert result.quarantined[0].reason.startswith(reason)
    assert result.quarantined[0].source == "a.jsonl:2"


def test_duplicate_calls_are_counted_not_kept_twice(tmp_path, make_log_line):
    line = make_log_line("Sys", "same call", "x", index=7)
    (tmp_path / "one.jsonl").write_text(line + "\n")
    (tmp_path / "two.jsonl").write_text(line + "\n")
    result = ingest(tmp_path)
    assert len(result.records) == 1 and result.duplicates == 1


def test_missing_logs_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no logs at"):
        ingest(tmp_path / "nowhere")


def test_stage_writes_records_quarantine_and_metrics(tmp_path, make_log_line):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "x.jsonl").write_text(make_log_line("S", "u", "a") + "\n{broken\n")
    params = Params.model_validate({"ingest": {"logs": "logs"}})
    layout = Layout(tmp_path)
    summary = run(params, layout)
    assert summary["records"] == 1 and summary["quarantined"] == 1
    assert [r.user_text for r in read_jsonl(layout.records, LogRecord)] == ["u"]
    quarantined = [json.loads(line) for line in layout.quarantine.read_text().splitlines()]
    assert quarantined[0]["raw"].startswith("{broken")
    assert json.loads(layout.stage_metrics("ingest").read_text())["quarantined"] == 1


@pytest.mark.parametrize(("field", "value", "expected"), [("latency_ms", 812, 812.0), ("latency", 1.5, 1500.0)])
def test_logged_call_latency_is_kept_for_the_teacher_report(make_log_line, field, value, expected):
    line = json.loads(make_log_line("Label the email.", "Win a prize now", "spam"))
    _, record = parse_line(json.dumps(line), "f:1")
    assert record.latency_ms is None  # not logged: unknown, not zero
    line[field] = value
    _, record = parse_line(json.dumps(line), "f:1")
    assert record.latency_ms == expected
