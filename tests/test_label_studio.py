"""The review client against a real Label Studio server, started by `infra/label-studio/server.sh`.

One server for the session: installed once into `$POTSTILL_CACHE/label-studio/venv` (a few minutes,
then reused), started on a free port on 127.0.0.1 with a temporary data dir and a random admin token
(~40 s for the first start's migrations), stopped at the end. Reviewers' actions (annotations, skips,
drafts, asking for the next task) go through the same REST calls the Label Studio UI makes.
"""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from potstill.review import (
    KINDS,
    Outbox,
    ReviewClient,
    ReviewProjectSpec,
    ReviewServerError,
    ReviewServerUnavailable,
    ReviewSettings,
    build_task,
    push_rows,
    route_to_review,
    sync_outbox,
)
from potstill.review.merge import merge_reviews

if TYPE_CHECKING:
    from conftest import LabelStudioServer

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("negative", "positive")


def _rows(confs: list[float], label: str = "positive", prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {"id": f"{prefix}{i}", "text": f"sentence {i}", "label": label, "confidence": c}
        for i, c in enumerate(confs)
    ]


def _choice(value: str, name: str = "answer") -> dict[str, Any]:
    return {"from_name": name, "to_name": "text", "type": "choices", "value": {"choices": [value]}}


def _annotate(http: httpx.Client, task_id: int, result: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    r = http.post(f"/api/tasks/{task_id}/annotations/", json={"result": result, **extra})
    assert r.status_code == 201, r.text
    return r.json()


def test_project_is_created_once_with_uncertainty_first(label_studio: LabelStudioServer) -> None:
    client = label_studio.client()
    spec = ReviewProjectSpec("polarity_prompts", "v1", labels=LABELS, teacher="smol@v1")
    first = client.ensure_project(spec)
    assert client.ensure_project(spec) == first
    project = client._sdk.projects.get(id=first)
    assert project.title == "potstill review: polarity_prompts @ v1"
    assert project.sampling == "Uncertainty sampling" and project.model_version == "smol@v1"
    views = list(client._sdk.views.list(project=first))
    assert [v.data["ordering"] for v in views] == [["tasks:predictions_score"]]
    # Label Studio titles stop at 50 characters: longer ones are cut and made unique with a hash.
    long = ReviewProjectSpec("polarity_prompts", "teacher_prompt@v1 md5:0123abcd", labels=LABELS)
    other = ReviewProjectSpec("polarity_prompts", "teacher_prompt@v1 md5:4567ef01", labels=LABELS)
    assert len(long.title) == 50 and long.title != other.title
    assert client.ensure_project(long) == client.ensure_project(long) != client.ensure_project(other)


def test_push_imports_once_with_predictions_most_uncertain_first(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    client = label_studio.client()
    spec = ReviewProjectSpec("push", "p@v1", labels=LABELS, teacher="smol")
    rows = _rows([0.7, 0.3, 0.9, 0.1, 0.5])
    first = push_rows(client, spec, rows[:3], dataset_version="v1", outbox=tmp_path / "outbox.jsonl")
    second = push_rows(client, spec, rows, dataset_version="v1", outbox=tmp_path / "outbox.jsonl")
    assert (first.target, first.created, first.skipped) == ("label-studio", 3, 0)
    assert (second.created, second.skipped, second.queued) == (2, 3, 0)
    again = push_rows(client, spec, rows, dataset_version="v1")
    assert (again.created, again.skipped) == (0, 5)

    tasks = sorted(client._sdk.tasks.list(project=first.project_id), key=lambda t: t.id)
    assert [t.data["row_id"] for t in tasks] == ["r1", "r0", "r2", "r3", "r4"]  # each batch by confidence
    by_row = {t.data["row_id"]: t for t in tasks}
    pred = by_row["r3"].predictions[0]
    assert (pred.score, pred.model_version) == (0.1, "smol")
    assert pred.result[0]["value"] == {"choices": ["positive"]}
    assert by_row["r3"].data["dataset_version"] == "v1" and by_row["r3"].data["teacher_label"] == "positive"
    with label_studio.http() as http:  # the label stream serves the least confident row first
        nxt = http.get(f"/api/projects/{first.project_id}/next")
        assert nxt.status_code == 200 and nxt.json()["data"]["row_id"] == "r3"


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_has_a_working_config_and_round_trips(label_studio: LabelStudioServer, kind: str) -> None:
    rows = {
        "classification": {"id": "k", "text": "good film", "label": "positive"},
        "nli": {
            "id": "k",
            "premise": "A man sleeps.",
            "hypothesis": "He is awake.",
            "label": "contradiction",
        },
        "multiple_choice": {"id": "k", "question": "2+2?", "choices": ["3", "4", "5"], "label": "4"},
        "math": {"id": "k", "question": "2+3?", "answer": "5", "rationale": "2 plus 3 is 5"},
        "summarization": {"id": "k", "document": "A long text.", "label": "Short."},
        "chat": {"id": "k", "prompt": [{"role": "user", "content": "hi"}], "output": "hello!"},
    }
    labels = {"classification": LABELS, "nli": ("entailment", "neutral", "contradiction")}.get(kind, ())
    spec = ReviewProjectSpec("kinds", kind, kind, labels=labels)
    row = {**rows[kind], "confidence": 0.4}
    client = label_studio.client()
    pid = client.ensure_project(spec)  # Label Studio validates the config here
    created = client.import_tasks(pid, [build_task(row, spec)])
    assert created.created == 1
    teacher_result = build_task(row, spec)["predictions"][0]["result"]
    with label_studio.http() as http:  # the reviewer submits the pre-annotation unchanged
        _annotate(http, created.task_ids[0], teacher_result, lead_time=1.5)
    [answer] = client.pull(spec)
    expected = {"math": "5", "summarization": "Short.", "chat": "hello!"}.get(kind, row.get("label"))
    assert answer.answer == expected and answer.teacher_label == expected and not answer.rejected
    if kind == "math":
        assert answer.rationale == "2 plus 3 is 5"


def test_pull_and_merge_two_annotators_skip_draft_and_reject(label_studio: LabelStudioServer) -> None:
    client = label_studio.client()
    spec = ReviewProjectSpec("merge", "p@v1", labels=LABELS, teacher="smol")
    rows = _rows([0.51, 0.52, 0.53, 0.54, 0.55, 0.97, 0.56])
    rows[5]["route_reason"] = "audit: confidence 0.970 >= 0.6, random sample"
    push = push_rows(client, spec, rows, dataset_version="v7")
    tasks = {t.data["row_id"]: t.id for t in client._sdk.tasks.list(project=push.project_id)}
    other = client._sdk.users.create(
        username="reviewer2", email="reviewer2@potstill.test", password="pw-12345678"
    )
    me = client.whoami()["id"]
    with label_studio.http() as http:
        # r0: both correct the teacher; r1: they disagree (1-1 tie); r5 (audit): both agree with the teacher
        for rid, mine, theirs in [
            ("r0", "negative", "negative"),
            ("r1", "positive", "negative"),
            ("r5", "positive", "positive"),
        ]:
            _annotate(http, tasks[rid], [_choice(mine)], lead_time=4.0, completed_by=me)
            _annotate(http, tasks[rid], [_choice(theirs)], lead_time=6.0, completed_by=other.id)
        # r2: rejected with a reason
        reject = [_choice("reject", "verdict")]
        reject.append(
            {"from_name": "reason", "to_name": "text", "type": "textarea", "value": {"text": ["not English"]}}
        )
        _annotate(http, tasks["r2"], reject, lead_time=2.0)
        # r3: skipped; r4: only a draft; r6: untouched
        _annotate(http, tasks["r3"], [], was_cancelled=True, lead_time=1.0)
        draft = http.post(
            f"/api/tasks/{tasks['r4']}/drafts", json={"result": [_choice("negative")], "lead_time": 3.0}
        )
        assert draft.status_code == 201, draft.text

    answers = client.pull(spec)
    assert sorted({a.row_id for a in answers}) == ["r0", "r1", "r2", "r5"]
    merged = merge_reviews(rows, answers, include_pending=False, dataset_version="v7")
    status = {k: v.status for k, v in merged.resolved.items()}
    assert status == {"r0": "corrected", "r1": "held_back", "r2": "rejected", "r5": "agreed"}
    assert merged.rejected == {"r2": ("not English",)} and merged.held_back == ["r1"]
    assert merged.resolved["r1"].disagreement and not merged.resolved["r0"].disagreement
    assert sorted(merged.pending) == ["r3", "r4", "r6"]
    assert [(r["id"], r["label"], r["teacher_label"]) for r in merged.rows] == [
        ("r0", "negative", "positive"),
        ("r5", "positive", "positive"),
    ]
    s = merged.stats
    assert (s.reviewed, s.agreed, s.corrected, s.rejected, s.held_back, s.disagreements) == (4, 1, 1, 1, 1, 1)
    assert (s.audit_reviewed, s.teacher_precision_audit) == (1, 1.0)
    assert s.total_lead_time_s == 32.0 and s.annotations == 7

    # A second pull and merge sees exactly the same thing.
    assert client.pull(spec) == answers
    assert merge_reviews(rows, client.pull(spec), include_pending=False, dataset_version="v7") == merged


def test_wrong_token_is_a_clear_error_without_the_token(label_studio: LabelStudioServer, caplog) -> None:
    wrong = "not-the-token-" + secrets.token_hex(8)
    caplog.set_level(logging.DEBUG)
    client = ReviewClient(ReviewSettings(label_studio.url, wrong))
    with pytest.raises(ReviewServerError) as err:
        client.ensure_project(ReviewProjectSpec("x", "v1", labels=LABELS))
    message = str(err.value)
    assert message == (
        f"Label Studio at {label_studio.url} rejected the API token (401); "
        "set LABEL_STUDIO_API_KEY to a valid token for this server"
    )
    assert not isinstance(err.value, ReviewServerUnavailable)
    for text in (
        message,
        repr(err.value),
        repr(client),
        repr(ReviewSettings(label_studio.url, wrong)),
        caplog.text,
    ):
        assert wrong not in text and label_studio.token not in text


def test_import_file_without_label_studio_is_importable(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    spec = ReviewProjectSpec("offline", "p@v1", labels=LABELS, teacher="smol")
    result = route_to_review(_rows([0.4, 0.2]), spec, import_file=tmp_path / "review.json", env={})
    assert result.target == "file" and "not configured" in result.message
    tasks = json.loads((tmp_path / "review.json").read_text())
    assert [t["data"]["row_id"] for t in tasks] == ["r1", "r0"]
    assert tasks[0]["predictions"][0]["score"] == 0.2
    # The file and the config next to it import into a real project as they are.
    sdk = label_studio.client()._sdk
    project = sdk.projects.create(
        title="by hand", label_config=(tmp_path / "review.label_config.xml").read_text()
    )
    imported = sdk.projects.import_tasks(id=project.id, request=tasks)
    assert (imported.task_count, imported.prediction_count) == (2, 2)


def test_unreachable_server_queues_rows_in_the_outbox_until_it_is_back(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """Really stops the server (restart with its data dir takes ~5 s) rather than faking a closed port."""
    outbox = tmp_path / "review-outbox.jsonl"
    spec = ReviewProjectSpec("outbox", "p@v1", labels=LABELS, teacher="smol")
    client = label_studio.client()
    rows = _rows([0.5, 0.2, 0.4])
    label_studio.stop()
    try:
        down = push_rows(client, spec, rows[:2], dataset_version="v1", outbox=outbox)
        assert (down.target, down.queued) == ("outbox", 2) and "unreachable" in down.message
        again = push_rows(client, spec, rows, dataset_version="v1", outbox=outbox)  # r0, r1 queued twice
        assert (again.target, again.queued) == ("outbox", 3)
        with pytest.raises(ReviewServerUnavailable):
            sync_outbox(client, outbox)
        assert len(Outbox(outbox)) == 3
    finally:
        label_studio.start()
    new = _rows([0.3], prefix="n")
    back = push_rows(client, spec, new, dataset_version="v1", outbox=outbox)
    assert (back.target, back.created, back.delivered_from_outbox, back.queued) == ("label-studio", 4, 3, 0)
    assert Outbox(outbox).entries() == []
    assert sync_outbox(client, outbox) == 0
    ids = sorted(t.data["row_id"] for t in client._sdk.tasks.list(project=back.project_id))
    assert ids == ["n0", "r0", "r1", "r2"]


def test_half_configured_environment_is_an_error() -> None:
    with pytest.raises(ReviewServerError, match="LABEL_STUDIO_API_KEY is not set"):
        ReviewSettings.from_env({"LABEL_STUDIO_URL": "http://127.0.0.1:8080"})
    with pytest.raises(ReviewServerError, match="LABEL_STUDIO_URL is not"):
        ReviewSettings.from_env({"LABEL_STUDIO_API_KEY": "abc"})
    assert ReviewSettings.from_env({}) is None
    assert "abc" not in repr(
        ReviewSettings.from_env({"LABEL_STUDIO_URL": "http://x", "LABEL_STUDIO_API_KEY": "abc"})
    )


def test_a_reviewers_corrected_generated_answer_is_what_the_next_student_learns(
    label_studio: LabelStudioServer,
) -> None:
    """Math and chat in the real Label Studio: the text area comes pre-filled with the teacher's answer;
    the reviewer edits it; the merged row carries the human answer, and the generative student's response
    for it is that answer (for math without the teacher's reasoning, which argued for another number)."""
    from potstill.training.responses import completion_text

    client = label_studio.client()
    cases = {
        "math": (
            {"id": "m1", "question": "2+3?", "label": "6", "answer": "6", "rationale": "2 + 3 = 6\n#### 6"},
            "5",
            " #### 5",
        ),
        "chat": (
            {"id": "c1", "text": "Say hi.", "label": "bye", "output": "bye"},
            "hello there",
            " hello there",
        ),
    }
    for kind, (row, corrected, learned) in cases.items():
        spec = ReviewProjectSpec(f"gen-{kind}", kind, kind)
        row = {**row, "confidence": 0.2}
        task = build_task(row, spec)
        prefilled = task["predictions"][0]
        assert prefilled["score"] == pytest.approx(0.2) and any(
            r["type"] == "textarea" and r["value"]["text"] == [row["label"]] for r in prefilled["result"]
        )
        pid = client.ensure_project(spec)
        created = client.import_tasks(pid, [task])
        to = "question" if kind == "math" else "text"
        edited = [{"from_name": "answer", "to_name": to, "type": "textarea", "value": {"text": [corrected]}}]
        with label_studio.http() as http:
            _annotate(http, created.task_ids[0], edited, lead_time=2.0)
        answers = client.pull(spec)
        merged = merge_reviews([row], answers, include_pending=False, dataset_version="v1")
        assert merged.resolved[row["id"]].status == "corrected"
        [trained] = merged.rows
        assert trained["label"] == corrected and trained["label_source"] == "human"
        assert completion_text(trained, kind, "full") == learned


def _without_text(task: dict[str, Any]) -> dict[str, Any]:
    """A task Label Studio refuses (400: the config's `$text` is not in its data)."""
    return {**task, "data": {k: v for k, v in task["data"].items() if k != "text"}}


def test_a_refused_task_is_set_aside_and_never_blocks_the_outbox(
    label_studio: LabelStudioServer, tmp_path: Path, caplog
) -> None:
    """Before: one task the server answers 400 to failed every sync and every later push, and a torn line
    vanished at the next rewrite. Now the batch is split until the refused task is alone; it goes to the
    dead-letter file with the server's answer, the others arrive, and the torn line is kept."""
    outbox = tmp_path / "outbox.jsonl"
    spec = ReviewProjectSpec("refused", "p@v1", labels=LABELS, teacher="smol")
    client = label_studio.client()
    queued = [build_task(r, spec) for r in _rows([0.5, 0.2, 0.4, 0.6, 0.1], prefix="q")]
    queued[2] = _without_text(queued[2])  # row q2
    box = Outbox(outbox)
    box.add(spec, queued)
    with outbox.open("a") as f:
        f.write('{"project": {"task": "refu')  # a crash mid-append
    with caplog.at_level(logging.WARNING):
        result = push_rows(client, spec, _rows([0.3], prefix="n"), dataset_version="v1", outbox=outbox)
    assert (result.target, result.created, result.rejected, result.queued) == ("label-studio", 5, 1, 0)
    assert "1 refused by the server" in result.message and str(box.rejected_path) in result.message
    ids = sorted(t.data["row_id"] for t in client._sdk.tasks.list(project=result.project_id))
    assert ids == ["n0", "q0", "q1", "q3", "q4"]
    (dead,) = box.rejected()
    assert dead["task"]["data"]["row_id"] == "q2" and dead["status"] == 400
    assert '"text" key is expected' in dead["error"] and dead["project"] == spec.to_dict()
    assert box.torn_path.read_text() == '{"project": {"task": "refu\n'
    assert "moved to" in caplog.text and "refused review task for row q2" in caplog.text
    # Nothing is left to block the next delivery, and the dead letter stays for inspection.
    assert box.entries() == [] and sync_outbox(client, outbox) == 0 and len(box.rejected()) == 1
    assert label_studio.token not in outbox.read_text() + box.rejected_path.read_text()


def test_killed_between_import_and_outbox_removal_loses_and_duplicates_nothing(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """A real SIGKILL of the delivering process right after Label Studio accepted the import, before the
    outbox forgot the rows; the next sync delivers nothing twice and leaves the outbox empty."""
    import subprocess
    import sys

    outbox = tmp_path / "outbox.jsonl"
    spec = ReviewProjectSpec("killed", "p@v1", labels=LABELS, teacher="smol")
    Outbox(outbox).add(spec, [build_task(r, spec) for r in _rows([0.5, 0.2, 0.4], prefix="k")])
    script = (
        "import os, signal, sys\n"
        "from potstill.review import Outbox, ReviewClient, ReviewSettings, sync_outbox\n"
        "Outbox.remove = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "client = ReviewClient(ReviewSettings(sys.argv[1], os.environ['LABEL_STUDIO_API_KEY']))\n"
        "sync_outbox(client, sys.argv[2])\n"
    )
    env = {**label_studio.env, "LABEL_STUDIO_API_KEY": label_studio.token}
    command = [sys.executable, "-c", script, label_studio.url, str(outbox)]
    killed = subprocess.run(command, env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr.decode()
    client = label_studio.client()
    pid = client.find_project(spec)
    assert pid is not None and len(Outbox(outbox)) == 3  # imported, still queued
    assert sync_outbox(client, outbox) == 0 and Outbox(outbox).entries() == []
    ids = sorted(t.data["row_id"] for t in client._sdk.tasks.list(project=pid))
    assert ids == ["k0", "k1", "k2"]
