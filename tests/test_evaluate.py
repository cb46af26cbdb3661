"""Metrics by answer format, bootstrap intervals, and the routing threshold chosen on validation only."""

import json

import numpy as np
import pytest

from stillroom import evaluate
from stillroom.config import Params
from stillroom.data import Layout, write_cards, write_jsonl
from stillroom.evaluate import NO_THRESHOLD, choose_threshold, routing_on_test
from stillroom.metrics import scoring
from stillroom.metrics.scoring import expected_calibration_error
from stillroom.schema import TaskCard
from stillroom.train import train_task
from tests.test_classifier_student import rows

PEOPLE_SCHEMA = {
    "type": "object",
    "properties": {"people": {"type": "array", "items": {"type": "string"}}},
    "required": ["people"],
}


def test_field_f1_counts_each_entity_and_ignores_case_and_spacing():
    assert scoring.field_counts('{"people": ["ann  LEE", "Bob"]}', '{"people": ["Ann Lee"]}') == (1, 1, 0)
    assert scoring.field_counts("not json", '{"people": ["Ann", "Bob"]}') == (0, 0, 2)
    assert scoring.example_agreement("json", '{"people": []}', '{"people": []}') == 1.0
    assert scoring.example_agreement("json", '{"people": ["Ann"]}', '{"people": []}') == 0.0
    assert scoring.example_agreement("json", '{"people": ["Ann", "Bob"]}', '{"people": ["Ann"]}') == pytest.approx(
        2 / 3
    )


def test_rouge_l_matches_the_reference_implementation():
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"])
    pairs = [
        ("the cat sat on the mat", "a cat was sitting on the mat"),
        ("Profits rose 5%.", "profits fell"),
        ("", "x"),
    ]
    for prediction, reference in pairs:
        expected = scorer.score(reference, prediction)["rougeL"].fmeasure
        assert scoring.rouge_l(prediction, reference) == pytest.approx(expected)


