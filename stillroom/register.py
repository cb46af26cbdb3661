"""Log each evaluated student to MLflow and register it; `champion` only when it passes the gate.

The gate has two parts. On its own numbers (`metrics.gate`, as evaluate reports it): enough
test rows to decide, the lower bound of the agreement interval at the threshold for the task's
answer format, and no baseline ahead of it on the same test rows. Then the new student must not
be worse than the current champion on the same test rows. Every version carries its lineage (git commit, DVC data
hash, params, rung) so a user can tell what a model was trained on before promoting it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from stillroom.config import Params
from stillroom.data import Layout, load_splits, read_json, synthesized_cards, write_json
from stillroom.metrics.gate import gate_verdict
from stillroom.metrics.scoring import per_example_agreement
from stillroom.mlflow_model import (
    CHALLENGER,
    CHAMPION,
    STUDENT_ARTIFACT,
    StudentModel,
    download_student,
    setup_mlflow,
    tracking_uri,
)
from stillroom.mlflow_model import model_name as registered_name
from stillroom.per_task import run_each
from stillroom.requirements import inference_requirements
from stillroom.schema import DatasetRow, TaskCard
from stillroom.students.base import load_student, read_manifest, write_manifest

PACKAGE_DIR = Path(__file__).parent


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def dvc_dir_md5(directory: Path) -> str:
    """The hash DVC gives a tracked folder (`<md5>.dir` in dvc.lock), so a version can be matched to its data.

    As dvc_data builds it: the md5 of the JSON list of {"md5", "relpath"} of every file, sorted
    by relpath. DVC would also skip files named in .dvcignore; the project ignores none.
    """
    entries = []
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        with path.open("rb") as handle:
            md5 = hashlib.file_digest(handle, "md5").hexdigest()
        entries.append({"md5": md5, "relpath": path.relative_to(directory).as_posix()})
    entries.sort(key=lambda entry: entry["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def model_name(card: TaskCard) -> str:
    return registered_name(card.name)


def flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def relevant_params(params: Params, kind: str) -> dict[str, object]:
    """The params.yaml sections that shape this student, flattened; the whole file goes in params.json."""
    data = params.model_dump(mode="json", by_alias=True)
    unused_student = "lm" if kind in ("classifier", "image_classifier") else "classifier"
    train = {key: value for key, value in data["train"].items() if key != unused_student}
    return {
        **flatten("synthesize", data["synthesize"]),
        **flatten("train", train),
        **flatten("evaluate", data["evaluate"]),
        **flatten("register.gate", data["register"]["gate"]),
    }


def curve_metrics(train_info: dict) -> list[Metric]:
    """Training and validation loss, and the epochs' validation agreement, by step: MLflow draws the curves."""
    now = int(time.time() * 1000)
    points = []
    for point in train_info.get("curve", []):
        points.append(Metric("train_loss", float(point["loss"]), now, int(point["step"])))
    for point in train_info.get("eval_curve", []):
        points.append(Metric("eval_loss", float(point["eval_loss"]), now, int(point["step"])))
    for point in train_info.get("agreement_curve", []):
        points.append(Metric("epoch_validation_agreement", float(point["agreement"]), now, int(point["step"])))
    return points


@dataclass
class GateDecision:
    """Whether a new version becomes champion, and the numbers that decided it."""

    passed: bool
    reason: str
    threshold: float
    previous_champion_version: str | None
    champion_agreement: float | None = None
    champion_error: str | None = None

    def tags(self) -> dict[str, str]:
        tags = {
            "gate": "passed" if self.passed else "failed",
            "gate_reason": self.reason,
            "gate_threshold": f"{self.threshold:.4f}",
            "previous_champion_version": self.previous_champion_version or "none",
        }
        if self.champion_agreement is not None:
            tags["champion_agreement"] = f"{self.champion_agreement:.4f}"
        if self.champion_error is not None:
            tags["champion_error"] = self.champion_error
        return tags


