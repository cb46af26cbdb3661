"""The types that pass between stages, defined once: log record, task card, dataset row, prediction.

The files holding them, and their readers and writers, are in `stillroom.data`.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field, PrivateAttr

OutputType = Literal["label", "text"]
# What the answers look like, finer than OutputType (which picks the student kind).
OutputFormat = Literal["label", "json", "short_text", "long_text"]
Rung = Literal["classifier", "image_classifier", "span", "lm", "distill"]  # the training ladder, cheapest first
Decision = Literal["distill_now", "collect_more", "not_a_fit"]
DetectedBy = Literal["structure", "embedding"]
Split = Literal["train", "validation", "test"]
SPLITS: tuple[Split, ...] = ("train", "validation", "test")
Inputs = Literal["text", "image+text"]  # what a task's calls carry
IMAGE_PLACEHOLDER = "<IMAGE_{}>"  # the n-th image of a turn, in its text: shaped like a scrub placeholder, so a slot


class ImageRef(BaseModel):
    """An image part of a turn: where its bytes are stored and what Pillow read from them, never
    the bytes themselves (records stay small and text-only). A URL-only image has no blob and no
    Pillow facts: ingest never fetches a URL, so `fetched` is always False."""

    sha256: str | None = Field(None, description="the stored blob, data/raw/blobs/<sha256>; None: URL or file id only")
    url: str | None = Field(None, description="the http(s) URL the image was sent as, when it was not sent as bytes")
    file_id: str | None = Field(None, description="a provider file id (OpenAI, Anthropic Files API), when sent so")
    fetched: bool = Field(False, description="always False: a URL is referenced, never downloaded")
    media_type: str | None = None
    bytes: int | None = Field(None, description="size of the image as sent")
    width: int | None = None
    height: int | None = None
    mode: str | None = Field(None, description="Pillow's mode: RGB, RGBA, P, L, ...")
    has_alpha: bool | None = Field(None, description="an alpha channel or a transparent colour")
    alpha_used: bool | None = Field(None, description="some pixel of the first frame is not opaque")
    frames: int | None = None
    animated: bool | None = None
    exif: bool | None = Field(None, description="EXIF present")
    camera_make: str | None = None
    camera_model: str | None = None
    location_removed: int = Field(0, description="GPS and other location tags taken out of the stored blob")
    _body: bytes | None = PrivateAttr(None)  # the bytes, only between parsing and the blob store

    @property
    def body(self) -> bytes | None:
        """The image's bytes while ingest holds them; never serialized."""
        return self._body

    @body.setter
    def body(self, value: bytes | None) -> None:
        self._body = value


class Message(BaseModel):
    role: str
    content: str
    images: list[ImageRef] = Field(
        default_factory=list, description="the turn's images, in order: the n-th is <IMAGE_n> in content"
    )

    @property
    def identity(self) -> str:
        """What tells this turn from another: its text, and its images by blob (else URL or file id). A text-only
        turn is its text, so ids and splits derived from it stay what they were before images were read."""
        if not self.images:
            return self.content
        return "\x1f".join([self.content, *(str(ref.sha256 or ref.url or ref.file_id) for ref in self.images)])


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0


