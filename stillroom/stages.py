"""The one list of pipeline stages. The CLI subcommands, the Prefect tasks, the flow's order
and `dvc.yaml` are all derived from it.

A stage is a module with `run(params, layout) -> dict` (its summary). Adding one is an
entry here plus its module; `stillroom stages --write-dvc` then regenerates dvc.yaml
(a test fails while it is stale). Packages can add stages too, through the
`stillroom.stages` entry-point group (each entry point names a `Stage`), as `llm` plugins do.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import yaml

# Code the students answer with: evaluate, the registered model and the server run it.
INFERENCE_CODE = (
    "stillroom/students/__init__.py",
    "stillroom/students/base.py",
    "stillroom/students/chat.py",
    "stillroom/students/classifier.py",
    "stillroom/students/image_classifier.py",
    "stillroom/students/lm.py",
    "stillroom/students/json_answers.py",
    "stillroom/images.py",  # the image student's facts, read as ingest reads them
    "stillroom/content.py",  # content parts (the MLflow model's input, the server's requests)
    "stillroom/embeddings.py",
    "stillroom/base_lm.py",
    "stillroom/answers.py",
    "stillroom/schema.py",
)
# Code that fits and writes a student folder: the train stage alone depends on it.
TRAINING_CODE = (
    "stillroom/students/__init__.py",
    "stillroom/students/base.py",
    "stillroom/students/chat.py",
    "stillroom/students/classifier.py",  # training embeds with the features the student answers with
    "stillroom/students/classifier_train.py",
    "stillroom/students/image_classifier.py",
    "stillroom/students/image_classifier_train.py",
    "stillroom/images.py",
    "stillroom/content.py",
    "stillroom/students/lm_args.py",
    "stillroom/students/lm_train.py",
    "stillroom/students/distill.py",
    "stillroom/embeddings.py",
    "stillroom/base_lm.py",
    "stillroom/answers.py",
    "stillroom/schema.py",
)
# Every stage reads and writes through the data layer.
DATA_LAYER = "stillroom/data.py"
PER_TASK = "stillroom/per_task.py"  # the task-by-task loop of train, evaluate and register
DETECT_CODE = ("stillroom/detect", "stillroom/embeddings.py", "stillroom/answers.py", "stillroom/schema.py")


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: one task per entry
class Stage:
    """One pipeline stage: what it runs, what it reads and writes, which params it depends on."""

    name: str
    run: str  # "module:function", imported only when the stage runs
    help: str
    deps: tuple[str, ...] = ()  # code and data paths; a change re-runs the stage under `dvc repro`
    outs: tuple[str | dict[str, dict], ...] = ()  # paths, or {path: DVC options}
    params: tuple[str, ...] = ()  # params.yaml sections (or dotted keys)
    metrics: bool = True  # writes metrics/<name>.json
    cmd: str | None = None  # the DVC command; default `stillroom <name>`
    retries: int = 0  # Prefect retries (a remote teacher can fail)
    in_flow: bool = True  # the distill flow runs it
    in_dvc: bool = True  # a stage of dvc.yaml
    cli: bool = True  # a `stillroom <name>` subcommand derived from the entry
    per_task: bool = False  # the module has task_cards / run_task / finish: the flow maps it over tasks

    def module(self) -> ModuleType:
        return importlib.import_module(self.run.partition(":")[0])

    @property
    def command_name(self) -> str:
        return self.name.replace("_", "-")

    def function(self) -> Callable[..., dict]:
        module, _, attribute = self.run.partition(":")
        return getattr(importlib.import_module(module), attribute)


STAGES: list[Stage] = [
    Stage(
        "sample_logs",
        "stillroom.samples:run",
        "Build the bundled sample logs from real public data (BBC News, WNUT-16 tweets, chit-chat, images).",
        deps=("stillroom/samples.py", "stillroom/images.py"),  # the JPEG task's rule reads images as ingest does
        outs=("data/raw/logs",),
        params=("sample",),
        metrics=False,
        cmd="stillroom sample-logs --out data/raw/logs",
        in_flow=False,
        cli=False,  # `stillroom sample-logs` has options of its own (see cli.py)
    ),
    Stage(
        "ingest",
        "stillroom.ingest:run",
        "Read LLM call logs into data/records.jsonl; bad lines go to quarantine.",
        # the serve endpoint's capture is an input too: its new rows make ingest (and what follows) stale
        deps=(
            "stillroom/ingest",
            "stillroom/content.py",
            "stillroom/images.py",
            DATA_LAYER,
            "stillroom/schema.py",
            "${ingest.logs}",
            "${ingest.capture}",
        ),
        outs=("data/records.jsonl", "data/quarantine.jsonl", "data/raw/blobs"),  # blobs: the logged images' bytes
        params=("ingest",),
        # the sample logs hold malformed lines on purpose; a script without the flag learns of quarantine by exit 3
        cmd="stillroom ingest --quarantine-ok",
        cli=False,  # `stillroom ingest` has options of its own (--format, --since, --until; see cli.py)
    ),
    Stage(
        "detect",
        "stillroom.detect:run",
        "Find repeated tasks in the records; write task cards and the task index to data/tasks/.",
        deps=(*DETECT_CODE, DATA_LAYER, "data/records.jsonl"),
        # history.json (task ids merged, split or retired) must survive re-runs
        outs=({"data/tasks": {"persist": True}},),
        params=("detect",),
    ),
    Stage(
        "synthesize",
        "stillroom.synthesize:run",
        "Build train/validation/test sets per task from the teacher's answers.",
        deps=(
            "stillroom/synthesize.py",
            DATA_LAYER,
            "stillroom/teachers.py",
            "stillroom/answers.py",
            "data/records.jsonl",
            "data/tasks",
        ),
        outs=("data/datasets",),
        params=("synthesize",),
        retries=2,
    ),
    Stage(
        "train",
        "stillroom.train:run",
        "Train one student per task into data/models/.",
        # data/raw/blobs: the images dataset rows name, read by an image student
        deps=(
            "stillroom/train.py", DATA_LAYER, PER_TASK, *TRAINING_CODE, "data/datasets", "data/raw/blobs", "data/tasks"
        ),
        outs=("data/models",),
        params=("train",),
        per_task=True,
    ),
    Stage(
        "evaluate",
        "stillroom.evaluate:run",
        "Score each student against the teacher on the held-out test split.",
        deps=(
            "stillroom/evaluate.py",
            DATA_LAYER,
            PER_TASK,
            "stillroom/probe.py",
            "stillroom/plots.py",
            "stillroom/metrics",
            *INFERENCE_CODE,
            "stillroom/students/classifier_train.py",  # the TF-IDF baseline is fitted here
            "data/models",
            "data/datasets",
            "data/raw/blobs",  # the images the test rows name
            "data/records.jsonl",  # the teacher's logged latency
            "data/tasks",
        ),
        outs=("data/reports",),
        params=("evaluate", "register.gate", "train.seed", "train.classifier", "train.lm.base_model"),
        per_task=True,
    ),
    Stage(
        "register",
        "stillroom.register:run",
        "Log and register students in MLflow; champion only past the gate.",
        deps=(
            "stillroom/register.py",
            DATA_LAYER,
            PER_TASK,
            "stillroom/mlflow_model.py",
            "stillroom/metrics",  # the gate (shared with evaluate) and the champion comparison
            "stillroom/requirements.py",  # what the registered model declares comes from running its code
            *INFERENCE_CODE,
            "data/models",
            "data/reports",
            "data/datasets",
        ),
        outs=({"data/registry.json": {"cache": False}},),
        params=("register", "evaluate.max_test_examples"),
        metrics=False,
        per_task=True,
    ),
    Stage(
        "version",
        "stillroom.versioning:run",
        "Record all stage outputs in DVC (dvc commit), as after `dvc repro`.",
        metrics=False,
        in_dvc=False,
    ),
]


def _plugins() -> list[Stage]:
    found = []
    for entry in entry_points(group="stillroom.stages"):
        stage = entry.load()
        if not isinstance(stage, Stage):
            raise TypeError(f"entry point {entry.name} in stillroom.stages is not a stillroom.stages.Stage")
        found.append(stage)
    return found


def all_stages() -> list[Stage]:
    """Built-in stages in pipeline order, then plugins' (before `version`, which records everything)."""
    plugins = _plugins()
    if not plugins:
        return list(STAGES)
    return [s for s in STAGES if s.name != "version"] + plugins + [s for s in STAGES if s.name == "version"]


