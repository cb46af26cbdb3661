"""The `distill` flow: logs in, registered students out. Each stage of the registry is a Prefect task.

Run it directly (`python flows/distill.py` or `stillroom run`), or as a deployment
(`prefect deployment run 'distill/stillroom-local'`, see prefect.yaml).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from stillroom.config import load_params
from stillroom.data import Layout, synthesized_cards
from stillroom.per_task import TaskFailures
from stillroom.report import summary_rows
from stillroom.stages import flow_stages
from tasks import run_per_task, stage_task, task_runner

ROOT = Path(__file__).resolve().parent.parent
# The numbers worth a log line, when a stage's summary has them.
_HEADLINE_KEYS = ("records", "quarantined", "tasks", "assigned", "dvc")


# log_prints stays off: it patches print(), which breaks libraries that capture stdout (dill in datasets).
@flow(name="distill")
def distill(
    root: str = str(ROOT), params_file: str = "params.yaml", force: bool = False, tasks: list[str] | None = None
) -> list[dict]:
    """Every stage of stillroom/stages.py in order (ingest .. register, then version the outputs in DVC).

    Stages that dvc.lock shows up to date are skipped unless `force`. Train, evaluate and register
    run per task on `flow.task_runner`; with `tasks` (names or ids, as the watch flow passes them)
    only those tasks are retrained, and the others keep their versions and aliases. A task that
    fails is reported and the others still register; the run then ends Failed, naming it.
    """
    layout = Layout(root)
    params = load_params(layout.resolve(params_file))
    # ingest's DVC deps include the serve capture folder, which exists only once something was served
    layout.resolve(params.ingest.capture).mkdir(parents=True, exist_ok=True)
    stages = run_stages.with_options(task_runner=task_runner(params.flow))
    failed = stages(root=root, params_file=params_file, force=force, tasks=tasks)
    rows = summary_rows(layout)
    create_table_artifact(key="stillroom-summary", table=rows, description="students against their teacher")
    if failed:
        raise TaskFailures("distill", failed)
    return rows


@flow(name="distill-stages")
def run_stages(root: str, params_file: str, force: bool, tasks: list[str] | None) -> dict[str, str]:
    """The stages, on the task runner the outer flow chose; returns the tasks that failed, with why."""
    logger = get_run_logger()
    layout = Layout(root)
    params = load_params(layout.resolve(params_file))
    # dvc.lock speaks for params.yaml only: with another parameters file, nothing counts as up to date.
    force = force or layout.resolve(params_file) != layout.root / "params.yaml"
    failed: dict[str, str] = {}
    for stage in flow_stages():
        if stage.per_task:
            if tasks is not None:  # detect has run by now: a task it found new is trained with the named ones
                tasks = sorted(set(tasks) | never_trained(layout))
            failed |= run_per_task(stage, params, layout, force, tasks, failed)
            continue
        summary = stage_task(stage)(params, layout, force)
        headline = {k: summary[k] for k in _HEADLINE_KEYS if isinstance(summary, dict) and k in summary}
        logger.info("%s done %s", stage.name, headline or "")
    return failed


def never_trained(layout: Layout) -> set[str]:
    return {card.name for card in synthesized_cards(layout) if not layout.train_info(card.id).exists()}


if __name__ == "__main__":
    distill()
