"""The CLI as a user meets it: help, exit codes, --json, and `stillroom run` (a real Prefect flow run
on a temporary local server) on a small label-only project."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_pipeline_e2e import merge

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent


def stillroom(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "stillroom"), *args], cwd=cwd, capture_output=True, text=True, env=env or os.environ, timeout=1200
    )


def test_help_lists_every_stage(tmp_path):
    result = stillroom("--help", cwd=tmp_path)
    assert result.returncode == 0
    for command in ("run", "ingest", "detect", "synthesize", "train", "evaluate", "register", "tasks", "report"):
        assert command in result.stdout
    assert stillroom("train", "--help", cwd=tmp_path).returncode == 0


def test_usage_errors_exit_2_and_failures_exit_1_with_one_clear_line(tmp_path):
    assert stillroom("no-such-command", cwd=tmp_path).returncode == 2
    missing = stillroom("tasks", "--root", str(tmp_path), cwd=tmp_path)
    assert missing.returncode == 1
    assert "run the detect stage first" in missing.stderr
    assert "Traceback" not in missing.stderr
    (tmp_path / "params.yaml").write_text("detect:\n  min_task_recordz: 3\n")
    bad = stillroom("ingest", "--root", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 1 and "min_task_recordz" in bad.stderr


@pytest.mark.slow
def test_run_the_flow_on_a_label_only_project(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    sample = {"bbc_articles": 150, "wnut_tweets": 0, "oneoff_prompts": 60, "downloads_files": 0, "jpeg_images": 0}
    sample["bbc_headlines"] = 0
    small = {"sample": sample}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(merge(params, small)))
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": ""}
    assert stillroom("sample-logs", "--root", str(tmp_path), cwd=tmp_path, env=env).returncode == 0

    result = stillroom("run", "--root", str(tmp_path), cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "agreement" in result.stdout and "models:/stillroom-" in result.stdout

    tasks = json.loads(stillroom("tasks", "--root", str(tmp_path), "--json", cwd=tmp_path).stdout)
    assert [t["output_type"] for t in tasks] == ["label"] and tasks[0]["count"] == 150
    shown = stillroom("tasks", "show", tasks[0]["name"], "--root", str(tmp_path), "--json", cwd=tmp_path)
    card = json.loads(shown.stdout)
    assert card["id"] == tasks[0]["id"] and len(card["examples"]) > 0
    report = json.loads(stillroom("report", "--root", str(tmp_path), "--json", cwd=tmp_path).stdout)
    assert report[0]["student"] == "classifier" and report[0]["agreement"] >= 0.8
    # outside a DVC repo, versioning says so instead of failing
    version = json.loads(stillroom("version", "--root", str(tmp_path), "--json", cwd=tmp_path).stdout)
    assert version["dvc"].startswith("skipped: the project root is not a DVC repository")
