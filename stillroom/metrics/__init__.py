"""The project's metrics as local `evaluate` modules: the hub versions cannot be fetched offline."""

from pathlib import Path

METRICS_DIR = Path(__file__).parent


def module_path(name: str) -> str:
    """Path that `evaluate.load` accepts for one of our metric modules."""
    return str(METRICS_DIR / f"{name}.py")


def string_pairs_info(description: str, inputs_description: str):
    """MetricInfo for a metric over (student answer, teacher answer) string pairs."""
    import datasets
    import evaluate

    return evaluate.MetricInfo(
        description=description,
        citation="",
        inputs_description=inputs_description,
        features=datasets.Features({"predictions": datasets.Value("string"), "references": datasets.Value("string")}),
    )
