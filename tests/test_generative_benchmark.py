"""The generative benchmark's pure parts (benchmarks/generative.py, benchmarks/support/generative_data.py):
the table and findings from fake results, the section it writes, and the data splits, above all that no
GSM8K question is both a prompt (trained on) and a gold row (scored). No model runs, no downloads."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from benchmarks.support import generative_data as D

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def _bench() -> ModuleType:
    """The benchmark script as a module (it is a script under benchmarks/, not a package module)."""
    if "generative_bench" in sys.modules:
        return sys.modules["generative_bench"]
    spec = importlib.util.spec_from_file_location("generative_bench", ROOT / "benchmarks" / "generative.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generative_bench"] = module
    spec.loader.exec_module(module)
    return module


def _summary(teacher: float, base: float, student: float, side: float, tpa: float) -> dict[str, Any]:
    return {
        "teacher": {"headline": teacher, "side": side},
        "student_base": {"headline": base, "side": side},
        "student": {"headline": student, "side": side},
        "agreement": 0.5,
        "generated_tokens_per_s": 40.0,
        "tokens_per_answer": tpa,
        "train_tokens_per_s": 300.0,
        "steps": 40.0,
        "train_s": 60.0,
    }


def fake_results() -> dict[str, dict[str, Any]]:
    math = {"task": "gsm8k", "kind": "math", "method": "sft", "wall_s": 300.0, "peak_rss_mb": 2500.0}
    text = {"task": "chatterbot", "kind": "chat", "wall_s": 200.0, "peak_rss_mb": 2000.0, "response": None}
    return {
        "math-sft-answer": {**math, "response": "answer", "summary": _summary(0.1, 0.0, 0.05, 0.4, 6.0)},
        "math-sft-full": {**math, "response": "full", "summary": _summary(0.1, 0.0, 0.125, 0.2, 90.0)},
        "math-logit_offline": {
            **math,
            "method": "logit_offline",
            "response": "full",
            "summary": _summary(0.1, 0.0, float("nan"), 0.2, 80.0),
        },
        "text-sft": {**text, "method": "sft", "summary": _summary(0.2, 0.05, 0.213, 9.0, 12.0)},
        "text-logit_offline": {
            **text,
            "method": "logit_offline",
            "error": "RuntimeError: boom | with a pipe",
            "wall_s": 9.0,
            "peak_rss_mb": 100.0,
        },
    }


def test_table_has_one_row_per_run_and_the_header_columns() -> None:
    bench = _bench()
    lines = bench.table(fake_results())
    assert len(lines) == 2 + 5
    assert len({line.count("|") for line in lines}) == 1, lines  # failures too: a pipe in an error is escaped
    full = next(line for line in lines if line.startswith("| math-sft-full |"))
    assert "| 10.0% (no answer 20%) | 0.0% (no answer 20%) | 12.5% (no answer 20%) | 50.0% |" in full
    assert "| 90.0 | 300 | 40 | 300 | 2500 |" in full  # tokens/answer, train tokens/s, steps, wall, RSS
    text = next(line for line in lines if line.startswith("| text-sft |"))
    assert "| chatterbot (chat) | sft | - | 0.200 (9 words) | 0.050 (9 words) | 0.213 (9 words) |" in text
    assert "| 0.213 (9 words) | 0.500 |" in text  # free-text agreement is a ROUGE-L, not a percentage
    nan = next(line for line in lines if line.startswith("| math-logit_offline |"))
    assert "| 0.0% (no answer 20%) | - |" in nan  # a NaN metric is shown as not measured, never as nan
    failed = next(line for line in lines if line.startswith("| text-logit_offline |"))
    assert "failed: RuntimeError: boom / with a pipe" in failed and "| 9 | 100 |" in failed


def test_findings_name_the_best_run_and_who_beat_the_untrained_student() -> None:
    text = _bench().findings(fake_results())
    assert "gsm8k: best trained student by exact match is `math-sft-full` (12.5%) (teacher 10.0%" in text
    assert "2 of 2 trained students beat the untrained one" in text  # the NaN run is not counted
    assert "`response=answer` students write 6.0 tokens per answer and `response=full` ones 90.0" in text
    assert "chatterbot: best trained student by ROUGE-L is `text-sft` (0.213" in text
    assert "Failed: `text-logit_offline`" in text
    assert _bench().findings({}) == "No run finished: nothing to compare."
    tie = {n: r for n, r in fake_results().items() if n in ("math-sft-answer", "math-sft-full")}
    tie["math-sft-full"] = {**tie["math-sft-full"], "summary": _summary(0.1, 0.0, 0.05, 0.2, 90.0)}
    assert "gsm8k: all 2 trained students score 5.0% by exact match (teacher" in _bench().findings(tie)


def test_report_and_section_replace_only_their_own_section(tmp_path: Path) -> None:
    bench = _bench()
    text = bench.report(
        fake_results(), "python benchmarks/generative.py --size tiny", "Setup.", dt.date(2026, 1, 2), "host"
    )
    assert text.startswith("## Generative students\n")
    assert "2026-01-02 — host" in text and "`python benchmarks/generative.py --size tiny`" in text
    assert "What the numbers show: gsm8k: best" in text
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# Benchmarks\n\n## Before\nkept\n\n## Generative students\nold\n\n## After\nkept too\n")
    bench.write_section(text, out)
    bench.write_section(text, out)  # twice: still one section
    doc = out.read_text()
    assert doc.count("## Generative students") == 1 and "old" not in doc
    assert "## Before\nkept" in doc and "## After\nkept too" in doc
    fresh = tmp_path / "new.md"
    bench.write_section(text, fresh)
    assert fresh.read_text().startswith("## Generative students")


def test_runs_differ_only_by_method_and_response() -> None:
    bench = _bench()
    specs = bench.run_specs("chatterbot")
    assert list(specs) == list(bench.RUN_NAMES)
    assert specs["math-sft-answer"].overrides() == ["distill.method=sft", "student.response=answer"]
    assert specs["text-logit_offline"].overrides() == ["distill.method=logit_offline"]
    assert bench.parse_args(["--size", "tiny", "--runs", "text-sft"]).runs == ["text-sft"]
    with pytest.raises(SystemExit):
        bench.parse_args(["--size", "tiny", "--runs", "math-sft,nope"])


def test_split_groups_never_share_an_item_and_keep_gold_when_prompts_grow() -> None:
    rows = [{"q": f"question {i % 30}"} for i in range(60)]  # every item twice
    key = lambda r: D.normalise_key(r["q"])  # noqa: E731
    p, g = D.split_groups(rows, key, prompts=10, gold=8, seed=1)
    assert len(p) == 10 and len(g) == 8
    assert not {key(rows[i]) for i in p} & {key(rows[i]) for i in g}
    assert D.split_groups(rows, key, prompts=10, gold=8, seed=1) == (p, g)  # deterministic
    more, same_gold = D.split_groups(rows, key, prompts=None, gold=8, seed=1)
    assert same_gold == g and len(more) == 22 and set(p) <= set(more)
    with pytest.raises(ValueError, match="distinct items"):
        D.split_groups(rows, key, prompts=25, gold=8, seed=1)


def test_parsers_of_the_packaged_files() -> None:
    good = {"question": "Q?", "answer_a": "x", "answer_b": "y", "answer_c": "z", "answer_d": "w"}
    lines = [
        json.dumps({**good, "correct_answer": "C", "topic": "t"}),
        json.dumps({**good, "correct_answer": "answer", "topic": "topic"}),  # a stray CSV header
        json.dumps({**good, "answer_d": "X", "correct_answer": "A", "topic": "t"}),  # choices not distinct
    ]
    [row] = D.parse_mmlu(lines)
    assert row["choices"] == ["x", "y", "z", "w"] and row["answer"] == "z"
    yml = b"categories: [greetings]\nconversations:\n- - Hello\n  - Hi there\n- - lonely\n"
    code = b"conversations:\n- - write code\n  - print(1)\n"
    files = {"d/english/greetings.yml": yml, "d/english/coding.yml": code}
    assert D.parse_chatterbot(files) == [
        {"id": "chatterbot-greetings-0", "message": "Hello", "reply": "Hi there", "category": "greetings"}
    ]
    paper = {
        "id": "P1",
        "summary": {"challenge": "C.", "approach": "A.", "outcome": "O."},
        "sentences": {"abstract": ["We study QA ( question answering ) .", "It works , mostly ."]},
    }
    [doc] = D.parse_aclsum({"train.jsonl": json.dumps(paper).encode()})
    assert doc == {
        "id": "aclsum-P1",
        "abstract": "We study QA (question answering). It works, mostly.",
        "summary": "C. A. O.",
    }
    with pytest.raises(ValueError, match="aspects"):
        D.parse_aclsum({}, ["method"])


@pytest.mark.skipif(not (SHARED / "gsm8k" / "train.jsonl").exists(), reason="needs ../shared/data")
def test_gsm8k_prompts_and_gold_never_share_a_question() -> None:
    prompts, gold = D.gsm8k(prompts=None, gold=200, seed=13, source_dir=SHARED)
    assert len(gold) == 200 and len(prompts) + len(gold) == 7473
    assert all("answer" not in r for r in prompts)  # the teacher labels them; no solution leaks
    assert all("####" in r["answer"] for r in gold)
    questions = {D.normalise_key(r["question"]) for r in prompts}
    assert not questions & {D.normalise_key(r["question"]) for r in gold}
    assert not {r["id"] for r in prompts} & {r["id"] for r in gold}
    small_prompts, same_gold = D.gsm8k(prompts=160, gold=200, seed=13, source_dir=SHARED)
    assert same_gold == gold and len(small_prompts) == 160
    assert D.gsm8k(prompts=160, gold=200, seed=14, source_dir=SHARED)[1] != gold  # the seed matters


@pytest.mark.skipif(not (SHARED / "esnli" / "esnli_dev.jsonl").exists(), reason="needs ../shared/data")
def test_esnli_explain_splits_by_premise() -> None:
    prompts, gold = D.esnli_explain(prompts=300, gold=100, source_dir=SHARED)
    premise = lambda r: r["prompt"].split(" Hypothesis: ")[0]  # noqa: E731
    assert not {premise(r) for r in prompts} & {premise(r) for r in gold}
    assert all(r["prompt"].endswith("Explain whether the premise supports the hypothesis.") for r in gold)
    assert all(r["explanation"] for r in gold) and all("explanation" not in r for r in prompts)


def test_resume_keeps_finished_runs_and_refuses_another_size(tmp_path: Path) -> None:
    """A CPU-size benchmark spans sittings: a run the results file holds is not run again (no subprocess
    starts here: every asked run is in the file), its row stays in the table, the file is rewritten, and
    rows from two sittings say where each came from."""
    bench = _bench()
    runs = {k: v for k, v in fake_results().items() if k in ("math-sft-answer", "math-sft-full")}
    runs["math-sft-answer"] |= {"date": "2026-12-01", "machine": "box A", "command": "cmd one"}
    runs["math-sft-full"] |= {"date": "2026-12-02", "machine": "box B", "command": "cmd two"}
    declared = {"gsm8k": {"prompts": 160, "gold": 200}}
    saved = tmp_path / "results.json"
    bench.save_resume(saved, "tiny", "chatterbot", runs, declared)
    out = tmp_path / "BENCHMARKS.md"
    argv = ["--size", "tiny", "--runs", "math-sft-answer,math-sft-full", "--resume", str(saved)]
    bench.main([*argv, "--out", str(out), "--project", str(tmp_path / "p")])
    doc = out.read_text()
    assert "| math-sft-answer | gsm8k (math) | sft | answer | 10.0% (no answer 40%) |" in doc
    assert "| math-sft-full | gsm8k (math) | sft | full | 10.0% (no answer 20%) |" in doc
    assert "gsm8k (GSM8K" in doc and "160 prompts, 200 gold rows" in doc
    assert "Rows from 2 sittings: 2026-12-01 on box A, `cmd one` (math-sft-answer)" in doc
    assert json.loads(saved.read_text())["runs"].keys() == runs.keys()
    with pytest.raises(SystemExit, match="--size tiny --text-task chatterbot, not --size cpu"):
        bench.load_resume(saved, "cpu", "chatterbot")