def flow_stages() -> list[Stage]:
    return [stage for stage in all_stages() if stage.in_flow]


def get(name: str) -> Stage:
    for stage in all_stages():
        if stage.name == name:
            return stage
    raise KeyError(f"no stage {name!r}; stages: {[s.name for s in all_stages()]}")


def dvc_yaml() -> str:
    """dvc.yaml as the registry says it must be."""
    stages: dict[str, dict] = {}
    for stage in all_stages():
        if not stage.in_dvc:
            continue
        body: dict[str, Any] = {"cmd": stage.cmd or f"stillroom {stage.command_name}"}
        if stage.deps:
            body["deps"] = list(dict.fromkeys(stage.deps))
        if stage.params:
            body["params"] = list(stage.params)
        if stage.outs:
            body["outs"] = list(stage.outs)
        if stage.metrics:
            body["metrics"] = [{f"metrics/{stage.name}.json": {"cache": False}}]
        stages[stage.name] = body
    header = (
        "# Generated from stillroom/stages.py by `stillroom stages --write-dvc`: edit the registry, not this file.\n"
        "# `dvc repro` re-runs a stage when its code, inputs or the params.yaml sections it lists change.\n"
    )
    return header + yaml.safe_dump({"stages": stages}, sort_keys=False, width=120)
