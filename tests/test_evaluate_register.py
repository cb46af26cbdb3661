"""Evaluate a small classifier task and register it in a real MLflow store (SQLite, local artifacts)."""

import json
import shutil
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from dvc_data.hashfile.build import build
from dvc_data.hashfile.db import HashFileDB
from dvc_objects.fs.local import LocalFileSystem
from mlflow.tracking import MlflowClient

from stillroom import evaluate, register
from stillroom.config import Params
from stillroom.data import Layout, load_splits, write_cards, write_json, write_jsonl
from stillroom.metrics import scoring
from stillroom.metrics.gate import best_baseline, gate_verdict
from stillroom.mlflow_model import download_student
from stillroom.schema import TaskCard
from stillroom.students.base import read_manifest
from stillroom.train import train_task
from tests.test_classifier_student import rows

MODEL = "stillroom-news-topic"


def make_project(tmp_path, gate: float, disagree: int = 0) -> tuple[Params, Layout, TaskCard]:
    """A one-task project with a trained student; the teacher's test answers differ on `disagree` rows."""
    layout = Layout(tmp_path)
    params = Params.model_validate(
        {
            "register": {"tracking_uri": "sqlite:///mlflow.db", "gate": {"label": gate, "min_test_rows": 10}},
            "evaluate": {"latency_samples": 3, "baselines": ["tfidf_lr"]},
        }
    )
    card = TaskCard(
        id="task-abc", name="news-topic", count=36, output_type="label", labels=["business", "sport", "tech"]
    )
    write_cards(layout.cards, [card])
    train, test = rows("train"), rows("test")
    for row in test[:disagree]:
        row.target = "tech" if row.target != "tech" else "sport"
    write_jsonl(layout.dataset(card.id, "train"), train)
    write_jsonl(layout.dataset(card.id, "validation"), [])
    write_jsonl(layout.dataset(card.id, "test"), test)
    train_task(card, train, [], params.train, layout.model(card.id), progress=False)
    return params, layout, card


def test_evaluate_then_register_champion(tmp_path):
    params, layout, card = make_project(tmp_path, gate=0.5)
    summary = evaluate.run(params, layout)
    metrics = summary["news-topic"]
    assert metrics["n_test"] == 18
    assert metrics["accuracy"] == 1.0  # the student is scored on rows it was trained on here
    assert metrics["agreement_low"] <= metrics["agreement"] <= metrics["agreement_high"]
    assert metrics["p50_ms"] > 0 and metrics["size_mb"] > 10 and metrics["load_s"] > 0
    assert metrics["p50_long_ms"] > 0  # timed on the longest quarter of the test inputs
    assert metrics["best_baseline"] == "tfidf_lr" and metrics["beats_baseline"] is True  # both answer all 18 right
    assert metrics["passed_gate"] is True
    report = layout.report(card.id)
    assert (report / "confusion.png").stat().st_size > 1000
    assert len((report / "predictions.jsonl").read_text().splitlines()) == 18
    assert json.loads(layout.stage_metrics("evaluate").read_text())["news-topic"]["accuracy"] == 1.0

    synthesis = {"news-topic": {"teacher_calls": 12, "cache_hits": 6, "cost_usd": 0.0042, "generated_train": 3}}
    write_json(layout.stage_metrics("synthesize"), synthesis)
    registry = register.run(params, layout)
    entry = registry["models"][0]
    assert entry["alias"] == "champion" and entry["version"] == "1"
    client = MlflowClient(tracking_uri=registry["tracking_uri"], registry_uri=registry["tracking_uri"])
    version = client.get_model_version_by_alias("stillroom-news-topic", "champion")
    assert version.tags["gate"] == "passed"
    assert version.tags["previous_champion_version"] == "none"
    assert version.tags["task_id"] == "task-abc"
    assert version.tags["rung"] == "classifier"
    assert version.tags["datasets_md5"] == dvc_md5(layout.datasets, tmp_path / "odb")
    run = client.get_run(entry["run_id"])
    assert run.data.metrics["accuracy"] == 1.0
    assert run.data.metrics["synthesize_teacher_calls"] == 12 and run.data.metrics["synthesize_cost_usd"] == 0.0042
    assert run.data.params["task.output_type"] == "label"
    assert run.data.params["register.gate.label"] == "0.5"
    assert run.data.params["train.classifier.C"] == "10.0" and "train.lm.lora_r" not in run.data.params
    assert run.data.params["datasets_md5"] == version.tags["datasets_md5"]
    logged_params = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/params.json")
    assert logged_params == params.model_dump(mode="json", by_alias=True)
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
    assert version.tags["gate_reason"] == f"accuracy lower bound {metrics['agreement_low']:.4f} < gate 0.90 (label)"
    assert version.description.startswith("challenger: accuracy lower bound")


def dvc_md5(directory: Path, odb_dir: Path) -> str:
    """The hash DVC itself builds for a folder, to check register's own computation against."""
    fs = LocalFileSystem()
    _, _, tree = build(HashFileDB(fs, str(odb_dir)), str(directory), fs, "md5")
    return tree.hash_info.value


