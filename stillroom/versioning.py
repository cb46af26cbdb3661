"""Record stage outputs in DVC when the pipeline ran outside `dvc repro` (e.g. as a Prefect flow).

`dvc commit` hashes each stage's deps, params and outs into dvc.lock and the DVC cache, so
every dataset and model a flow produced is versioned exactly as `dvc repro` would have.
"""

from __future__ import annotations

import subprocess
import sys

import yaml

from stillroom.config import Layout, Params

# The stages the distill flow runs, in dvc.yaml's names.
FLOW_STAGES = ["ingest", "detect", "synthesize", "train", "evaluate", "register"]


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


def run(params: Params, layout: Layout) -> dict:
    if not (layout.root / ".dvc").is_dir() or not (layout.root / "dvc.yaml").exists():
        return {"dvc": "skipped: the project root is not a DVC repository (run `dvc init`)"}
    dvc(layout, "commit", "--force", *FLOW_STAGES)
    return {"dvc": "committed", "outputs": locked_outputs(layout)}
