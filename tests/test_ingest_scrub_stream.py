"""Secrets and personal data never reach disk; re-runs read only what is new; bad input is quarantined."""

import gzip
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stillroom.config import IngestParams, Params
from stillroom.data import Layout, read_jsonl
from stillroom.ingest import PARSERS, BadRecord, Skip, ingest, parse_object, run
from stillroom.ingest.scrub import iban_ok, luhn_ok, scrub_text
from stillroom.schema import LogRecord

SECRETS = {
    "OPENAI_KEY": "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0" * 2,
    "ANTHROPIC_KEY": "sk-ant-api03-" + "Zx9" * 12,
    "AWS_KEY": "AKIAIOSFODNN7EXAMPLE",
    "GITHUB_TOKEN": "ghp_" + "A1b2C3d4E5" * 4,
    "SLACK_TOKEN": "xoxb-123456789012-abcdefGHIJKL",
    "GOOGLE_KEY": "AIzaSyA-" + "b" * 31,
    "JWT": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
    "PRIVATE_KEY": "-----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA\n-----END RSA PRIVATE KEY-----",
    "URL_PASSWORD": "admin:hunter2",
}
PII = {
    "EMAIL": "jane.doe@example.co.uk",
    "PHONE": "+44 20 7946 0958",
    "CARD": "4111 1111 1111 1111",
    "IBAN": "GB82 WEST 1234 5698 7654 32",
    "IP": "203.0.113.42",
}


@pytest.mark.parametrize(("kind", "value"), [*SECRETS.items(), *PII.items()])
def test_each_kind_is_replaced_by_a_typed_placeholder(kind, value):
    text = f"before postgres://{value}@db/x after" if kind == "URL_PASSWORD" else f"before {value} after"
    scrubbed = scrub_text(text)
    assert value not in scrubbed and f"<{kind}_1>" in scrubbed


@pytest.mark.parametrize("clean", [
    "The match ended 3-1 on 12 March 2024, watched by 45,000 fans.",
    "Version 2.3.1 costs $1,299.99; call it 2024-05-06.",
    "Order 1234 5678 9012 3456 is not a card (fails Luhn).",
    "See https://example.com/path?a=1 for the sk- prefix docs.",
])
def test_clean_text_is_left_alone(clean):
    assert scrub_text(clean) == clean


def test_validators():
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert iban_ok("GB82WEST12345698765432") and not iban_ok("GB83WEST12345698765432")


def _line(user: str, answer: str, index: int) -> str:
    return json.dumps({"timestamp": f"2026-09-01T00:{index:02d}:00+00:00",
                       "request": {"messages": [{"role": "user", "content": user}]},
                       "response": {"id": f"c{index}", "choices": [{"message": {"content": answer}}]}})


def test_placeholders_are_consistent_in_a_record_and_nothing_sensitive_reaches_disk(tmp_path):
    email, key = PII["EMAIL"], SECRETS["OPENAI_KEY"]
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "a.jsonl").write_text(
        _line(f"mail {email} and b@x.org, key {key}", f"wrote to {email}", 1) + "\n"
        + '{"broken": "' + key + "\n"
    )
    layout = Layout(tmp_path)
    summary = run(Params.model_validate({"ingest": {"logs": "logs"}}), layout)
    [record] = read_jsonl(layout.records, LogRecord)
    assert record.user_text == "mail <EMAIL_1> and <EMAIL_2>, key <OPENAI_KEY_1>"
    assert record.response_text == "wrote to <EMAIL_1>"
    assert summary["scrubbed"] == {"EMAIL": 2, "OPENAI_KEY": 1} and summary["exit_code"] == 3
    state = layout.data / "ingest/state.sqlite"
    for path in (layout.records, layout.quarantine, layout.stage_metrics("ingest"), state):
        assert key.encode() not in path.read_bytes() and email.encode() not in path.read_bytes()


def test_drop_and_off_modes(tmp_path):
    (tmp_path / "a.jsonl").write_text(_line(f"hi {PII['EMAIL']}", "ok", 1) + "\n" + _line("clean", "ok", 2) + "\n")
    dropped = ingest(tmp_path, IngestParams(scrub="drop"))
    assert [r.user_text for r in dropped.records] == ["clean"] and dropped.dropped_sensitive == 1
    kept = ingest(tmp_path, IngestParams(scrub="off"))
    assert PII["EMAIL"] in kept.records[0].user_text


