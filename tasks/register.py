"""Prefect task: log and register each student in MLflow, champion only past the gate."""

from stillroom.register import run
from tasks._stage import stage_task

register = stage_task("register", run)
