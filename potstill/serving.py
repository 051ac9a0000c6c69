"""What a registered student answers, shared by the MLflow model (tasks/student_model.py) and
`potstill predict` / the drift monitor, which load the weights themselves: a registered version's files
are read as data (safetensors, JSON, the tokenizer), never unpickled or executed."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from potstill.kinds import get_kind
from potstill.training.classifier import META_FILE
from potstill.training.generator import Generator, Student

# The files a student folder may hold: anything else (a pickle, a script) is refused before loading.
SAFE_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".jinja")


def predict_frame(clf: Student, frame: pd.DataFrame) -> pd.DataFrame:
    """A classifier's label, confidence and p_<label>; a generator's response, answer and confidence."""
    if isinstance(clf, Generator):
        answers = clf.generate(frame.to_dict(orient="records"))
        return pd.DataFrame(
            [{"response": a.response, "answer": a.answer, "confidence": a.confidence} for a in answers],
            columns=["response", "answer", "confidence"],
        )
    scores = clf.predict(frame.to_dict(orient="records"))
    return pd.DataFrame(
        [
            {"label": s.label, "confidence": s.confidence, **{f"p_{k}": v for k, v in s.distribution.items()}}
            for s in scores
        ]
    )


def input_fields(clf: Student) -> list[str]:
    """The columns a caller sends: the row fields the student prompt renders (a generator's kind derives
    some of them, e.g. multiple choice's `choices_text` from `choices`)."""
    if isinstance(clf, Generator):
        return list(get_kind(clf.kind).fields)
    return clf.prompt.fields


def find_student_folder(root: Path) -> Path:
    """The student folder (classifier or generator) inside a downloaded registered model (its `student`
    artifact)."""
    found = sorted(p.parent for p in Path(root).rglob(META_FILE))
    if not found:
        raise FileNotFoundError(f"no student folder ({META_FILE}) inside the downloaded model at {root}")
    return found[0]


def unsafe_files(folder: Path) -> list[str]:
    """Files of a student folder that loading could execute or unpickle (`.bin`, `.pt`, `.pkl`, code):
    a registered version holding one was not written by potstill and is refused."""
    return sorted(
        f.relative_to(folder).as_posix()
        for f in Path(folder).rglob("*")
        if f.is_file() and not f.name.endswith(SAFE_SUFFIXES)
    )
