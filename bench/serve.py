"""Serving benchmark: the real `stillroom serve` with the registered students and a local fake teacher (500 ms).

It starts the server in its own process on a project where `make demo` has run, replays the
held-out test inputs of every task that has a servable student through the official `openai`
client, and reports:

- student_p50_ms / student_p99_ms: the classifier path end to end over HTTP (warm); per task also
  server_p50_ms (the request inside the server) and model_p50_ms (the student's call), from the capture log;
- lm_student_p50_ms: the LM path, when an LM student serves;
- teacher_overhead_p50_ms / _p99_ms: time added over calling the fake teacher directly;
- rps_c8: classifier path at concurrency 8;
- local_share / local_agreement: share answered locally and its agreement with the held-out teacher answers
  (top level: the BBC topic task; per task under `tasks`);
- cold_load_s: per student kind; capture_rows_match: the capture log holds exactly one row per request; errors.

    python bench/serve.py [--root .] [--json]

Targets on a 2-core CPU: classifier p50 <= 15 ms; teacher overhead p50 <= 5 ms, p99 <= 25 ms;
BBC local_share >= 0.85 at local_agreement >= 0.99; classifier cold load <= 1 s; capture rows match; 0 errors.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import openai
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from stillroom.config import Params, load_params  # noqa: E402
from stillroom.content import wire_message  # noqa: E402
from stillroom.data import Layout, attach_image_bytes, read_jsonl  # noqa: E402
from stillroom.detect.matcher import TaskMatcher  # noqa: E402
from stillroom.metrics.scoring import per_example_agreement  # noqa: E402
from stillroom.mlflow_model import registry_client  # noqa: E402
from stillroom.schema import DatasetRow, LogRecord  # noqa: E402
from stillroom.serve.registry import Registry, Servable  # noqa: E402
from tests.fake_teacher import FakeTeacher  # noqa: E402
from tests.servers import free_port, stop, wait_until_healthy  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serve.json"
TEACHER_LATENCY_S = 0.5
OVERHEAD_SAMPLES = 30
RPS_REQUESTS = 400


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def servable_tasks(params: Params, layout: Layout) -> list[Servable]:
    tasks = TaskMatcher.load(layout.task_index).tasks
    servable, _ = Registry(registry_client(params, layout), params.serve).servable(tasks, set())
    return sorted(servable.values(), key=lambda s: s.task)


def request_bodies(layout: Layout, servable: Servable, limit: int) -> list[tuple[dict, str]]:
    """The task's held-out test inputs as the client sent them (with the logged response_format), and the
    teacher's answers to them."""
    formats = {}
    if layout.records.exists():
        for record in read_jsonl(layout.records, LogRecord):
            formats[(record.system_prompt, record.user_text)] = record.response_format
    out = []
    rows = list(read_jsonl(layout.dataset(servable.task_id, "test"), DatasetRow))[:limit]
    attach_image_bytes((row.prompt for row in rows), layout.blobs)  # images go out as data URLs, as a client's do
    for row in rows:
        system = next((m.content for m in row.prompt if m.role == "system"), "")
        user = next((m.content for m in reversed(row.prompt) if m.role == "user"), "")
        body: dict = {"model": "gpt-4o-mini", "messages": [wire_message(m) for m in row.prompt]}
        if formats.get((system, user)):
            body["response_format"] = formats[(system, user)]
        out.append((body, row.target))
    return out


