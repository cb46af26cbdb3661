"""Which rung trains a task, and splits that keep the test rows away from training and thresholds."""

import pytest

from stillroom import train
from stillroom.config import LMParams, Params, SynthesizeParams, TrainParams
from stillroom.data import Layout, write_cards, write_jsonl
from stillroom.schema import TaskCard
from stillroom.synthesize import split_of, widened_validation
from tests.test_classifier_student import rows

LABEL_CARD = TaskCard(
    id="task-l", name="news", count=500, output_type="label", labels=["a", "b"], output_format="label"
)
JSON_CARD = TaskCard(id="task-j", name="people", count=500, output_type="text", output_format="json")


def test_auto_ladder_follows_the_card_and_a_local_teacher():
    assert train.choose_rung(LABEL_CARD, TrainParams())[0] == "classifier"
    assert train.choose_rung(JSON_CARD, TrainParams())[0] == "lm"
    with_teacher = TrainParams(lm=LMParams(teacher_model="/models/smollm2-360m"))
    rung, reason = train.choose_rung(JSON_CARD, with_teacher)
    assert rung == "distill" and "smollm2-360m" in reason
    assert train.choose_rung(LABEL_CARD, with_teacher)[0] == "classifier"  # labels stay on the cheapest rung


def test_params_force_a_rung_per_task_or_for_all():
    assert train.choose_rung(LABEL_CARD, TrainParams(rungs={"news": "lm"}))[0] == "lm"
    assert train.choose_rung(LABEL_CARD, TrainParams(rungs={"task-l": "lm"}))[0] == "lm"
    assert train.choose_rung(LABEL_CARD, TrainParams(rung="lm", rungs={"news": "classifier"}))[0] == "classifier"
    with pytest.raises(ValueError, match="closed label set"):
        train.choose_rung(JSON_CARD, TrainParams(rung="classifier"))
    with pytest.raises(ValueError, match="teacher_model"):
        train.choose_rung(JSON_CARD, TrainParams(rungs={"people": "distill"}))


def test_validation_widens_from_train_and_test_never_moves():
    params = SynthesizeParams(test_fraction=0.2, validation_fraction=0.1, min_validation_examples=100)
    assert widened_validation(2000, params) == 0.1  # 200 validation rows already
    assert widened_validation(500, params) == pytest.approx(0.2)
    assert widened_validation(100, params) == 0.3  # capped at max_validation_fraction
    inputs = [f"input {i}" for i in range(3000)]
    narrow = {text: split_of(text, params, 0.1) for text in inputs}
    wide = {text: split_of(text, params, 0.3) for text in inputs}
    assert {t for t, s in narrow.items() if s == "test"} == {t for t, s in wide.items() if s == "test"}
    moved = {t for t in inputs if narrow[t] != wide[t]}
    assert moved and all(narrow[t] == "train" and wide[t] == "validation" for t in moved)


def test_training_never_opens_the_test_split(tmp_path):
    layout = Layout(tmp_path)
    card = TaskCard(id="task-news", name="news", count=36, output_type="label", labels=["business", "sport", "tech"])
    write_cards(layout.cards, [card])
    write_jsonl(layout.dataset(card.id, "train"), rows())
    write_jsonl(layout.dataset(card.id, "validation"), rows("validation")[:6])
    layout.dataset(card.id, "test").mkdir()  # reading it as a file would fail
    summary = train.run(Params(), layout)
    assert summary["news"]["rung"] == "classifier" and summary["news"]["n_validation"] == 6
