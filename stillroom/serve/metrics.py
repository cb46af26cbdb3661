"""Prometheus metrics of the server (GET /metrics), in a registry of its own so two apps in one process never clash."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
LOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "stillroom_requests", "Chat completions by route and task", ["route", "task"], registry=r
        )
        self.request_seconds = Histogram(
            "stillroom_request_seconds",
            "Time in the server, end to end",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.student_seconds = Histogram(
            "stillroom_student_seconds",
            "Student answer time; cold includes loading the model",
            ["task", "version", "kind", "state"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.load_seconds = Histogram(
            "stillroom_student_load_seconds",
            "Cold load of a student (download and load)",
            ["task", "version", "kind"],
            buckets=LOAD_BUCKETS,
            registry=r,
        )
        self.teacher_seconds = Histogram(
            "stillroom_teacher_seconds",
            "Teacher call time (to the first byte, when streamed)",
            ["purpose"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.errors = Counter("stillroom_errors", "Error responses by status and code", ["status", "code"], registry=r)
        self.student_failures = Counter(
            "stillroom_student_failures",
            "Student raised or timed out (the teacher answered)",
            ["task", "kind"],
            registry=r,
        )
        self.audits = Counter(
            "stillroom_shadow_audits", "Student answers checked by the teacher", ["task", "result"], registry=r
        )
        self.live_agreement_low = Gauge(
            "stillroom_live_agreement_low",
            "Lower bound of live agreement from shadow audits",
            ["task", "version"],
            registry=r,
        )
        self.models_loaded = Gauge("stillroom_models_loaded", "Students in memory", registry=r)
        self.models_memory_mb = Gauge("stillroom_models_memory_mb", "Estimated memory of loaded students", registry=r)
        self.servable = Gauge("stillroom_servable_tasks", "Tasks with a version that may serve", registry=r)
        self.capture_rows = Counter("stillroom_capture_rows", "Rows written to the capture log", registry=r)
        self.demotions = Counter("stillroom_demotions", "Versions sent back to teacher-only", ["task"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
