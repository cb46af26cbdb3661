"""Every log shape ingest reads, each turned into the same canonical record."""

import gzip
import json
import sqlite3

from stillroom.ingest import ingest, parse_object

USER = {"role": "user", "content": "Classify: the printer is on fire"}


def one(obj):
    name, records = parse_object(obj, "f:1")
    assert len(records) == 1
    return name, records[0]


def test_openai_tool_call_answer_is_a_record_and_tool_results_are_turns():
    obj = {
        "request": {"model": "gpt-4o", "temperature": 0.2, "tools": [{"type": "function"}], "messages": [
            USER,
            {"role": "assistant", "tool_calls": [{"function": {"name": "look", "arguments": "{\"q\": 1}"}}]},
            {"role": "tool", "content": "found it"},
        ]},
        "response": {"id": "c1", "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t", "type": "function", "function": {"name": "file_ticket", "arguments": "{\"severity\": 5}"}}]}}]},
    }
    name, record = one(obj)
    assert name == "openai"
    assert json.loads(record.response_text) == [{"name": "file_ticket", "arguments": {"severity": 5}}]
    assert [m.role for m in record.messages] == ["user", "assistant", "tool"]
    assert record.messages[2].content == "found it"
    assert record.extra["temperature"] == 0.2 and record.extra["tools"] == [{"type": "function"}]


def test_openai_n_choices_are_one_record_each_and_json_schema_is_kept():
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    obj = {"request": {"messages": [USER], "response_format": schema, "n": 2},
           "response": {"id": "c2", "choices": [{"message": {"content": "a"}}, {"message": {"content": "b"}}]}}
    _, records = parse_object(obj, "f:1")
    assert [r.response_text for r in records] == ["a", "b"]
    assert [r.id for r in records] == ["c2", "c2-1"]
    assert records[0].response_format == schema


def test_responses_api_shape():
    obj = {"request": {"model": "gpt-4.1", "instructions": "Be brief.", "input": [USER],
                       "text": {"format": {"type": "json_schema", "name": "t", "schema": {"type": "object"}}}},
           "response": {"object": "response", "id": "resp_1", "created_at": 1780000000,
                        "output": [{"type": "message", "content": [{"type": "output_text", "text": "{\"a\": 1}"}]}],
                        "usage": {"input_tokens": 7, "output_tokens": 3}}}
    name, record = one(obj)
    assert name == "responses" and record.system_prompt == "Be brief." and record.response_text == '{"a": 1}'
    assert record.response_format["json_schema"]["schema"] == {"type": "object"}
    assert record.usage.input_tokens == 7 and record.timestamp is not None


def test_anthropic_messages_with_system_blocks_and_tool_use():
    obj = {"request": {"model": "claude-x", "max_tokens": 50, "system": [{"type": "text", "text": "Triage."}],
                       "messages": [{"role": "user", "content": [{"type": "text", "text": "help"}]}]},
           "response": {"type": "message", "id": "msg_1", "content": [
               {"type": "tool_use", "name": "route", "input": {"team": "ops"}}],
               "usage": {"input_tokens": 11, "output_tokens": 4}, "stop_reason": "tool_use"}}
    name, record = one(obj)
    assert name == "anthropic" and record.provider == "anthropic" and record.system_prompt == "Triage."
    assert json.loads(record.response_text) == [{"name": "route", "arguments": {"team": "ops"}}]
    assert record.usage.output_tokens == 4 and record.extra["max_tokens"] == 50


def test_finetune_files():
    _, chat = one({"messages": [{"role": "system", "content": "S"}, USER, {"role": "assistant", "content": "ok"}]})
    assert chat.system_prompt == "S" and chat.response_text == "ok" and chat.id.startswith("rec-")
    name, legacy = one({"prompt": "2+2?", "completion": "4"})
    assert name == "prompt_completion" and legacy.user_text == "2+2?" and legacy.response_text == "4"


