"""Agreement of a student's labels with the teacher's: accuracy and macro-F1."""

import evaluate
import numpy as np

from stillroom.metrics import string_pairs_info
from stillroom.metrics.scoring import aggregate, example_arrays

_DESCRIPTION = "Accuracy and macro-averaged F1 of predicted labels against the teacher's labels."
_KWARGS = """
Args:
    predictions (list of str): the student's labels.
    references (list of str): the teacher's labels.
Returns:
    accuracy (float), macro_f1 (float): both in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class LabelAgreement(evaluate.Metric):
    def _info(self):
        return string_pairs_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references):
        arrays = example_arrays("label", predictions, references)
        out = aggregate("label", arrays, np.arange(len(predictions)))
        return {"accuracy": out["accuracy"], "macro_f1": out.get("macro_f1", 0.0)}
