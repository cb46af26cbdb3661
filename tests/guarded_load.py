"""Load a downloaded MLflow pyfunc model and answer, in a process that can import only what the model declares.

    python tests/guarded_load.py MODEL_DIR REQUIREMENTS_JSON INPUTS_JSON

An import guard stands in for a fresh environment installed from the model's requirements.txt:
a top-level module is importable only when the standard library, stillroom (shipped with the
model as code) or a declared distribution provides it. Everything else looks absent, as it would
be there (`find_spec` gives None, `import` raises ModuleNotFoundError). Only the standard library
is imported before the guard is in place. Prints one JSON line: the answers and what was refused.
"""

import importlib.abc
import json
import re
import sys
import sysconfig
from importlib import metadata


def in_stdlib(origin: str | None) -> bool:
    """Platform modules such as `_sysconfigdata_*` are not in `sys.stdlib_module_names` but live beside it."""
    paths = sysconfig.get_paths()

    def under(*keys: str) -> bool:
        return any(origin.startswith(paths[key].rstrip("/") + "/") for key in keys)

    return bool(origin) and under("stdlib", "platstdlib") and not under("purelib", "platlib")


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


class ImportGuard(importlib.abc.MetaPathFinder):
    """Wraps the real finders: a module outside the allowed top-level names, and an undeclared distribution's
    metadata, are reported as not found."""

    def __init__(self, allowed: set[str], declared: set[str], finders: list) -> None:
        self.allowed = allowed
        self.declared = declared
        self.finders = finders
        self.refused: set[str] = set()

    def find_spec(self, name, path=None, target=None):
        spec = None
        for finder in self.finders:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        top = name.partition(".")[0]
        if spec is None or top in self.allowed or in_stdlib(spec.origin):
            return spec
        self.refused.add(top)
        return None

    def find_distributions(self, context=None):
        """importlib.metadata sees only the declared distributions, as in an environment built from them."""
        context = context or metadata.DistributionFinder.Context()
        for finder in self.finders:
            for distribution in getattr(finder, "find_distributions", lambda context: [])(context):
                if normalized(distribution.metadata["Name"]) in self.declared:
                    yield distribution

    def invalidate_caches(self) -> None:
        for finder in self.finders:
            if hasattr(finder, "invalidate_caches"):
                finder.invalidate_caches()


def install_guard(requirements: list[str]) -> ImportGuard:
    declared = {normalized(re.split(r"[=<>!~;\[ ]", line, maxsplit=1)[0]) for line in requirements}
    provided = {
        top
        for top, distributions in metadata.packages_distributions().items()
        if any(normalized(d) in declared for d in distributions)
    }
    allowed = provided | set(sys.stdlib_module_names) | set(sys.builtin_module_names) | {"stillroom"}
    guard = ImportGuard(allowed, declared, list(sys.meta_path))
    sys.meta_path[:] = [guard]
    return guard


def main() -> None:
    model_dir, requirements_file, inputs_file = sys.argv[1:4]
    with open(requirements_file) as handle:
        requirements = json.load(handle)
    with open(inputs_file) as handle:
        texts = json.load(handle)
    guard = install_guard(requirements)
    try:
        import trl  # noqa: F401  (installed here, not declared: the guard must refuse it)

        trl_refused = False
    except ModuleNotFoundError:
        trl_refused = True

    import mlflow.pyfunc
    import pandas as pd

    answers = mlflow.pyfunc.load_model(model_dir).predict(pd.DataFrame({"text": texts}))
    print(
        json.dumps(
            {
                "trl_refused": trl_refused,
                "refused": sorted(guard.refused),
                "answers": answers[["answer", "confidence", "valid"]].to_dict("records"),
            }
        )
    )


if __name__ == "__main__":
    main()
