"""The end-of-run summary: one row per task, from the files the stages wrote."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

from mlflow.exceptions import MlflowException

from stillroom.config import Params
from stillroom.data import Layout, read_cards
from stillroom.mlflow_model import DEMOTED_REASON_TAG, DEMOTED_TAG, model_name, registry_client
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


# ------------------------------------------------------------------ what changed since a moment


_STAMP = re.compile(r"\((\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC\)")


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """`24h`, `7d`, `30m`, or an ISO date or time (UTC unless it says otherwise)."""
    now = now or datetime.now(UTC)
    if match := re.fullmatch(r"(\d+)\s*([mhd])", text.strip()):
        unit = {"m": "minutes", "h": "hours", "d": "days"}[match.group(2)]
        return now - timedelta(**{unit: int(match.group(1))})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError as error:
        raise ValueError(f"--since {text!r}: give 24h, 7d, 30m or an ISO date such as 2026-12-01") from error
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def changes_since(params: Params, layout: Layout, since: datetime) -> list[dict]:
    """Every model version registered and every demotion since `since`, oldest first, with the
    agreement delta against the champion it was compared with (same test rows)."""
    client = registry_client(params, layout)
    cutoff = since.timestamp() * 1000
    events: list[dict] = []
    for card in read_cards(layout.cards) if layout.cards.exists() else []:
        try:
            versions = client.search_model_versions(f"name='{model_name(card.name)}'")
        except MlflowException:
            continue
        earliest = min((int(v.version) for v in versions), default=None)
        for version in versions:
            tags = version.tags
            at = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
            if version.creation_timestamp >= cutoff:
                agreement = client.get_run(version.run_id).data.metrics.get("agreement") if version.run_id else None
                champion = float(tags["champion_agreement"]) if "champion_agreement" in tags else None
                role = "champion" if tags.get("gate") == "passed" else "challenger"
                first = int(version.version) == earliest
                events.append({
                    "at": at.isoformat(timespec="seconds"), "task": card.name, "version": str(version.version),
                    "event": f"new task, {role}" if first else "promoted" if role == "champion" else "challenger",
                    "agreement": agreement, "champion_agreement": champion,
                    "delta": None if agreement is None or champion is None else agreement - champion,
                    "reason": tags.get("gate_reason", ""),
                })
            stamp = _STAMP.search(tags.get(DEMOTED_REASON_TAG, ""))
            if tags.get(DEMOTED_TAG) == "true" and stamp:
                demoted_at = datetime.strptime(stamp.group(1), "%Y-%m-%d %H:%M").replace(tzinfo=UTC)
                if demoted_at >= since.replace(second=0, microsecond=0):
                    events.append({
                        "at": demoted_at.isoformat(timespec="seconds"), "task": card.name,
                        "version": str(version.version), "event": "demoted", "agreement": None,
                        "champion_agreement": None, "delta": None, "reason": tags[DEMOTED_REASON_TAG],
                    })
    return sorted(events, key=lambda event: (event["at"], event["task"]))


def changes_markdown(events: list[dict], since: datetime) -> str:
    """The end-of-run report: what a reviewer needs to know, nothing else."""
    head = f"### What changed since {since:%Y-%m-%d %H:%M} UTC"
    if not events:
        return f"{head}\n\nNothing: no new version, promotion or demotion."
    lines = [head, "", "| task | version | event | agreement | vs champion | why |", "|---|---:|---|---:|---:|---|"]
    for e in events:
        agreement = "-" if e["agreement"] is None else f"{e['agreement']:.3f}"
        delta = "-" if e["delta"] is None else f"{e['delta']:+.3f}"
        lines.append(f"| {e['task']} | {e['version']} | {e['event']} | {agreement} | {delta} | {e['reason'][:160]} |")
    return "\n".join(lines)
