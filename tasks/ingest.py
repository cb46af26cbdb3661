"""Prefect task: read the LLM call logs into data/records.jsonl."""

from stillroom.ingest import run
from tasks._stage import stage_task

ingest = stage_task("ingest", run)