@dataclass
class RoutedGate:
    """Whether the answers above the routing threshold may be served, even by a challenger.

    With routing, users see only those answers, so their test agreement (with its lower bound)
    and their share of traffic are what decide serving; overall agreement decides `champion`.
    """

    passed: bool
    reason: str
    agreement: float | None
    low: float | None
    coverage: float
    routing_threshold: float

    @classmethod
    def decide(cls, metrics: dict, params: Params) -> RoutedGate:
        gate = params.registry.gate.routed
        agreement, low = metrics.get("routed_agreement"), metrics.get("routed_agreement_low")
        coverage, threshold = float(metrics.get("coverage", 0.0)), float(metrics.get("threshold", 1.01))
        if agreement is None or low is None or coverage == 0:
            return cls(False, "no test answer clears the routing threshold", agreement, low, coverage, threshold)
        passed = agreement >= gate.agreement and low >= gate.low and coverage >= gate.min_coverage
        reason = (
            f"routed share {coverage:.0%} (confidence >= {threshold:.4f}): agreement {agreement:.4f} "
            f"{'>=' if agreement >= gate.agreement else '<'} {gate.agreement:.2f}, lower bound {low:.4f} "
            f"{'>=' if low >= gate.low else '<'} {gate.low:.2f}"
        )
        if coverage < gate.min_coverage:
            reason += f", coverage < {gate.min_coverage:.0%}"
        return cls(bool(passed), reason, float(agreement), float(low), coverage, threshold)

    def tags(self) -> dict[str, str]:
        tags = {
            "routed_gate": "passed" if self.passed else "failed",
            "routed_gate_reason": self.reason,
            "routing_threshold": f"{self.routing_threshold:.4f}",
            "coverage": f"{self.coverage:.4f}",
        }
        if self.agreement is not None and self.low is not None:
            tags["routed_agreement"] = f"{self.agreement:.4f}"
            tags["routed_agreement_low"] = f"{self.low:.4f}"
        return tags


def serving_role(champion: bool, routed: RoutedGate) -> str:
    """What `stillroom serve` will do with a version: the sentence the version's description opens with."""
    if champion:
        return "champion"
    if routed.passed:
        return "challenger that may serve its routed share"
    return "challenger (teacher only)"


def current_champion(client: MlflowClient, name: str) -> str | None:
    """The version the `champion` alias points to, or None when there is none yet."""
    try:
        registered = client.get_registered_model(name)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    version = registered.aliases.get(CHAMPION)
    return None if version is None else str(version)  # the SQL store gives an int, the REST store a string


def champion_predictions(client: MlflowClient, name: str, version: str, rows: list[DatasetRow]) -> list[str]:
    """The champion's answers to the rows, from its registered student folder (not the pyfunc wrapper,
    whose code_paths would put the champion's copy of stillroom on sys.path)."""
    with tempfile.TemporaryDirectory(prefix="stillroom-champion-") as tmp:
        student = load_student(download_student(client, name, version, tmp))
        return [p.text for p in student.predict([row.prompt for row in rows])]


def gate_rows(card: TaskCard, params: Params, layout: Layout) -> tuple[list[DatasetRow], list[str]]:
    """The test rows evaluation used, with the new student's answers to them from predictions.jsonl."""
    test = load_splits(layout, card.id)["test"][: params.evaluate.max_test_examples]
    lines = (layout.report(card.id) / "predictions.jsonl").read_text(encoding="utf-8").splitlines()
    answers = {row["id"]: row["student"] for row in (json.loads(line) for line in lines if line.strip())}
    rows = [row for row in test if row.id in answers]
    if not rows:
        raise ValueError(f"task {card.id}: predictions.jsonl answers none of the test rows; re-run evaluate")
    return rows, [answers[row.id] for row in rows]


