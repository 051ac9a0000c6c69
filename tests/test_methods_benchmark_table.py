"""The methods benchmark's table (benchmarks/methods.py): every row has the header's columns, a failed
method is a row with its error, and on_policy's own step budget is only an option."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("methods_bench", ROOT / "benchmarks" / "methods.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["methods_bench"] = module
    spec.loader.exec_module(module)
    return module


def test_every_row_has_the_header_columns() -> None:
    bench = _bench()
    recall = {"entailment": 0.9, "neutral": 0.3, "contradiction": 0.2}
    ok = {
        "conj": {"accuracy": 0.45, "macro_f1": 0.4, "recall": recall},
        "esnli": {"accuracy": 0.7},
        "agreement_conj": 0.8,
        "agreement_esnli": 0.75,
        "steps": 40.0,
        "tokens_per_s": 300.0,
        "peak_rss_mb": 2000.0,
        "wall_s": 300.0,
        "signal_bytes_per_token": 247.0,
    }
    teacher = {"conj_acc": 0.5, "conj_f1": 0.45, "conj_recall": recall, "esnli": {"accuracy": 0.8}}
    results = {"sft": ok, "logit_offline": ok, "on_policy": {"error": "timed out: x | y", "wall_s": 9.0}}
    lines = bench.table(results, teacher)
    columns = {line.count("|") for line in lines}
    assert len(columns) == 1, lines
    assert "| 40 |" in lines[3] and "| 90 |" in lines[3]  # steps, % of teacher accuracy
    assert "failed: timed out: x / y" in lines[-1]


def test_on_policy_steps_default_to_the_common_budget() -> None:
    bench = _bench()
    assert bench.parse_args(["--size", "tiny"]).on_policy_steps is None
    args = bench.parse_args(["--size", "cpu", "--on-policy-steps", "3"])
    assert (args.steps, args.on_policy_steps) == (40, 3)