class Bench:
    def __init__(self, url: str, teacher_url: str):
        self.client = openai.OpenAI(base_url=url, api_key="bench", max_retries=0, timeout=60)
        self.direct = openai.OpenAI(base_url=teacher_url, api_key="bench", max_retries=0, timeout=60)
        self.request_ids: list[str] = []
        self.errors: list[str] = []

    def send(self, body: dict) -> dict:
        """One request through the server: latency, route and answer, or the error."""
        started = time.perf_counter()
        try:
            raw = self.client.chat.completions.with_raw_response.create(**body)
        except openai.APIStatusError as error:
            self.request_ids.append(error.response.headers.get("x-request-id", ""))
            self.errors.append(f"HTTP {error.status_code}: {error.message[:200]}")
            return {"ms": None, "route": "error", "answer": None}
        except openai.APIError as error:
            self.errors.append(f"{type(error).__name__}: {error}"[:200])
            return {"ms": None, "route": "error", "answer": None}
        ms = (time.perf_counter() - started) * 1000
        self.request_ids.append(raw.headers["x-request-id"])
        answer = raw.parse().choices[0].message.content
        return {"ms": ms, "route": raw.headers["x-stillroom-route"], "answer": answer}

    def replay(self, servable: Servable, bodies: list[tuple[dict, str]]) -> dict:
        self.send(bodies[0][0])  # warm-up: loads the student (its cold load is read from /metrics)
        first = len(self.request_ids)
        results = [self.send(body) for body, _ in bodies]
        local = [
            (r["answer"], target) for r, (_, target) in zip(results, bodies, strict=True) if r["route"] == "student"
        ]
        agreement = per_example_agreement(servable.output_format, [a for a, _ in local], [t for _, t in local])  # type: ignore[arg-type]
        student_ms = [r["ms"] for r in results if r["route"] == "student"]
        return {
            "task": servable.task,
            "kind": servable.kind,
            "version": servable.label,
            "threshold": servable.threshold,
            "n": len(bodies),
            "local_share": round(len(local) / len(bodies), 4),
            "local_agreement": round(float(np.mean(agreement)), 4) if agreement else None,
            "student_p50_ms": percentile(student_ms, 50),
            "student_p99_ms": percentile(student_ms, 99),
            "student_bodies": [body for (body, _), r in zip(bodies, results, strict=True) if r["route"] == "student"],
            "request_ids": self.request_ids[first:],
        }

    def teacher_overhead(self) -> tuple[float | None, float | None]:
        """Unknown prompts straight to the fake teacher and through the server, interleaved so drift hits both."""
        direct, served = [], []
        for i in range(OVERHEAD_SAMPLES):
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"bench one-off #{i}: a poem?"}]}
            started = time.perf_counter()
            self.direct.chat.completions.create(**body)
            direct.append((time.perf_counter() - started) * 1000)
            result = self.send(body)
            if result["ms"] is not None:
                served.append(result["ms"])
        if not served:
            return None, None
        return (
            round(float(np.percentile(served, 50) - np.percentile(direct, 50)), 2),
            round(float(np.percentile(served, 99) - np.percentile(direct, 99)), 2),
        )

    def rps(self, bodies: list[dict], concurrency: int = 8) -> float | None:
        if not bodies:
            return None
        work = [bodies[i % len(bodies)] for i in range(RPS_REQUESTS)]
        started = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(self.send, work))
        return round(len(work) / (time.perf_counter() - started), 1)


def wait_until_ready(health_url: str, timeout: float) -> None:
    """Until the server has fetched every servable version and imported its libraries (`ready`), as
    a deployment's readiness probe would wait; cold loads then measure the weights alone."""
    deadline = time.monotonic() + timeout
    while not httpx.get(health_url, timeout=5).json().get("ready") and time.monotonic() < deadline:
        time.sleep(0.2)


