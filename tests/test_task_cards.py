"""Task cards: spend from the price table, the output format, teacher consistency, edge cases."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from stillroom.config import DetectParams, Price, price_of
from stillroom.detect.cards import AnswerShape, build_card, infer_json_schema
from stillroom.schema import LogRecord, Message, Usage

START = datetime(2026, 9, 1, tzinfo=UTC)
PARAMS = DetectParams()


def calls(answers: list[str], inputs: list[str] | None = None, model: str = "gpt-4o-mini", days: float = 10):
    """One call per answer, evenly over `days`, 1000 input and 10 output tokens each."""
    inputs = inputs or [f"input number {i}" for i in range(len(answers))]
    step = timedelta(days=days) / max(len(answers) - 1, 1)
    return [
        LogRecord(
            id=f"r{i:03d}",
            timestamp=START + i * step,
            model=model,
            system_prompt="Do the task.",
            messages=[Message(role="user", content=text)],
            response_text=answer,
            usage=Usage(input_tokens=1000, output_tokens=10),
        )
        for i, (text, answer) in enumerate(zip(inputs, answers, strict=True))
    ]


def card_of(records, **params):
    return build_card(
        records, task_id="task-x", name="x", detected_by="structure", templates=[], params=DetectParams(**params)
    )


def test_price_table_lookup():
    prices = PARAMS.prices
    assert price_of("gpt-4o-mini", prices) == ("gpt-4o-mini", prices["gpt-4o-mini"])
    assert price_of("gpt-4o-mini-2024-07-18", prices)[0] == "gpt-4o-mini"  # dated snapshot: longest prefix
    assert price_of("gpt-4o-2024-08-06", prices)[0] == "gpt-4o"
    assert price_of("claude-3-haiku", prices)[0] == "default"


def test_spend_and_rate_come_from_the_calls_and_the_price_table():
    records = calls(["sport", "tech"] * 50, days=10)  # 100 calls over 10 days
    card = card_of(records, prices={"default": Price(input=1, output=2), "gpt-4o-mini": Price(input=0.15, output=0.6)})
    assert card.calls_per_day == 10
    # per call: 1000 * 0.15 / 1e6 + 10 * 0.6 / 1e6 = 0.000156; 100 calls in 10 days -> x3 for 30 days
    assert card.monthly_spend_usd == pytest.approx(0.0468)
    assert card.prices == {"gpt-4o-mini": {"input": 0.15, "output": 0.6, "price_entry": "gpt-4o-mini"}}
    assert (card.input_tokens_p50, card.output_tokens_p95) == (1000, 10)

    unknown = card_of(calls(["a"] * 3, model="my-local-llama", days=0))
    assert unknown.prices["my-local-llama"]["price_entry"] == "default"
    assert unknown.calls_per_day == 3  # observed within a day: counted as one day
    assert unknown.monthly_spend_usd == pytest.approx(3 * (1000 * 2.5 + 10 * 10) / 1e6 * 30)


def test_label_task_card():
    answers = ["sport"] * 30 + ["tech"] * 20 + ["Politics"] * 3 + ["I cannot tell from this text, sorry."]
    card = card_of(calls(answers))
    assert (card.output_type, card.output_format) == ("label", "label")
    assert card.label_distribution == {"sport": 30, "tech": 20, "Politics": 3}
    assert card.format_consistency == pytest.approx(53 / 54, abs=1e-4)
    whys = "; ".join(case.why for case in card.edge_cases)
    for why in ("longest input", "shortest input", "rarest label (3 calls)", "answer outside the label format"):
        assert why in whys
    assert len({(case.input, case.output) for case in card.edge_cases}) == len(card.edge_cases)
    assert [example.output for example in card.representative] == ["sport", "tech", "Politics"]


def test_json_task_card_infers_a_schema():
    answers = [json.dumps({"people": ["Ann"] * (i % 3), "count": i, "note": None if i % 2 else "x"}) for i in range(40)]
    card = card_of(calls(answers))
    assert (card.output_type, card.output_format) == ("text", "json")
    assert card.json_schema == {
        "type": "object",
        "properties": {
            "people": {"type": "array", "items": {"type": "string"}},
            "count": {"type": "integer"},
            "note": {"type": ["null", "string"]},
        },
        "required": ["people", "count", "note"],
    }


def test_short_and_long_text():
    assert card_of(calls([f"A headline about item {i}" for i in range(20)])).output_format == "short_text"
    long_answers = [" ".join(["word"] * 40) + f" {i}" for i in range(20)]
    assert card_of(calls(long_answers)).output_format == "long_text"
    assert card_of(calls(long_answers), short_text_max_words=50).output_format == "short_text"


def test_self_consistency_on_repeated_inputs():
    inputs = ["same question"] * 4 + ["other question"] * 2 + [f"unique {i}" for i in range(10)]
    answers = ["yes", "yes", "yes", "no"] + ["maybe", "maybe"] + ["yes"] * 10
    card = card_of(calls(answers, inputs))
    assert card.repeated_inputs == 2
    assert card.self_consistency == pytest.approx(5 / 6, abs=1e-4)  # 3 of 4 and 2 of 2 match their input's mode
    assert any("the teacher answered this input differently" in case.why for case in card.edge_cases)
    assert card_of(calls(["yes"] * 5)).self_consistency is None


def test_answer_shapes_tell_tasks_apart():
    labels = AnswerShape.of(calls(["low", "high", "medium"] * 10), PARAMS)
    other_labels = AnswerShape.of(calls(["billing", "returns"] * 10), PARAMS)
    headlines = AnswerShape.of(calls([f"Storm hits the coast, {i} homes flooded" for i in range(20)]), PARAMS)
    summaries = AnswerShape.of(calls([" ".join(["word"] * 25) + f" {i}" for i in range(20)]), PARAMS)
    people = AnswerShape.of(calls([json.dumps({"people": []})] * 20), PARAMS)
    assert labels.format == "label" and people.format == "json"  # repeated JSON objects are not a label set
    assert labels.compatible(AnswerShape.of(calls(["Low", "high"] * 5), PARAMS))
    assert not labels.compatible(other_labels)
    assert not headlines.compatible(summaries)  # 7 words against 26: a headline is not a summary
    assert not people.compatible(headlines)


def test_infer_json_schema_of_mixed_answers():
    schema = infer_json_schema([{"a": 1}, {"a": 1.5, "b": [1, "x"]}, "not an object"])
    assert schema["properties"] == {
        "a": {"type": ["integer", "number"]},
        "b": {"type": "array", "items": {"type": ["integer", "string"]}},
    }
    assert schema["required"] == ["a"]


def test_price_table_needs_a_default():
    with pytest.raises(ValueError, match="needs a `default` entry"):
        DetectParams(prices={"gpt-4o": Price(input=2.5, output=10)})
