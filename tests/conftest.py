"""Shared test set-up: offline, no telemetry, and helpers to build log lines."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.pop("MLFLOW_TRACKING_URI", None)


def log_line(system: str | None, user: str, answer: str, index: int = 0, **request_extra) -> str:
    """One OpenAI chat-completions log line, as a capture proxy would write it."""
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    created = datetime(2026, 9, 1, tzinfo=UTC) + timedelta(minutes=index)
    return json.dumps(
        {
            "timestamp": created.isoformat(),
            "request": {"model": "gpt-4o-mini", "messages": messages, **request_extra},
            "response": {
                "id": f"chatcmpl-{index:06d}",
                "object": "chat.completion",
                "created": int(created.timestamp()),
                "model": "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}],
                "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(answer) // 4},
            },
        }
    )


@pytest.fixture
def make_log_line():
    return log_line


@pytest.fixture(autouse=True)
def _fresh_mlflow_uri(monkeypatch):
    """mlflow.set_tracking_uri writes MLFLOW_TRACKING_URI into os.environ; one test's store must not leak."""
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        monkeypatch.setenv(name, "")  # recorded, so teardown restores the variable even if a test set it
        monkeypatch.delenv(name)