def cold_loads(root_url: str) -> dict[str, float]:
    """Mean cold load per student kind, from the server's own /metrics."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(f"{root_url}/metrics", timeout=10).text):
        if family.name != "stillroom_student_load_seconds":
            continue
        for sample in family.samples:
            kind = sample.labels.get("kind", "?")
            if sample.name.endswith("_sum"):
                sums[kind] = sums.get(kind, 0.0) + sample.value
            elif sample.name.endswith("_count"):
                counts[kind] = counts.get(kind, 0.0) + sample.value
    return {kind: round(sums[kind] / counts[kind], 3) for kind in sums if counts.get(kind)}


def captured_rows(capture_dir: Path) -> list[dict]:
    return [
        json.loads(line)
        for path in capture_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
        if line.strip()
    ]


def capture_matches(rows: list[dict], request_ids: list[str]) -> bool:
    ids = [row["stillroom"]["request_id"] for row in rows]
    return len(ids) == len(set(ids)) and set(ids) == set(request_ids) and len(request_ids) == len(set(request_ids))


def server_split(rows: list[dict], request_ids: list[str]) -> dict[str, float | None]:
    """Where the local answers' time went for these requests (one at a time), from the server's own capture
    rows: the student's call (`model_p50_ms`) and the whole request inside the server (`server_p50_ms`).
    What the client saw beyond that is HTTP and the client library."""
    wanted = set(request_ids)
    facts = [row["stillroom"] for row in rows if row["stillroom"]["request_id"] in wanted]
    local = [f for f in facts if f.get("route") == "student"]
    return {
        "model_p50_ms": percentile([f["student_ms"] for f in local if f.get("student_ms") is not None], 50),
        "server_p50_ms": percentile([f["total_ms"] for f in local if f.get("total_ms") is not None], 50),
    }


def answers_by_input(tasks: list[tuple[Servable, list[tuple[dict, str]]]]):
    """The fake teacher answers each held-out input as the real teacher did; anything else gets a short text."""
    known = {json.dumps(body["messages"], sort_keys=True): target for _, bodies in tasks for body, target in bodies}

    def answer(messages: list[dict]) -> str:
        return known.get(json.dumps(messages, sort_keys=True), "A fine answer from the big model.")

    return answer


def run(root: Path) -> dict:
    layout = Layout(root)
    params = load_params(layout.resolve("params.yaml"))
    try:
        servable = servable_tasks(params, layout)
    except FileNotFoundError as error:
        raise SystemExit(f"bench/serve.py: {error}. Run `make demo` first.") from error
    if not servable:
        raise SystemExit(
            "bench/serve.py: no registered student may serve (no champion, no challenger whose routed "
            "share passed its gate). Run `make demo` first, then `stillroom status` shows why."
        )
    tasks = [(s, request_bodies(layout, s, params.evaluate.max_test_examples)) for s in servable]
    tasks = [(s, bodies) for s, bodies in tasks if bodies]
    with (
        tempfile.TemporaryDirectory(prefix="stillroom-bench-serve-") as scratch,
        FakeTeacher(answers_by_input(tasks), latency_s=TEACHER_LATENCY_S) as teacher,
    ):
        scratch_dir = Path(scratch)
        data = params.model_dump(mode="json", by_alias=True)
        data["serve"].update(
            {
                "upstream_base_url": teacher.base_url,
                "capture_dir": str(scratch_dir / "capture"),
                "live_stats": str(scratch_dir / "live.sqlite"),
                "shadow_rate": 0.0,
                "shadow_min_per_hour": 0,
                "reload_s": 3600,
            }
        )
        params_file = scratch_dir / "params.yaml"
        params_file.write_text(yaml.safe_dump(data))
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "stillroom.cli",
            "serve",
            "--root",
            str(root),
            "--params",
            str(params_file),
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
        log = (scratch_dir / "server.log").open("w")
        server = subprocess.Popen(
            command,
            cwd=root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "OPENAI_API_KEY": "bench-upstream-key"},
        )
        try:
            try:
                wait_until_healthy(f"http://127.0.0.1:{port}/healthz", timeout=120, process=server)
            except RuntimeError:
                log.flush()
                sys.stderr.write((scratch_dir / "server.log").read_text()[-3000:])
                raise
            wait_until_ready(f"http://127.0.0.1:{port}/healthz", timeout=120)
            bench = Bench(f"http://127.0.0.1:{port}/v1", teacher.base_url)
            per_task = [bench.replay(s, bodies) for s, bodies in tasks]
            overhead_p50, overhead_p99 = bench.teacher_overhead()
            classifier = next((t for t in per_task if t["kind"] == "classifier"), None)
            rps = bench.rps(classifier["student_bodies"]) if classifier else None
            loads = cold_loads(f"http://127.0.0.1:{port}")
            time.sleep(0.2)
            rows = captured_rows(scratch_dir / "capture")
            matches = capture_matches(rows, bench.request_ids)
        finally:
            stop(server)
            log.close()
    topic = next((t for t in per_task if "topic" in t["task"]), classifier or per_task[0])
    lm = next((t for t in per_task if t["kind"] == "lm"), None)
    for task in per_task:
        task.pop("student_bodies")
        task.update(server_split(rows, task.pop("request_ids")))
    return {
        "student_p50_ms": classifier["student_p50_ms"] if classifier else None,
        "student_p99_ms": classifier["student_p99_ms"] if classifier else None,
        "lm_student_p50_ms": lm["student_p50_ms"] if lm else None,
        "teacher_overhead_p50_ms": overhead_p50,
        "teacher_overhead_p99_ms": overhead_p99,
        "rps_c8": rps,
        "local_share": topic["local_share"],
        "local_agreement": topic["local_agreement"],
        "cold_load_s": loads,
        "capture_rows_match": matches,
        "errors": len(bench.errors),
        "error_samples": bench.errors[:5],
        "tasks": {task["task"]: task for task in per_task},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def print_table(result: dict) -> None:
    for key, value in result.items():
        if key != "tasks":
            print(f"{key:26} {value}")
    print()
    columns = (
        "task",
        "kind",
        "version",
        "n",
        "local_share",
        "local_agreement",
        "student_p50_ms",
        "student_p99_ms",
        "server_p50_ms",
        "model_p50_ms",
    )
    print("  ".join(f"{c:>16}" for c in columns))
    for task in result["tasks"].values():
        print("  ".join(f"{task[c]!s:>16}" for c in columns))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project root where `make demo` has run")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args()
    result = run(args.root.resolve())
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0 if result["errors"] == 0 and result["capture_rows_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
