"""Score a student against the teacher on the held-out test split.

Agreement with the teacher is the question a user asks before switching traffic, so it
comes with a bootstrap confidence interval, beside what running the student costs:
latency, size on disk, cold load time and memory.
"""

from __future__ import annotations

import os
import shutil
import statistics
import time
from collections.abc import Sequence
from pathlib import Path

import evaluate as hf_evaluate
import numpy as np
import psutil

from stillroom.config import EvaluateParams, Layout, Params
from stillroom.metrics import module_path
from stillroom.metrics.text_agreement import token_f1
from stillroom.plots import confusion_matrix_plot, coverage_plot
from stillroom.schema import DatasetRow, Prediction, TaskCard, read_jsonl, write_json, write_jsonl
from stillroom.students.base import load_student
from stillroom.synthesize import synthesized_cards

# The metric a task's gate reads, by output type.
GATE_METRIC = {"label": "accuracy", "text": "token_f1"}


def bootstrap_interval(scores: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of per-example scores."""
    values = np.asarray(scores, dtype=float)
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def per_example_agreement(output_type: str, predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    if output_type == "label":
        return [float(p == r) for p, r in zip(predictions, references, strict=True)]
    return [token_f1(p, r) for p, r in zip(predictions, references, strict=True)]


def task_metrics(output_type: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    name = "label_agreement" if output_type == "label" else "text_agreement"
    metric = hf_evaluate.load(module_path(name))
    return metric.compute(predictions=list(predictions), references=list(references))


def directory_size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


def measure_latency(student, rows: Sequence[DatasetRow], samples: int) -> dict[str, float]:
    """One request at a time, as an endpoint would see them; the first call warms up."""
    chosen = list(rows)[: max(1, samples) + 1]
    student.predict([chosen[0].prompt])
    timings = []
    for row in chosen[1:] or chosen:
        started = time.perf_counter()
        student.predict([row.prompt])
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {
        "p50_ms": statistics.median(timings),
        "p95_ms": timings[min(len(timings) - 1, round(0.95 * (len(timings) - 1)))],
    }


def evaluate_student(
    card: TaskCard,
    model_dir: Path,
    test: Sequence[DatasetRow],
    params: EvaluateParams,
    gate: float,
) -> tuple[dict, list[dict]]:
    """Metrics (flat, for `dvc metrics` and MLflow) and one prediction row per test example."""
    rows = list(test)[: params.max_test_examples]
    if not rows:
        raise ValueError(f"task {card.id} ({card.name}) has no test rows to evaluate on")
    process = psutil.Process(os.getpid())
    rss_before = process.memory_info().rss
    started = time.perf_counter()
    student = load_student(model_dir)
    load_seconds = time.perf_counter() - started

    predictions: list[Prediction] = student.predict([row.prompt for row in rows])
    texts = [p.text for p in predictions]
    references = [row.target for row in rows]
    scores = per_example_agreement(card.output_type, texts, references)
    low, high = bootstrap_interval(scores)
    latency = measure_latency(student, rows, params.latency_samples)

    gate_metric = GATE_METRIC[card.output_type]
    metrics = {
        **task_metrics(card.output_type, texts, references),
        "agreement": float(np.mean(scores)),
        "agreement_low": low,
        "agreement_high": high,
        "n_test": len(rows),
        "mean_confidence": float(np.mean([p.confidence for p in predictions])),
        **latency,
        "load_s": load_seconds,
        "size_mb": directory_size_mb(model_dir),
        "memory_mb": max(0, process.memory_info().rss - rss_before) / 1e6,
        "gate_metric": gate_metric,
        "gate": gate,
    }
    metrics["passed_gate"] = bool(metrics[gate_metric] >= gate)
    detail = [
        {
            "id": row.id,
            "input": row.input_text[:300],
            "teacher": row.target,
            "student": p.text,
            "confidence": round(p.confidence, 4),
            "agree": score,
        }
        for row, p, score in zip(rows, predictions, scores, strict=True)
    ]
    return metrics, detail


def run(params: Params, layout: Layout) -> dict:
    """The evaluate stage: data/reports/<task>/ (metrics, predictions, plots) and metrics/evaluate.json."""
    cards = synthesized_cards(layout)
    summary = {}
    for card in cards:
        test = list(read_jsonl(layout.dataset(card.id, "test"), DatasetRow))
        gate = getattr(params.registry.gate, card.output_type)
        metrics, detail = evaluate_student(card, layout.model(card.id), test, params.evaluate, gate)
        report = layout.report(card.id)
        if report.exists():
            shutil.rmtree(report)
        write_json(report / "metrics.json", metrics)
        write_jsonl(report / "predictions.jsonl", detail)
        if card.output_type == "label":
            teacher, student = [d["teacher"] for d in detail], [d["student"] for d in detail]
            confusion_matrix_plot(teacher, student, report / "confusion.png")
        coverage_plot([d["confidence"] for d in detail], [d["agree"] for d in detail], report / "coverage.png")
        summary[card.name] = metrics
    write_json(layout.stage_metrics("evaluate"), summary)
    return summary
