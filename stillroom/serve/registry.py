"""What may serve, read from the MLflow registry: per task, the version behind an alias that is allowed to answer.

A champion may serve. A challenger may serve only the share above its routing threshold, and
only when register recorded that this share passed the routed gate (`routed_gate=passed`).
A version demoted by live audits (tag `serve_demoted`) never serves again; the next flow run
registers a new one. The routing threshold is the one evaluate chose on validation, logged on the
version's run as the metric `threshold`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stillroom.config import ServeParams
from stillroom.mlflow_model import CHAMPION, DEMOTED_REASON_TAG, DEMOTED_TAG, model_name


@dataclass(frozen=True)
class Servable:
    task_id: str
    task: str
    output_format: str
    model_name: str
    version: str
    alias: str
    threshold: float
    kind: str

    @property
    def key(self) -> tuple[str, str]:
        return self.model_name, self.version

    @property
    def label(self) -> str:
        return f"{self.model_name}/{self.version}"


@dataclass(frozen=True)
class Refusal:
    """Why a task's registered versions may not serve: shown by /healthz and `stillroom status`."""

    task: str
    reason: str


class Registry:
    def __init__(self, client: MlflowClient, settings: ServeParams):
        self.client = client
        self.settings = settings
        self._thresholds: dict[str, float | None] = {}  # a run's metrics never change

    def servable(
        self, tasks: dict[str, dict], demoted: set[tuple[str, str]]
    ) -> tuple[dict[str, Servable], list[Refusal]]:
        """Task id -> the version that serves it, for every task of the index that has one."""
        found: dict[str, Servable] = {}
        refused: list[Refusal] = []
        for task_id, task in tasks.items():
            choice = self._choose(task_id, task, demoted)
            if isinstance(choice, Servable):
                found[task_id] = choice
            elif choice is not None:
                refused.append(choice)
        return found, refused

    def _choose(self, task_id: str, task: dict, demoted: set[tuple[str, str]]) -> Servable | Refusal | None:
        name = model_name(task["name"])
        try:
            aliases = self.client.get_registered_model(name).aliases
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        reasons = []
        for alias in self.settings.aliases:
            if alias not in aliases:
                continue
            version = self.client.get_model_version(name, str(aliases[alias]))
            tags = version.tags
            why_not = None
            if tags.get("task_id", task_id) != task_id:
                why_not = f"v{version.version} was trained for task {tags['task_id']}"
            elif tags.get(DEMOTED_TAG) == "true" or (task_id, str(version.version)) in demoted:
                why_not = f"v{version.version} demoted: {tags.get(DEMOTED_REASON_TAG, 'live agreement')}"
            elif alias != CHAMPION and tags.get("routed_gate") != "passed":
                why_not = f"{alias} v{version.version}: routed gate {tags.get('routed_gate', 'not recorded')}"
            threshold = None if why_not else self._threshold(version.run_id, tags)
            if why_not is None and threshold is None:
                why_not = f"v{version.version} has no routing threshold"
            if why_not:
                reasons.append(why_not)
                continue
            return Servable(
                task_id=task_id,
                task=task["name"],
                output_format=task.get("output_format", "label"),
                model_name=name,
                version=str(version.version),
                alias=alias,
                threshold=float(threshold),
                kind=tags.get("student_kind", "unknown"),
            )
        return Refusal(
            task["name"], "; ".join(reasons) or "no version behind the aliases " + ", ".join(self.settings.aliases)
        )

    def _threshold(self, run_id: str | None, tags: dict[str, str]) -> float | None:
        if run_id and run_id not in self._thresholds:
            self._thresholds[run_id] = self.client.get_run(run_id).data.metrics.get("threshold")
        value = self._thresholds.get(run_id) if run_id else None
        if value is None and "routing_threshold" in tags:
            value = float(tags["routing_threshold"])
        return value

    def demote(self, servable: Servable, reason: str) -> None:
        """Record on the model version why it no longer serves, where a user promoting versions will see it."""
        stamped = f"{reason} ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)"
        self.client.set_model_version_tag(servable.model_name, servable.version, DEMOTED_TAG, "true")
        self.client.set_model_version_tag(servable.model_name, servable.version, DEMOTED_REASON_TAG, stamped)
