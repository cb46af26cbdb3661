"""Prefect tasks, derived from the stage registry (stillroom/stages.py): one per stage.

Each wraps the stage's `run`, skips it when dvc.lock shows it up to date, and publishes
its summary as a markdown artifact for the Prefect UI, with the stage's retry policy.
"""

from __future__ import annotations

import json
from functools import cache

from prefect import Task, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import Params
from stillroom.data import Layout
from stillroom.stages import Stage
from stillroom.versioning import up_to_date


def publish(stage: str, summary: dict) -> None:
    body = json.dumps(summary, indent=2, default=str)
    create_markdown_artifact(
        key=f"stillroom-{stage.replace('_', '-')}",
        markdown=f"### {stage}\n\n```json\n{body[:20000]}\n```",
        description=f"stillroom {stage} summary",
    )


@cache
def stage_task(stage: Stage) -> Task:
    """Stages read and write files under data/, so Prefect caching is off: DVC decides what is stale.

    A stage that dvc.lock shows up to date (same code, inputs, params and outputs) is skipped,
    so re-running the flow costs only what changed, as `dvc repro` would.
    """

    @task(name=stage.name, cache_policy=NO_CACHE, retries=stage.retries, retry_delay_seconds=30)
    def run_stage(params: Params, layout: Layout, force: bool = False) -> dict:
        if stage.in_dvc and not force and up_to_date(layout, stage.name):
            get_run_logger().info("%s is up to date in dvc.lock: skipped (force=True re-runs it)", stage.name)
            metrics_file = layout.stage_metrics(stage.name)
            last = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
            return {"skipped": "up to date", **last}
        summary = stage.function()(params, layout)
        publish(stage.name, summary)
        return summary

    return run_stage
