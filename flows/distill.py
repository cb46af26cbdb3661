"""The `distill` flow: logs in, registered students out. Each stage is a Prefect task.

Run it directly (`python flows/distill.py` or `stillroom run`), or as a deployment
(`prefect deployment run 'distill/stillroom-local'`, see prefect.yaml).
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from stillroom.config import Layout, load_params
from stillroom.report import summary_rows
from tasks.detect import detect
from tasks.evaluate import evaluate
from tasks.ingest import ingest
from tasks.register import register
from tasks.synthesize import synthesize
from tasks.train import train
from tasks.version import version

ROOT = Path(__file__).resolve().parent.parent


# log_prints stays off: it patches print(), which breaks libraries that capture stdout (dill in datasets).
@flow(name="distill")
def distill(root: str = str(ROOT), params_file: str = "params.yaml", force: bool = False) -> list[dict]:
    """Ingest, detect, synthesize, train, evaluate, register; then version the outputs in DVC.

    Stages that dvc.lock shows up to date are skipped unless `force`.
    """
    logger = get_run_logger()
    layout = Layout(root)
    params = load_params(layout.resolve(params_file))
    # dvc.lock speaks for params.yaml only: with another parameters file, nothing counts as up to date.
    force = force or layout.resolve(params_file) != layout.root / "params.yaml"
    found = ingest(params, layout, force)
    logger.info("ingested %s records (%s quarantined)", found.get("records"), found.get("quarantined"))
    tasks = detect(params, layout, force)
    logger.info("detected %s tasks", tasks.get("tasks"))
    synthesize(params, layout, force)
    train(params, layout, force)
    evaluate(params, layout, force)
    register(params, layout, force)
    version(params, layout)
    rows = summary_rows(layout)
    create_table_artifact(key="stillroom-summary", table=rows, description="students against their teacher")
    return rows


if __name__ == "__main__":
    distill()
