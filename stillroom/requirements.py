"""The pip requirements of a registered student, derived from what its inference really imports.

A hand-written list drifts from the code (it once left out packages `stillroom.metrics` pulled
in), and a model that imports a package its environment lacks fails only on the machine that
serves it. So a fresh Python process does what `mlflow.pyfunc.load_model` and one `predict` do
for this very folder, and every distribution that provided a module it imported is pinned
at its installed version; the standard library and stillroom itself (shipped as code) are left out.

    python -m stillroom.requirements data/models/<task>    # the pins, as a JSON list
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

PROJECT_PACKAGE = "stillroom"
PROBE_TEXT = "A short request, to answer once."


def inference_requirements(student_dir: Path | str) -> list[str]:
    """`name==version` for each distribution the pyfunc imports to load this student and answer once."""
    command = [sys.executable, "-m", "stillroom.requirements", str(student_dir)]
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"finding what {student_dir} imports failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def distributions_of(module_names: Iterable[str]) -> list[str]:
    """The installed distributions that provide these modules, pinned; stdlib and stillroom excluded.

    A top-level name several distributions share (a namespace such as `google` or `opentelemetry`)
    is narrowed to the distributions that hold the files actually imported. Names no distribution
    provides (interpreter internals, modules compiled extensions register) are skipped.
    """
    by_top: dict[str, list[str]] = {}
    for name in module_names:
        by_top.setdefault(name.partition(".")[0], []).append(name)
    providers = metadata.packages_distributions()
    found: set[str] = set()
    for top, names in by_top.items():
        if top == PROJECT_PACKAGE or top in sys.stdlib_module_names or top in sys.builtin_module_names:
            continue
        candidates = providers.get(top, [])
        found.update(candidates if len(candidates) <= 1 else _owners(candidates, names))
    found -= {PROJECT_PACKAGE}
    return sorted((f"{name}=={metadata.version(name)}" for name in found), key=str.casefold)


def _owners(candidates: list[str], module_names: list[str]) -> set[str]:
    """Of the distributions sharing a top-level name, those whose files include an imported module."""
    files = set()
    for name in module_names:
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            files.add(Path(path).resolve())
    owners = set()
    for candidate in candidates:
        distribution = metadata.distribution(candidate)
        if any(Path(distribution.locate_file(f)).resolve() in files for f in distribution.files or []):
            owners.add(candidate)
    return owners


def _probe(student_dir: str) -> list[str]:
    """Load and answer as the pyfunc does (see `mlflow_model.StudentModel`); the modules that took are new."""
    before = set(sys.modules)
    import mlflow.pyfunc
    import pandas as pd

    from stillroom.mlflow_model import STUDENT_ARTIFACT, StudentModel

    model = StudentModel()
    model.load_context(mlflow.pyfunc.PythonModelContext(artifacts={STUDENT_ARTIFACT: student_dir}, model_config={}))
    model.predict(None, pd.DataFrame({"text": [PROBE_TEXT]}))
    return distributions_of(set(sys.modules) - before)


if __name__ == "__main__":
    print(json.dumps(_probe(sys.argv[1])))
