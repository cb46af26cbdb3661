"""Record stage outputs in DVC when the pipeline ran outside `dvc repro` (e.g. as a Prefect flow).

`dvc commit` hashes each stage's deps, params and outs into dvc.lock and the DVC cache, so
every dataset and model a flow produced is versioned exactly as `dvc repro` would have.
"""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from stillroom.config import Params
from stillroom.data import Layout
from stillroom.per_task import FAILED


class VersioningError(RuntimeError):
    pass


def dvc(layout: Layout, *args: str, timeout: float = 1800) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=layout.root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise VersioningError(f"dvc {' '.join(args)} failed: {result.stderr.strip()[-2000:]}")
    return result.stdout


def locked_outputs(layout: Layout) -> dict[str, dict[str, str]]:
    """Stage -> output path -> content hash, as dvc.lock records them."""
    lock_file = layout.root / "dvc.lock"
    if not lock_file.exists():
        return {}
    lock = yaml.safe_load(lock_file.read_text()) or {}
    return {
        stage: {out["path"]: out.get("md5", "") for out in body.get("outs", [])}
        for stage, body in (lock.get("stages") or {}).items()
    }


def is_dvc_repo(layout: Layout) -> bool:
    return (layout.root / ".dvc").is_dir() and (layout.root / "dvc.yaml").exists()


def up_to_date(layout: Layout, stage: str) -> bool:
    """True when dvc.lock already records this stage with the current code, inputs, params and outputs."""
    if not is_dvc_repo(layout) or stage not in locked_outputs(layout):
        return False
    try:
        return json.loads(dvc(layout, "status", "--json", stage) or "{}") == {}
    except (VersioningError, json.JSONDecodeError):
        return False


def committable_stages(layout: Layout) -> list[str]:
    """dvc.yaml's stages whose outputs are all on disk: the ones `dvc commit` can record."""
    stages = (yaml.safe_load((layout.root / "dvc.yaml").read_text()) or {}).get("stages") or {}
    ready = []
    for name, body in stages.items():
        outs = [next(iter(out)) if isinstance(out, dict) else out for out in body.get("outs", [])]
        if all((layout.root / out).exists() for out in outs):
            ready.append(name)
    return ready


def run(params: Params, layout: Layout) -> dict:
    if not is_dvc_repo(layout):
        return {"dvc": "skipped: the project root is not a DVC repository (run `dvc init`)"}
    # Every dvc.yaml stage whose outputs exist (the sample logs are built outside the flow, if at all).
    dvc(layout, "commit", "--force", *committable_stages(layout))
    summary = {"dvc": "committed", "outputs": locked_outputs(layout)}
    if params.versioning.push:
        summary["push"] = push(layout)
    return summary


def failed_tasks(layout: Layout) -> list[str]:
    """Tasks a per-task stage of this run reported failed (their entries say `failed`)."""
    names = set()
    for stage in ("train", "evaluate"):
        path = layout.stage_metrics(stage)
        entries = json.loads(path.read_text()) if path.exists() else {}
        names |= {name for name, entry in entries.items() if isinstance(entry, dict) and FAILED in entry}
    return sorted(names)


def push(layout: Layout) -> str:
    """Send what dvc.lock names to the default remote, so another machine can `dvc pull` it."""
    if not dvc(layout, "remote", "list").strip():
        return "skipped: no DVC remote (make setup adds a local one; README shows S3, GCS and SSH)"
    if failed := failed_tasks(layout):
        return f"skipped: tasks failed this run ({', '.join(failed)})"
    try:
        dvc(layout, "push", "--quiet")
    except VersioningError as error:  # the run's work is done and committed; say why it is not shared
        return f"failed: {error}"
    return "pushed"