def test_json_metrics_micro_f1_exact_match_and_schema_validity():
    predictions = ['{"people": ["Ann"]}', '{"people": ["Bob", "Cy"]}', '{"people": "Dee"}', "oops"]
    references = ['{"people": ["Ann"]}', '{"people": ["Bob"]}', '{"people": ["Dee"]}', '{"people": ["Eve"]}']
    arrays = scoring.example_arrays("json", predictions, references, PEOPLE_SCHEMA)
    result = scoring.aggregate("json", arrays, np.arange(len(predictions)))
    # tp: Ann, Bob, Dee (a string where a list was due still names Dee); fp: Cy; fn: Eve
    assert result["field_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1 + 1))
    assert result["exact_match"] == 0.5  # "Dee" vs ["Dee"] is not the same object
    assert result["schema_validity"] == 0.5  # a string is not an array, and "oops" is not JSON
    assert result["field_f1_mean"] == pytest.approx((1 + 2 / 3 + 1 + 0) / 4)


def test_intervals_bracket_every_metric_and_narrow_with_more_data():
    small = scoring.example_arrays("label", ["a"] * 9 + ["b"], ["a"] * 10)
    large = scoring.example_arrays("label", ["a"] * 900 + ["b"] * 100, ["a"] * 1000)
    for arrays in (small, large):
        result = scoring.with_intervals("label", arrays, resamples=500)
        for name in ("accuracy", "macro_f1", "agreement"):
            assert result[f"{name}_low"] <= result[name] <= result[f"{name}_high"]
    wide = scoring.with_intervals("label", small, resamples=500)
    narrow = scoring.with_intervals("label", large, resamples=500)
    assert narrow["accuracy_high"] - narrow["accuracy_low"] < (wide["accuracy_high"] - wide["accuracy_low"]) / 3
    assert narrow["accuracy_low"] > 0.87 and narrow["accuracy_high"] < 0.93


def test_eighteen_of_eighteen_is_not_certainty():
    """A percentile bootstrap gives [1, 1] for 18 agreeing answers of 18; the gate must not pass on that."""
    perfect = scoring.example_arrays("label", ["a"] * 18, ["a"] * 18)
    result = scoring.with_intervals("label", perfect, resamples=500)
    assert result["agreement"] == 1.0 and result["agreement_high"] == 1.0
    assert result["agreement_low"] == pytest.approx(scoring.wilson_interval(18, 18)[0])
    assert result["agreement_low"] < 0.83
    assert result["accuracy_low"] == result["agreement_low"]
    text = scoring.example_arrays("short_text", ["same words"] * 18, ["same words"] * 18)
    assert scoring.with_intervals("short_text", text, resamples=500)["rouge_l_low"] < 0.83


def test_mean_scores_get_a_bca_interval_inside_the_unit_range():
    rng = np.random.default_rng(3)
    scores = np.clip(rng.beta(8, 2, size=200), 0, 1)
    low, high = scoring.bootstrap_mean_interval(scores, resamples=2000)
    assert 0 <= low < scores.mean() < high <= 1
    assert high - low < 0.06  # about 4 standard errors of a mean of 200 such scores
    skewed = np.array([1.0] * 45 + [0.2] * 5)  # near the ceiling, where BCa corrects the percentile interval
    low, high = scoring.bootstrap_mean_interval(skewed, resamples=2000)
    assert low < skewed.mean() < high <= 1.0


def test_threshold_keeps_the_longest_confident_prefix_that_meets_the_target():
    confidence = [0.99, 0.97, 0.95, 0.93, 0.7, 0.6]
    agreement = [1, 1, 1, 1, 0, 1]
    assert choose_threshold(confidence, agreement, target=0.9) == 0.93
    assert choose_threshold(confidence, agreement, target=0.8) == 0.6  # 5 of 6 agree, mean confidence 0.857
    assert choose_threshold(confidence, [0] * 6, target=0.5) == NO_THRESHOLD
    assert choose_threshold([], [], target=0.9) == NO_THRESHOLD
    # Tied confidences are routed together: no cut between two answers of confidence 0.96.
    assert choose_threshold([0.99, 0.96, 0.96], [1, 1, 0], target=0.95) == 0.99


def test_a_lucky_run_of_unsure_answers_does_not_open_the_gate():
    """Forty right answers at confidence 0.6 say more about luck than about a 99% student."""
    assert choose_threshold([0.6] * 40, [1] * 40, target=0.99) == NO_THRESHOLD
    assert choose_threshold([0.995] * 10 + [0.6] * 30, [1] * 40, target=0.99) == 0.995


def test_a_threshold_that_too_few_validation_answers_support_is_never_route():
    from stillroom.evaluate import routing_on_validation
    from stillroom.schema import DatasetRow, Message, Prediction

    class Sure:
        def predict(self, prompts, batch_size=16):
            return [Prediction(text="yes", confidence=0.999) for _ in prompts]

    card = TaskCard(id="t", name="t", count=10, output_type="label", labels=["no", "yes"])
    rows = [DatasetRow(id=f"r{i}", task_id="t", split="validation", input_text="q", target="yes",
                       prompt=[Message(role="user", content="q")]) for i in range(10)]
    few, _ = routing_on_validation(card, Sure(), rows, target=0.99, min_examples=30, min_low=0.9)
    assert few["threshold"] == NO_THRESHOLD and few["threshold_n_kept"] == 0
    assert "10 validation answers above 0.9990: agreement lower bound 0.722 < 0.90" in few["threshold_reason"]
    many, _ = routing_on_validation(card, Sure(), rows * 6, target=0.99, min_examples=30, min_low=0.9)
    assert many["threshold"] == 0.999 and many["threshold_n_kept"] == 60  # Wilson lower bound 0.940


def test_routing_on_test_reports_coverage_and_whether_the_target_held():
    result = routing_on_test([0.99, 0.9, 0.5, 0.4], [1, 0, 1, 0], threshold=0.9, target=0.99)
    low = result.pop("routed_agreement_low")
    assert result == {"coverage": 0.5, "routed_agreement": 0.5, "routed_n": 2, "target_held": False}
    assert low == pytest.approx(0.0945, abs=1e-4)  # Wilson's lower bound of 1 in 2: wide, as it should be
    assert routing_on_test([0.9] * 3, [0.8, 0.9, 1.0], 0.5, 0.99, "json")["routed_agreement_low"] >= 0.8
    assert routing_on_test([0.2], [1], threshold=NO_THRESHOLD, target=0.9)["coverage"] == 0.0


def test_calibration_error_is_zero_when_confidence_matches_agreement():
    assert expected_calibration_error([0.75] * 4, [1, 1, 1, 0]) == pytest.approx(0.0)
    assert expected_calibration_error([0.95] * 4, [0, 0, 0, 0]) == pytest.approx(0.95)


def test_threshold_is_chosen_without_the_test_split(tmp_path):
    """Corrupting every test answer changes the test metrics but not the threshold or the validation numbers."""
    layout = Layout(tmp_path)
    params = Params.model_validate(
        {
            "evaluate": {"latency_samples": 2, "baselines": [], "target_agreement": 0.9, "threshold_min_low": 0.0},
            "train": {"classifier": {"features": ["embedding"]}},  # confident enough on 18 rows to route some
        }
    )
    card = TaskCard(id="task-news", name="news", count=36, output_type="label", labels=["business", "sport", "tech"])
    write_cards(layout.cards, [card])
    train, test = rows("train"), rows("test")
    write_jsonl(layout.dataset(card.id, "train"), train)
    write_jsonl(layout.dataset(card.id, "validation"), test[:9])
    write_jsonl(layout.dataset(card.id, "test"), test)
    train_task(card, train, test[:9], params.train, layout.model(card.id), progress=False)
    first = evaluate.run(params, layout)["news"]

    for row in test:
        row.target = {"business": "sport", "sport": "tech", "tech": "business"}[row.target]
    write_jsonl(layout.dataset(card.id, "test"), test)
    second = evaluate.run(params, layout)["news"]
    routing_keys = ("threshold", "threshold_n_validation", "threshold_n_kept", "validation_agreement")
    assert {k: first[k] for k in routing_keys} == {k: second[k] for k in routing_keys}
    assert first["threshold_n_validation"] == 9 and first["threshold_stable"] is False
    assert first["accuracy"] > 0.8 and second["accuracy"] < 0.2
    assert first["coverage"] > 0 and second["target_held"] is False

    report = layout.report(card.id)
    for plot in ("confusion.png", "reliability.png", "coverage.png"):
        assert (report / plot).stat().st_size > 1000
    detail = [json.loads(line) for line in (report / "predictions.jsonl").read_text().splitlines()]
    assert {d["routed_to"] for d in detail} <= {"student", "teacher"}
    assert all(np.isfinite([first["p50_ms"], first["batched_ms_per_request"], first["peak_memory_mb"]]))
    assert first["peak_memory_mb"] > first["memory_mb"] > 0


def test_training_rows_the_student_never_saw_join_validation_for_the_threshold(tmp_path):
    """Beyond max_train_examples, training rows are as held out as validation: the threshold rests on them too."""
    layout = Layout(tmp_path)
    params = Params.model_validate(
        {
            "evaluate": {"latency_samples": 2, "baselines": []},
            "train": {"classifier": {"features": ["tfidf"], "max_train_examples": 12}},
        }
    )
    card = TaskCard(id="task-news", name="news", count=36, output_type="label", labels=["business", "sport", "tech"])
    write_cards(layout.cards, [card])
    train, test = rows("train"), rows("test")
    train = train[::3] + train[1::3] + train[2::3]  # every label among the first 12
    write_jsonl(layout.dataset(card.id, "train"), train)
    write_jsonl(layout.dataset(card.id, "validation"), test[:9])
    write_jsonl(layout.dataset(card.id, "test"), test)
    train_task(card, train, test[:9], params.train, layout.model(card.id), progress=False)
    info = json.loads((layout.model(card.id) / "train_info.json").read_text())
    assert info["n_train"] == 12 and info["unseen_train_ids"] == [row.id for row in train[12:]]

    metrics = evaluate.run(params, layout)["news"]
    assert metrics["threshold_n_unseen_train"] == 6 and metrics["threshold_n_validation"] == 9 + 6
    validation = [json.loads(line) for line in (layout.report(card.id) / "validation_predictions.jsonl").open()]
    assert len(validation) == 15 and {d["id"] for d in validation} >= {row.id for row in train[12:]}


def test_latency_series_stop_at_their_time_budget_after_a_few_requests():
    """A slow student is timed on MIN_SAMPLES requests once the budget is spent; a fast one on all of them."""
    import time

    from stillroom.probe import MIN_SAMPLES, _timed_singles

    class Sleeper:
        def __init__(self, seconds: float):
            self.seconds, self.calls = seconds, 0

        def predict(self, prompts, batch_size: int = 16):
            self.calls += 1
            time.sleep(self.seconds)

    chats = [[{"role": "user", "content": str(k)}] for k in range(30)]
    slow = Sleeper(0.02)
    times = _timed_singles(slow, chats, samples=30, max_seconds=0.01)
    assert len(times) == slow.calls == MIN_SAMPLES and min(times) >= 20
    fast = Sleeper(0.0)
    assert len(_timed_singles(fast, chats, samples=30, max_seconds=10.0)) == fast.calls == 30
    assert len(_timed_singles(Sleeper(0.02), chats, samples=12, max_seconds=None)) == 12
    midway = _timed_singles(Sleeper(0.02), chats, samples=30, max_seconds=0.15)
    assert MIN_SAMPLES < len(midway) < 30 and sum(midway) >= 150


def test_the_zero_shot_baseline_answers_the_first_rows_within_its_time_budget():
    """Out of time, the baseline stops at a batch's end after MIN_BASELINE_ROWS; the comparison then uses
    exactly the rows it answered."""
    import time

    from stillroom.evaluate import MIN_BASELINE_ROWS, ZERO_SHOT_BATCH, answer_within
    from stillroom.schema import Prediction

    class Slow:
        def predict(self, prompts, batch_size: int = 16):
            time.sleep(0.01)
            return [Prediction(text=prompt[-1].content, confidence=1.0) for prompt in prompts]

    test = rows("test")
    test = (test * (60 // len(test) + 1))[:60]
    answered = answer_within(Slow(), test, max_seconds=0.001)
    assert len(answered) == MIN_BASELINE_ROWS == 3 * ZERO_SHOT_BATCH
    assert [p.text for p in answered] == [row.prompt[-1].content for row in test[:MIN_BASELINE_ROWS]]
    assert len(answer_within(Slow(), test, max_seconds=None)) == len(test) == 60
    assert len(answer_within(Slow(), test[:10], max_seconds=0.001)) == 10  # fewer rows than the minimum: all
