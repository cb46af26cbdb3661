"""The big model whose answers the student learns, behind one interface.

`replay` answers from the logs (offline, free); `openai` asks any OpenAI-compatible endpoint
through the official client (OpenAI, Azure, OpenRouter, Ollama, vLLM, llama.cpp, LM Studio);
`anthropic` asks the Messages API through the official client. Remote teachers:

- answer many requests at once (`answer_many`), `concurrency` calls in flight, under optional
  request and token rate limits;
- retry with the clients' own mechanism (exponential backoff with jitter, `Retry-After`), so a
  retried call is one call in the budget and is paid once;
- write each answer to a content-addressed SQLite cache (WAL) the moment it arrives, so a run
  killed at any point resumes without repeating a finished call, and a re-run costs nothing;
- stop cleanly at the budget in calls or money (`max_calls`, `max_usd` at the detect price
  table): what was answered is kept, the rest is marked `budget` and the summary says so.

The API key is read from the environment variable the params name and handed to the client;
it is never part of a cache key, a log line, an error message or a stat.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from stillroom.answers import estimate_tokens
from stillroom.config import Price, TeacherParams, price_of
from stillroom.content import wire_message
from stillroom.data import open_sqlite
from stillroom.schema import LogRecord, Message


class TeacherError(RuntimeError):
    """The teacher could not answer (after the client's retries) or the budget is spent."""


class BudgetExceeded(TeacherError):
    pass


def request_key(model: str, prompt: Sequence[Message], response_format: dict | None) -> str:
    """What identifies a request: model, messages and response_format (never a key or a header)."""
    body = {
        "model": model,
        # a text-only turn keys as {role, content}, as it did before turns had images; an image by its blob
        "messages": [m.model_dump(exclude_defaults=True) for m in prompt],
        "response_format": response_format,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class TeacherRequest:
    prompt: Sequence[Message]
    response_format: dict | None = None


@dataclass
class TeacherAnswer:
    """One request's outcome: `text`, or why there is none (`error`, or `budget` spent before it was asked)."""

    text: str | None = None
    error: str | None = None
    budget: bool = False
    cached: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0


class AnswerCache:
    """A SQLite table of answers keyed by request: safe across runs, threads and processes (WAL)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._db = open_sqlite(path)
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS answers (key TEXT PRIMARY KEY, answer TEXT NOT NULL,"
            " input_tokens INTEGER NOT NULL DEFAULT 0, output_tokens INTEGER NOT NULL DEFAULT 0)"
        )
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(answers)")}
        for column in ("input_tokens", "output_tokens"):
            if column not in columns:  # a cache written before usage was kept
                with contextlib.suppress(sqlite3.OperationalError):  # another process added it first
                    self._db.execute(f"ALTER TABLE answers ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0")
        self._db.commit()

    def get(self, key: str) -> tuple[str, int, int] | None:
        with self._lock:
            row = self._db.execute(
                "SELECT answer, input_tokens, output_tokens FROM answers WHERE key = ?", (key,)
            ).fetchone()
        return (row[0], int(row[1]), int(row[2])) if row else None

    def put(self, key: str, answer: str, input_tokens: int = 0, output_tokens: int = 0) -> None:
        """Committed at once: a run killed after this line never pays for this answer again."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO answers (key, answer, input_tokens, output_tokens) VALUES (?, ?, ?, ?)",
                (key, answer, input_tokens, output_tokens),
            )
            self._db.commit()

    def keys(self) -> set[str]:
        with self._lock:
            return {row[0] for row in self._db.execute("SELECT key FROM answers")}

    @classmethod
    def stored_keys(cls, path: Path) -> set[str]:
        """The requests a cache file holds answers to (for checks from outside a run)."""
        cache = cls(path)
        try:
            return cache.keys()
        finally:
            cache.close()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class RateLimit:
    """A token bucket: at most `per_minute` units a minute, bursting up to that many."""

    def __init__(self, per_minute: int):
        self.capacity = float(per_minute)
        self.available = float(per_minute)
        self.rate = per_minute / 60.0
        self.updated = time.monotonic()
        self._lock = threading.Lock()

    def acquire(self, units: float = 1.0) -> None:
        units = min(units, self.capacity)
        while True:
            with self._lock:
                now = time.monotonic()
                self.available = min(self.capacity, self.available + (now - self.updated) * self.rate)
                self.updated = now
                if self.available >= units:
                    self.available -= units
                    return
                wait = (units - self.available) / self.rate
            time.sleep(wait)


class Budget:
    """Calls and money for one run. A call is reserved at its worst-case cost before it is sent and
    settled at its real cost after, so concurrent calls can never spend past the cap; a call that
    does not fit waits for the calls in flight to settle before it is turned away."""

    def __init__(self, max_calls: int, max_usd: float | None):
        self.max_calls = max_calls
        self.max_usd = max_usd
        self.calls = 0
        self.spent_usd = 0.0
        self._reserved_usd = 0.0
        self._in_flight = 0
        self._settled = threading.Condition()

    def reserve(self, worst_usd: float) -> bool:
        with self._settled:
            while True:
                if self.calls >= self.max_calls:
                    return False
                if self.max_usd is None or self.spent_usd + self._reserved_usd + worst_usd <= self.max_usd:
                    self.calls += 1
                    self._in_flight += 1
                    self._reserved_usd += worst_usd
                    return True
                if self._in_flight == 0:  # nothing in flight will give money back
                    return False
                self._settled.wait()

    def settle(self, worst_usd: float, actual_usd: float) -> None:
        with self._settled:
            self._in_flight -= 1
            self._reserved_usd -= worst_usd
            self.spent_usd += actual_usd
            self._settled.notify_all()


class Teacher(ABC):
    """Answers prompts the way the big model would; counts what it cost."""

    name: str

    def __init__(self) -> None:
        self.calls = 0
        self.cache_hits = 0
        self.failures = 0
        self.budget_stops = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0

    @abstractmethod
    def answer_many(self, requests: Sequence[TeacherRequest], progress: bool = False) -> list[TeacherAnswer]:
        """One outcome per request, in the same order."""

    def answer(self, prompt: Sequence[Message], response_format: dict | None = None) -> str:
        outcome = self.answer_many([TeacherRequest(prompt, response_format)])[0]
        if outcome.budget:
            raise BudgetExceeded(outcome.error or "the teacher budget is spent")
        if outcome.text is None:
            raise TeacherError(outcome.error or "the teacher gave no answer")
        return outcome.text

    def stats(self) -> dict:
        return {
            "teacher": self.name,
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "failures": self.failures,
            "budget_stops": self.budget_stops,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }

    def close(self) -> None:  # noqa: B027 - most teachers hold nothing to release
        """Release connections and files."""


class ReplayTeacher(Teacher):
    """The answers already in the logs: the offline default, costs nothing."""

    name = "replay"

    def __init__(self, records: Sequence[LogRecord]):
        super().__init__()
        self._answers: dict[str, str] = {}
        for record in records:
            # The latest answer wins when one request was logged more than once.
            self._answers[request_key("", record.prompt(), record.response_format)] = record.response_text

    def answer_many(self, requests: Sequence[TeacherRequest], progress: bool = False) -> list[TeacherAnswer]:
        outcomes = []
        for request in requests:
            text = self._answers.get(request_key("", request.prompt, request.response_format))
            if text is None:
                self.failures += 1
                outcomes.append(TeacherAnswer(error="replay teacher: this request is not in the logs"))
            else:
                self.cache_hits += 1
                outcomes.append(TeacherAnswer(text=text, cached=True))
        return outcomes


# What a remote call returns: the answer and the billed input and output tokens.
Completion = tuple[str, int, int]


class RemoteTeacher(Teacher):
    """A model behind an API: cached, concurrent, rate-limited and budgeted. Subclasses make one call."""

    def __init__(self, params: TeacherParams, cache_dir: Path, prices: dict[str, Price] | None = None):
        super().__init__()
        self.params = params
        self.cache = AnswerCache(cache_dir / "answers.sqlite")
        self.price = price_of(params.model, prices)[1] if prices else Price(input=0.0, output=0.0)
        self.budget = Budget(params.max_calls, params.max_usd)
        self._requests = RateLimit(params.requests_per_minute) if params.requests_per_minute else None
        self._tokens = RateLimit(params.tokens_per_minute) if params.tokens_per_minute else None
        self._stats_lock = threading.Lock()

    def _api_key(self) -> str:
        # Local servers (vLLM, Ollama, the tests' fake) need no key, but the clients insist on one.
        return os.environ.get(self.params.api_key_env) or "no-key"

    @abstractmethod
    def _complete(self, prompt: Sequence[Message], response_format: dict | None) -> Completion:
        """One call (the client retries on its own); raises the client's errors."""

    def _cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.price.input + output_tokens * self.price.output) / 1e6

    def _ask(self, key: str, request: TeacherRequest) -> TeacherAnswer:
        prompt_tokens = estimate_tokens("".join(m.content for m in request.prompt))
        worst = self._cost(prompt_tokens, self.params.max_tokens)
        if not self.budget.reserve(worst):
            cap = f"{self.params.max_calls} calls" + (f" / ${self.params.max_usd:g}" if self.params.max_usd else "")
            return TeacherAnswer(error=f"teacher budget of {cap} is spent", budget=True)
        actual = 0.0
        try:
            if self._requests:
                self._requests.acquire()
            if self._tokens:
                self._tokens.acquire(prompt_tokens + self.params.max_tokens)
            text, input_tokens, output_tokens = self._complete(request.prompt, request.response_format)
            if not text.strip():
                raise TeacherError("the teacher gave an empty answer")
            actual = self._cost(input_tokens, output_tokens)
            self.cache.put(key, text, input_tokens, output_tokens)
            return TeacherAnswer(
                text=text, input_tokens=input_tokens, output_tokens=output_tokens, cost_usd=actual
            )
        except Exception as error:  # every client error becomes this request's outcome, never the run's end
            return TeacherAnswer(error=f"teacher at {self.params.base_url} failed: {_describe(error)}")
        finally:
            self.budget.settle(worst, actual)

    def answer_many(self, requests: Sequence[TeacherRequest], progress: bool = False) -> list[TeacherAnswer]:
        outcomes: list[TeacherAnswer | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}  # one call per distinct request, however often it is asked
        for i, request in enumerate(requests):
            key = request_key(self.params.model, request.prompt, request.response_format)
            cached = self.cache.get(key)
            if cached is not None:
                text, input_tokens, output_tokens = cached
                outcomes[i] = TeacherAnswer(text, cached=True, input_tokens=input_tokens, output_tokens=output_tokens)
            else:
                pending.setdefault(key, []).append(i)
        bar = tqdm(total=len(pending), desc=f"teacher {self.params.model}", unit="call", disable=not progress)
        with ThreadPoolExecutor(max_workers=self.params.concurrency) as pool:
            futures = {pool.submit(self._ask, key, requests[idx[0]]): key for key, idx in pending.items()}
            for future in as_completed(futures):
                outcome = future.result()
                for i in pending[futures[future]]:
                    outcomes[i] = outcome
                bar.update(1)
        bar.close()
        done = [o for o in outcomes if o is not None]
        self._count(done, asked=len(pending))
        return done

    def _count(self, outcomes: Sequence[TeacherAnswer], asked: int) -> None:
        with self._stats_lock:
            self.cache_hits += sum(o.cached for o in outcomes)
            fresh = [o for o in outcomes if not o.cached and o.text is not None]
            self.calls = self.budget.calls
            self.failures += sum(o.text is None and not o.budget for o in outcomes)
            self.budget_stops += sum(o.budget for o in outcomes)
            self.input_tokens += sum(o.input_tokens for o in fresh)
            self.output_tokens += sum(o.output_tokens for o in fresh)
            self.cost_usd = self.budget.spent_usd

    def close(self) -> None:
        self.cache.close()


