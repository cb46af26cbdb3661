"""A student as an MLflow pyfunc model, so `mlflow.pyfunc.load_model` serves any kind the same way.

Input: a DataFrame with a `messages` column (the chat turns, as the teacher got them) or
a `text` column (the user turn alone). A turn's `content` may be a list of OpenAI content parts: its
image parts (data URLs) are read as the server and ingest read them (`stillroom.content`), so an
image student gets the bytes a served request would give it.
Output: a DataFrame of `answer`, `confidence` and `valid`
(the answer is in the label set, or JSON that matches the task's schema).

Also the MLflow plumbing register (writes versions) and serve (reads them) share: where the
store is, what a task's registered model is called, and how a version's student folder is fetched.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import mlflow.pyfunc
import pandas as pd
from mlflow.models import Model
from mlflow.tracking import MlflowClient

from stillroom.config import Params
from stillroom.content import turn
from stillroom.data import Layout
from stillroom.schema import Message

STUDENT_ARTIFACT = "student"  # the artifact that holds the student folder
CHAMPION = "champion"
CHALLENGER = "challenger"
# Set by `stillroom serve` on a version its live audits demoted; read by status, watch and report.
DEMOTED_TAG = "serve_demoted"
DEMOTED_REASON_TAG = "serve_demoted_reason"


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
    point_mlflow_at(uri)
    name = params.registry.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifact_root = layout.resolve(params.registry.artifact_root)
        artifact_root.mkdir(parents=True, exist_ok=True)
        return mlflow.create_experiment(name, artifact_location=artifact_root.as_uri())
    return experiment.experiment_id


def point_mlflow_at(uri: str) -> None:
    """Set MLflow's process-wide tracking and registry URIs, leaving os.environ as it was.

    MLflow's setters also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI, where `tracking_uri`
    would later take them for the user's choice and send another project's registry reads
    to this store.
    """
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    before = {name: os.environ.get(name) for name in names}
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # else a registry URI resolved earlier in the process would stick
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def registry_client(params: Params, layout: Layout) -> MlflowClient:
    """A client on the project's store, without touching MLflow's process-wide URIs."""
    uri = tracking_uri(params, layout)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def model_name(task_name: str) -> str:
    """The registered model of a task: `stillroom-<task name>`."""
    return f"stillroom-{task_name}"


def download_student(client: MlflowClient, name: str, version: str, destination: Path | str) -> Path:
    """A model version's student folder, copied under `destination`.

    The folder alone, not the pyfunc wrapper, whose code_paths would put that version's copy
    of stillroom on sys.path.
    """
    source = client.get_model_version_download_uri(name, version)
    destination = str(destination)
    # Both URIs explicit: a `models:/` source resolves through the registry URI, and MLflow's
    # process-wide one may point at another store.
    stores = {"tracking_uri": client.tracking_uri, "registry_uri": client._registry_uri}
    mlmodel = mlflow.artifacts.download_artifacts(artifact_uri=f"{source}/MLmodel", dst_path=destination, **stores)
    student_path = Model.load(mlmodel).flavors["python_function"]["artifacts"][STUDENT_ARTIFACT]["path"]
    folder = mlflow.artifacts.download_artifacts(
        artifact_uri=f"{source}/{student_path}", dst_path=destination, **stores
    )
    return Path(folder)


class StudentModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from stillroom.students.base import load_student

        self.student = load_student(context.artifacts[STUDENT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "messages" in model_input.columns:
            prompts = [[_message(m) for m in messages] for messages in model_input["messages"]]
        elif "text" in model_input.columns:
            prompts = [[Message(role="user", content=str(text))] for text in model_input["text"]]
        else:
            raise ValueError("input needs a 'messages' or a 'text' column")
        predictions = self.student.predict(prompts)
        return pd.DataFrame(
            {
                "answer": [p.text for p in predictions],
                "confidence": [p.confidence for p in predictions],
                "valid": [p.valid for p in predictions],
            }
        )


def _message(message: dict) -> Message:
    """A turn as the student reads it; content parts (text, data-URL images) parsed as a served request's are."""
    if isinstance(message.get("content"), list):
        return turn(message["role"], message["content"])
    return Message(**message)
