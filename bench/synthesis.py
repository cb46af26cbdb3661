"""Teacher calls that scale and survive: concurrency speed-up, free re-runs, resume after a kill, budget stops.

Against the tests' local OpenAI-compatible server (real HTTP on 127.0.0.1) answering in
`--latency-ms` (200 ms, like a fast cloud model):

- `rps_c1` and `rps_c16`: answers per second with 1 and 16 calls in flight (c1 on the first
  `--c1-inputs` inputs, since 2,000 sequential calls would take ~7 minutes; c16 on all of them),
  and `speedup`, their ratio;
- `rerun_calls`: calls a second run over the same inputs makes (the cache answers);
- `resume_repeats`: finished calls asked again after the run is killed at about 50% and restarted;
- `budget_overrun`: calls past `max_calls`, with 16 in flight.

    python bench/synthesis.py [--json] [--inputs 2000] [--latency-ms 200]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stillroom.config import TeacherParams  # noqa: E402
from stillroom.schema import Message  # noqa: E402
from stillroom.teachers import AnswerCache, OpenAITeacher, TeacherRequest, request_key  # noqa: E402
from tests.fake_teacher import FakeTeacher  # noqa: E402

MODEL = "teacher-bench"
KILLED_RUN = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[4])
from bench.synthesis import label
label(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), concurrency=16)
"""


def requests(n: int) -> list[TeacherRequest]:
    return [TeacherRequest([Message(role="user", content=f"label input number {i}")]) for i in range(n)]


def label(base_url: str, cache: Path, n: int, concurrency: int, max_calls: int = 1_000_000) -> tuple[float, dict]:
    """Seconds to answer n inputs, and the teacher's stats."""
    params = TeacherParams(
        backend="openai", base_url=base_url, model=MODEL, concurrency=concurrency, max_calls=max_calls
    )
    teacher = OpenAITeacher(params, cache)
    started = time.perf_counter()
    teacher.answer_many(requests(n))
    seconds = time.perf_counter() - started
    teacher.close()
    return seconds, teacher.stats()


def resume_repeats(server: FakeTeacher, scratch: Path, n: int) -> dict:
    cache_dir = scratch / "resume"
    cache_file = cache_dir / "answers.sqlite"
    before = len(server.requests)
    args = [sys.executable, "-c", KILLED_RUN, server.base_url, str(cache_dir), str(n), str(ROOT)]
    process = subprocess.Popen(args, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and not (
        cache_file.exists() and len(AnswerCache.stored_keys(cache_file)) >= n // 2
    ):
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    finished = AnswerCache.stored_keys(cache_file)
    subprocess.run(args, cwd=ROOT, check=True, timeout=600)
    asked = Counter(body["messages"][-1]["content"] for body in server.requests[before:])
    finished_texts = [
        text for text in asked if request_key(MODEL, [Message(role="user", content=text)], None) in finished
    ]
    return {
        "killed_at_answers": len(finished),
        "resume_repeats": sum(asked[text] - 1 for text in finished_texts),
        "resumed_complete": len(AnswerCache.stored_keys(cache_file)) == n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--inputs", type=int, default=2000)
    parser.add_argument("--c1-inputs", type=int, default=200, help="inputs timed at concurrency 1")
    parser.add_argument("--latency-ms", type=float, default=200)
    parser.add_argument("--budget", type=int, default=500, help="max_calls for the budget check")
    args = parser.parse_args()

    with (
        FakeTeacher(lambda messages: "yes", latency_s=args.latency_ms / 1000) as server,
        tempfile.TemporaryDirectory(prefix="stillroom-bench-synthesis-") as tmp,
    ):
        scratch = Path(tmp)
        c1_seconds, _ = label(server.base_url, scratch / "c1", args.c1_inputs, concurrency=1)
        c16_seconds, _ = label(server.base_url, scratch / "c16", args.inputs, concurrency=16)
        before = len(server.requests)
        _, rerun = label(server.base_url, scratch / "c16", args.inputs, concurrency=16)
        rerun_calls = len(server.requests) - before
        resume = resume_repeats(server, scratch, args.inputs)
        before = len(server.requests)
        label(server.base_url, scratch / "budget", args.inputs, concurrency=16, max_calls=args.budget)
        budget_calls = len(server.requests) - before

    rps_c1, rps_c16 = args.c1_inputs / c1_seconds, args.inputs / c16_seconds
    result = {
        "inputs": args.inputs,
        "latency_ms": args.latency_ms,
        "rps_c1": round(rps_c1, 2),
        "rps_c16": round(rps_c16, 2),
        "speedup": round(rps_c16 / rps_c1, 2),
        "rerun_calls": rerun_calls,
        "rerun_cache_hits": rerun["cache_hits"],
        **resume,
        "budget": args.budget,
        "budget_calls": budget_calls,
        "budget_overrun": max(0, budget_calls - args.budget),
        "machine": f"{os.cpu_count()} cores",
        "date": time.strftime("%Y-%m-%d"),
    }
    out = ROOT / "bench" / "results" / "synthesis.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>20}  {value}")


if __name__ == "__main__":
    main()