def test_rerun_adds_nothing_appends_are_read_and_a_rewrite_is_noticed(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    log = logs / "a.jsonl"
    log.write_text(_line("one", "x", 1) + "\n" + _line("two", "x", 2) + "\n")
    params, layout = Params.model_validate({"ingest": {"logs": "logs"}}), Layout(tmp_path)
    assert run(params, layout)["records"] == 2
    again = run(params, layout)
    assert again["records"] == 0 and again["lines"] == 0  # nothing re-read
    with log.open("a") as file:
        file.write(_line("three", "x", 3) + "\n")
    appended = run(params, layout)
    assert appended["records"] == 1 and appended["lines"] == 1
    log.write_text(_line("rotated", "x", 4) + "\n")  # rewritten: shorter, other head
    rotated = run(params, layout)
    assert rotated["files_rotated"] == 1 and rotated["records"] == 1
    assert [r.user_text for r in read_jsonl(layout.records, LogRecord)] == ["one", "two", "three", "rotated"]
    layout.records.unlink()  # dvc repro removes outputs: the state is forgotten with them
    assert run(params, layout)["records"] == 1


def test_since_until_window(tmp_path):
    (tmp_path / "a.jsonl").write_text("".join(_line(str(i), "x", i) + "\n" for i in range(1, 5)))
    result = ingest(tmp_path, IngestParams(since="2026-09-01T00:02:00", until="2026-09-01T00:04:00"))
    assert [r.user_text for r in result.records] == ["2", "3"] and result.outside_window == 2


def test_bad_input_is_quarantined_with_file_line_and_reason(tmp_path):
    good = _line("good", "x", 1)
    (tmp_path / "a.jsonl").write_bytes(
        good.encode() + b"\n\xff\xfe binary \x00 junk\n" + b'{"prompt": "' + b"y" * 3000 + b'"}\n'
        + _line("orphan", "x", 2).replace('"request"', '"req"').encode() + b"\n"
    )
    with gzip.open(tmp_path / "b.jsonl.gz", "wb") as file:
        file.write((_line("gz", "x", 3) + "\n").encode() * 200)
    data = (tmp_path / "b.jsonl.gz").read_bytes()
    (tmp_path / "b.jsonl.gz").write_bytes(data[: len(data) // 2])
    (tmp_path / "c.db").write_bytes(b"SQLite format 3\x00" + b"garbage" * 100)
    result = ingest(tmp_path, IngestParams(max_record_bytes=2048))
    reasons = {q.source: q.reason for q in result.quarantined}
    assert reasons["a.jsonl:2"] == "invalid UTF-8"
    assert reasons["a.jsonl:3"].startswith("too large")
    assert reasons["a.jsonl:4"].startswith("unknown log shape")
    assert any(r.startswith("truncated or corrupt gzip") for r in reasons.values())
    assert reasons["c.db:0"].startswith("unreadable SQLite")
    assert "good" in [r.user_text for r in result.records]
    assert result.summary()["lost"] == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise_and_every_line_is_a_record_or_quarantined(tmp_path, blob):
    for name in ("x.jsonl", "x.jsonl.gz", "x.json", "x.db"):
        path = tmp_path / name
        path.write_bytes(blob)
        summary = ingest(path).summary()
        assert summary["lost"] == 0
        if name == "x.jsonl":
            assert summary["lines"] == sum(1 for line in blob.split(b"\n") if line.strip())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(
        st.sampled_from(["request", "response", "messages", "choices", "role", "content", "prompt", "completion",
                         "custom_id", "body", "error", "resourceSpans", "output", "input", "system", "stillroom",
                         "type", "message", "timestamp", "usage", "llm_row"]) | st.text(max_size=5),
        children, max_size=5),
    max_leaves=25,
)


@settings(max_examples=300, deadline=None)
@given(json_values, st.sampled_from(["auto", *PARSERS]))
def test_arbitrary_json_to_every_parser_is_records_or_a_reason(value, fmt):
    try:
        _, records = parse_object(value, "f:1", None, fmt)
    except (BadRecord, Skip):
        return
    assert records and all(isinstance(r, LogRecord) for r in records)


def test_cli_exit_status_says_whether_anything_was_quarantined(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    stillroom = Path(sys.executable).parent / "stillroom"
    logs = tmp_path / "data/raw/logs"
    logs.mkdir(parents=True)
    (logs / "a.jsonl").write_text(_line("fine", "x", 1) + "\n")
    assert subprocess.run([stillroom, "ingest", "--root", tmp_path], capture_output=True).returncode == 0
    with (logs / "a.jsonl").open("a") as file:
        file.write("{broken\n" + _line("late", "x", 59) + "\n")
    window = ["--since", "2026-09-01T00:30:00"]
    done = subprocess.run([stillroom, "ingest", "--root", tmp_path, *window, "--json"], capture_output=True, text=True)
    assert done.returncode == 3 and json.loads(done.stdout)["records"] == 1
    again = subprocess.run([stillroom, "ingest", "--root", tmp_path, "--quarantine-ok"], capture_output=True)
    assert again.returncode == 0
