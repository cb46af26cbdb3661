"""Prefect task: train one student per task into data/models/."""

from stillroom.train import run
from tasks._stage import stage_task

train = stage_task("train", run)
