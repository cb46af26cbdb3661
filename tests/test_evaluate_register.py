"""Evaluate a small classifier task and register it in a real MLflow store (SQLite, local artifacts)."""

import json

import mlflow
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from stillroom import evaluate, register
from stillroom.config import Layout, Params
from stillroom.evaluate import bootstrap_interval, per_example_agreement
from stillroom.schema import TaskCard, write_cards, write_jsonl
from stillroom.train import train_task
from tests.test_classifier_student import rows


def make_project(tmp_path, gate: float, disagree: int = 0) -> tuple[Params, Layout, TaskCard]:
    """A one-task project with a trained student; the teacher's test answers differ on `disagree` rows."""
    layout = Layout(tmp_path)
    params = Params.model_validate(
        {
            "register": {"tracking_uri": "sqlite:///mlflow.db", "gate": {"label": gate}},
            "evaluate": {"latency_samples": 3},
        }
    )
    card = TaskCard(id="task-abc", name="news-topic", count=36, output_type="label",
                    labels=["business", "sport", "tech"])
    write_cards(layout.cards, [card])
    train, test = rows("train"), rows("test")
    for row in test[:disagree]:
        row.target = "tech" if row.target != "tech" else "sport"
    write_jsonl(layout.dataset(card.id, "train"), train)
    write_jsonl(layout.dataset(card.id, "validation"), [])
    write_jsonl(layout.dataset(card.id, "test"), test)
    train_task(card, train, [], params.train, layout.model(card.id), progress=False)
    return params, layout, card


def test_bootstrap_interval_brackets_the_mean():
    scores = [1.0] * 90 + [0.0] * 10
    low, high = bootstrap_interval(scores)
    assert low < 0.9 < high
    assert low > 0.8 and high < 0.97
    assert bootstrap_interval([1.0] * 20) == (1.0, 1.0)


def test_per_example_agreement_by_output_type():
    assert per_example_agreement("label", ["a", "b"], ["a", "c"]) == [1.0, 0.0]
    f1 = per_example_agreement("text", ['{"people": ["Ann Lee"]}', "x"], ['{"people": ["Ann"]}', "x"])
    assert f1[1] == 1.0 and f1[0] == pytest.approx(0.8)


def test_evaluate_then_register_champion(tmp_path):
    params, layout, card = make_project(tmp_path, gate=0.5)
    summary = evaluate.run(params, layout)
    metrics = summary["news-topic"]
    assert metrics["n_test"] == 18
    assert metrics["accuracy"] == 1.0  # the student is scored on rows it was trained on here
    assert metrics["agreement_low"] <= metrics["agreement"] <= metrics["agreement_high"]
    assert metrics["p50_ms"] > 0 and metrics["size_mb"] > 10 and metrics["load_s"] > 0
    assert metrics["passed_gate"] is True
    report = layout.report(card.id)
    assert (report / "confusion.png").stat().st_size > 1000
    assert len((report / "predictions.jsonl").read_text().splitlines()) == 18
    assert json.loads(layout.stage_metrics("evaluate").read_text())["news-topic"]["accuracy"] == 1.0

    registry = register.run(params, layout)
    entry = registry["models"][0]
    assert entry["alias"] == "champion" and entry["version"] == "1"
    client = MlflowClient(tracking_uri=registry["tracking_uri"], registry_uri=registry["tracking_uri"])
    version = client.get_model_version_by_alias("stillroom-news-topic", "champion")
    assert version.tags["gate"] == "passed"
    assert version.tags["task_id"] == "task-abc"
    assert len(version.tags["data_hash"]) == 16
    run = client.get_run(entry["run_id"])
    assert run.data.metrics["accuracy"] == 1.0
    assert run.data.params["task.output_type"] == "label"
    artifacts = {a.path for a in client.list_artifacts(entry["run_id"], "evaluation")}
    assert "evaluation/confusion.png" in artifacts

    mlflow.set_registry_uri(registry["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/stillroom-news-topic@champion")
    answers = model.predict(pd.DataFrame({"text": ["Bank shares slump after profit warning"]}))
    assert answers["answer"].tolist() == ["business"]
    assert 0 < answers["confidence"][0] <= 1


def test_student_below_the_gate_stays_challenger(tmp_path):
    params, layout, _ = make_project(tmp_path, gate=0.9, disagree=6)
    metrics = evaluate.run(params, layout)["news-topic"]
    assert metrics["accuracy"] == pytest.approx(12 / 18)
    assert metrics["passed_gate"] is False
    registry = register.run(params, layout)
    entry = registry["models"][0]
    assert entry["alias"] == "challenger"
    client = MlflowClient(tracking_uri=registry["tracking_uri"], registry_uri=registry["tracking_uri"])
    with pytest.raises(mlflow.exceptions.MlflowException):
        client.get_model_version_by_alias("stillroom-news-topic", "champion")
    version = client.get_model_version("stillroom-news-topic", entry["version"])
    assert version.tags["gate"] == "failed"
    assert version.tags["gate_reason"] == "accuracy=0.6667 < gate 0.90"
