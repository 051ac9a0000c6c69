"""The generative student (potstill/training/generator.py) and what it learns to write
(potstill/training/responses.py): the response per kind and `student.response`, saving and loading,
and every method teaching a tiny random model an answer it did not write before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import MATH_ANSWER, math_questions
from transformers import LlamaForCausalLM

from potstill.config import validate
from potstill.kinds import get_kind, prompt_row, read_answer
from potstill.labeling.signals import RowSignals
from potstill.prompts import PromptTemplate
from potstill.training.classifier import Classifier
from potstill.training.generator import Generator, load_student, student_type
from potstill.training.methods import DistillInputs, train
from potstill.training.methods.data import encode_completion
from potstill.training.methods.logit_offline import aligned_targets
from potstill.training.responses import chain_of_thought, completion_text

MATH = get_kind("math")
STUDENT = PromptTemplate("student_prompt", MATH.student_prompt)
TEACHER = PromptTemplate("teacher_prompt", MATH.teacher_prompt)
SOLUTION = MATH_ANSWER.strip()  # "So 3 + 4 = 7.\n#### 7"


def _math_rows(n: int = 16) -> list[dict[str, Any]]:
    return [
        {"id": f"q{i}", "question": r["problem"], "label": "7", "rationale": SOLUTION}
        for i, r in enumerate(math_questions(n))
    ]


def test_what_a_student_learns_to_write_per_kind_and_response():
    row = {"id": 1, "label": "7", "rationale": "3 + 4 = 7.\n#### 7\n\nQuestion: the next one"}
    assert completion_text(row, "math", "full") == " 3 + 4 = 7.\n#### 7"  # cut after the #### line
    assert completion_text(row, "math", "answer") == " #### 7"
    corrected = {**row, "label": "8"}  # a reviewer changed the answer: the reasoning argues for 7
    assert completion_text(corrected, "math", "full") == " #### 8"
    assert completion_text({"id": 2, "label": "7"}, "math", "full") == " #### 7"  # no chain of thought
    assert completion_text({"id": 3, "label": "a short reply"}, "chat") == " a short reply"
    assert completion_text({"id": 4, "label": "positive"}, "classification") == " positive"
    assert chain_of_thought("no hashes here") == "no hashes here"
    with pytest.raises(ValueError, match="no label"):
        completion_text({"id": 5, "label": None}, "summarization")


def test_kinds_derive_prompt_fields_and_read_answers():
    row = {"id": 1, "text": "Capital of France?", "choices": ["Paris", "Rome"]}
    assert prompt_row("multiple_choice", row)["choices_text"] == "A. Paris B. Rome"
    assert prompt_row("chat", {"text": "hi"}) == {"text": "hi"}
    assert read_answer("multiple_choice", "B", row) == "Rome"
    assert read_answer("multiple_choice", "Paris, of course", row) == "Paris"
    assert read_answer("math", "so 3 + 4 = 7\n#### 7", {}) == "7"
    assert read_answer("math", "I do not know", {}) is None
    assert read_answer("chat", "  hello  ", {}) == "hello" and read_answer("chat", " ", {}) is None


def test_a_generator_saves_loads_and_answers_the_same(tiny_model_dir: Path, tokenizer, tmp_path: Path):
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    gen = Generator(model, tokenizer, STUDENT, "math", "answer", max_new_tokens=12, batch_size=3)
    rows = [{"question": r["problem"]} for r in math_questions(5)]
    first = gen.generate(rows)
    assert len(first) == 5 and all(0 < a.tokens <= 12 and 0.0 < a.confidence <= 1.0 for a in first)
    one_by_one = [gen.generate([r])[0] for r in rows]  # left padding does not change an answer
    assert [a.response for a in one_by_one] == [a.response for a in first]
    folder = gen.save(tmp_path / "gen")
    assert student_type(folder) == "generator"
    back = load_student(folder)
    assert isinstance(back, Generator) and (back.kind, back.response, back.max_new_tokens) == (
        "math",
        "answer",
        12,
    )
    assert [a.response for a in back.generate(rows)] == [a.response for a in first]
    clf = Classifier(model, tokenizer, PromptTemplate("s", "Text: {text}\nLabel:"), ["a", "b"]).save(
        tmp_path / "c"
    )
    assert student_type(clf) == "classifier" and isinstance(load_student(clf), Classifier)


def test_gold_answers_are_reused_only_for_the_same_model_and_rows(
    tiny_model_dir: Path, tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The untrained student of every run of a task is the same model on the same gold rows: its answers
    come from the cache the second time, and a changed file or row makes them again."""
    import tasks.evaluate as E

    monkeypatch.setenv("POTSTILL_CACHE", str(tmp_path / "cache"))
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    folder = Generator(model, tokenizer, STUDENT, "math", "answer", max_new_tokens=6).save(tmp_path / "g")
    gold = _math_rows(3)
    first = E.predict_gold.fn(folder, gold, 2, "untrained")
    assert len(first["responses"]) == 3 and first["tokens_per_answer"] > 0

    def no_load(*_: Any, **__: Any) -> None:
        raise AssertionError("generated again")

    monkeypatch.setattr(E, "load_student", no_load)
    assert E.predict_gold.fn(folder, gold, 2, "untrained") == first
    with pytest.raises(AssertionError, match="generated again"):  # one row more: not the same rows
        E.predict_gold.fn(folder, _math_rows(4), 2, "untrained")
    (folder / "notes.txt").write_text("a file more")  # not the same folder
    with pytest.raises(AssertionError, match="generated again"):
        E.predict_gold.fn(folder, gold, 2, "untrained")
    assert E.answers_key(folder, gold, 2) != E.answers_key(folder, gold, 3)


