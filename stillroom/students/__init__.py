"""Students by kind, at inference. Imported lazily: the LM student pulls in torch and transformers.

Each kind has an inference module (named in `base.KINDS`: load and answer) and a training module beside it
(`<kind>_train`: fit and write the folder); the inference side never imports the training side.
"""

from stillroom.students.base import KINDS, Student, import_runtime, load_student

__all__ = ["KINDS", "Student", "import_runtime", "load_student"]
