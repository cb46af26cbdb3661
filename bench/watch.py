"""Folder-watch benchmark: 1,000 real files dropped into a folder `stillroom watch --apply` is watching.

Self-contained: in a temporary project it builds the sample downloads log, runs the real stages
(ingest, detect, synthesize, train a TF-IDF classifier, evaluate, register it in MLflow on SQLite;
under a minute), and stands the sample's documented rule up as the teacher on 127.0.0.1 (the sample
has no live model). The watcher runs the serve app in-process, with the default `watch` params
(settle_s 2, niceness +10). One tenth of the names are already taken in their target sub-folder.

- files_per_s: files decided and acted on per second, first decision to last (settling excluded);
- wall_s: first file dropped to last decision (settle_s included);
- decisions_match_task: share of files whose acted-on answer equals calling the task directly (the
  teacher, asked with the same request the watcher sent);
- student_share: share answered by the student; collisions: moves that took a "name (n)" instead;
- overwrites: files whose bytes are gone after the run (must be 0);
- undo_restores_all: after --undo the folder holds exactly the files, names and bytes it had.

    python bench/watch.py [--files 1000] [--json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import openai
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from stillroom.config import load_params  # noqa: E402
from stillroom.data import Layout, read_cards, write_json  # noqa: E402
from stillroom.folder_watch import Outcome, TaskRequest, undo_folder, watch_folder  # noqa: E402
from stillroom.folder_watch.journal import state_dir  # noqa: E402
from stillroom.samples import (  # noqa: E402
    DOWNLOAD_SHARES,
    DOWNLOADS_PROMPT,
    _bbc_articles,
    _download_name,
    _vary_download,
    build_sample_logs,
    downloads_answer,
    downloads_folder,
)
from stillroom.stages import get  # noqa: E402
from tests.fake_teacher import FakeTeacher  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "watch.json"
TAKEN_SHARE = 0.1  # names already present in their target sub-folder
PROJECT = {
    "sample": {"bbc_articles": 0, "wnut_tweets": 0, "oneoff_prompts": 0, "downloads_files": 800, "jpeg_images": 0},
    "train": {"classifier": {"features": ["tfidf"]}},
    "evaluate": {"baselines": ["tfidf_lr"], "latency_samples": 5},
}


def train_project(root: Path, teacher_url: str) -> tuple[object, Layout, float]:
    (root / "params.yaml").write_text(yaml.safe_dump({**PROJECT, "serve": {"upstream_base_url": teacher_url}}))
    params, layout = load_params(root / "params.yaml"), Layout(root)
    started = time.perf_counter()
    build_sample_logs(params.sample, layout.resolve(params.ingest.logs))
    for stage in ("ingest", "detect", "synthesize", "train", "evaluate", "register"):
        get(stage).function()(params, layout)
    return params, layout, time.perf_counter() - started


def file_names(n: int, seed: int = 2027) -> list[str]:
    """n distinct names of the kinds the sample logs hold, drawn afresh (not the training names)."""
    rng = random.Random(seed)
    titles = [title for _, title, _ in _bbc_articles()]
    names: dict[str, None] = {}
    while len(names) < n:
        folder = rng.choices(list(DOWNLOAD_SHARES), weights=list(DOWNLOAD_SHARES.values()))[0]
        names.setdefault(_vary_download(rng, _download_name(rng, folder, titles)), None)
    return list(names)


def tree(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def content(index: int, name: str) -> bytes:
    """A few KB of bytes no other file has."""
    return (f"{index}:{name}\n".encode() * 200)[: 1024 + (index * 97) % 7000]


def wait_for_start(state: Path, timeout: float = 120) -> None:
    """Until the watcher's journal says it started (its in-process server is up), so wall_s is the folder's."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any('"event": "start"' in path.read_text() for path in state.glob("runs/*.jsonl")):
            return
        time.sleep(0.1)
    raise TimeoutError(f"the watcher did not start within {timeout} s")


def drop_while_watching(params, layout: Layout, folder: Path, task: str, names: list[str]) -> dict:
    """Start the watcher, drop every file, wait until each has an outcome; the outcomes and timings."""
    outcomes: dict[str, tuple[float, Outcome]] = {}
    stop, ready = threading.Event(), threading.Event()

    def emit(outcome: Outcome) -> None:
        outcomes[outcome.file] = (time.monotonic(), outcome)
        if len(outcomes) >= len(names):
            ready.set()

    summary: dict = {}
    watcher = threading.Thread(
        target=lambda: summary.update(watch_folder(params, layout, folder, task, apply=True, emit=emit, stop=stop))
    )
    watcher.start()
    wait_for_start(state_dir(params, layout, folder.resolve()))
    first_drop = time.monotonic()
    for index, name in enumerate(names):
        (folder / name).write_bytes(content(index, name))
    timeout = 600
    finished = ready.wait(timeout)
    stop.set()
    watcher.join(timeout=60)
    if not finished:
        raise RuntimeError(f"only {len(outcomes)} of {len(names)} files had an outcome after {timeout} s")
    times = sorted(when for when, _ in outcomes.values())
    return {"outcomes": {name: o for name, (_, o) in outcomes.items()}, "first_drop": first_drop,
            "first": times[0], "last": times[-1]}


def direct_answers(teacher_url: str, request: TaskRequest, names: list[str]) -> dict[str, str]:
    """The task called directly, as before stillroom: the teacher, with the request the watcher sent."""
    client = openai.OpenAI(base_url=teacher_url, api_key="not-needed", max_retries=0)
    return {name: client.chat.completions.create(**request.body(name)).choices[0].message.content for name in names}


def run(n_files: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="stillroom-bench-watch-") as tmp, FakeTeacher(
        lambda messages: downloads_answer(messages[-1]["content"])
    ) as teacher:
        root, folder = Path(tmp) / "project", Path(tmp) / "Downloads"
        root.mkdir()
        folder.mkdir()
        params, layout, train_s = train_project(root, teacher.base_url)
        card = next(c for c in read_cards(layout.cards) if c.system_prompts[0] == DOWNLOADS_PROMPT)
        names = file_names(n_files)
        for index, name in enumerate(random.Random(7).sample(names, round(TAKEN_SHARE * n_files))):
            taken = folder / downloads_folder(name) / name
            taken.parent.mkdir(exist_ok=True)
            taken.write_bytes(b"already here " + content(-index - 1, name))
        dropping = {name: hashlib.sha256(content(i, name)).hexdigest() for i, name in enumerate(names)}
        before = {**tree(folder), **dropping}
        dropped = drop_while_watching(params, layout, folder, card.name, names)
        outcomes: dict[str, Outcome] = dropped["outcomes"]
        after_run = tree(folder)
        direct = direct_answers(teacher.base_url, TaskRequest.from_card(card), names)
        undo = undo_folder(params, layout, folder)
        restored = tree(folder)
        student = json.loads((layout.report(card.id) / "metrics.json").read_text())
    decided = [o for o in outcomes.values() if o.answer is not None]
    span = dropped["last"] - dropped["first"]
    return {
        "files": n_files,
        "files_per_s": round(len(outcomes) / span, 1) if span > 0 else None,
        "wall_s": round(dropped["last"] - dropped["first_drop"], 2),
        "settle_s": params.watch.settle_s,
        "decisions_match_task": round(sum(o.answer == direct[o.file] for o in decided) / n_files, 4),
        "student_share": round(sum(o.route == "student" for o in decided) / n_files, 4),
        "moved": sum(o.action == "move" for o in outcomes.values()),
        "collisions": sum(o.action == "move" and "not overwritten" in (o.reason or "") for o in outcomes.values()),
        "overwrites": len(set(before.values()) - set(after_run.values())),
        "undo_restores_all": restored == before and undo["left"] == 0,
        "errors": sum(o.action == "error" for o in outcomes.values()),
        "train_s": round(train_s, 1),
        "student_test_agreement": round(student["agreement"], 4),
        "student_coverage": round(student.get("coverage", 0.0), 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=1000, help="files dropped into the watched folder")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()
    result = run(args.files)
    write_json(RESULTS, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:22} {value}")
    return 0 if result["overwrites"] == 0 and result["undo_restores_all"] else 1


if __name__ == "__main__":
    sys.exit(main())
