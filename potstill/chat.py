"""Chat templates, applied once to the prompt templates so labeling, training and serving agree.

An instruction-tuned model answers best inside its chat template (`<|im_start|>user ... <|im_start|>
assistant`). Rather than wrapping prompts in every place that tokenizes one (the teacher's scoring and
generation, each method's tokenization, the generative student, the registered model), a task that
declares `chat_template: true` gets its templates rewritten here: the tokenizer's template rendered around
the prompt, so `head + prompt + tail` is again a plain `PromptTemplate`. Everything downstream (the shared
prefix the teacher caches, the tokens a method trains on, the prompt saved with the student and served by
the registry) then sees the same text, and the templates' digests change with the wrapping, so labels made
without it are never reused for it.

The teacher's prompts are wrapped with the teacher's tokenizer, the student's with the student's; a
tokenizer without a chat template is an error before anything runs, and so is a student (a champion a
retrain continues from) whose saved prompt is not the one this run would train and serve
(`check_student_prompt`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from potstill.errors import TaskError
from potstill.prompts import PromptTemplate

if TYPE_CHECKING:
    from potstill.config import RunConfig

_SLOT = "\u241fpotstill-prompt\u241f"  # a marker no chat template contains


class ChatTemplateError(TaskError):
    """A chat template that cannot be applied, or a student trained with another prompt format."""


def chat_parts(tokenizer: Any, who: str) -> tuple[str, str]:
    """(text before, text after) the user's message in `tokenizer`'s chat template, ready for the
    assistant's answer."""
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"the task declares chat_template: true, but the {who}'s tokenizer has no chat template; use an "
            "instruction-tuned model, or set chat_template: false in the task's declaration"
        )
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": _SLOT}], tokenize=False, add_generation_prompt=True
    )
    head, found, tail = text.partition(_SLOT)
    if not found:
        raise ChatTemplateError(f"the {who}'s chat template drops the user's message; cannot wrap prompts")
    return head, tail


def _escaped(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def wrap(template: PromptTemplate, parts: tuple[str, str]) -> PromptTemplate:
    """The template inside a chat turn: its `{field}` placeholders unchanged, the template's own text
    escaped so braces in it stay literal."""
    head, tail = parts
    return PromptTemplate(template.name, _escaped(head) + template.text + _escaped(tail))


def apply_chat_templates(
    templates: dict[str, PromptTemplate], teacher_tokenizer: Any | None, student_tokenizer: Any
) -> dict[str, PromptTemplate]:
    """The run's templates wrapped: `student_prompt` with the student's tokenizer, the teacher's
    prompts with the teacher's (`teacher_tokenizer` None: a served teacher that applies its own template
    to chat messages, `teacher.openai.chat`; its prompts stay as they are)."""
    student = chat_parts(student_tokenizer, "student")
    teacher = chat_parts(teacher_tokenizer, "teacher") if teacher_tokenizer is not None else None
    out = {}
    for name, template in templates.items():
        if name == "student_prompt":
            out[name] = wrap(template, student)
        else:
            out[name] = wrap(template, teacher) if teacher is not None else template
    return out


def check_student_prompt(saved: PromptTemplate, expected: PromptTemplate, where: str) -> None:
    """A student must be trained and served with the prompt this run renders (same chat template or
    none); anything else is an error before training, naming both."""
    if saved.text == expected.text:
        return
    raise ChatTemplateError(
        f"the student in {where} was built with another student prompt than this run uses, so it would be "
        f"trained and served on a format the labels were not made for (a changed chat_template or student "
        f"template).\n  student's prompt: {saved.text!r}\n  this run's:       {expected.text!r}\n"
        "Start from a fresh student (`potstill run`), or restore the task's template and chat_template."
    )


def chat_wrapped(templates: dict[str, PromptTemplate], cfg: RunConfig) -> dict[str, PromptTemplate]:
    """The task's templates inside the teacher's and the student's chat templates (`chat_template: true`);
    a served teacher applies its own, so it must be asked through chat messages."""
    from transformers import AutoTokenizer

    from potstill.models import weights_location

    teacher_tok = None
    if cfg.teacher.backend == "openai":
        if not cfg.teacher.openai.chat:
            raise ChatTemplateError(
                "the task declares chat_template: true and the teacher is served (teacher.backend: openai): "
                "set teacher.openai.chat: true, so the server applies the teacher's chat template"
            )
    else:
        teacher_tok = AutoTokenizer.from_pretrained(weights_location(cfg.teacher.model))
    source = cfg.teacher.model if cfg.student.model == "pruned-teacher" else cfg.student.model
    if source is None:
        raise ChatTemplateError(
            "chat_template: true needs a local student (student.model) to read its template"
        )
    student_tok = AutoTokenizer.from_pretrained(weights_location(source))
    return apply_chat_templates(templates, teacher_tok, student_tok)
