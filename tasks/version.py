"""Prefect task: record every stage output in DVC (dvc.lock + cache), as `dvc repro` would have."""

from stillroom.versioning import run
from tasks._stage import stage_task

version = stage_task("version", run)
