"""The distill flow fans train, evaluate and register out per task: on the local runner and on a real
local Dask cluster (two worker processes) it registers the same results, and `--task` retrains one
task while the other keeps its version."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
import yaml

from stillroom.per_task import TaskFailures, run_each
from stillroom.samples import _bbc_articles
from tests.conftest import log_line

pytestmark = [pytest.mark.slow]

TOPIC = "Classify the news article: business, entertainment, politics, sport or tech. Answer with the topic."
SPORT = "Is this news article about sport? Answer yes or no."
PARAMS = {
    "ingest": {"logs": "data/raw/logs"},
    "detect": {"min_task_records": 30},
    "synthesize": {"only_decisions": ["distill_now", "collect_more"]},  # 90 calls a task is a small task
    "train": {"classifier": {"features": ["tfidf"]}},
    "evaluate": {"latency_samples": 3, "baselines": ["tfidf_lr"]},
    "register": {"gate": {"label": 0.5, "min_test_rows": 5}},
}


def write_project(root: Path, task_runner: str, step: int = 23) -> Path:
    """Two label tasks over 90 BBC articles, every `step`-th (by topic: 23 reaches all five, 12 no sport)."""
    articles = _bbc_articles()[::step][:90]
    lines = []
    for i, (topic, title, body) in enumerate(articles):
        text = f"{title}\n\n{body[:400]}"
        lines.append(log_line(TOPIC, text, topic, index=2 * i))
        lines.append(log_line(SPORT, text, "yes" if topic == "sport" else "no", index=2 * i + 1))
    (root / "data/raw/logs").mkdir(parents=True)
    (root / "data/raw/logs/calls.jsonl").write_text("\n".join(lines) + "\n")
    params = {**PARAMS, "flow": {"task_runner": task_runner, "dask_workers": 2}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def distill(root: Path, tmp_path: Path, *extra: str, expect_exit: int = 0) -> str:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": "",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [str(Path(sys.executable).parent / "stillroom"), "run", "--root", str(root), *extra]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == expect_exit, done.stdout[-3000:] + done.stderr[-5000:]
    return done.stdout + done.stderr


def registered(root: Path) -> dict[str, dict]:
    entries = json.loads((root / "data/registry.json").read_text())["models"]
    return {entry["task"]: entry for entry in entries}


def test_local_and_dask_runners_register_the_same_students_and_one_task_can_be_retrained(tmp_path):
    local = write_project((tmp_path / "local"), "local")
    dask = write_project((tmp_path / "dask"), "dask")
    distill(local, tmp_path)
    logs = distill(dask, tmp_path)
    assert "LocalCluster" in logs  # the per-task work ran on a real Dask cluster

    by_local, by_dask = registered(local), registered(dask)
    assert len(by_local) == 2 and set(by_local) == set(by_dask)
    evaluation = {name: json.loads((root / "metrics/evaluate.json").read_text()) for name, root in
                  (("local", local), ("dask", dask))}
    for task, entry in by_local.items():
        assert entry["version"] == by_dask[task]["version"] == "1"
        assert entry["alias"] == by_dask[task]["alias"] and entry["gate_reason"] == by_dask[task]["gate_reason"]
        assert evaluation["local"][task]["agreement"] == evaluation["dask"][task]["agreement"]
        assert evaluation["local"][task]["threshold"] == evaluation["dask"][task]["threshold"]

    retrained, untouched = sorted(by_local)
    distill(local, tmp_path, "--task", retrained)
    after = registered(local)
    assert after[retrained]["version"] == "2"
    assert after[untouched] == by_local[untouched]  # same version, same alias, same run


def test_a_task_that_fails_in_the_flow_is_reported_and_the_other_still_registers(tmp_path):
    """Without a sport article, the yes/no task has one label and cannot train; the topic task must not care."""
    root = write_project(tmp_path / "failing", "local", step=12)
    logs = distill(root, tmp_path, expect_exit=1)
    assert "1 task(s) failed (news-article-sport: ValueError: a classifier needs at least two labels" in logs
    entries = registered(root)
    assert entries["classify-news-article"]["version"] == "1"  # registered (champion or not by its own gate)
    assert "news-article-sport" not in entries
    training = json.loads((root / "metrics/train.json").read_text())
    assert "at least two labels" in training["news-article-sport"]["failed"]


def test_a_failing_task_is_reported_and_the_others_still_finish():
    class Card:
        def __init__(self, name: str):
            self.name, self.id = name, f"task-{name}"

    class Stage:
        finished: ClassVar[dict] = {}

        @staticmethod
        def task_cards(params, layout):
            return [Card("good"), Card("broken"), Card("also-good")]

        @staticmethod
        def run_task(params, layout, card):
            if card.name == "broken":
                raise ValueError("no training rows")
            return {"ok": True}

        @classmethod
        def finish(cls, params, layout, results):
            cls.finished = results
            return results

    with pytest.raises(TaskFailures, match="broken: ValueError: no training rows") as raised:
        run_each("train", Stage, None, None)
    assert Stage.finished == {"good": {"ok": True}, "broken": {"failed": "ValueError: no training rows"},
                              "also-good": {"ok": True}}
    assert raised.value.failures == {"broken": "ValueError: no training rows"}
    assert run_each("train", Stage, None, None, only=["good"]) == {"good": {"ok": True}}


def stillroom_json(root: Path, tmp_path: Path, *args: str):
    """The JSON a `stillroom ... --json` command printed (after any log lines of a flow run)."""
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": ""}
    command = [str(Path(sys.executable).parent / "stillroom"), *args, "--root", str(root), "--json"]
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    lines = done.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("{", "[")))
    return json.loads("\n".join(lines[start:]))


def test_watch_does_nothing_without_new_traffic_and_retrains_only_the_task_that_got_it(tmp_path):
    root = write_project(tmp_path / "watched", "local")
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "params.yaml").write_text(yaml.safe_dump({**params, "retrain": {"min_new_records": 30}}))
    distill(root, tmp_path)
    before = registered(root)

    quiet = stillroom_json(root, tmp_path, "watch")
    assert quiet["started"] is None and quiet["retrain"] == [] and not quiet["find_new_tasks"]
    assert set(quiet["new_records"].values()) == {0}

    more = [log_line(SPORT, f"{title}\n\n{body[:400]}", "yes" if topic == "sport" else "no", index=10_000 + i)
            for i, (topic, title, body) in enumerate(_bbc_articles()[5::23][:40])]
    (root / "data/raw/logs/more.jsonl").write_text("\n".join(more) + "\n")
    before_busy = datetime.now(UTC).isoformat()
    busy = stillroom_json(root, tmp_path, "watch")
    assert busy["new_records"] == {"classify-news-article": 0, "news-article-sport": 40}
    assert busy["retrain"] == ["news-article-sport"] and busy["started"] == "subflow"
    after = registered(root)
    assert after["news-article-sport"]["version"] == "2"
    assert after["classify-news-article"] == before["classify-news-article"]  # untouched: same version and run

    (change,) = stillroom_json(root, tmp_path, "report", "--since", before_busy)
    assert (change["task"], change["version"]) == ("news-article-sport", "2")
    assert change["event"] in ("promoted", "challenger") and change["delta"] is not None
    assert change["delta"] == pytest.approx(change["agreement"] - change["champion_agreement"])
    everything = stillroom_json(root, tmp_path, "report", "--since", "7d")
    assert [e["event"].split(",")[0] for e in everything].count("new task") == 2 and len(everything) == 3
