"""Task kinds: answer extraction, votes and confidence formulas pinned by hand; every kind end to end."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from benchmarks.support.importers import import_shared, read_source
from potstill.data.catalog import Catalog
from potstill.kinds import (
    KindSpec,
    choice_options,
    extract_answer,
    label_rows,
    majority_vote,
    normalise,
    normalise_number,
    routing_confidence,
    text_confidence,
)
from potstill.labeling.teacher.base import Generation, SamplingSpec, TokenLogprobs
from potstill.prompts import PromptTemplate

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
NLI = ("entailment", "neutral", "contradiction")


class ScriptedBackend:
    """A TeacherBackend with fixed answers: options scored from a table, generations from a script."""

    name = "scripted"

    def __init__(self, scores: dict[str, float] | None = None, texts: dict[str, list[str]] | None = None):
        self.scores, self.texts, self.calls = scores or {}, texts or {}, []

    def score(self, prompts: Sequence[str], options: Sequence[Sequence[str]]) -> list[list[float]]:
        self.calls.append(("score", list(prompts), [list(o) for o in options]))
        return [[self.scores.get(o, -5.0) for o in opts] for opts in options]

    def generate(self, prompts: Sequence[str], spec: SamplingSpec) -> list[list[Generation]]:
        self.calls.append(("generate", list(prompts), spec))
        out = []
        for p in prompts:
            texts = next(v for k, v in self.texts.items() if k in p)
            toks = (TokenLogprobs("a", math.log(0.5), 1), TokenLogprobs("b", math.log(0.125), 2))
            out.append([Generation(t, toks if t else (), "stop") for t in texts[: spec.n]])
        return out


# ---- pure formulas


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        ("72", "72"),
        ("$1,000.00", "1000"),
        ("72.0", "72"),
        ("0.50", "0.5"),
        ("−3", "-3"),
        ("1/2", "0.5"),
        ("1/3", "0.333333"),
        ("42.", "42"),
        ("abc", None),
    ],
)
def test_normalise_number(raw, want):
    assert normalise_number(raw) == want


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("She sold 48/2 = 24 in May.\n#### 72", "72"),
        ("#### $1,250", "1250"),
        ("So 3 + 4 = 7. The answer is 7.", "7"),
        ("The answer is: $18.50", "18.5"),
        ("first 5, then the answer is 6 ... no wait, the answer is 8", "8"),  # last stated answer
        ("It is \\boxed{12}.", "12"),
        ("#### 10\nThe answer is 11", "10"),  # #### wins over prose
        ("3 + 4 = 7 and then", None),  # a bare number is not an answer
        ("", None),
    ],
)
def test_extract_answer(text, want):
    assert extract_answer(text) == want


def test_majority_vote_counts_unparsed_in_the_denominator_and_breaks_ties_by_first_seen():
    assert majority_vote(["5", "5", "6"]) == ("5", 2, 2 / 3)
    assert majority_vote(["6", "5", "5", "6", None]) == ("6", 2, 0.4)
    assert majority_vote(["7", None, None]) == ("7", 1, 1 / 3)
    assert majority_vote([None, None]) == (None, 0, 0.0)


def test_text_confidence_is_exp_of_mean_and_min_logprob():
    gen = Generation("x y", (TokenLogprobs("x", math.log(0.5)), TokenLogprobs("y", math.log(0.125))))
    got = text_confidence(gen)
    assert got["mean_logprob"] == pytest.approx((math.log(0.5) + math.log(0.125)) / 2)
    assert got["confidence"] == pytest.approx(0.25)  # geometric mean of 0.5 and 0.125
    assert got["confidence_min"] == pytest.approx(0.125)
    assert text_confidence(Generation("x"))["confidence"] == 0.0  # no log-probabilities: unsure


def test_normalise_and_routing_confidence():
    assert normalise([math.log(1), math.log(3)]) == pytest.approx([0.25, 0.75])
    assert routing_confidence({"confidence": 0.9, "parse_error": True}) == 0.0
    assert routing_confidence({"confidence": 0.9, "parse_error": False}) == 0.9
    assert isinstance(choice_options({"choices": ["a", "a"]}), str)


# ---- kinds against a scripted backend: exact numbers


def test_multiple_choice_normalises_over_the_rows_own_choices():
    backend = ScriptedBackend(
        scores={" Paris": math.log(0.6), " Rome": math.log(0.2), " Oslo": math.log(0.1)}
    )
    template = PromptTemplate("mc", "Q: {question}\nOptions: {choices_text}\nAnswer:")
    rows = [
        {"id": 1, "question": "Capital of France?", "choices": ["Rome", "Paris", "Oslo"]},
        {"id": 2, "question": "Capital of Italy?", "choices": ["Rome", "Oslo"]},
        {"id": 3, "question": "broken", "choices": ["only one"]},
    ]
    out = [x.record for x in label_rows(backend, rows, template, KindSpec(kind="multiple_choice"))]
    assert out[0]["label"] == "Paris" and out[0]["label_index"] == 1
    assert out[0]["confidence"] == pytest.approx(0.6 / 0.9)
    assert out[1]["distribution"] == pytest.approx({"Rome": 2 / 3, "Oslo": 1 / 3})
    assert out[2]["parse_error"] is True and out[2]["confidence"] == 0.0 and out[2]["id"] == 3
    assert "choices_text" not in out[0] and out[0]["choices"] == ["Rome", "Paris", "Oslo"]
    prompt = backend.calls[0][1][0]
    assert "A. Rome B. Paris C. Oslo" in prompt


def test_math_self_consistency_end_to_end_with_a_scripted_teacher():
    backend = ScriptedBackend(
        texts={
            "apples": ["2 + 3 = 5\n#### 5", "The answer is 5.", "2 * 3 = 6\n#### 6"],
            "pears": ["I am not sure.", "hmm", "no idea"],
            "plums": ["#### 1,000", "The answer is 1000.00", "#### 999"],
        }
    )
    template = PromptTemplate("m", "Question: {question}\nAnswer:")
    rows = [{"id": i, "question": q} for i, q in enumerate(["apples?", "pears?", "plums?"])] + [{"id": 9}]
    spec = KindSpec(kind="math", samples=3, temperature=0.8, max_new_tokens=32)
    items = label_rows(backend, rows, template, spec)
    out = [x.record for x in items]
    assert [r["id"] for r in out] == [0, 1, 2, 9]  # every row kept, in order
    assert out[0]["answer"] == out[0]["label"] == "5" and out[0]["confidence"] == pytest.approx(2 / 3)
    assert out[0]["votes"] == {"5": 2, "6": 1} and out[0]["rationale"] == "2 + 3 = 5\n#### 5"
    assert (
        out[1]["parse_error"] is True
        and out[1]["confidence"] == 0.0
        and out[1]["rationale"] == "I am not sure."
    )
    assert out[2]["answer"] == "1000" and out[2]["confidence"] == pytest.approx(2 / 3)
    assert out[3]["parse_error"] is True and "question" in out[3]["parse_error_reason"]
    assert len(items[0].tokens) == 2  # the chosen sample's tokens travel with it (teacher signals)
    sampled = backend.calls[0][2]
    assert sampled.n == 3 and sampled.temperature == 0.8


def test_free_text_kinds_flag_empty_output_and_keep_the_row():
    backend = ScriptedBackend(texts={"good": ["A short summary."], "empty": ["  "]})
    template = PromptTemplate("s", "Text: {text}\nSummary:")
    rows = [{"id": "a", "text": "good text"}, {"id": "b", "text": "empty text"}]
    for kind in ("summarization", "chat"):
        out = [x.record for x in label_rows(backend, rows, template, KindSpec(kind=kind, samples=5))]
        assert out[0]["output"] == "A short summary." and out[0]["confidence"] == pytest.approx(0.25)
        assert out[0]["confidence_min"] == pytest.approx(0.125) and out[0]["kind"] == kind
        assert out[1]["parse_error"] is True and out[1]["output"] is None and out[1]["confidence"] == 0.0
    assert all(c[2].n == 1 and c[2].temperature == 0.0 for c in backend.calls)  # free text: one greedy


# ---- real data, real models


def _backend(folder: Path):
    from potstill.labeling.teacher.transformers_backend import TransformersBackend

    return TransformersBackend.from_spec(str(folder), batch_size=16)


def _check_closed(out: list[dict], labels: Sequence[str]) -> None:
    for r in out:
        assert r["parse_error"] is False and r["label"] in labels and 0.0 <= r["confidence"] <= 1.0
        assert sum(r["distribution"].values()) == pytest.approx(1.0)
        assert r["confidence"] == pytest.approx(max(r["distribution"].values()))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_nli_labels_conjnli_dev_with_smollm(smollm_folder):
    rows = read_source("conjnli_dev", SHARED, limit=24)
    unlabeled = [{k: v for k, v in r.items() if k != "label"} for r in rows]
    template = PromptTemplate("teacher_nli", (ROOT / "catalog/prompts/teacher_nli.txt").read_text())
    start = time.perf_counter()
    out = [x.record for x in label_rows(_backend(smollm_folder), unlabeled, template, KindSpec(kind="nli"))]
    print(f"nli: {len(rows) / (time.perf_counter() - start):.1f} rows/s")
    assert [r["id"] for r in out] == [r["id"] for r in rows]
    _check_closed(out, NLI)


@pytest.mark.slow
@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_math_labels_gsm8k_with_smollm_self_consistency(smollm_folder):
    rows = read_source("gsm8k_train", SHARED, limit=2, role="prompts")
    template = PromptTemplate("teacher_math", (ROOT / "catalog/prompts/teacher_math.txt").read_text())
    spec = KindSpec(kind="math", samples=3, max_new_tokens=32, stop=("\n\nQuestion:",), top_logprobs=4)
    start = time.perf_counter()
    items = label_rows(_backend(smollm_folder), rows, template, spec)
    print(f"math: {len(rows) / (time.perf_counter() - start):.2f} problems/s (3 samples, 32 tokens)")
    for it, row in zip(items, rows, strict=True):
        r = it.record
        print(row["gold_answer"], r["answer"], r["votes"], r["parse_error_reason"])
        assert r["id"] == row["id"] and r["samples"] == 3 and 0.0 <= r["confidence"] <= 1.0
        if r["parse_error"]:
            assert r["confidence"] == 0.0 and r["parse_error_reason"]
        else:  # confidence is exactly the agreement of the vote it reports
            assert r["confidence"] == pytest.approx(r["votes"][r["answer"]] / 3)
            assert extract_answer(r["rationale"]) == r["answer"]
            assert it.tokens and all(len(t.top) == 4 for t in it.tokens)


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_nli_and_text_kinds_on_the_tiny_model(tiny_model_dir):
    backend = _backend(tiny_model_dir)
    rows = read_source("esnli_dev", SHARED, limit=6)
    template = PromptTemplate("nli", "Premise: {premise}\nHypothesis: {hypothesis}\nAnswer:")
    _check_closed([x.record for x in label_rows(backend, rows, template, KindSpec(kind="nli"))], NLI)
    chat = PromptTemplate("chat", "User: {text}\nAssistant:")
    rows = [{"id": 1, "text": "Say hello."}, {"id": 2, "text": "Name a colour."}]
    items = label_rows(backend, rows, chat, KindSpec(kind="chat", max_new_tokens=6))
    for it in items:
        r = it.record
        if not r["parse_error"]:
            assert r["confidence"] == pytest.approx(math.exp(r["mean_logprob"]))
            assert 0.0 <= r["confidence_min"] <= r["confidence"] <= 1.0 and len(it.tokens) <= 6


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data")
def test_importers_write_catalog_entries(project):
    catalog = Catalog.from_file(project / "catalog" / "catalog.yaml")
    saved = import_shared(catalog, "conjnli_dev", SHARED, limit=5)
    rows = catalog.load("conjnli_dev")
    assert saved.rows == 5 and rows[0]["id"] == "conjnli-dev-0" and rows[0]["label"] in NLI
    assert not rows[0]["premise"].startswith("\ufeff")
    import_shared(catalog, "gsm8k_train", SHARED, limit=2)
    math_rows = catalog.load("gsm8k_train")
    assert math_rows[0]["gold_answer"] == "72" and "label" not in math_rows[0]
    for name in ("teacher_nli_prompt", "student_nli_prompt", "teacher_math_prompt", "student_math_prompt"):
        assert catalog.prompt(name).fields
