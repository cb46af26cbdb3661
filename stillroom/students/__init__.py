"""Students by kind. Imported lazily: the LM student pulls in transformers and TRL."""

from stillroom.students.base import Student, load_student

# kind -> "module:Class"; the kind is what a student folder's manifest names.
KINDS = {
    "classifier": "stillroom.students.classifier:EmbeddingClassifier",
    "lm": "stillroom.students.lm:LMStudent",
}

__all__ = ["KINDS", "Student", "load_student"]
