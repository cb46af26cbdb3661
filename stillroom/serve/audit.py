"""Shadow audits: a share of student answers is also asked of the teacher, in the background, never delaying
the response. Their agreement is live evidence; when its lower bound falls under the routed gate
(after serve.demote_min_audits audits), the task goes back to teacher-only at once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from stillroom.config import ServeParams
from stillroom.metrics.scoring import example_agreement
from stillroom.serve.capture import CaptureWriter
from stillroom.serve.live import LiveStats
from stillroom.serve.metrics import ServeMetrics
from stillroom.serve.protocol import completion_text
from stillroom.serve.registry import Servable
from stillroom.serve.upstream import Upstream, UpstreamFailure

log = logging.getLogger("stillroom.serve")
Demote = Callable[[Servable, str], Awaitable[None]]


@dataclass
class AuditJob:
    request_id: str
    servable: Servable
    body: dict
    caller: dict[str, str]
    student_text: str
    captured_body: dict | None = None  # the body as the capture log keeps it (images as blob references)


class ShadowAuditor:
    def __init__(
        self,
        settings: ServeParams,
        gate_low: float,
        stats: LiveStats,
        upstream: Upstream,
        capture: CaptureWriter,
        metrics: ServeMetrics,
        demote: Demote,
        capture_row: Callable[..., dict],
    ):
        self.settings = settings
        self.gate_low = gate_low
        self.stats = stats
        self.upstream = upstream
        self.capture = capture
        self.metrics = metrics
        self.demote = demote
        self.capture_row = capture_row
        self._hour_counts: dict[tuple[str, int], int] = {}
        self._running: set[asyncio.Task] = set()
        self._random = random.Random()

    def wanted(self, task_id: str) -> bool:
        """Every answer with probability shadow_rate, and the first shadow_min_per_hour of each task each hour."""
        hour = int(time.time() // 3600)
        seen = self._hour_counts.get((task_id, hour), 0)
        if seen >= self.settings.shadow_min_per_hour and self._random.random() >= self.settings.shadow_rate:
            return False
        if len(self._running) >= self.settings.shadow_max_inflight:
            self.metrics.audits.labels(task_id, "skipped_busy").inc()
            return False
        self._hour_counts = {k: v for k, v in self._hour_counts.items() if k[1] == hour}
        self._hour_counts[(task_id, hour)] = seen + 1
        return True

    def submit(self, job: AuditJob) -> None:
        task = asyncio.create_task(self._audit(job))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def drain(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _audit(self, job: AuditJob) -> None:
        servable = job.servable
        try:
            completion, teacher_ms = await self.upstream.complete(job.body, job.caller)
        except UpstreamFailure as failure:
            self.metrics.audits.labels(servable.task, "teacher_failed").inc()
            log.info("shadow audit of %s skipped: %s", servable.task, failure.message)
            return
        teacher_text = completion_text(completion)
        if not isinstance(teacher_text, str):
            self.metrics.audits.labels(servable.task, "no_text").inc()
            return
        agreement = example_agreement(servable.output_format, job.student_text, teacher_text)  # type: ignore[arg-type]
        self.metrics.audits.labels(servable.task, "agree" if agreement >= 1 else "disagree").inc()
        # The teacher's answer is training data like any other teacher answer.
        row = self.capture_row(
            request_id=f"{job.request_id}-shadow",
            body=job.captured_body or job.body,
            response=completion,
            latency_ms=teacher_ms,
            route="shadow",
            servable=servable,
            audit_of=job.request_id,
            agreement=agreement,
        )
        await self.capture.write(row)
        live = await asyncio.to_thread(self._record, job, agreement)
        self.metrics.live_agreement_low.labels(servable.task, servable.version).set(live["low"])
        if live["audits"] >= self.settings.demote_min_audits and live["low"] < self.gate_low:
            reason = (
                f"live agreement lower bound {live['low']:.4f} < routed gate {self.gate_low:.2f} "
                f"on {live['audits']} shadow audits (agreement {live['agreement']:.4f})"
            )
            await self.demote(servable, reason)

    def _record(self, job: AuditJob, agreement: float) -> dict:
        servable = job.servable
        self.stats.add_audit(servable.task_id, servable.task, servable.version, job.request_id, agreement)
        return self.stats.agreement(servable.task_id, servable.version, servable.output_format)  # type: ignore[arg-type]


def caller_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """What a background audit may keep of the caller's headers: only what goes upstream."""
    return {k: v for k, v in headers.items() if k in ("authorization", "openai-organization", "openai-project")}