def write_report(params: Params, layout: Layout, card: TaskCard, wrong: int) -> dict:
    """What the evaluate stage writes, for a student that misses the teacher on the first `wrong` test rows."""
    test = load_splits(layout, card.id)["test"][: params.evaluate.max_test_examples]
    answers = [("sport" if row.target == "tech" else "tech") if i < wrong else row.target for i, row in enumerate(test)]
    scores = scoring.per_example_agreement("label", answers, [row.target for row in test])
    low, high = scoring.agreement_interval("label", scores)
    gate = params.registry.gate.for_format("label")
    metrics = {
        "accuracy": float(np.mean(scores)),
        "agreement": float(np.mean(scores)),
        "agreement_low": float(low),
        "agreement_high": float(high),
        "n_test": len(test),
        "gate_metric": "accuracy",
        "gate": gate,
        "passed_gate": bool(low >= gate),
        "p50_ms": 4.2,
    }
    write_json(layout.report(card.id) / "metrics.json", metrics)
    predictions = [
        {"id": row.id, "teacher": row.target, "student": answer, "confidence": 0.9, "agree": score}
        for row, answer, score in zip(test, answers, scores, strict=True)
    ]
    write_jsonl(layout.report(card.id) / "predictions.jsonl", predictions)
    return metrics


