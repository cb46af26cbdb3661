"""The detect stage: find repeated tasks in the records and write a card for each.

Inside: `pipeline` (the two passes), `fingerprints` and `templates` (what a call is
recognised by), `cards` (what a card says), `distillability` (whether a task is worth a
student), `history` (ids across runs), `matcher` (the public door: which task is this
request?). Other code imports `run` or `stillroom.detect.matcher`, nothing else.
"""

from stillroom.detect.pipeline import run

__all__ = ["run"]
