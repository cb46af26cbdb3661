"""A student as an MLflow pyfunc model, so `mlflow.pyfunc.load_model` serves any kind the same way.

Input: a DataFrame with a `messages` column (the chat turns, as the teacher got them) or
a `text` column (the user turn alone). Output: a DataFrame of `answer`, `confidence` and `valid`
(the answer is in the label set, or JSON that matches the task's schema).
"""

from __future__ import annotations

import mlflow.pyfunc
import pandas as pd

from stillroom.schema import Message

STUDENT_ARTIFACT = "student"  # the artifact that holds the student folder


class StudentModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from stillroom.students.base import load_student

        self.student = load_student(context.artifacts[STUDENT_ARTIFACT])

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        if "messages" in model_input.columns:
            prompts = [[Message(**m) for m in messages] for messages in model_input["messages"]]
        elif "text" in model_input.columns:
            prompts = [[Message(role="user", content=str(text))] for text in model_input["text"]]
        else:
            raise ValueError("input needs a 'messages' or a 'text' column")
        predictions = self.student.predict(prompts)
        return pd.DataFrame(
            {
                "answer": [p.text for p in predictions],
                "confidence": [p.confidence for p in predictions],
                "valid": [p.valid for p in predictions],
            }
        )
