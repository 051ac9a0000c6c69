"""Chat templates (potstill/chat.py): the task's templates wrapped once in the tokenizer's chat turn, so
labeling, training and serving render the same text; what cannot be wrapped, or a student trained on
another format, is an error before anything runs."""

from __future__ import annotations

import copy

import pytest

from potstill.chat import ChatTemplateError, apply_chat_templates, chat_parts, check_student_prompt, wrap
from potstill.prompts import PromptTemplate

STUDENT = PromptTemplate("student_prompt", "Question: {question}\nAnswer:")
TEACHER = PromptTemplate("teacher_prompt", "Solve it step by step.\n\nQuestion: {question}\nAnswer:")


def test_a_wrapped_template_renders_the_chat_turn_around_the_prompt(tokenizer):
    head, tail = chat_parts(tokenizer, "student")
    assert "<|im_start|>user" in head and tail.endswith("<|im_start|>assistant\n")
    wrapped = wrap(STUDENT, (head, tail))
    assert wrapped.fields == ["question"] and wrapped.name == STUDENT.name
    row = {"question": "What is 3 + 4?"}
    rendered = wrapped.render(row)
    expected = tokenizer.apply_chat_template(
        [{"role": "user", "content": STUDENT.render(row)}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected  # exactly what the model's own chat template makes of the prompt
    assert wrapped.digest != STUDENT.digest  # labels made without the wrapping are never reused
    braces = wrap(STUDENT, ("{system} ", " {end}"))  # a template's literal braces stay literal
    assert braces.render(row).startswith("{system} Question: What is 3 + 4?")


def test_teacher_and_student_are_wrapped_with_their_own_tokenizers(tokenizer):
    other = copy.deepcopy(tokenizer)
    other.chat_template = (
        "{% for m in messages %}[{{ m['content'] }}]{% endfor %}{% if add_generation_prompt %}=>{% endif %}"
    )
    out = apply_chat_templates({"teacher_prompt": TEACHER, "student_prompt": STUDENT}, other, tokenizer)
    assert out["teacher_prompt"].render({"question": "q"}) == "[" + TEACHER.render({"question": "q"}) + "]=>"
    assert out["student_prompt"].render({"question": "q"}).startswith("<|im_start|>")
    served = apply_chat_templates({"teacher_prompt": TEACHER, "student_prompt": STUDENT}, None, tokenizer)
    assert served["teacher_prompt"] == TEACHER  # a served teacher applies its own template


def test_a_tokenizer_without_a_chat_template_and_a_student_of_another_format_are_errors(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    with pytest.raises(ChatTemplateError, match="student's tokenizer has no chat template"):
        apply_chat_templates({"student_prompt": STUDENT}, tokenizer, plain)
    wrapped = wrap(STUDENT, chat_parts(tokenizer, "student"))
    check_student_prompt(wrapped, wrapped, "champion")  # same format: fine
    with pytest.raises(ChatTemplateError, match="another student prompt") as err:
        check_student_prompt(STUDENT, wrapped, "the champion's folder")
    assert "the champion's folder" in str(err.value) and "<|im_start|>" in str(err.value)