def _describe(error: Exception) -> str:
    """The error's kind and status, never its request (which could carry a header)."""
    status = getattr(error, "status_code", None)
    message = str(getattr(error, "message", "") or error)
    return f"{type(error).__name__}" + (f" (HTTP {status})" if status else "") + f": {message[:200]}"


class OpenAITeacher(RemoteTeacher):
    """Any OpenAI-compatible chat-completions endpoint, through the official `openai` client."""

    name = "openai"

    def __init__(self, params: TeacherParams, cache_dir: Path, prices: dict[str, Price] | None = None):
        super().__init__(params, cache_dir, prices)
        import openai

        self._client = openai.OpenAI(
            api_key=self._api_key(), base_url=params.base_url, max_retries=params.retries, timeout=params.timeout_s
        )

    def _complete(self, prompt: Sequence[Message], response_format: dict | None) -> Completion:
        extra = {"response_format": response_format} if response_format else {}
        completion = self._client.chat.completions.create(
            model=self.params.model,
            messages=[wire_message(m) for m in prompt],
            temperature=0,
            max_tokens=self.params.max_tokens,
            **extra,
        )
        if not completion.choices or not isinstance(completion.choices[0].message.content, str):
            raise TeacherError("the teacher answered without choices[0].message.content")
        usage = completion.usage
        return (
            completion.choices[0].message.content,
            usage.prompt_tokens if usage else 0,
            usage.completion_tokens if usage else 0,
        )

    def close(self) -> None:
        self._client.close()
        super().close()


