"""Whether a student may be champion on its own numbers: the rule evaluate reports and register applies.

Shared, so the `passed_gate` in metrics/evaluate.json and the alias in MLflow can never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence

from stillroom.config import Params
from stillroom.metrics.scoring import AGREEMENT_NAME
from stillroom.schema import OutputFormat


def best_baseline(metrics: dict, baselines: Sequence[str]) -> dict:
    """The baseline with the largest lead over the student on its own rows, and whether the student beats it."""
    leads = {
        name: metrics[f"baseline_{name}_agreement"] - metrics[f"baseline_{name}_student_agreement"]
        for name in baselines
        if f"baseline_{name}_agreement" in metrics
    }
    if not leads:
        return {"beats_baseline": True, "best_baseline": None}
    name = max(leads, key=leads.get)
    return {
        "best_baseline": name,
        "best_baseline_agreement": metrics[f"baseline_{name}_agreement"],
        "beats_baseline": bool(leads[name] <= 1e-12),  # ties go to the student
    }


def gate_verdict(metrics: dict, fmt: OutputFormat, params: Params) -> tuple[bool, str]:
    """Whether a student may be champion on its own numbers (register then compares it with the champion).

    Four conditions, each with the sentence that goes on the version: enough test rows to decide,
    the agreement's lower bound at the format's gate, answers in compact weights that are float32's
    (`export_same_answers`, LM students), and not below any baseline on the same rows.
    """
    gate = params.registry.gate
    threshold, low, n = gate.for_format(fmt), float(metrics["agreement_low"]), int(metrics["n_test"])
    clears = low >= threshold
    bound = f"{AGREEMENT_NAME[fmt]} lower bound {low:.4f} {'>=' if clears else '<'} gate {threshold:.2f} ({fmt})"
    if n < gate.min_test_rows:
        return False, f"{n} test rows < register.gate.min_test_rows {gate.min_test_rows}: too few to decide; {bound}"
    if not clears:
        return False, bound
    same = metrics.get("export_same_answers")
    # Evaluation falls back to float32 below the bar (`weights` then says so): only a compact form served anyway fails.
    served = metrics.get("weights", metrics.get("export_weights"))
    if same is not None and same < gate.min_export_same and served != "float32":
        return False, (
            f"{bound}; {metrics['export_weights']} weights give float32's answer on {same:.3f} of "
            f"{metrics['export_n']} test rows < register.gate.min_export_same {gate.min_export_same:.2f}"
        )
    if gate.beat_baselines and not metrics.get("beats_baseline", True):
        name = metrics["best_baseline"]
        return False, (
            f"{bound}; below baseline {name}: {metrics[f'baseline_{name}_student_agreement']:.4f} < "
            f"{metrics[f'baseline_{name}_agreement']:.4f} on the same {metrics[f'baseline_{name}_n']} test rows"
        )
    return True, bound
