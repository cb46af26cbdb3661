"""Prefect tasks, derived from the stage registry (stillroom/stages.py): one per stage.

Each wraps the stage's `run`, skips it when dvc.lock shows it up to date, and publishes
its summary as a markdown artifact for the Prefect UI, with the stage's retry policy.
A per-task stage (train, evaluate, register) is instead mapped over its tasks on the flow's
task runner (`flow.task_runner`: local threads, a Dask or a Ray cluster), then finished in one task.
"""

from __future__ import annotations

import json
from functools import cache

from prefect import Task, get_run_logger, task, unmapped
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from stillroom.config import FlowParams, Params
from stillroom.data import Layout
from stillroom.per_task import failure, failures, prepare, select
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


@cache
def one_task(stage: Stage) -> Task:
    """The stage's work for one task; Prefect shows each as its own run, named by the task."""

    @task(
        name=f"{stage.name}-task",
        task_run_name=f"{stage.name} {{card.name}}",
        cache_policy=NO_CACHE,
        retries=stage.retries,
        retry_delay_seconds=30,
    )
    def run_one(params: Params, layout: Layout, card) -> dict:
        return stage.module().run_task(params, layout, card)

    return run_one


@cache
def finish_task(stage: Stage) -> Task:
    @task(name=f"{stage.name}-finish", cache_policy=NO_CACHE)
    def finish(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
        summary = stage.module().finish(params, layout, results)
        publish(stage.name, summary)
        return summary

    return finish


def run_per_task(
    stage: Stage, params: Params, layout: Layout, force: bool, only: list[str] | None, failed: dict[str, str]
) -> dict[str, str]:
    """Map the stage over its tasks (less those that failed upstream); the failures of this stage."""
    logger = get_run_logger()
    if only is None and not force and up_to_date(layout, stage.name):
        logger.info("%s is up to date in dvc.lock: skipped (force=True re-runs it)", stage.name)
        return {}
    module = stage.module()
    cards = [card for card in select(module.task_cards(params, layout), only) if card.name not in failed]
    prepare(module, params, layout)
    futures = one_task(stage).map(params=unmapped(params), layout=unmapped(layout), card=cards)
    results = {}
    for card, future in zip(cards, futures, strict=True):
        try:
            results[card.name] = future.result()
        except Exception as error:  # reported; the other tasks still finish and register
            logger.error("%s failed for task %s: %s", stage.name, card.name, error)
            results[card.name] = failure(error)
    finish_task(stage)(params, layout, results)
    return failures(results)


def task_runner(settings: FlowParams):
    """The Prefect task runner `flow.task_runner` names. A team with a cluster sets its address."""
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        cluster = {"n_workers": settings.dask_workers, "threads_per_worker": 1, "processes": True}
        return DaskTaskRunner(cluster_kwargs=cluster)
    if settings.task_runner == "ray":
        try:
            from prefect_ray import RayTaskRunner
        except ImportError as error:
            raise RuntimeError("flow.task_runner: ray needs prefect-ray: pip install prefect-ray") from error
        return RayTaskRunner(address=settings.ray_address) if settings.ray_address else RayTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=settings.local_workers)
