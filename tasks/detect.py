"""Prefect task: find repeated tasks and write their cards to data/tasks/."""

from stillroom.detect import run
from tasks._stage import stage_task

detect = stage_task("detect", run)