class LogRecord(BaseModel):
    """One LLM call, whatever log format it came from."""

    id: str
    timestamp: datetime | None = None
    provider: str = "openai"
    model: str = ""
    system_prompt: str = ""
    messages: list[Message] = Field(default_factory=list, description="the request's non-system turns")
    response_format: dict | None = None
    response_text: str = ""
    usage: Usage = Field(default_factory=Usage)
    latency_ms: float | None = Field(None, description="wall time of the call, when the logger recorded it")
    source: str = Field("", description="file:line the record was read from")
    extra: dict = Field(
        default_factory=dict, description="what the log carried that no column holds (temperature, tools, metadata)"
    )

    @property
    def user_text(self) -> str:
        """The last user turn: the part of the request that varies between calls of one task."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.content
        return ""

    @property
    def user_input(self) -> str:
        """The last user turn's identity: its text and its images (two calls asking one question about two
        photos are two inputs, not a repeated one)."""
        for message in reversed(self.messages):
            if message.role == "user":
                return message.identity
        return ""

    def prompt(self) -> list[Message]:
        """The request as the model saw it, system prompt first."""
        system = [Message(role="system", content=self.system_prompt)] if self.system_prompt else []
        return system + list(self.messages)


class Example(BaseModel):
    input: str
    output: str
    why: str = Field("", description="for an edge case: what makes it one")


class Distillability(BaseModel):
    """Whether a student for the task is worth training now, and why."""

    score: float = Field(ge=0, le=1)
    decision: Decision
    reasons: list[str] = Field(default_factory=list)
    factors: dict[str, float] = Field(default_factory=dict, description="each factor's score in [0, 1]")
    break_even_days: float | None = Field(None, description="days of current spend that pay for training")


class TaskCard(BaseModel):
    """What detect found: one repeated task and what a student for it must produce."""

    id: str
    name: str
    count: int
    output_type: OutputType
    system_prompts: list[str] = Field(default_factory=list, description="every wording seen, most used first")
    labels: list[str] = Field(default_factory=list)
    label_distribution: dict[str, int] = Field(default_factory=dict)
    examples: list[str] = Field(default_factory=list, description="a few user turns, shortened")
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    models: dict[str, int] = Field(default_factory=dict, description="teacher models seen, with call counts")
    detected_by: DetectedBy = "structure"
    output_format: OutputFormat | None = Field(None, description="None on cards from before formats were told apart")
    json_schema: dict | None = Field(None, description="JSON Schema inferred from the answers, for json output")
    templates: list[str] = Field(default_factory=list, description="user-turn templates mined, most used first")
    calls_per_day: float = 0.0
    input_tokens_p50: int = 0
    input_tokens_p95: int = 0
    output_tokens_p50: int = 0
    output_tokens_p95: int = 0
    user_tokens_p50: int = Field(0, description="the user turn alone (what a classifier reads), ~4 characters a token")
    user_tokens_p95: int = 0
    monthly_spend_usd: float = Field(0.0, description="spend over the observed days, scaled to 30")
    prices: dict[str, dict[str, float | str]] = Field(
        default_factory=dict, description="per model: $ per 1M input/output tokens and the price-table entry used"
    )
    representative: list[Example] = Field(default_factory=list)
    edge_cases: list[Example] = Field(default_factory=list)
    format_consistency: float = Field(1.0, description="share of answers in the task's output format")
    repeated_inputs: int = Field(0, description="distinct inputs answered more than once")
    self_consistency: float | None = Field(
        None, description="share of answers to repeated inputs that match that input's most common answer"
    )
    inputs: Inputs = Field("text", description="image+text when the task's calls carry images")
    distillability: Distillability | None = None

    @property
    def answer_format(self) -> OutputFormat:
        """output_format, with a fallback for cards written before formats were told apart."""
        return self.output_format or ("label" if self.output_type == "label" else "short_text")


class DatasetRow(BaseModel):
    """One training or evaluation example for a task's student; target is the teacher's answer."""

    id: str
    task_id: str
    split: Split
    prompt: list[Message]
    input_text: str
    target: str
    source: Literal["logged", "teacher", "generated"] = Field(
        "logged", description="logged answer, a live teacher's answer, or an input the teacher wrote (train only)"
    )


class Prediction(BaseModel):
    text: str
    confidence: float = Field(description="0..1; the router sends answers below the task's threshold to the teacher")
    valid: bool = Field(True, description="in the label set, or JSON that matches the task's schema")


def stable_id(*parts: str, prefix: str = "", length: int = 12) -> str:
    """A short id that depends only on the content, so re-runs agree."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:length]
    return f"{prefix}{digest}"
