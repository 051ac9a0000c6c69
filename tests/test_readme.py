"""The README is a contract: its "Your own task" commands run as written, in a fresh project holding the
files they name (a new user's CSV with their own column names and 0/1 labels)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def readme_commands(marker: str = "own-task") -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    block = re.search(rf"<!-- {marker}.*?-->\n```bash\n(.*?)```\n<!-- /{marker} -->", text, re.S)
    assert block, f"README lost its {marker!r} block"
    lines = block.group(1).replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def own_task_commands() -> list[list[str]]:
    return readme_commands("own-task")


def test_the_own_task_block_is_four_commands_or_fewer():
    commands = own_task_commands()
    assert 2 <= len(commands) <= 4 and all(c[0] == ".venv/bin/potstill" for c in commands)
    assert commands[0][1:3] == ["task", "new"] and ["run", "--task", commands[0][3]] == commands[1][1:4]


@pytest.mark.slow
def test_the_own_task_block_runs_as_written(prefect_api, project: Path, user_files, tiny_model_dir: Path):
    """Verbatim commands; the project's params.yaml points at the tiny teacher so the test stays short."""
    shutil.copy(user_files["reviews"]["prompts"], project / "reviews.csv")
    shutil.copy(user_files["reviews"]["gold"], project / "reviews_gold.csv")
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "potstill").symlink_to(Path(sys.executable).with_name("potstill"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"]["model"] = str(tiny_model_dir)
    params["student"].update(layers=[0, 3], batch_size=8, max_steps=3, eval_batch_size=16)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    outputs = []
    for command in own_task_commands():
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(done.stdout)
    assert "registered reviews-student version 1" in " ".join(outputs[1].split())
    listed = {line.split()[0]: line for line in outputs[-1].splitlines()[1:]}
    assert "reviews-student v1" in listed["reviews"]


@pytest.mark.slow
def test_the_math_task_block_runs_as_written(
    prefect_api, project: Path, math_teacher_dir: Path, tmp_path: Path
):
    """The "Generative tasks" commands, verbatim, on word problems in the user's own column names; the
    project's params.yaml points at the tiny math teacher so the test stays short."""
    from generative_data import write_sums

    files = write_sums(tmp_path / "files")
    shutil.copy(files["prompts"], project / "problems.jsonl")
    shutil.copy(files["gold"], project / "problems_gold.jsonl")
    (project / ".venv" / "bin").mkdir(parents=True)
    (project / ".venv" / "bin" / "potstill").symlink_to(Path(sys.executable).with_name("potstill"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["teacher"].update(model=str(math_teacher_dir), max_new_tokens=24)
    params["student"].update(layers=[0, 3], batch_size=8, max_steps=3, eval_batch_size=16, max_new_tokens=24)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    from prefect.settings import PREFECT_API_URL

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    commands = readme_commands("math-task")
    assert 2 <= len(commands) <= 4 and commands[0][1:5] == ["task", "new", "sums", "--kind"]
    outputs = []
    for command in commands:
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        outputs.append(" ".join(done.stdout.split()))
    assert "registered sums-student version 1" in outputs[1] and "exact match" in outputs[1]
    assert "math" in outputs[-1] and "sums-student v1" in outputs[-1]  # `task list`
