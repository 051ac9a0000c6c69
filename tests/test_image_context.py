"""What `docker build` of the worker image (infra/compose/potstill.Dockerfile, context: the repository)
sends into the image, computed with Docker's own .dockerignore rules (the `docker` SDK's
`exclude_paths`; no daemon runs on these machines): the code and committed configuration, and none of the
secrets, stores, data or git history that `make services` and a run leave in the checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from docker.utils.build import exclude_paths

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = "infra/compose/potstill.Dockerfile"

# What a working checkout holds after `make services`, a demo run and a review server.
LEFT_BEHIND = (
    "infra/.env",
    "infra/compose.env",
    ".cache/services/secrets/postgres_password",
    ".cache/label-studio/data/label_studio.sqlite3",
    ".cache/models/SmolLM2/model.safetensors",
    "mlruns/mlflow.db",
    "mlruns/artifacts/1/models/m-1/artifacts/student/model.safetensors",
    ".dvc-storage/files/md5/ab/cdef",
    ".dvc/cache/files/md5/ab/cdef",
    ".dvc/tmp/lock",
    ".git/config",
    ".git/objects/ab/cdef",
    ".prefect/prefect.db",
    ".venv/bin/python",
    "catalog/data/polarity/gold.jsonl",
    "catalog/data/polarity/review/outbox.jsonl",
    "catalog/versions/polarity/gold.jsonl",
    "potstill/__pycache__/files.cpython-311.pyc",
)


def dockerignore_patterns(path: Path) -> list[str]:
    """The patterns as the docker CLI and SDK read them: one a line, blank lines and `#` comments out."""
    lines = (line.strip() for line in path.read_text().splitlines())
    return [x for x in lines if x and not x.startswith("#")]


def test_the_image_gets_the_code_and_no_secret_store_data_or_history(tmp_path: Path) -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    for rel in tracked:
        if (ROOT / rel).is_file():
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / rel, tmp_path / rel)
    for rel in LEFT_BEHIND:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("secret or data\n")
    patterns = dockerignore_patterns(ROOT / ".dockerignore")
    sent = {
        p for p in exclude_paths(str(tmp_path), patterns, dockerfile=DOCKERFILE) if (tmp_path / p).is_file()
    }
    leaked = sorted(sent & set(LEFT_BEHIND))
    assert not leaked, f"the image would hold {leaked}"
    assert not [p for p in sent if p.split("/")[0] in ("tests", "benchmarks", ".git", ".cache", "mlruns")]
    needed = {
        "pyproject.toml",
        "README.md",  # the package's readme (pyproject)
        "params.yaml",
        "dvc.yaml",
        ".dvc/config",
        "potstill/__init__.py",
        "potstill/serving.py",
        "tasks/register.py",
        "tasks/student_model.py",
        "flows/distill.py",
        "catalog/catalog.yaml",
        "catalog/tasks/polarity.yaml",
        "catalog/prompts/student_polarity.txt",
    }
    assert needed <= sent, f"missing from the image: {sorted(needed - sent)}"
    # Every Python file of the three packages goes in (a worker imports any of them).
    code = {p for p in tracked if p.endswith(".py") and p.split("/")[0] in ("potstill", "tasks", "flows")}
    assert code <= sent, sorted(code - sent)
