"""The chaos benchmark, shortened: `potstill run` SIGKILLed in four places (while Prefect's temporary
server is up, mid-labeling, mid-training, mid-registration), then run to the end; nothing lost, doubled,
left running or left behind, against an uninterrupted run of the same project (benchmarks/chaos.py)."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_chaos():
    spec = importlib.util.spec_from_file_location("chaos_bench", ROOT / "benchmarks" / "chaos.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["chaos_bench"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_killed_runs_lose_nothing_and_leave_nothing_behind(tiny_model_dir: Path, tmp_path: Path):
    chaos = load_chaos()
    overrides = {
        "teacher": {"model": str(tiny_model_dir)},
        "data": {"max_prompts": 48, "max_eval_rows": 24},
        "student": {"layers": [0, 3], "batch_size": 8, "max_steps": 3, "eval_batch_size": 16},
    }
    env = chaos.run_env({k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
    result = chaos.chaos(tmp_path, overrides, 4, 0, env, steps=("load", "label", "train", "register"))

    attempts = result["attempts"]
    assert [a["killed"] for a in attempts] == [True, True, True, True, False]
    assert result["steps_hit"] == ["load", "label", "train", "register"]
    # Prefect's temporary server was up at the first kill, and died with its parent (it used to outlive it).
    assert attempts[0]["children"] >= 1 and result["orphans"] == 0, attempts
    checks = result["checks"]
    assert checks["catalog_logs_differing"] == [] and checks["eval_scores_differing"] == []
    assert checks["rows_labeled"] == 48 and checks["labels_differing"] == []
    assert checks["rows_lost"] == 0 and checks["rows_labeled_twice"] == 0
    # One registered version per completed run (a kill after the run's end counts it as completed).
    assert checks["registered_from_finished_runs"] == checks["completed_runs"] >= 1
    assert checks["bad_aliases"] == [] and checks["temp_files"] == []
    # The killed runs were left RUNNING by their SIGKILL; the next run ended them as KILLED (the first
    # kill may land before its MLflow run exists).
    assert checks["mlflow_runs_left_running"] == 0 and checks["mlflow_runs_ended_killed"] >= 3
    assert result["passed"]