def decide(card: TaskCard, params: Params, layout: Layout, metrics: dict, client: MlflowClient) -> GateDecision:
    """Gate (a): `gate_verdict` (test rows, lower bound, baselines). Gate (b): the new student,
    on the same test rows, is no more than max_regression below the current champion."""
    fmt = card.answer_format
    gate = params.registry.gate.for_format(fmt)
    clears, bound = gate_verdict(metrics, fmt, params)
    previous = current_champion(client, model_name(card))
    if not clears:
        return GateDecision(False, bound, gate, previous)
    if previous is None:
        return GateDecision(True, f"{bound}; no champion yet", gate, previous)

    rows, new_answers = gate_rows(card, params, layout)
    try:
        old_answers = champion_predictions(client, model_name(card), previous, rows)
    except Exception as error:  # any broken old version (deleted artifact, unknown kind) must not block a new one
        note = f"{type(error).__name__}: {error}"[:500]
        reason = f"{bound}; champion v{previous} could not be loaded, judged on the gate alone"
        return GateDecision(True, reason, gate, previous, champion_error=note)

    references = [row.target for row in rows]
    new = sum(per_example_agreement(fmt, new_answers, references)) / len(rows)
    old = sum(per_example_agreement(fmt, old_answers, references)) / len(rows)
    slack = params.registry.gate.max_regression
    keeps_up = new >= old - slack
    comparison = (
        f"agreement {new:.4f} {'>=' if keeps_up else '<'} champion v{previous} {old:.4f} "
        f"- max_regression {slack:.2f} on the same {len(rows)} test rows"
    )
    return GateDecision(keeps_up, f"{bound}; {comparison}", gate, previous, champion_agreement=old)


@contextmanager
def served_folder(model_dir: Path, metrics: dict) -> Iterator[Path]:
    """The student folder as evaluation measured it: the trained folder, or, when its compact weights
    fell back to float32 (`export_fallback`), a copy whose manifest says so (the trained folder is a DVC
    output and stays as trained)."""
    if not metrics.get("export_fallback"):
        yield model_dir
        return
    with tempfile.TemporaryDirectory(prefix="stillroom-served-") as scratch:
        folder = Path(shutil.copytree(model_dir, Path(scratch) / "student"))
        manifest = read_manifest(folder)
        write_manifest(folder, manifest.pop("kind"), **{**manifest, "weights": metrics["weights"]})
        yield folder


