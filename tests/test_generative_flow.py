"""Generative students end to end: a user's own files declared per generative kind (math, multiple choice,
summarization, chat), one `potstill run` each through label -> route -> train -> evaluate -> register
on the real stack (Prefect test API, MLflow SQLite store, DVC, GX), then the registered model answers.

The math teacher is the tiny model taught once to answer `... #### 7` under the math teacher prompt
(conftest.math_teacher_dir), so what a student should learn is known: every third gold question's answer
is 7, and a student that learned from the teacher's labels reaches the teacher's exact match. The other
kinds use the random tiny model as teacher: their numbers mean nothing, their plumbing is what is tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from conftest import CACHE
from generative_data import OPTIONS, declare, write_digest, write_quiz, write_sums, write_talk
from mlflow.tracking import MlflowClient
from user_data import sentences

from potstill.cli import main
from potstill.data.catalog import Catalog
from potstill.kinds import get_kind

KINDS = {"sums": "math", "quiz": "multiple_choice", "digest": "summarization", "talk": "chat"}
INPUTS = {  # one row of each task's prompt fields, as a caller of the registered model sends them
    "sums": {"question": ["Sam has 3 apples and gets 4 more. How many apples does Sam have? (case 0)"]},
    "quiz": {"text": ["What does this review say? a gorgeous , witty film ."], "choices": [OPTIONS]},
    "digest": {"text": ["a gorgeous , witty film . the cast is wonderful ."]},
    "talk": {"text": ["Repeat this review back to me: a gorgeous , witty film ."]},
}


@pytest.fixture(scope="module")
def generative_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    rows = sentences(CACHE)
    base = tmp_path_factory.mktemp("generative-files")
    return {
        "sums": write_sums(base / "sums"),
        "quiz": write_quiz(base / "quiz", rows),
        "digest": write_digest(base / "digest", rows),
        "talk": write_talk(base / "talk", rows),
    }


def overrides(teacher: Path, steps: int, method: str, *extra: str) -> list[str]:
    pairs = [
        f"teacher.model={teacher}",
        "teacher.max_new_tokens=24",
        "student.max_new_tokens=24",
        "student.layers=[0, 3]",
        "student.batch_size=8",
        f"student.max_steps={steps}",
        "student.learning_rate=1e-3",
        "student.logging_steps=1",
        "student.eval_batch_size=16",
        f"distill.method={method}",
        *extra,
    ]
    return [x for p in pairs for x in ("-o", p)]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "method", "steps"),
    [
        ("sums", "sft", 30),
        ("sums", "logit_offline", 30),
        ("quiz", "sft", 3),
        ("digest", "sft", 3),
        ("talk", "sft", 3),
    ],
)
def test_a_generative_task_runs_end_to_end_and_its_registered_model_answers(
    prefect_api, project: Path, generative_files, tiny_model_dir: Path, math_teacher_dir: Path, capsys,
    name: str, method: str, steps: int,
):  # fmt: skip
    kind = get_kind(KINDS[name])
    teacher = math_teacher_dir if name == "sums" else tiny_model_dir
    base = ["--project", str(project)]
    assert main([*base, *declare(name, generative_files[name])]) == 0
    assert main([*base, "run", "--task", name, *overrides(teacher, steps, method)]) == 0
    out = capsys.readouterr().out
    assert f"potstill distill: task {name} done" in out

    client = MlflowClient()
    champion = client.get_model_version_by_alias(f"{name}-student", "champion")
    run = client.get_run(champion.run_id)
    metrics = run.data.metrics
    headline = kind.headline.removeprefix("student_")
    for who in ("teacher", "student_base", "student"):
        assert f"{who}_{headline}" in metrics, (who, headline)
    for key in ("generated_tokens_per_s", "tokens_per_answer", "latency_ms", "params", "size_mb"):
        assert metrics[f"student_{key}"] > 0, key
    assert 0.0 <= metrics["agreement"] <= 1.0
    assert run.data.tags["potstill.distill_method"] == method
    catalog = Catalog.from_file(project / "catalog/catalog.yaml").for_task(name)
    train = catalog.load("train_set")
    assert train and not {r["id"] for r in train} & {r["id"] for r in catalog.load("gold")}
    predictions = json.loads(
        Path(client.download_artifacts(run.info.run_id, "eval/gold_predictions.json")).read_text()
    )
    assert len(predictions) == len(catalog.load("gold")) and "student_response" in predictions[0]

    # The registered model generates: its text, what the kind reads out of it, a confidence.
    model = mlflow.pyfunc.load_model(f"models:/{name}-student@champion")
    answer = model.predict(pd.DataFrame(INPUTS[name]))
    assert list(answer.columns) == ["response", "answer", "confidence"] and len(answer) == 1
    assert isinstance(answer["response"][0], str) and 0.0 <= answer["confidence"][0] <= 1.0
    saved = next(Path(client.download_artifacts(run.info.run_id, "student")).rglob("potstill.json"))
    meta = json.loads(saved.read_text())
    assert meta["student"] == "generator" and meta["kind"] == kind.name
    assert meta["prompt"] == catalog.prompt("student_prompt").text

    if name == "talk":  # the teacher judged every answer by its likelihood (teacher_ = its own answers)
        for who in ("teacher", "student_base", "student"):
            assert metrics[f"{who}_teacher_logprob"] < 0 and metrics[f"{who}_teacher_judged_rows"] > 0, who
    if name == "quiz":
        assert answer["answer"][0] in (*OPTIONS, None)
        # The row the teacher could not label stays out of training and goes to review, not quarantine.
        review = {r["id"]: r for r in catalog.load("review_queue")}
        assert "parse error" in review["prompts-41"]["route_reason"]
        assert "prompts-41" not in {r["id"] for r in train}
        assert metrics["validation_teacher_labels_quarantined_rows"] == 0.0
    if name == "sums":
        # The teacher answers 7 everywhere; 7 of the 21 gold questions have that answer. The student
        # learned it from the teacher's labels (it was never taught under its own prompt).
        assert metrics["teacher_exact_match"] == pytest.approx(7 / 21)
        assert metrics["student_exact_match"] == pytest.approx(metrics["teacher_exact_match"])
        assert metrics["student_base_exact_match"] < metrics["student_exact_match"]
        assert metrics["agreement"] == 1.0 and metrics["student_no_answer_rate"] == 0.0
        assert answer["answer"][0] == "7" and "#### 7" in answer["response"][0]


@pytest.mark.slow
def test_a_chat_template_task_labels_trains_and_serves_inside_the_chat_turn(
    prefect_api, project: Path, generative_files, tiny_model_dir: Path, tokenizer
):
    """`--chat-template`: the teacher labels, the student trains and the registered model serves on the
    same chat-wrapped prompts; a champion of another format cannot be trained on further. (Multiple choice:
    the random tiny teacher scores options inside a chat turn fine, where its generations there would be
    nothing but the template's special tokens.)"""
    from potstill.chat import ChatTemplateError, chat_parts, wrap
    from potstill.data.tasks import load_task
    from potstill.prompts import PromptTemplate

    base = ["--project", str(project)]
    assert main([*base, *declare("quiz", generative_files["quiz"]), "--chat-template"]) == 0
    assert load_task(project / "catalog/tasks/quiz.yaml").chat_template is True
    assert main([*base, "run", "--task", "quiz", *overrides(tiny_model_dir, 2, "sft")]) == 0
    catalog = Catalog.from_file(project / "catalog/catalog.yaml").for_task("quiz")
    parts = chat_parts(tokenizer, "student")
    teacher = wrap(catalog.prompt("teacher_prompt"), parts)
    student = wrap(catalog.prompt("student_prompt"), parts)
    assert {r["prompt_digest"] for r in catalog.load("teacher_labels")} == {teacher.digest}
    client = MlflowClient()
    champion = client.get_model_version_by_alias("quiz-student", "champion")
    folder = Path(client.download_artifacts(champion.run_id, "student"))
    meta = json.loads(next(folder.rglob("potstill.json")).read_text())
    assert meta["prompt"] == student.text and meta["prompt"].startswith("<|im_start|>")
    wrapped = client.download_artifacts(champion.run_id, "prompts/student_prompt.chat.txt")
    assert Path(wrapped).read_text() == student.text
    # The same task without the chat template cannot continue from this champion.
    from potstill.chat import check_student_prompt
    from potstill.training.generator import saved_prompt

    with pytest.raises(ChatTemplateError, match="another student prompt"):
        plain = PromptTemplate("student_prompt", catalog.prompt("student_prompt").text)
        check_student_prompt(saved_prompt(next(folder.rglob("potstill.json")).parent), plain, "champion")
