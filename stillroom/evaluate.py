"""Score each student against its teacher on held-out data, and decide where it may answer alone.

In order, per task:
1. the routing threshold, from the validation split only (this code never opens the test
   file: a threshold tuned on the test split would report the target as met by construction);
2. the test split: metrics by answer format, each with a bootstrap 95% interval, and
   whether the routing target held there, with the share of traffic the student would serve;
3. cost of running it, measured in a fresh process (cold load, single and batched latency,
   peak memory), beside the teacher's latency from the logs;
4. baselines on the same test rows (TF-IDF + logistic regression, the untuned base model
   zero-shot), so the report shows what training bought;
5. plots: confusion matrix, reliability diagram, coverage against agreement.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stillroom.answers import DAYS_PER_MONTH
from stillroom.config import ClassifierParams, Params
from stillroom.data import (
    TRAIN_INFO_FILE,
    Layout,
    group_records,
    load_splits,
    read_assignments,
    read_records,
    synthesized_cards,
    write_json,
    write_jsonl,
)
from stillroom.embeddings import embed
from stillroom.metrics.gate import best_baseline, gate_verdict
from stillroom.metrics.scoring import (
    AGREEMENT_NAME,
    agreement_interval,
    example_arrays,
    expected_calibration_error,
    per_example_agreement,
    per_label_f1,
    with_intervals,
)
from stillroom.per_task import merge_summary, run_each
from stillroom.plots import confusion_matrix_plot, coverage_plot, reliability_plot
from stillroom.schema import DatasetRow, LogRecord, OutputFormat, Prediction, TaskCard
from stillroom.students.base import Student, load_student

log = logging.getLogger(__name__)

NO_THRESHOLD = 1.01  # above every confidence: everything goes to the teacher


def directory_size_mb(directory: Path) -> float:
    return sum(f.stat().st_size for f in directory.rglob("*") if f.is_file()) / 1e6


# ------------------------------------------------------------------ routing threshold (validation only)


def choose_threshold(confidence: Sequence[float], agreement: Sequence[float], target: float) -> float:
    """The lowest confidence at which the answers kept (confidence >= it) agree at `target` on average.

    Answers are kept from the most confident down; the threshold is where the longest such
    prefix that meets the target ends, which maximises the traffic the student serves. The
    kept answers' mean confidence must reach the target too: on a small validation set a
    run of luck (80 right answers in a row) would otherwise open the gate to everything.
    """
    if len(confidence) == 0:
        return NO_THRESHOLD
    order = np.argsort(-np.asarray(confidence, dtype=float), kind="stable")
    conf = np.asarray(confidence, dtype=float)[order]
    kept = np.arange(1, len(order) + 1)
    kept_agreement = np.cumsum(np.asarray(agreement, dtype=float)[order]) / kept
    kept_confidence = np.cumsum(conf) / kept
    # Only cut between distinct confidences: equal confidences are routed alike.
    cut_ok = np.append(conf[1:] < conf[:-1], True)
    good = np.flatnonzero((kept_agreement >= target) & (kept_confidence >= target) & cut_ok)
    return float(conf[good[-1]]) if len(good) else NO_THRESHOLD


def routing_on_validation(
    card: TaskCard,
    student: Student,
    validation: Sequence[DatasetRow],
    target: float,
    min_examples: int,
    min_low: float = 0.0,
) -> tuple[dict, list[dict]]:
    """Pick the threshold from validation answers; report how many examples it rests on.

    A threshold is kept only when the answers it keeps can show the target with confidence: the
    lower bound of their agreement must reach `min_low`. Ten right answers of ten prove little
    (Wilson lower bound 0.72), so such a threshold becomes "never route", with the reason.
    """
    predictions = student.predict([row.prompt for row in validation]) if validation else []
    agreement = per_example_agreement(card.answer_format, [p.text for p in predictions], [r.target for r in validation])
    confidence = [p.confidence for p in predictions]
    threshold = choose_threshold(confidence, agreement, target)
    kept_scores = [a for a, c in zip(agreement, confidence, strict=True) if c >= threshold]
    low = agreement_interval(card.answer_format, kept_scores)[0] if kept_scores else None
    if threshold == NO_THRESHOLD:
        reason = f"no confidence keeps validation agreement at {target:.2f}: never route"
    elif low is not None and low < min_low:
        reason = (
            f"{len(kept_scores)} validation answers above {threshold:.4f}: agreement lower bound {low:.3f} "
            f"< {min_low:.2f}, too few to route on: never route"
        )
        threshold = NO_THRESHOLD
    else:
        reason = f"{len(kept_scores)} validation answers above {threshold:.4f}, agreement lower bound {low:.3f}"
    kept = int(sum(c >= threshold for c in confidence))
    info = {
        "threshold_reason": reason,
        "threshold": threshold,
        "threshold_target": target,
        "threshold_n_validation": len(validation),
        "threshold_n_kept": kept,
        "validation_agreement": float(np.mean(agreement)) if agreement else 0.0,
        "validation_coverage": kept / len(validation) if validation else 0.0,
        "threshold_stable": bool(len(validation) >= min_examples),
    }
    detail = [
        {"id": row.id, "teacher": row.target, "student": p.text, "confidence": round(p.confidence, 4), "agree": a}
        for row, p, a in zip(validation, predictions, agreement, strict=True)
    ]
    return info, detail


def routing_on_test(
    confidence: Sequence[float],
    agreement: Sequence[float],
    threshold: float,
    target: float,
    output_format: OutputFormat = "label",
) -> dict:
    """Did the validation threshold keep its promise on unseen data, and for what share of traffic?

    The routed share is what users of `stillroom serve` see, so its agreement gets its own lower
    bound (Wilson for labels, bootstrap otherwise): register's routed gate reads it.
    """
    keep = np.asarray(confidence, dtype=float) >= threshold
    kept = np.asarray(agreement, dtype=float)[keep]
    kept_agreement = float(kept.mean()) if len(kept) else None
    return {
        "coverage": float(keep.mean()) if len(keep) else 0.0,
        "routed_agreement": kept_agreement,
        "routed_agreement_low": agreement_interval(output_format, kept)[0] if len(kept) else None,
        "routed_n": int(keep.sum()),
        "target_held": bool(kept_agreement is not None and kept_agreement >= target),
    }


# ------------------------------------------------------------------ cost of running it


def measure_performance(
    model_dir: Path,
    rows: Sequence[DatasetRow],
    samples: int,
    batch_size: int,
    threads: int | None = None,
    weights: str | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Cold load, latency and memory from `stillroom.probe` in a fresh Python process; also the p50
    on the longest quarter of the test inputs, where a student that reads more pays more. `threads`:
    torch's intra-op threads as the server pins them; `weights`: an LM student's form, if not its manifest's;
    `max_seconds`: each timed series' budget (an LM answering in a second is timed on fewer requests)."""
    longest = sorted(rows, key=lambda row: len(row.input_text), reverse=True)[: max(1, len(rows) // 4)]
    with tempfile.TemporaryDirectory(prefix="stillroom-probe-") as scratch:
        prompts, long_prompts = Path(scratch) / "prompts.json", Path(scratch) / "long.json"
        prompts.write_text(json.dumps([[m.model_dump() for m in row.prompt] for row in rows[: samples + 1]]))
        long_prompts.write_text(json.dumps([[m.model_dump() for m in row.prompt] for row in longest[:samples]]))
        blobs = Path(scratch) / "blobs"  # the images' bytes, which a prompt's JSON holds only by reference
        blobs.mkdir()
        for ref in (ref for row in [*rows[: samples + 1], *longest[:samples]] for m in row.prompt for ref in m.images):
            if ref.body is not None and ref.sha256:
                (blobs / ref.sha256).write_bytes(ref.body)
        command = [sys.executable, "-m", "stillroom.probe", str(model_dir), str(prompts), "--blobs", str(blobs)]
        command += ["--samples", str(samples), "--batch-size", str(batch_size), "--long-prompts", str(long_prompts)]
        command += ["--threads", str(threads)] if threads else []
        command += ["--weights", weights] if weights else []
        command += ["--max-seconds", str(max_seconds)] if max_seconds else []
        done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"measuring {model_dir} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def embedding_similarity(answers: Sequence[str], references: Sequence[str], embedder: str) -> float:
    """Mean cosine of each answer's sentence embedding with the teacher's: a headline that says the same
    in other words scores near 1 here and low on ROUGE-L, which counts shared words only."""
    return float(np.mean(np.sum(embed(list(answers), embedder) * embed(list(references), embedder), axis=1)))


def teacher_costs(card: TaskCard, records: Sequence[LogRecord]) -> dict:
    """What the teacher costs per call, from the logged calls of this task."""
    latencies = sorted(r.latency_ms for r in records if r.latency_ms is not None)
    calls_per_month = card.calls_per_day * DAYS_PER_MONTH
    out: dict[str, float | int | None] = {
        "teacher_calls_timed": len(latencies),
        "teacher_p50_ms": float(np.percentile(latencies, 50)) if latencies else None,
        "teacher_p95_ms": float(np.percentile(latencies, 95)) if latencies else None,
        "teacher_usd_per_1k_calls": 1000 * card.monthly_spend_usd / calls_per_month if calls_per_month else None,
    }
    return out


# ------------------------------------------------------------------ baselines


def baseline_predictions(
    name: str, card: TaskCard, train: Sequence[DatasetRow], rows: Sequence[DatasetRow], params: Params
) -> list[Prediction] | None:
    """What a user gets without stillroom's student; None when the baseline does not apply to the format."""
    if name == "tfidf_lr":
        if card.output_type != "label":
            return None
        from stillroom.students.classifier_train import train_classifier

        settings = ClassifierParams(
            features=["tfidf"],
            calibrate=False,
            C=params.train.classifier.C,
            max_train_examples=params.train.classifier.max_train_examples,
        )
        model, _ = train_classifier(train, settings, seed=params.train.seed)
        return model.predict([row.prompt for row in rows])
    if card.inputs == "image+text":  # the base LM reads text only: it would guess from the question alone
        return None
    from stillroom.students.lm import LMStudent

    model = LMStudent.zero_shot(
        params.train.lm.base_model,
        labels=card.labels if card.output_type == "label" else None,
        json_schema=card.json_schema if card.answer_format == "json" else None,
        max_new_tokens=params.train.lm.max_new_tokens,
    )
    return answer_within(model, rows, params.evaluate.baseline_max_s)


ZERO_SHOT_BATCH = 8
MIN_BASELINE_ROWS = 24  # a baseline's fewest rows, whatever its time budget


def answer_within(model: Student, rows: Sequence[DatasetRow], max_seconds: float | None) -> list[Prediction]:
    """The model's answers to the first rows, batch by batch, until `max_seconds` are spent (after at least
    MIN_BASELINE_ROWS): the untuned LM reading whole articles costs a second a row on a slow CPU, and it is
    only a comparison, made on the rows it did answer."""
    started, predictions = time.perf_counter(), []
    for start in range(0, len(rows), ZERO_SHOT_BATCH):
        spent = time.perf_counter() - started
        if max_seconds is not None and len(predictions) >= MIN_BASELINE_ROWS and spent >= max_seconds:
            break
        batch = rows[start : start + ZERO_SHOT_BATCH]
        predictions += model.predict([row.prompt for row in batch], batch_size=ZERO_SHOT_BATCH)
    return predictions


def compare_baselines(
    card: TaskCard,
    train: Sequence[DatasetRow],
    test: Sequence[DatasetRow],
    student_agreement: Sequence[float],
    params: Params,
) -> dict:
    """Each baseline's agreement (95% CI) beside the student's on exactly the same rows."""
    out: dict[str, float | int] = {}
    for name in params.evaluate.baselines:
        rows = list(test) if name == "tfidf_lr" else list(test)[: params.evaluate.baseline_max_examples]
        predictions = baseline_predictions(name, card, train, rows, params)
        if predictions is None:
            continue
        rows = rows[: len(predictions)]  # a baseline out of time answered only the first rows
        arrays = example_arrays(card.answer_format, [p.text for p in predictions], [r.target for r in rows])
        scores = with_intervals(card.answer_format, arrays, params.evaluate.bootstrap_resamples)
        out[f"baseline_{name}_agreement"] = scores["agreement"]
        out[f"baseline_{name}_agreement_low"] = scores["agreement_low"]
        out[f"baseline_{name}_agreement_high"] = scores["agreement_high"]
        out[f"baseline_{name}_n"] = len(rows)
        out[f"baseline_{name}_student_agreement"] = float(np.mean(student_agreement[: len(rows)]))
    return out


# ------------------------------------------------------------------ one task


def unseen_train_rows(model_dir: Path, train: Sequence[DatasetRow]) -> list[DatasetRow]:
    """Training rows the student never saw (beyond its trainer's max_train_examples): held out like
    validation, so the routing threshold rests on them too. An LM task of 700 calls trains on 400 of its
    431 training rows; the other 31 take validation from 112 answers to 143."""
    info_file = model_dir / TRAIN_INFO_FILE
    info = json.loads(info_file.read_text()) if info_file.exists() else {}
    unseen = set(info.get("unseen_train_ids") or ())
    return [row for row in train if row.id in unseen]


@dataclass
class ServedForm:
    """The student as it will be served, its test answers, and how its compact weights fared against float32."""

    student: Student
    predictions: list[Prediction]
    weights: str | None  # an LM student's form; None for other kinds
    check: dict


def served_form(student: Student, model_dir: Path, rows: Sequence[DatasetRow], min_same: float) -> ServedForm:
    """An LM student in compact weights (bf16, int8) answers the test rows beside the same student in
    float32. When it gives float32's answer on fewer than `min_same` of them, the student falls back to
    float32 (slower, but the answers it was trained to give): it is evaluated, registered and served so."""
    from stillroom.students.lm import LMStudent

    predictions = student.predict([row.prompt for row in rows])
    if not isinstance(student, LMStudent):
        return ServedForm(student, predictions, None, {})
    weights = student.info["weights"]
    if weights == "float32":
        return ServedForm(student, predictions, weights, {})
    reference = LMStudent.load(model_dir, weights="float32")
    float32 = reference.predict([row.prompt for row in rows])
    same = float(np.mean([a.text == b.text for a, b in zip(float32, predictions, strict=True)]))
    check = {"export_weights": weights, "export_same_answers": same, "export_n": len(rows)}
    if same >= min_same:
        return ServedForm(student, predictions, weights, check)
    log.warning(
        "%s: %s weights give float32's answer on %.3f of %d test rows (< %.2f): evaluated and served in float32",
        model_dir,
        weights,
        same,
        len(rows),
        min_same,
    )
    return ServedForm(reference, float32, "float32", {**check, "export_fallback": True})


def evaluate_student(
    card: TaskCard,
    model_dir: Path,
    splits: dict[str, list[DatasetRow]],
    params: Params,
    teacher_records: Sequence[LogRecord] = (),
) -> tuple[dict, list[dict], list[dict]]:
    """Flat metrics (for dvc metrics and MLflow), test-split detail rows and validation detail rows."""
    settings = params.evaluate
    rows = splits["test"][: settings.max_test_examples]
    if not rows:
        raise ValueError(f"task {card.id} ({card.name}) has no test rows to evaluate on")
    served = served_form(load_student(model_dir), model_dir, rows, params.registry.gate.min_export_same)
    student, predictions = served.student, served.predictions
    unseen = unseen_train_rows(model_dir, splits["train"])
    routing, validation_detail = routing_on_validation(
        card,
        student,
        [*splits["validation"], *unseen],
        settings.target_agreement,
        settings.min_threshold_examples,
        settings.threshold_min_low,
    )
    routing["threshold_n_unseen_train"] = len(unseen)

    texts, references = [p.text for p in predictions], [row.target for row in rows]
    fmt = card.answer_format
    arrays = example_arrays(fmt, texts, references, card.json_schema)
    agreement = arrays["agreement"].tolist()
    confidence = [p.confidence for p in predictions]
    gate = params.registry.gate.for_format(fmt)

    metrics: dict = with_intervals(fmt, arrays, settings.bootstrap_resamples)
    if fmt == "label":
        metrics.update({f"f1.{label}": value for label, value in per_label_f1(arrays).items()})
    if fmt in ("short_text", "long_text"):
        metrics["embedding_similarity"] = embedding_similarity(texts, references, params.detect.embedder)
    metrics.update(
        {
            "n_test": len(rows),
            "n_train": len(splits["train"]),
            "answer_format": fmt,
            "valid_answers": float(np.mean([p.valid for p in predictions])),
            "mean_confidence": float(np.mean(confidence)),
            "ece": expected_calibration_error(confidence, agreement),
            **routing,
            **routing_on_test(confidence, agreement, routing["threshold"], settings.target_agreement, fmt),
            **measure_performance(
                model_dir,
                rows,
                settings.latency_samples,
                settings.batch_size,
                params.serve.torch_threads,
                served.weights,
                settings.latency_max_s,
            ),
            "size_mb": directory_size_mb(model_dir),
            **teacher_costs(card, teacher_records),
            **compare_baselines(card, splits["train"], rows, agreement, params),
            **served.check,
            **({"weights": served.weights} if served.weights else {}),
            "gate_metric": AGREEMENT_NAME[fmt],
            "gate": gate,
        }
    )
    metrics.update(best_baseline(metrics, params.evaluate.baselines))
    metrics["passed_gate"] = gate_verdict(metrics, fmt, params)[0]
    detail = [
        {
            "id": row.id,
            "input": row.input_text[:300],
            "teacher": row.target,
            "student": p.text,
            "confidence": round(p.confidence, 4),
            "valid": p.valid,
            "agree": score,
            "routed_to": "student" if p.confidence >= routing["threshold"] else "teacher",
        }
        for row, p, score in zip(rows, predictions, agreement, strict=True)
    ]
    return metrics, detail, validation_detail


def write_report(card: TaskCard, report: Path, metrics: dict, detail: list[dict], validation: list[dict]) -> None:
    if report.exists():
        shutil.rmtree(report)
    write_json(report / "metrics.json", metrics)
    write_jsonl(report / "predictions.jsonl", detail)
    write_jsonl(report / "validation_predictions.jsonl", validation)
    confidence, agree = [d["confidence"] for d in detail], [d["agree"] for d in detail]
    if card.output_type == "label":
        confusion_matrix_plot([d["teacher"] for d in detail], [d["student"] for d in detail], report / "confusion.png")
    reliability_plot(confidence, agree, report / "reliability.png")
    coverage_plot(confidence, agree, report / "coverage.png", metrics["threshold"], metrics["threshold_target"])


def task_cards(params: Params, layout: Layout) -> list[TaskCard]:
    """The tasks with a trained student."""
    return [card for card in synthesized_cards(layout) if layout.train_info(card.id).exists()]


def run_task(params: Params, layout: Layout, card: TaskCard) -> dict:
    """data/reports/<task>/: metrics, predictions, plots."""
    report = layout.report(card.id)
    if report.exists():
        shutil.rmtree(report)  # a failed evaluation must not leave the last report for register to find
    # Validation (threshold) and train (baselines) first; the test split is read for scoring only.
    splits = load_splits(layout, card.id, ("train", "validation"))
    splits["test"] = load_splits(layout, card.id, ("test",))["test"]
    records = task_records(layout, card)
    metrics, detail, validation = evaluate_student(card, layout.model(card.id), splits, params, records)
    write_report(card, report, metrics, detail, validation)
    return metrics


def task_records(layout: Layout, card: TaskCard) -> list[LogRecord]:
    """The task's logged calls (for the teacher's latency and cost)."""
    if not layout.records.exists() or not layout.assignments.exists():
        return []
    return group_records(read_records(layout), read_assignments(layout.assignments)).get(card.id, [])


def finish(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
    return merge_summary(layout.stage_metrics("evaluate"), synthesized_cards(layout), results)


def run(params: Params, layout: Layout, only: Collection[str] | None = None) -> dict:
    """The evaluate stage: data/reports/<task>/ (metrics, predictions, plots) and metrics/evaluate.json."""
    return run_each("evaluate", sys.modules[__name__], params, layout, only)
