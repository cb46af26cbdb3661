"""The big model whose answers the student learns, behind one interface.

`replay` answers from the logs (offline, free); `openai` asks any OpenAI-compatible
endpoint. Both go through an on-disk cache keyed by the exact request, so a re-run of
the pipeline never pays twice for the same answer, and a budget caps new calls.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path

import httpx

from stillroom.config import TeacherParams
from stillroom.schema import LogRecord, Message


class TeacherError(RuntimeError):
    """The teacher could not answer (after retries) or the budget is spent."""


class BudgetExceeded(TeacherError):
    pass


def request_key(model: str, prompt: Sequence[Message], response_format: dict | None) -> str:
    body = {
        "model": model,
        "messages": [m.model_dump() for m in prompt],
        "response_format": response_format,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class AnswerCache:
    """A SQLite table of answers: safe to share between runs and processes."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, timeout=30)
        self._db.execute("CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        row = self._db.execute("SELECT answer FROM answers WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, answer: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers (key, answer) VALUES (?, ?)", (key, answer))
        self._db.commit()

    def close(self) -> None:
        self._db.close()


class Teacher(ABC):
    """Answers a prompt the way the big model would; counts what it cost."""

    name: str

    def __init__(self) -> None:
        self.calls = 0
        self.cache_hits = 0

    @abstractmethod
    def answer(self, prompt: Sequence[Message], response_format: dict | None = None) -> str: ...

    def stats(self) -> dict:
        return {"teacher": self.name, "calls": self.calls, "cache_hits": self.cache_hits}


class ReplayTeacher(Teacher):
    """The answers already in the logs: the offline default, costs nothing."""

    name = "replay"

    def __init__(self, records: Sequence[LogRecord]):
        super().__init__()
        self._answers: dict[str, str] = {}
        for record in records:
            # The latest answer wins when one request was logged more than once.
            self._answers[request_key("", record.prompt(), record.response_format)] = record.response_text

    def answer(self, prompt: Sequence[Message], response_format: dict | None = None) -> str:
        key = request_key("", prompt, response_format)
        if key not in self._answers:
            raise TeacherError("replay teacher: this request is not in the logs")
        self.cache_hits += 1
        return self._answers[key]


class OpenAITeacher(Teacher):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, a proxy, a local server)."""

    name = "openai"

    def __init__(self, params: TeacherParams, cache_dir: Path):
        super().__init__()
        self.params = params
        self.cache = AnswerCache(cache_dir / "answers.sqlite")
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(params.api_key_env, "")
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self._client = httpx.Client(base_url=params.base_url.rstrip("/"), headers=headers, timeout=params.timeout_s)

    def answer(self, prompt: Sequence[Message], response_format: dict | None = None) -> str:
        key = request_key(self.params.model, prompt, response_format)
        cached = self.cache.get(key)
        if cached is not None:
            self.cache_hits += 1
            return cached
        if self.calls >= self.params.max_calls:
            raise BudgetExceeded(f"teacher budget of {self.params.max_calls} calls is spent")
        body: dict = {
            "model": self.params.model,
            "messages": [m.model_dump() for m in prompt],
            "temperature": 0,
        }
        if response_format:
            body["response_format"] = response_format
        answer = self._post(body)
        self.cache.put(key, answer)
        return answer

    def _post(self, body: dict) -> str:
        delay = 1.0
        last_error = ""
        for attempt in range(self.params.retries + 1):
            self.calls += 1
            try:
                response = self._client.post("/chat/completions", json=body)
            except httpx.TransportError as err:
                last_error = f"{type(err).__name__}: {err}"
            else:
                if response.status_code == 200:
                    return _completion_text(response.json())
                last_error = f"HTTP {response.status_code}: {response.text[:200]}"
                if response.status_code not in (408, 409, 429) and response.status_code < 500:
                    break  # a client error does not get better by asking again
            if attempt < self.params.retries:
                time.sleep(delay)
                delay *= 2
        raise TeacherError(f"teacher at {self.params.base_url} failed: {last_error}")

    def close(self) -> None:
        self._client.close()
        self.cache.close()


def _completion_text(payload: dict) -> str:
    try:
        content = payload["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError) as err:
        raise TeacherError(f"teacher answered without choices[0].message.content: {str(payload)[:200]}") from err
    if not isinstance(content, str) or not content.strip():
        raise TeacherError("teacher gave an empty answer")
    return content


def make_teacher(params: TeacherParams, records: Sequence[LogRecord], cache_dir: Path) -> Teacher:
    if params.backend == "replay":
        return ReplayTeacher(records)
    return OpenAITeacher(params, cache_dir)  # the only other backend TeacherParams allows
