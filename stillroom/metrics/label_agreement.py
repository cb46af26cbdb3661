"""Agreement of a student's labels with the teacher's: accuracy and macro-F1."""

import evaluate
from sklearn.metrics import accuracy_score, f1_score

from stillroom.metrics import string_pairs_info

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
        labels = sorted(set(references))
        return {
            "accuracy": float(accuracy_score(references, predictions)),
            "macro_f1": float(f1_score(references, predictions, labels=labels, average="macro", zero_division=0)),
        }
