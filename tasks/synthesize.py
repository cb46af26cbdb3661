"""Prefect task: build each task's dataset from the teacher; retried, since a remote teacher can fail."""

from stillroom.synthesize import run
from tasks._stage import stage_task

synthesize = stage_task("synthesize", run, retries=2, retry_delay_seconds=30)
