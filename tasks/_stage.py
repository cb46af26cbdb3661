"""Turn a stage's `run(params, layout)` into a Prefect task that publishes its summary to the UI."""

from __future__ import annotations

import json
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import Layout, Params
from stillroom.versioning import up_to_date

StageRun = Callable[[Params, Layout], dict]


def publish(stage: str, summary: dict) -> None:
    body = json.dumps(summary, indent=2, default=str)
    create_markdown_artifact(
        key=f"stillroom-{stage}",
        markdown=f"### {stage}\n\n```json\n{body[:20000]}\n```",
        description=f"stillroom {stage} summary",
    )


def stage_task(name: str, run: StageRun, retries: int = 0, retry_delay_seconds: float = 10):
    """Stages read and write files under data/, so Prefect caching is off: DVC decides what is stale.

    A stage that dvc.lock shows up to date (same code, inputs, params and outputs) is skipped,
    so re-running the flow costs only what changed, as `dvc repro` would.
    """

    @task(name=name, cache_policy=NO_CACHE, retries=retries, retry_delay_seconds=retry_delay_seconds)
    def stage(params: Params, layout: Layout, force: bool = False) -> dict:
        if not force and up_to_date(layout, name):
            get_run_logger().info("%s is up to date in dvc.lock: skipped (force=True re-runs it)", name)
            metrics_file = layout.stage_metrics(name)
            last = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            return {"skipped": "up to date", **last}
        summary = run(params, layout)
        publish(name, summary)
        return summary

    return stage