def test_otlp_genai_spans(tmp_path):
    def attr(key, value):
        return {"key": key, "value": {"intValue": str(value)} if isinstance(value, int) else {"stringValue": value}}
    span = {"traceId": "t1", "spanId": "s1", "name": "chat", "startTimeUnixNano": "1780000000000000000",
            "endTimeUnixNano": "1780000000500000000", "attributes": [
                attr("gen_ai.system", "openai"), attr("gen_ai.request.model", "gpt-4o"),
                attr("gen_ai.prompt.0.role", "user"), attr("gen_ai.prompt.0.content", "hi"),
                attr("gen_ai.completion.0.content", "hello"), attr("gen_ai.usage.input_tokens", 3),
                attr("gen_ai.request.temperature", "0.1")]}
    other = {"traceId": "t1", "spanId": "s2", "name": "db", "attributes": [attr("db.system", "pg")]}
    export = {"resourceSpans": [{"resource": {"attributes": [attr("service.name", "api")]},
                                 "scopeSpans": [{"spans": [span, other]}]}]}
    (tmp_path / "spans.jsonl").write_text(json.dumps(export) + "\n")
    result = ingest(tmp_path)
    [record] = result.records
    assert record.user_text == "hi" and record.response_text == "hello" and record.model == "gpt-4o"
    assert record.latency_ms == 500 and record.usage.input_tokens == 3
    assert record.extra["resource.service.name"] == "api" and record.extra["gen_ai.request.temperature"] == "0.1"


def test_batch_input_and_output_are_joined_by_custom_id_and_errors_quarantined(tmp_path):
    body = {"model": "gpt-4o-mini", "messages": [USER]}
    (tmp_path / "b_output.jsonl").write_text("\n".join(json.dumps(line) for line in [
        {"custom_id": "r1", "response": {"status_code": 200, "body": {"id": "c9", "choices": [
            {"message": {"content": "fire"}}]}}, "error": None},
        {"custom_id": "r2", "response": None, "error": {"code": "rate_limit", "message": "slow down"}},
        {"custom_id": "r3", "response": {"status_code": 200, "body": {"choices": [{"message": {"content": "x"}}]}}},
    ]) + "\n")
    (tmp_path / "a_input.jsonl").write_text("\n".join(
        json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": body})
        for cid in ("r1", "r2")) + "\n")
    result = ingest(tmp_path)
    assert [r.response_text for r in result.records] == ["fire"]
    reasons = sorted(q.reason for q in result.quarantined)
    assert reasons[0].startswith("batch error: rate_limit") and reasons[1].startswith("response without request")
    assert result.summary()["lost"] == 0


def test_llm_logs_db_and_containers(tmp_path):
    db = sqlite3.connect(tmp_path / "logs.db")
    db.execute("CREATE TABLE schemas (id TEXT PRIMARY KEY, content TEXT)")
    db.execute("CREATE TABLE responses (id TEXT PRIMARY KEY, model TEXT, prompt TEXT, system TEXT, prompt_json TEXT,"
               " options_json TEXT, response TEXT, response_json TEXT, conversation_id TEXT, duration_ms INTEGER,"
               " datetime_utc TEXT, input_tokens INTEGER, output_tokens INTEGER, token_details TEXT, schema_id TEXT)")
    db.execute("INSERT INTO responses (id, model, prompt, system, response, duration_ms, datetime_utc, input_tokens,"
               " output_tokens, options_json) VALUES ('01J', 'gpt-4o-mini', 'Name a colour', 'Be terse', 'red', 420,"
               " '2026-09-01T10:00:00', 5, 1, '{\"temperature\": 0.5}')")
    db.commit()
    db.close()
    line = json.dumps({"prompt": "gz?", "completion": "yes"})
    with gzip.open(tmp_path / "old.jsonl.gz", "wt") as file:
        file.write(line + "\n")
    (tmp_path / "array.json").write_text(json.dumps([{"prompt": "arr?", "response": "yes"}, 3]))
    result = ingest(tmp_path)
    by_user = {r.user_text: r for r in result.records}
    assert set(by_user) == {"Name a colour", "gz?", "arr?"}
    colour = by_user["Name a colour"]
    assert colour.provider == "llm" and colour.latency_ms == 420 and colour.extra["options"] == {"temperature": 0.5}
    assert [q.reason for q in result.quarantined] == ["not a JSON object"]
    assert ingest(tmp_path / "*.json").summary()["records"] == 1  # a glob


def test_capture_log_teacher_rows_are_records_student_rows_are_traffic(tmp_path, make_log_line):
    teacher = json.loads(make_log_line("S", "a", "b", index=1))
    student = json.loads(make_log_line("S", "c", "d", index=2))
    teacher["stillroom"] = {"route": "teacher", "task": "t1", "confidence": 0.2}
    student["stillroom"] = {"route": "student", "task": "t1", "confidence": 0.99}
    (tmp_path / "capture.jsonl").write_text(f"{json.dumps(teacher)}\n{json.dumps(student)}\n")
    result = ingest(tmp_path)
    assert [r.user_text for r in result.records] == ["a"] and result.records[0].extra["stillroom"]["task"] == "t1"
    assert result.summary()["skipped"] == {"traffic: student-answered (t1)": 1}