def register_task(card: TaskCard, params: Params, layout: Layout, experiment_id: str) -> dict:
    """One MLflow run per task: params, metrics, curves, plots, the card, and the model as a new version."""
    report_dir = layout.report(card.id)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    train_info = json.loads(layout.train_info(card.id).read_text())
    name = model_name(card)
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    decision = decide(card, params, layout, metrics, client)
    routed = RoutedGate.decide(metrics, params)
    lineage = {
        "git_commit": git_commit(layout.root),
        "datasets_md5": dvc_dir_md5(layout.datasets),  # DVC's hash of data/datasets, as in dvc.lock
        "task_dataset_md5": dvc_dir_md5(layout.datasets / card.id),
        "model_md5": dvc_dir_md5(layout.model(card.id)),  # the student folder as `dvc pull` restores it
        "task_id": card.id,
        "student_kind": train_info["kind"],
        # Folders trained before the ladder have no rung; their kind was their rung.
        "rung": train_info.get("rung", train_info["kind"]),
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=card.name) as run:
        mlflow.log_params(relevant_params(params, train_info["kind"]))
        mlflow.log_params({"task.output_type": card.output_type, "task.output_format": card.answer_format})
        mlflow.log_params({"task.count": card.count, **lineage})
        mlflow.log_dict(params.model_dump(mode="json", by_alias=True), "params.json")
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        numeric.update({f"train_{k}": float(v) for k, v in train_info.items() if isinstance(v, int | float)})
        # what the dataset cost: teacher calls, cache hits, tokens, money, real and generated rows
        synthesis = read_json(layout.stage_metrics("synthesize")).get(card.name, {})
        numeric.update({f"synthesize_{k}": float(v) for k, v in synthesis.items() if isinstance(v, int | float)})
        mlflow.log_metrics(numeric)
        client.log_batch(run.info.run_id, metrics=curve_metrics(train_info))
        mlflow.log_dict(card.model_dump(mode="json"), "task_card.json")
        mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
        mlflow.set_tags(
            {
                "stillroom.task": card.name,
                **{f"stillroom.{k}": v for k, v in lineage.items()},
                **{f"stillroom.{k}": v for k, v in decision.tags().items()},
                **{f"stillroom.{k}": v for k, v in routed.tags().items()},
            }
        )
        if "weights" in metrics:
            mlflow.set_tag("stillroom.served_weights", metrics["weights"])
        with served_folder(layout.model(card.id), metrics) as folder:
            info = mlflow.pyfunc.log_model(
                name="student",
                python_model=StudentModel(),
                artifacts={STUDENT_ARTIFACT: str(folder)},
                code_paths=[str(PACKAGE_DIR)],
                pip_requirements=inference_requirements(folder),  # what its inference imports
                registered_model_name=name,
            )
    version = str(info.registered_model_version)
    alias = CHAMPION if decision.passed else CHALLENGER
    for key, value in {**lineage, **decision.tags(), **routed.tags()}.items():
        client.set_model_version_tag(name, version, key, str(value))
    role = serving_role(decision.passed, routed)
    description = (
        f"{alias}: {decision.reason}.\n"
        f"Serves as {role}; routed gate {'passed' if routed.passed else 'failed'}: {routed.reason}.\n"
        f"Rung {lineage['rung']}, data/datasets {lineage['datasets_md5']}, commit {lineage['git_commit']}."
    )
    client.update_model_version(name, version, description=description)
    client.set_registered_model_alias(name, alias, version)
    return {
        "task_id": card.id,
        "task": card.name,
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "alias": alias,
        "run_id": run.info.run_id,
        "gate": "passed" if decision.passed else "failed",
        "gate_reason": decision.reason,
        "gate_threshold": decision.threshold,
        "previous_champion_version": decision.previous_champion_version,
        "champion_agreement": decision.champion_agreement,
        "champion_error": decision.champion_error,
        "routed_gate": "passed" if routed.passed else "failed",
        "routed_gate_reason": routed.reason,
        "serving": role,
    }


def task_cards(params: Params, layout: Layout) -> list[TaskCard]:
    """The tasks with an evaluated student."""
    return [card for card in synthesized_cards(layout) if (layout.report(card.id) / "metrics.json").exists()]


def prepare(params: Params, layout: Layout) -> None:
    """Create the store and the experiment once, before tasks register from several processes."""
    setup_mlflow(params, layout)


def run_task(params: Params, layout: Layout, card: TaskCard) -> dict:
    """One task's MLflow run and model version (in whichever process the task runner chose)."""
    return register_task(card, params, layout, setup_mlflow(params, layout))


def finish(params: Params, layout: Layout, results: dict[str, dict]) -> dict:
    """data/registry.json: this run's versions, and the last run's for tasks it did not touch."""
    ids = {card.name: card.id for card in synthesized_cards(layout)}
    entries = {entry["task"]: entry for entry in read_json(layout.registry).get("models", [])}
    entries.update({name: {"task": name, "task_id": ids[name], **result} for name, result in results.items()})
    registry = {
        "tracking_uri": tracking_uri(params, layout),
        "models": [entry for name, entry in entries.items() if name in ids],
    }
    write_json(layout.registry, registry)
    return registry


def run(params: Params, layout: Layout, only: Collection[str] | None = None) -> dict:
    """The register stage: every task's student into the MLflow registry; data/registry.json lists them."""
    return run_each("register", sys.modules[__name__], params, layout, only)
