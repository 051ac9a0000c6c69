"""The registered student as an MLflow model, logged from code (MLflow models-from-code): the model
version holds this file, the student folder (safetensors weights, tokenizer, `potstill.json`) and no
pickle. `mlflow.pyfunc.load_model` runs this file, which reads the folder as data; potstill's own
`predict` and drift monitor do not even run this file (potstill.serving loads the folder directly)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import pandas as pd

from potstill.serving import predict_frame
from potstill.training.generator import load_student


class StudentModel(mlflow.pyfunc.PythonModel):
    """A DataFrame of prompt fields in; a classifier's label + confidence + distribution out, or a
    generator's response (the text), answer (what the kind reads out of it) and confidence."""

    def load_context(self, context: Any) -> None:
        self.clf = load_student(Path(context.artifacts["student"]))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        return predict_frame(self.clf, model_input)


mlflow.models.set_model(StudentModel())
