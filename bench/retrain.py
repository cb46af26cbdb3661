"""Retraining benchmark: does the loop retrain only what new traffic calls for?

On the bundled sample logs (scaled down with --small, the default, so it runs in minutes):

1. a first `stillroom run` (the default local task runner), and the same first run of a copy
   of the project on a local Dask cluster (`flow.task_runner: dask`, two worker processes);
2. `stillroom watch` with no new data: it must end quickly and retrain nothing;
3. 200 new records of one task (the BBC topic task: logged calls with new ids, as a day of
   traffic would add), then `stillroom watch` again: only that task may get a new version.

    python bench/retrain.py            # a summary, and bench/results/retrain.json
    python bench/retrain.py --json     # one JSON object
    python bench/retrain.py --full     # the sample logs at full size (the LM task trains for real)

Keys: `noop_run_s` (target <= 30), `new_data_retrained` (the tasks that got a new version:
only the one with new records), `untouched_versions_changed` (target 0), `dask_matches_default`
(same aliases and test agreement per task on both runners).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "retrain.json"
WORK = ROOT / "bench" / "results" / "retrain-projects"
BIN = Path(sys.executable).parent
SMALL = {
    "sample": {"bbc_articles": 300, "wnut_tweets": 160, "oneoff_prompts": 100, "downloads_files": 0, "jpeg_images": 0},
    "train": {"lm": {"max_train_examples": 64, "max_steps": 12, "batch_size": 8}},
    "evaluate": {"max_test_examples": 40, "latency_samples": 5, "baseline_max_examples": 6},
    "retrain": {"min_new_records": 200},
}
NEW_RECORDS = 200


def merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def stillroom(project: Path, *args: str) -> tuple[str, float]:
    env = {**os.environ, "PREFECT_API_URL": "", "PREFECT_HOME": str(project / ".prefect"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "stillroom"), *args, "--root", str(project)], cwd=project, env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"stillroom {' '.join(args)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return done.stdout, seconds


def make_project(folder: Path, params: dict) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stillroom(folder, "sample-logs")
    return folder


def versions(project: Path) -> dict[str, tuple[str, str]]:
    entries = json.loads((project / "data/registry.json").read_text())["models"]
    return {entry["task"]: (entry.get("version"), entry.get("alias")) for entry in entries}


def add_traffic(project: Path, output_type: str, n: int) -> str:
    """n new calls of one task: logged calls of that task again, with new ids (a day of the same traffic)."""
    cards = json.loads((project / "data/tasks/cards.json").read_text())
    task = next(card for card in cards if card["output_type"] == output_type)
    assigned = set()
    for line in (project / "data/tasks/assignments.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("task_id") == task["id"]:
            assigned.add(row["record_id"])
    records = [json.loads(line) for line in (project / "data/records.jsonl").read_text().splitlines()]
    calls = [r for r in records if r["id"] in assigned][:n]
    lines = []
    for i, record in enumerate((calls * (n // max(1, len(calls)) + 1))[:n]):
        messages = ([{"role": "system", "content": record["system_prompt"]}] if record["system_prompt"] else [])
        messages += [{"role": m["role"], "content": m["content"]} for m in record["messages"]]
        lines.append(json.dumps({
            "request": {"model": record["model"] or "gpt-4o-mini", "messages": messages},
            "response": {
                "id": f"chatcmpl-bench-retrain-{i:05d}",
                "object": "chat.completion",
                "model": record["model"] or "gpt-4o-mini",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": record["response_text"]}}],
            },
        }))
    (project / "data/raw/logs/new-traffic.jsonl").write_text("\n".join(lines) + "\n")
    return task["name"]


def evaluation(project: Path) -> dict[str, float]:
    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    return {task: round(m["agreement"], 6) for task, m in metrics.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--full", action="store_true", help="the sample logs at full size")
    args = parser.parse_args()
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    if not args.full:
        params = merge(params, SMALL)

    default = make_project(WORK / "default", params)
    dask = make_project(WORK / "dask", merge(params, {"flow": {"task_runner": "dask", "dask_workers": 2}}))
    _, first_s = stillroom(default, "run")
    _, dask_s = stillroom(dask, "run")
    first = versions(default)
    dask_matches = versions(dask) == first and evaluation(dask) == evaluation(default)

    _, noop_s = stillroom(default, "watch", "--json")
    after_noop = versions(default)
    task = add_traffic(default, "label", NEW_RECORDS)
    _, busy_s = stillroom(default, "watch", "--json")
    after = versions(default)
    retrained = sorted(name for name in after if after[name] != after_noop.get(name))
    result = {
        "noop_run_s": round(noop_s, 2),
        "noop_versions_changed": sum(after_noop[n] != first[n] for n in first),
        "new_records_task": task,
        "new_records": NEW_RECORDS,
        "new_data_run_s": round(busy_s, 2),
        "new_data_retrained": retrained,
        "untouched_versions_changed": sum(after[n] != after_noop[n] for n in after_noop if n != task),
        "dask_matches_default": dask_matches,
        "first_run_s": round(first_s, 1),
        "first_run_dask_s": round(dask_s, 1),
        "versions": {name: {"first": first[name], "after": after[name]} for name in after},
        "small": not args.full,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:28} {value}")
        print(f"written: {RESULTS}")
    ok = result["noop_run_s"] <= 30 and retrained == [task] and result["untouched_versions_changed"] == 0
    return 0 if ok and dask_matches else 1


if __name__ == "__main__":
    sys.exit(main())