def register_version(params: Params, layout: Layout, card: TaskCard, wrong: int) -> tuple[dict, MlflowClient]:
    metrics = write_report(params, layout, card, wrong)
    entry = register.run(params, layout)["models"][0]
    assert entry["gate"] == ("passed" if entry["alias"] == "champion" else "failed")
    uri = register.tracking_uri(params, layout)
    return {**entry, "metrics": metrics}, MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_champion_must_clear_the_gate_and_not_fall_behind_the_champion(tmp_path):
    """Gate 0.7 on 18 test rows: 0 or 1 wrong answers clear it (Wilson lower bound 0.82, 0.74); 6 wrong do not (0.44).
    The student trained here answers all 18 test rows right, so as champion it scores 1.0 on them."""
    params, layout, card = make_project(tmp_path, gate=0.7)
    info_path = layout.model(card.id) / "train_info.json"
    info = json.loads(info_path.read_text())
    curve = [{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.5}]
    agreement = [{"step": 10, "epoch": 1.0, "agreement": 0.7}, {"step": 20, "epoch": 2.0, "agreement": 0.8}]
    write_json(
        info_path,
        {**info, "curve": curve, "eval_curve": [{"step": 20, "eval_loss": 0.6}], "agreement_curve": agreement},
    )

    first, client = register_version(params, layout, card, wrong=0)
    assert (first["version"], first["alias"], first["previous_champion_version"]) == ("1", "champion", None)
    assert first["gate_reason"] == "accuracy lower bound 0.8241 >= gate 0.70 (label); no champion yet"
    history = client.get_metric_history(first["run_id"], "train_loss")
    assert sorted((m.step, m.value) for m in history) == [(10, 0.9), (20, 0.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(first["run_id"], "eval_loss")] == [(20, 0.6)]
    history = client.get_metric_history(first["run_id"], "epoch_validation_agreement")
    assert sorted((m.step, m.value) for m in history) == [(10, 0.7), (20, 0.8)]

    below, _ = register_version(params, layout, card, wrong=6)
    assert below["alias"] == "challenger"
    tags = client.get_model_version(MODEL, below["version"]).tags
    assert tags["gate"] == "failed" and tags["gate_threshold"] == "0.7000"
    assert tags["gate_reason"] == "accuracy lower bound 0.4375 < gate 0.70 (label)"
    assert tags["previous_champion_version"] == "1" and "champion_agreement" not in tags
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"

    worse, _ = register_version(params, layout, card, wrong=1)
    assert worse["metrics"]["agreement_low"] >= 0.7  # it clears the gate, yet loses to the champion
    assert worse["alias"] == "challenger"
    tags = client.get_model_version(MODEL, worse["version"]).tags
    assert tags["gate"] == "failed" and tags["champion_agreement"] == "1.0000"
    assert tags["gate_reason"] == (
        "accuracy lower bound 0.7424 >= gate 0.70 (label); "
        "agreement 0.9444 < champion v1 1.0000 - max_regression 0.00 on the same 18 test rows"
    )
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(client.get_model_version_by_alias(MODEL, "challenger").version) == worse["version"]

    tolerant = params.model_copy(deep=True)
    tolerant.registry.gate.max_regression = 0.1
    close, _ = register_version(tolerant, layout, card, wrong=1)
    assert close["alias"] == "champion" and close["previous_champion_version"] == "1"
    assert "agreement 0.9444 >= champion v1 1.0000 - max_regression 0.10" in close["gate_reason"]

    equal, _ = register_version(params, layout, card, wrong=0)
    assert equal["alias"] == "champion" and equal["version"] == "5"
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert str(version.version) == "5"
    assert version.tags["previous_champion_version"] == close["version"]
    assert version.tags["champion_agreement"] == "1.0000"  # the tolerated student also answers all 18 right
    assert version.description.startswith("champion: accuracy lower bound 0.8241 >= gate 0.70")
    assert "agreement 1.0000 >= champion v4 1.0000" in version.tags["gate_reason"]


def test_too_few_test_rows_or_a_baseline_ahead_keep_a_student_challenger(tmp_path):
    params, layout, card = make_project(tmp_path, gate=0.7)
    strict = params.model_copy(deep=True)
    strict.registry.gate.min_test_rows = 30
    write_report(strict, layout, card, wrong=0)
    few = register.run(strict, layout)["models"][0]
    assert few["alias"] == "challenger"
    assert few["gate_reason"].startswith("18 test rows < register.gate.min_test_rows 30: too few to decide")

    metrics = write_report(params, layout, card, wrong=1)  # clears the gate (0.74) but TF-IDF got all 18 right
    baseline = {"baseline_tfidf_lr_agreement": 1.0, "baseline_tfidf_lr_n": 18}
    metrics.update(baseline, baseline_tfidf_lr_student_agreement=metrics["agreement"])
    metrics.update(best_baseline(metrics, ["tfidf_lr", "zero_shot"]))
    assert metrics["beats_baseline"] is False and metrics["best_baseline"] == "tfidf_lr"
    write_json(layout.report(card.id) / "metrics.json", metrics)
    behind = register.run(params, layout)["models"][0]
    assert behind["alias"] == "challenger"
    assert behind["gate_reason"] == (
        "accuracy lower bound 0.7424 >= gate 0.70 (label); "
        "below baseline tfidf_lr: 0.9444 < 1.0000 on the same 18 test rows"
    )
    tied = {**metrics, **best_baseline({**metrics, "baseline_tfidf_lr_agreement": metrics["agreement"]}, ["tfidf_lr"])}
    assert tied["beats_baseline"] is True and gate_verdict(tied, "label", params)[0] is True


def test_a_compact_form_that_changes_answers_keeps_a_student_challenger(tmp_path):
    params, layout, card = make_project(tmp_path, gate=0.7)
    metrics = write_report(params, layout, card, wrong=0)
    faithful = {**metrics, "export_weights": "bf16", "export_same_answers": 0.99, "export_n": 18}
    assert gate_verdict(faithful, "label", params)[0] is True
    metrics.update(export_weights="int8", export_same_answers=16 / 18, export_n=18)
    write_json(layout.report(card.id) / "metrics.json", metrics)
    drifted = register.run(params, layout)["models"][0]
    assert drifted["alias"] == "challenger"
    assert drifted["gate_reason"].endswith(
        "int8 weights give float32's answer on 0.889 of 18 test rows < register.gate.min_export_same 0.98"
    )

    # Evaluation falls back to float32 below the bar: that version may be champion, and is registered in float32.
    metrics.update(weights="float32", export_fallback=True)
    write_json(layout.report(card.id) / "metrics.json", metrics)
    fell_back = register.run(params, layout)["models"][0]
    assert fell_back["alias"] == "champion", fell_back
    client = MlflowClient(tracking_uri=register.tracking_uri(params, layout))
    folder = download_student(client, MODEL, fell_back["version"], tmp_path / "served")
    assert read_manifest(folder)["weights"] == "float32"
    assert "weights" not in read_manifest(layout.model(card.id))  # the trained folder (DVC's) stays as trained
    assert client.get_run(fell_back["run_id"]).data.tags["stillroom.served_weights"] == "float32"


def test_a_champion_that_cannot_be_loaded_leaves_the_gate_alone_to_decide(tmp_path):
    params, layout, card = make_project(tmp_path, gate=0.7)
    first, client = register_version(params, layout, card, wrong=0)
    download_uri = client.get_model_version_download_uri(MODEL, first["version"])
    shutil.rmtree(urlparse(download_uri).path)  # the champion's artifacts are gone

    second, _ = register_version(params, layout, card, wrong=1)
    assert second["alias"] == "champion"
    tags = client.get_model_version(MODEL, second["version"]).tags
    assert tags["gate"] == "passed" and tags["previous_champion_version"] == "1"
    assert "champion v1 could not be loaded, judged on the gate alone" in tags["gate_reason"]
    assert tags["champion_error"] and "champion_agreement" not in tags


def test_pointing_mlflow_at_one_project_does_not_redirect_another(tmp_path, monkeypatch):
    """MLflow's URI setters export MLFLOW_TRACKING_URI; a second project in the same process
    (the server, a flow over several repos) must still read its own store."""
    from stillroom.mlflow_model import setup_mlflow, tracking_uri

    params = Params.model_validate({"register": {"tracking_uri": "sqlite:///mlflow.db"}})
    first, second = Layout(tmp_path / "first"), Layout(tmp_path / "second")
    setup_mlflow(params, first)
    assert tracking_uri(params, second) == f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere.db")  # the user's own choice still wins
    assert tracking_uri(params, second) == "sqlite:////elsewhere.db"
