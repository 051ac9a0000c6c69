"""What a reviewer sees and what comes back: labeling configs, tasks, and parsing answers.

Pure functions, no network. One Label Studio project per dataset and prompt version
(`ReviewProjectSpec`); its labeling config follows the dataset's kind:

| kind | shown | answer control (`answer`) | pre-filled from the teacher |
|---|---|---|---|
| classification | `text` | Choices of the label set | the label |
| nli | `premise`, `hypothesis` | Choices of the label set | the label |
| multiple_choice | `question` | Choices of the row's own `choices` | the chosen option |
| math | `question` | TextArea (one line), plus a `rationale` TextArea | answer and rationale |
| summarization, chat | `text` (document / prompt) | TextArea | the teacher's output |

Every config also has a `verdict` (accept / reject) and a `reason` TextArea shown on reject: a
reviewer excludes a broken row instead of forcing a label on it. Task data carries `row_id`,
`dataset_version`, the teacher's label and confidence and `audit`, so answers match back to rows.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from potstill.kinds import KINDS as ALL_KINDS
from potstill.review.merge import HumanAnnotation

KINDS = tuple(ALL_KINDS)
CHOICE_KINDS = tuple(name for name, kind in ALL_KINDS.items() if kind.closed)
TITLE_MAX = 50  # Label Studio's PROJECT_TITLE_MAX_LEN


@dataclass(frozen=True)
class ReviewProjectSpec:
    """Which review project rows go to; `teacher` becomes the predictions' and project's model_version
    (Label Studio's uncertainty sampling serves the lowest-scored predictions of that version first)."""

    dataset: str
    prompt_version: str
    kind: str = "classification"
    labels: tuple[str, ...] = ()
    teacher: str = "teacher"
    annotators_per_row: int = 1

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown dataset kind {self.kind!r}; expected one of {', '.join(KINDS)}")
        if self.kind in ("classification", "nli") and not self.labels:
            raise ValueError(f"a {self.kind} review project needs the dataset's label set")
        object.__setattr__(self, "labels", tuple(self.labels))

    @property
    def title(self) -> str:
        """`potstill review: <dataset> @ <prompt version>`, shortened with a hash past 50 characters."""
        full = f"potstill review: {self.dataset} @ {self.prompt_version}"
        if len(full) <= TITLE_MAX:
            return full
        digest = hashlib.sha1(full.encode()).hexdigest()[:8]
        return f"{full[: TITLE_MAX - 10]}… {digest}"

    @property
    def key(self) -> str:
        """Identity of the project across runs (written into its description)."""
        return f"potstill-review:{self.dataset}@{self.prompt_version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "labels": list(self.labels)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReviewProjectSpec:
        return cls(**{**d, "labels": tuple(d.get("labels", ()))})


_VERDICT = """  <Header value="Verdict (reject excludes the row from training)"/>
  <Choices name="verdict" toName="{to}" choice="single" showInline="true">
    <Choice value="accept"/>
    <Choice value="reject"/>
  </Choices>
  <View visibleWhen="choice-selected" whenTagName="verdict" whenChoiceValue="reject">
    <TextArea name="reason" toName="{to}" placeholder="Why is this row excluded?"
              maxSubmissions="1" editable="true"/>
  </View>"""

_TEACHER = '  <Header value="Teacher: $teacher_label (confidence $confidence)" size="6"/>'


def label_config(spec: ReviewProjectSpec) -> str:
    """The Label Studio labeling config (XML) for the spec's kind."""
    if spec.kind == "classification":
        to = "text"
        body = ['  <Text name="text" value="$text"/>', _TEACHER, _choices(spec.labels, to)]
    elif spec.kind == "nli":
        to = "premise"
        body = [
            '  <Header value="Premise" size="5"/>',
            '  <Text name="premise" value="$premise"/>',
            '  <Header value="Hypothesis" size="5"/>',
            '  <Text name="hypothesis" value="$hypothesis"/>',
            _TEACHER,
            _choices(spec.labels, to),
        ]
    elif spec.kind == "multiple_choice":
        to = "question"
        body = [
            '  <Text name="question" value="$question"/>',
            _TEACHER,
            '  <Choices name="answer" toName="question" choice="single" value="$options"/>',
        ]
    elif spec.kind == "math":
        to = "question"
        body = [
            '  <Text name="question" value="$question"/>',
            _TEACHER,
            '  <Header value="Answer" size="5"/>',
            '  <TextArea name="answer" toName="question" maxSubmissions="1" editable="true"/>',
            '  <Header value="Rationale" size="5"/>',
            '  <TextArea name="rationale" toName="question" rows="6" maxSubmissions="1" editable="true"/>',
        ]
    else:  # summarization, chat
        to = "text"
        body = [
            '  <Text name="text" value="$text"/>',
            '  <Header value="Teacher output (edit it into the right answer)" size="5"/>',
            '  <TextArea name="answer" toName="text" rows="8" maxSubmissions="1" editable="true"/>',
        ]
    return "<View>\n" + "\n".join([*body, _VERDICT.format(to=to)]) + "\n</View>\n"


def _choices(labels: Iterable[str], to: str) -> str:
    items = "\n".join(f"    <Choice value={quoteattr(str(v))}/>" for v in labels)
    return f'  <Choices name="answer" toName="{to}" choice="single" showInline="true">\n{items}\n  </Choices>'


def _answer_type(kind: str) -> tuple[str, str]:
    return ("choices", "choices") if kind in CHOICE_KINDS else ("textarea", "text")


def _teacher_answer(row: Mapping[str, Any], kind: str) -> str | None:
    keys = ("answer", "label") if kind == "math" else ("label", "output", "answer")
    return next((str(row[k]) for k in keys if row.get(k) is not None), None)


def _options(row: Mapping[str, Any]) -> list[dict[str, str]]:
    choices = row.get("choices") or row.get("options") or []
    if isinstance(choices, Mapping):  # {"A": "text", ...}: the label is the key
        return [{"value": str(k), "html": f"{k}) {v}"} for k, v in choices.items()]
    return [{"value": str(c)} for c in choices]


def build_task(
    row: Mapping[str, Any], spec: ReviewProjectSpec, dataset_version: str | None = None
) -> dict[str, Any]:
    """One Label Studio task: the row's data plus the teacher's answer as a scored prediction."""
    kind = spec.kind
    text = row.get("text")
    data: dict[str, Any] = {}
    if kind == "nli":
        data["premise"] = row.get("premise", text if text is not None else "")
        data["hypothesis"] = row.get("hypothesis", "")
    elif kind in ("multiple_choice", "math"):
        data["question"] = row.get("question", text if text is not None else "")
        if kind == "multiple_choice":
            data["options"] = _options(row)
    else:
        keys = ("text", "document") if kind == "summarization" else ("text", "prompt", "document")
        data["text"] = next((row[k] for k in keys if row.get(k) is not None), "")
        if not isinstance(data["text"], str):  # chat messages: show them as readable JSON
            data["text"] = json.dumps(data["text"], ensure_ascii=False, indent=1)
    answer = _teacher_answer(row, kind)
    confidence = row.get("confidence")
    data.update(
        row_id=str(row["id"]),
        dataset=spec.dataset,
        dataset_version=dataset_version,
        prompt_version=spec.prompt_version,
        teacher_label=answer,
        confidence=None if confidence is None else float(confidence),
        audit=bool(row.get("audit", False)) or str(row.get("route_reason", "")).startswith("audit"),
        route_reason=row.get("route_reason"),
    )
    to = {"nli": "premise", "multiple_choice": "question", "math": "question"}.get(kind, "text")
    typ, field = _answer_type(kind)
    result: list[dict[str, Any]] = []
    if answer is not None:
        result.append({"from_name": "answer", "to_name": to, "type": typ, "value": {field: [answer]}})
    if kind == "math" and row.get("rationale"):
        result.append(
            {
                "from_name": "rationale",
                "to_name": to,
                "type": "textarea",
                "value": {"text": [row["rationale"]]},
            }
        )
    prediction: dict[str, Any] = {"model_version": spec.teacher, "result": result}
    if confidence is not None:
        prediction["score"] = float(confidence)
    return {"data": data, "predictions": [prediction]}


def build_tasks(
    rows: Iterable[Mapping[str, Any]], spec: ReviewProjectSpec, dataset_version: str | None = None
) -> list[dict[str, Any]]:
    """Tasks sorted by teacher confidence ascending (then row id): imported in this order, the most
    uncertain rows get the lowest task ids and come first in sequential views too."""
    tasks = [build_task(r, spec, dataset_version) for r in rows]
    return sorted(tasks, key=task_sort_key)


def task_sort_key(task: Mapping[str, Any]) -> tuple[float, str]:
    conf = task["data"].get("confidence")
    return (conf if conf is not None else float("inf"), str(task["data"]["row_id"]))


def _texts(item: Mapping[str, Any], field: str) -> str | None:
    values = item.get("value", {}).get(field)
    if not values:
        return None
    return "\n".join(str(v) for v in values) if isinstance(values, list) else str(values)


def parse_annotation(
    task_data: Mapping[str, Any], annotation: Mapping[str, Any], kind: str
) -> HumanAnnotation | None:
    """A finished Label Studio annotation as a `HumanAnnotation`; None for skipped (cancelled) ones."""
    if annotation.get("was_cancelled"):
        return None
    answer = rationale = reason = None
    rejected = False
    _, field = _answer_type(kind)
    for item in annotation.get("result") or []:
        name = item.get("from_name")
        if name == "answer":
            answer = _texts(item, field)
        elif name == "rationale":
            rationale = _texts(item, "text")
        elif name == "verdict":
            rejected = (_texts(item, "choices") or "") == "reject"
        elif name == "reason":
            reason = _texts(item, "text")
    completed_by = annotation.get("completed_by")
    if isinstance(completed_by, Mapping):
        completed_by = completed_by.get("email") or completed_by.get("id")
    return HumanAnnotation(
        row_id=str(task_data["row_id"]),
        annotator=str(completed_by),
        answer=answer,
        rejected=rejected,
        reason=reason,
        rationale=rationale,
        lead_time=annotation.get("lead_time"),
        teacher_label=task_data.get("teacher_label"),
        confidence=task_data.get("confidence"),
        audit=bool(task_data.get("audit", False)),
        dataset_version=task_data.get("dataset_version"),
        annotation_id=annotation.get("id"),
        task_id=annotation.get("task"),
        updated_at=str(annotation.get("updated_at") or annotation.get("created_at") or "") or None,
    )


def write_import_file(
    rows: Iterable[Mapping[str, Any]],
    path: str | Path,
    *,
    spec: ReviewProjectSpec,
    dataset_version: str | None = None,
) -> Path:
    """Write rows as a Label Studio import file (JSON list of tasks with `data` and `predictions`).

    For runs without a Label Studio server: create a project with the config written next to it
    (`<path stem>.label_config.xml`), then import the file in the UI or with
    `POST /api/projects/<id>/import`. Written atomically; returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = build_tasks(rows, spec, dataset_version)
    _atomic_write(path, json.dumps(tasks, ensure_ascii=False, indent=1) + "\n")
    _atomic_write(path.with_name(path.stem + ".label_config.xml"), label_config(spec))
    return path


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
