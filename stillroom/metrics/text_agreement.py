"""Agreement of a student's free text with the teacher's: exact match, token F1 (SQuAD-style) and ROUGE-L."""

import re
import string
from collections import Counter

import evaluate
import numpy as np

from stillroom.metrics import string_pairs_info

_DESCRIPTION = "Exact match, token-level F1 and ROUGE-L F1 of generated text against the teacher's text."
_KWARGS = """
Args:
    predictions (list of str): the student's answers.
    references (list of str): the teacher's answers.
Returns:
    exact_match (float), token_f1 (float), rouge_l (float): means over examples, in [0, 1].
"""
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> list[str]:
    return _PUNCT.sub(" ", text.lower()).split()


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = normalize(prediction), normalize(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS)
class TextAgreement(evaluate.Metric):
    def _info(self):
        return string_pairs_info(_DESCRIPTION, _KWARGS)

    def _compute(self, predictions, references):
        from stillroom.metrics.scoring import aggregate, example_arrays

        if not predictions:
            return {"exact_match": 0.0, "token_f1": 0.0, "rouge_l": 0.0}
        out = aggregate("long_text", example_arrays("long_text", predictions, references), np.arange(len(predictions)))
        return {key: out[key] for key in ("exact_match", "token_f1", "rouge_l")}
