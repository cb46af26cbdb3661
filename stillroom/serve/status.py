"""What `stillroom status` shows: per task, the version that may serve (or why none may), its live agreement from
shadow audits with the interval, any demotion, and the last day's traffic by route. Reads the registry and the live
stats file; needs no running server.
"""

from __future__ import annotations

from stillroom.config import Params
from stillroom.data import Layout
from stillroom.detect.matcher import TaskMatcher
from stillroom.mlflow_model import registry_client
from stillroom.serve.live import LiveStats
from stillroom.serve.registry import Registry


def status_report(params: Params, layout: Layout) -> list[dict]:
    tasks = TaskMatcher.load(layout.task_index).tasks
    live_path = layout.resolve(params.serve.live_stats)
    live_rows: list[dict] = []
    demoted: set[tuple[str, str]] = set()
    if live_path.exists():
        stats = LiveStats(live_path)
        try:
            formats = {task_id: task.get("output_format", "label") for task_id, task in tasks.items()}
            live_rows = stats.report(formats)
            demoted = set(stats.demotions())
        finally:
            stats.close()
    servable, refused = Registry(registry_client(params, layout), params.serve).servable(tasks, demoted)
    reasons = {refusal.task: refusal.reason for refusal in refused}
    rows = []
    for task_id, task in sorted(tasks.items(), key=lambda item: item[1]["name"]):
        serving = servable.get(task_id)
        mine = [row for row in live_rows if row.get("task_id") == task_id or row.get("task") == task["name"]]
        current = next((row for row in mine if serving and row.get("version") == serving.version), None)
        traffic: dict[str, int] = {}
        for row in mine:
            for route, n in row.get("traffic", {}).items():
                traffic[route] = traffic.get(route, 0) + n
        rows.append(
            {
                "task": task["name"],
                "task_id": task_id,
                "serving": serving.label if serving else None,
                "alias": serving.alias if serving else None,
                "threshold": serving.threshold if serving else None,
                "not_serving_because": None if serving else reasons.get(task["name"], "no registered student"),
                "live_audits": current["audits"] if current else 0,
                "live_agreement": current["agreement"] if current else None,
                "live_low": current["low"] if current and current["audits"] else None,
                "live_high": current["high"] if current and current["audits"] else None,
                "demoted": [f"v{row['version']}: {row['demoted']}" for row in mine if row.get("demoted")],
                "traffic_24h": traffic,
            }
        )
    return rows
