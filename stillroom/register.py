"""Log each evaluated student to MLflow and register it; `champion` only when it passes the gate.

Every version carries its lineage (git commit, data hash, params) so a user can tell
what a model was trained on before promoting it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from stillroom.config import Layout, Params
from stillroom.mlflow_model import StudentModel
from stillroom.schema import TaskCard, write_json
from stillroom.synthesize import synthesized_cards

CHAMPION = "champion"
PACKAGE_DIR = Path(__file__).parent

# What a loaded student needs; the versions are the ones this run used.
RUNTIME_PACKAGES = [
    "torch",
    "transformers",
    "sentence-transformers",
    "scikit-learn",
    "numpy",
    "pandas",
    "pydantic",
    "safetensors",
    "mlflow",
]


def pip_requirements() -> list[str]:
    pins = []
    for package in RUNTIME_PACKAGES:
        try:
            pins.append(f"{package}=={metadata.version(package)}")
        except metadata.PackageNotFoundError:
            pins.append(package)
    return pins


def tracking_uri(params: Params, layout: Layout) -> str:
    """MLFLOW_TRACKING_URI wins; a relative sqlite path in params is taken from the project root."""
    uri = os.environ.get("MLFLOW_TRACKING_URI") or params.registry.tracking_uri
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        uri = prefix + str(layout.resolve(uri[len(prefix) :]))
    return uri


def setup_mlflow(params: Params, layout: Layout) -> str:
    """Point MLflow at the store and return the experiment id (created with our artifact root)."""
    uri = tracking_uri(params, layout)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # else a registry URI resolved earlier in the process would stick
    name = params.registry.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_root = layout.resolve(params.registry.artifact_root)
        artifact_root.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(name, artifact_location=artifact_root.as_uri())
    return experiment.experiment_id


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()


def content_hash(directory: Path) -> str:
    """A hash of a folder's files and names, as recorded in the model's lineage."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def model_name(card: TaskCard) -> str:
    return f"stillroom-{card.name}"


def flatten(prefix: str, value: object) -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, inner in value.items():
            out.update(flatten(f"{prefix}.{key}" if prefix else str(key), inner))
        return out
    return {prefix: value}


def register_task(card: TaskCard, params: Params, layout: Layout, experiment_id: str) -> dict:
    """One MLflow run per task: params, metrics, plots, the card, and the model as a new version."""
    report_dir = layout.report(card.id)
    metrics = json.loads((report_dir / "metrics.json").read_text())
    train_info = json.loads((layout.model(card.id) / "train_info.json").read_text())
    name = model_name(card)
    lineage = {
        "git_commit": git_commit(layout.root),
        "data_hash": content_hash(layout.datasets / card.id),
        "task_id": card.id,
        "student_kind": train_info["kind"],
    }
    with mlflow.start_run(experiment_id=experiment_id, run_name=card.name) as run:
        section = params.train.classifier if train_info["kind"] == "classifier" else params.train.lm
        mlflow.log_params(flatten("train", section.model_dump()))
        mlflow.log_params({"task.output_type": card.output_type, "task.count": card.count, **lineage})
        numeric = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float)}
        numeric.update({f"train_{k}": float(v) for k, v in train_info.items() if isinstance(v, int | float)})
        mlflow.log_metrics(numeric)
        mlflow.log_dict(card.model_dump(mode="json"), "task_card.json")
        mlflow.log_artifacts(str(report_dir), artifact_path="evaluation")
        mlflow.set_tags({"stillroom.task": card.name, **{f"stillroom.{k}": v for k, v in lineage.items()}})
        info = mlflow.pyfunc.log_model(
            name="student",
            python_model=StudentModel(),
            artifacts={"student": str(layout.model(card.id))},
            code_paths=[str(PACKAGE_DIR)],
            pip_requirements=pip_requirements(),
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
    passed = bool(metrics["passed_gate"])
    gate_note = (
        f"{metrics['gate_metric']}={metrics[metrics['gate_metric']]:.4f} "
        f"{'>=' if passed else '<'} gate {metrics['gate']:.2f}"
    )
    for key, value in {**lineage, "gate": "passed" if passed else "failed", "gate_reason": gate_note}.items():
        client.set_model_version_tag(name, version, key, str(value))
    if passed:
        client.set_registered_model_alias(name, CHAMPION, version)
    else:
        client.set_registered_model_alias(name, "challenger", version)
    return {
        "task_id": card.id,
        "task": card.name,
        "model_name": name,
        "version": version,
        "model_uri": f"models:/{name}/{version}",
        "alias": CHAMPION if passed else "challenger",
        "run_id": run.info.run_id,
        "gate": gate_note,
    }


def run(params: Params, layout: Layout) -> dict:
    """The register stage: every task's student into the MLflow registry; data/registry.json lists them."""
    experiment_id = setup_mlflow(params, layout)
    cards = synthesized_cards(layout)
    entries = [register_task(card, params, layout, experiment_id) for card in cards]
    registry = {"tracking_uri": tracking_uri(params, layout), "models": entries}
    write_json(layout.registry, registry)
    return registry
