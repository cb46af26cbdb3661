"""Agreement of a student's JSON answers with the teacher's: field-level F1, exact match, schema validity."""

import evaluate
import numpy as np

from stillroom.metrics import string_pairs_info
from stillroom.metrics.scoring import aggregate, example_arrays

_DESCRIPTION = (
    "Field-level F1 over (field, value) pairs, list elements counted one by one (micro over examples, and the "
    "per-example mean), exact match of the parsed objects, and the share of answers valid under the schema."
)
_KWARGS = """
Args:
    predictions (list of str): the student's JSON answers.
    references (list of str): the teacher's JSON answers.
    schema (dict, optional): the task's JSON Schema.
Returns:
    field_f1, field_f1_mean, exact_match, schema_validity (float): in [0, 1].
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class JsonAgreement(evaluate.Metric):
    def _info(self):
        return string_pairs_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references, schema=None):
        out = aggregate("json", example_arrays("json", predictions, references, schema), np.arange(len(predictions)))
        return {key: out[key] for key in ("field_f1", "field_f1_mean", "exact_match", "schema_validity")}
