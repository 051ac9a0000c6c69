"""What a task kind is: one object per kind says which fields a row has, how the teacher labels it, how
its answers are read and scored, and which prompts a new task of that kind starts from.

Everything that used to switch on a kind's name (validation columns, the labeling function, review
widgets, the registry metric, default prompts) asks its `Kind` instead, so adding a kind is one module
in this package (its object in `KINDS`) plus its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from potstill.kinds.common import KindSpec, Labeled
from potstill.labeling.teacher.base import TeacherBackend
from potstill.prompts import PromptTemplate

LabelFn = Callable[[TeacherBackend, Sequence[dict[str, Any]], PromptTemplate, KindSpec], list[Labeled]]
# (gold answers, predicted answers, label set) -> metrics without the model prefix (accuracy, macro_f1, ...)
ScoreFn = Callable[[Sequence[str], Sequence[str], Sequence[str]], dict[str, float]]


@dataclass(frozen=True)
class Kind:
    """A task kind.

    - `fields`: the input fields a row must have (what the prompts render); `id` and `label` come on top.
    - `closed`: answers come from a fixed label set (classification, NLI) or the row's own choices
      (multiple choice) and are scored, never generated; open kinds generate free text.
    - `fixed_labels`: the task declares its label set (and the student is a classifier over it).
    - `default_labels`: the label set when a task declares none (NLI's three labels).
    - `headline`: the metric a student of this kind is judged and promoted by.
    - `score`: how predictions are evaluated against gold answers (None: no student of this kind yet;
      its teacher labels are still produced, `potstill step label`).
    - `parse`: reads the final answer out of a generated text (math), where the kind has one.
    - `agree`: how teacher-student agreement is measured for the kind, (teacher predictions, student
      predictions) -> a share in [0, 1]: the same number for math, the same choice for multiple choice,
      ROUGE-L between the two texts for free text (`potstill.kinds.scores`). None means plain equality
      of labels (`potstill.metrics.agreement`), right for the fixed-label kinds.
    - `derive`, `derived_fields`: fields a prompt may use that the kind computes from a row (multiple
      choice's `choices_text`, the lettered options), the same at labeling, training and serving.
    - `read`: what a generative student's text answers, given its row (math: the `#### N` number;
      multiple choice: the option it names); None: the text itself (summarization, chat).
    - `teacher_prompt`, `student_prompt`, `rationale_prompt`: what `potstill task new` writes when the
      user brings no prompt files; `{labels}` is replaced by the task's label list when written.
    """

    name: str
    fields: tuple[str, ...]
    label: LabelFn
    closed: bool
    fixed_labels: bool
    teacher_prompt: str
    student_prompt: str
    rationale_prompt: str | None = None
    default_labels: tuple[str, ...] = ()
    headline: str = "student_accuracy"
    description: str = ""
    list_fields: tuple[str, ...] = ()  # fields holding a list (multiple choice's `choices`), not text
    score: ScoreFn | None = None
    parse: Callable[[str], str | None] | None = None
    agree: Callable[[Sequence[str | None], Sequence[str | None]], float] | None = None
    derive: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    derived_fields: tuple[str, ...] = ()
    read: Callable[[str, dict[str, Any]], str | None] | None = None
    default_stop: tuple[str, ...] = ()  # where the teacher stops generating when teacher.stop is empty
    judge_by_teacher: bool = False  # evaluation also asks the teacher how likely each answer is (chat)

    @property
    def text_fields(self) -> tuple[str, ...]:
        """The string fields: every row needs them, non-empty and within the length bound."""
        return tuple(f for f in self.fields if f not in self.list_fields)

    @property
    def generative(self) -> bool:
        return not self.closed

    def labels_for(self, declared: Sequence[str]) -> tuple[str, ...]:
        """The task's label set: what it declares, else the kind's default."""
        return tuple(declared) or self.default_labels

    def render_default(self, which: str, labels: Sequence[str]) -> str | None:
        """The default template text of `which` (teacher, student, rationale) for a task with `labels`."""
        text = {"teacher": self.teacher_prompt, "student": self.student_prompt}.get(which)
        if which == "rationale":
            text = self.rationale_prompt
        if text is None:
            return None
        return text.replace("{labels}", ", ".join(labels))
