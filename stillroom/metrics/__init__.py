"""The project's metrics as local `evaluate` modules: the hub versions cannot be fetched offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def module_path(name: str) -> str:
    """Path that `evaluate.load` accepts for one of our metric modules."""
    return str(METRICS_DIR / f"{name}.py")
