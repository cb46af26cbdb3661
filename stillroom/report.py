"""The end-of-run summary: one row per task, from the files the stages wrote."""

from __future__ import annotations

import json

from stillroom.data import Layout, read_cards
from stillroom.per_task import FAILED


def _read(path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def summary_rows(layout: Layout) -> list[dict]:
    cards = read_cards(layout.cards) if layout.cards.exists() else []
    evaluation = _read(layout.stage_metrics("evaluate"))
    datasets = _read(layout.stage_metrics("synthesize"))
    training = _read(layout.stage_metrics("train"))
    registry = {entry["task_id"]: entry for entry in _read(layout.registry).get("models", [])}
    rows = []
    for card in cards:
        metrics = evaluation.get(card.name, {})
        sizes = datasets.get(card.name, {})
        entry = registry.get(card.id, {})
        stage_results = (training.get(card.name, {}), metrics, entry)
        failed = next((result[FAILED] for result in stage_results if FAILED in result), None)
        rows.append(
            {
                "task": card.name,
                "task_id": card.id,
                "records": card.count,
                "output": card.output_type,
                "train": sizes.get("train"),
                "test": metrics.get("n_test"),
                "student": training.get(card.name, {}).get("kind"),
                "rung": training.get(card.name, {}).get("rung"),
                "coverage": metrics.get("coverage"),
                "threshold": metrics.get("threshold"),
                "baseline_tfidf_lr": metrics.get("baseline_tfidf_lr_agreement"),
                "baseline_zero_shot": metrics.get("baseline_zero_shot_agreement"),
                "agreement": metrics.get("agreement"),
                "agreement_low": metrics.get("agreement_low"),
                "agreement_high": metrics.get("agreement_high"),
                "p50_ms": metrics.get("p50_ms"),
                "size_mb": metrics.get("size_mb"),
                "model_uri": entry.get("model_uri"),
                "alias": entry.get("alias"),
                "failed": failed,
            }
        )
    return rows


def render_table(rows: list[dict]):
    """A rich Table: what `stillroom run` and `stillroom report` print."""
    from rich.table import Table

    table = Table(title="stillroom: students against their teacher (held-out test split)")
    columns = (
        "task",
        "records",
        "train/test",
        "rung",
        "agreement (95% CI)",
        "baselines tfidf / zero-shot",
        "coverage",
        "p50",
        "size",
        "model",
        "alias",
    )
    for column in columns:
        table.add_column(column)

    def fmt(value, pattern: str) -> str:
        return pattern.format(value) if isinstance(value, int | float) else "-"

    for row in rows:
        interval = (
            f"{fmt(row['agreement'], '{:.3f}')} [{fmt(row['agreement_low'], '{:.3f}')}, "
            f"{fmt(row['agreement_high'], '{:.3f}')}]"
        )
        table.add_row(
            row["task"],
            str(row["records"]),
            f"{row['train'] or '-'}/{row['test'] or '-'}",
            row["rung"] or row["student"] or "-",
            interval,
            f"{fmt(row['baseline_tfidf_lr'], '{:.3f}')} / {fmt(row['baseline_zero_shot'], '{:.3f}')}",
            fmt(row["coverage"], "{:.0%}"),
            fmt(row["p50_ms"], "{:.1f} ms"),
            fmt(row["size_mb"], "{:.0f} MB"),
            row["model_uri"] or "-",
            row["alias"] or ("failed: " + row["failed"][:80] if row.get("failed") else "-"),
        )
    return table
