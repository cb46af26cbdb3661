"""Prefect task: score each student against the teacher on the held-out test split."""

from stillroom.evaluate import run
from tasks._stage import stage_task

evaluate = stage_task("evaluate", run)
