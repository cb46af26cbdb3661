"""The `watch` flow: run every few minutes; retrain only what new traffic or a demotion calls for.

1. ingest reads what arrived since its last run: new log lines and the serve endpoint's capture
   rows (skipped outright when DVC sees neither changed);
2. the records ingest added since detect last ran are matched to the known tasks with detect's
   own matcher (the one serve routes with), and counted per task on top of the task's count;
3. a task is retrained when it has `retrain.min_new_records` more records than its student was
   trained on, or when the server demoted its student; detect runs again when enough records
   match no task to make a new one (`detect.min_task_records`).

Then `distill` runs for those tasks only (a subflow, or the deployment in `retrain.deployment`);
the other tasks keep their versions and aliases. With nothing to do it ends in seconds and says so.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from stillroom.config import Params, load_params
from stillroom.data import Layout, read_cards, read_json
from stillroom.detect.matcher import TaskMatcher
from stillroom.mlflow_model import CHAMPION, DEMOTED_TAG, model_name, registry_client
from stillroom.schema import LogRecord
from stillroom.stages import get
from tasks import stage_task

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Changes:
    """What arrived since each task's student was trained, and what that calls for."""

    new_records: dict[str, int] = field(default_factory=dict)  # task name -> records beyond its training
    demoted: list[str] = field(default_factory=list)
    unmatched: int = 0  # new records no known task claims
    retrain: list[str] = field(default_factory=list)
    find_new_tasks: bool = False

    @property
    def anything(self) -> bool:
        return bool(self.retrain or self.find_new_tasks)


def new_records_since_detect(layout: Layout) -> list[LogRecord]:
    """records.jsonl grows at its end (ingest appends); detect's metrics say how many it read."""
    if not layout.records.exists():
        return []
    seen = int(read_json(layout.stage_metrics("detect")).get("records", 0))
    out = []
    with layout.records.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines):
            if number >= seen and line.strip():
                out.append(LogRecord.model_validate_json(line))
    return out


def demoted_tasks(params: Params, layout: Layout, names: list[str]) -> list[str]:
    """Tasks whose champion the server demoted on live audits (the tag it set on the version)."""
    if not names:
        return []
    client = registry_client(params, layout)
    found = []
    for name in names:
        try:
            version = client.get_model_version_by_alias(model_name(name), CHAMPION)
        except Exception:  # no registered model or no champion: nothing was demoted
            continue
        if version.tags.get(DEMOTED_TAG) == "true":
            found.append(name)
    return found


def what_changed(params: Params, layout: Layout) -> Changes:
    cards = read_cards(layout.cards) if layout.cards.exists() else []
    fresh = new_records_since_detect(layout)
    changes = Changes()
    if not cards:  # nothing detected yet: any records at all are a reason to run
        changes.unmatched = len(fresh)
        changes.find_new_tasks = len(fresh) >= params.detect.min_task_records
        return changes
    matcher = TaskMatcher.load(layout.task_index)
    matched: Counter[str] = Counter()
    for record in fresh:
        match = matcher.match_record(record)
        if match is None:
            changes.unmatched += 1
        else:
            matched[match.task_id] += 1
    for card in cards:
        info = read_json(layout.train_info(card.id))
        trained_on = int(info.get("task_records", 0))
        changes.new_records[card.name] = card.count + matched[card.id] - trained_on if info else card.count
    changes.demoted = demoted_tasks(params, layout, [card.name for card in cards])
    enough = [name for name, count in changes.new_records.items() if count >= params.retrain.min_new_records]
    changes.retrain = sorted(set(enough) | set(changes.demoted))
    changes.find_new_tasks = changes.unmatched >= params.detect.min_task_records
    return changes


def report(changes: Changes, seconds: float) -> str:
    lines = [f"### stillroom watch ({seconds:.1f} s)", ""]
    if not changes.anything:
        lines.append("Nothing to retrain: no task has enough new records, none was demoted, no new task.")
    if changes.retrain:
        lines.append("Retraining: " + ", ".join(changes.retrain))
    if changes.find_new_tasks:
        lines.append(f"{changes.unmatched} new records match no task: detect looks for new tasks.")
    lines += ["", "| task | new records | demoted |", "|---|---:|---|"]
    lines += [f"| {name} | {count} | {'yes' if name in changes.demoted else ''} |"
              for name, count in sorted(changes.new_records.items())]
    return "\n".join(lines)


@flow(name="watch")
def watch(root: str = str(ROOT), params_file: str = "params.yaml") -> dict:
    """Retrain the tasks that new traffic or a demotion calls for; nothing else."""
    started = time.perf_counter()
    logger = get_run_logger()
    layout = Layout(root)
    params = load_params(layout.resolve(params_file))
    layout.resolve(params.ingest.capture).mkdir(parents=True, exist_ok=True)
    stage_task(get("ingest"))(params, layout, False)
    changes = what_changed(params, layout)
    summary = asdict(changes)
    create_markdown_artifact(key="stillroom-watch", markdown=report(changes, time.perf_counter() - started))
    if not changes.anything:
        logger.info("nothing to retrain: %s", json.dumps(changes.new_records))
        return {**summary, "started": None}
    tasks = changes.retrain  # a new task detect finds is trained too (see distill's never_trained)
    logger.info("retraining %s%s", tasks or "no known task", " and looking for new tasks" * changes.find_new_tasks)
    if params.retrain.deployment:
        from prefect.deployments import run_deployment

        run = run_deployment(params.retrain.deployment, parameters={"tasks": tasks}, timeout=0)
        return {**summary, "started": str(run.id)}
    from flows.distill import distill

    distill(root=root, params_file=params_file, tasks=tasks)
    return {**summary, "started": "subflow"}


if __name__ == "__main__":
    watch()