def _inputs(
    student: Generator,
    out: Path,
    method: str,
    steps: int,
    teacher: Path | None = None,
    lr: float = 1e-2,
    **opts,
):
    cfg = validate(
        {
            "teacher": {"model": str(teacher) if teacher else "unused"},
            "student": {"max_steps": steps, "batch_size": 4, "learning_rate": lr, "logging_steps": 1},
            "distill": {"method": method, method: opts},
        }
    )
    return DistillInputs.for_run(
        cfg, student, _math_rows(), out, seed=0, on_log=None, teacher_prompt=TEACHER, signals_dir=None
    )


def _generator(tiny_model_dir: Path, tokenizer, response: str = "full") -> Generator:
    model = LlamaForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return Generator(model, tokenizer, STUDENT, "math", response, max_new_tokens=16)


@pytest.mark.parametrize(
    ("method", "response", "steps"), [("sft", "answer", 40), ("step_by_step", "answer", 40)]
)
def test_a_tiny_random_model_learns_to_write_the_answer(
    tiny_model_dir: Path, tokenizer, tmp_path: Path, method: str, response: str, steps: int
):
    gen = _generator(tiny_model_dir, tokenizer, response)
    questions = [{"question": r["problem"]} for r in math_questions(6, 500)]  # never trained on
    assert not any(a.answer == "7" for a in gen.generate(questions))
    # step_by_step: a 64-wide model tells the two tasks apart within 40 steps when the label task weighs
    # more (with equal weights it writes the answer then keeps repeating its digit).
    opts = {"rationale_weight": 0.3} if method == "step_by_step" else {}
    result = train(_inputs(gen, tmp_path, method, steps, **opts))
    assert result.steps == steps and result.tokens_per_s > 0
    after = gen.generate(questions)
    assert all(a.answer == "7" for a in after), [a.response for a in after]
    # step_by_step also learned the chain of thought as its second task, yet infers the short answer.
    # (`full` is learned end to end in tests/test_generative_flow.py, from the taught math teacher.)
    assert all(a.response == "#### 7" for a in after), [a.response for a in after]
    back = load_student(gen.save(tmp_path / "saved"))
    assert [a.response for a in back.generate(questions)] == [a.response for a in after]


@pytest.mark.parametrize("method", ["logit_online", "hidden_states", "on_policy"])
def test_teacher_in_memory_methods_train_a_generator(
    tiny_model_dir: Path, tokenizer, math_teacher_dir: Path, tmp_path: Path, method: str
):
    gen = _generator(tiny_model_dir, tokenizer)
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    result = train(_inputs(gen, tmp_path, method, 3, teacher=math_teacher_dir, lr=1e-3))
    assert result.steps == 3 and np.isfinite(result.final_loss)
    changed = [k for k, v in gen.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no weight moved"


def test_on_policy_samples_a_whole_answer_for_a_generative_kind(tiny_model_dir: Path, tokenizer, tmp_path):
    from potstill.training.methods.on_policy import generation_length

    gen = _generator(tiny_model_dir, tokenizer)
    assert generation_length(_inputs(gen, tmp_path, "on_policy", 1)) == 128  # student.max_new_tokens
    assert generation_length(_inputs(gen, tmp_path, "on_policy", 1, max_new_tokens=5)) == 5


def test_offline_signals_line_up_with_the_math_response(tokenizer):
    """The teacher generated the solution's tokens; the student's completion for `full` is the same text,
    so every position but the final EOS carries the teacher's stored distribution."""
    row = {"id": "q", "label": "7", "rationale": SOLUTION}
    completion = encode_completion(tokenizer, completion_text(row, "math", "full"))
    generated = tokenizer(" " + SOLUTION, add_special_tokens=False)["input_ids"]
    k = 4
    stored = RowSignals(
        "q",
        np.array(generated, dtype=np.int32),
        np.zeros(len(generated), dtype=np.float16),
        np.tile(np.arange(k, dtype=np.int32), (len(generated), 1)),
        np.full((len(generated), k), -1.5, dtype=np.float16),
        np.zeros(len(generated), dtype=np.float16),
    )
    top_ids, _, _, same = aligned_targets(completion, stored, k)
    assert int(same) == len(generated) == len(completion) - 1
    assert int(top_ids[-1, 0]) == tokenizer.eos_token_id  # one-hot on EOS, which the teacher never wrote
    short = encode_completion(tokenizer, completion_text(row, "math", "answer"))
    assert int(aligned_targets(short, stored, k)[3]) < len(short) - 1  # another text: one-hot after it