class AnthropicTeacher(RemoteTeacher):
    """Claude through the official `anthropic` client (Messages API)."""

    name = "anthropic"

    def __init__(self, params: TeacherParams, cache_dir: Path, prices: dict[str, Price] | None = None):
        super().__init__(params, cache_dir, prices)
        import anthropic

        self._client = anthropic.Anthropic(
            api_key=self._api_key(), base_url=params.base_url, max_retries=params.retries, timeout=params.timeout_s
        )

    def _complete(self, prompt: Sequence[Message], response_format: dict | None) -> Completion:
        system = "\n\n".join(m.content for m in prompt if m.role in ("system", "developer"))
        turns = [wire_message(m, "anthropic") for m in prompt if m.role not in ("system", "developer")]
        extra = {"system": system} if system else {}
        # This SDK's Messages API takes no temperature: the model's default sampling answers.
        message = self._client.messages.create(
            model=self.params.model, max_tokens=self.params.max_tokens, messages=turns, **extra
        )
        text = "".join(block.text for block in message.content if getattr(block, "type", "") == "text")
        return text, message.usage.input_tokens, message.usage.output_tokens

    def close(self) -> None:
        self._client.close()
        super().close()


TEACHERS: dict[str, Callable[..., RemoteTeacher]] = {"openai": OpenAITeacher, "anthropic": AnthropicTeacher}


def make_teacher(
    params: TeacherParams, records: Sequence[LogRecord], cache_dir: Path | None, prices: dict[str, Price] | None = None
) -> Teacher:
    if params.backend == "replay":
        return ReplayTeacher(records)
    if cache_dir is None:
        raise ValueError(f"the {params.backend} teacher needs a cache folder (synthesize.cache)")
    return TEACHERS[params.backend](params, cache_dir, prices)
