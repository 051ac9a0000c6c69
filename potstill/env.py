"""Embedded defaults: a run on a laptop with nothing running and no internet.

Applied with `setdefault` before Prefect is imported (its settings are read at import), so anything the
user exported (`PREFECT_API_URL`, `MLFLOW_TRACKING_URI`, a different `PREFECT_HOME`) wins.
"""

from __future__ import annotations

import os
from pathlib import Path

OFFLINE_AND_QUIET = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    # Prefect's ephemeral API needs ~29 s on a first start on 2 cores, past its 20 s default.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "TOKENIZERS_PARALLELISM": "false",
}


def find_project_root(start: Path | None = None) -> Path:
    """The nearest folder at or above `start` holding `catalog/catalog.yaml` (else `start` itself)."""
    here = (start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "catalog" / "catalog.yaml").exists():
            return folder
    return here


def apply_defaults(root: Path | None = None) -> Path:
    root = root or find_project_root()
    for key, value in OFFLINE_AND_QUIET.items():
        os.environ.setdefault(key, value)
    # Keep Prefect's ephemeral database and results with the project, so `make prefect-ui` sees the runs.
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("POTSTILL_CACHE", str(root / ".cache"))
    return root


def use_project_code(root: Path) -> list[Path]:
    """Make the project's `tasks/` and `flows/` importable: they are project code, not installed packages.

    They live in the project (a clone of this repository) and, for an editable install, beside the
    `potstill` package; a `--project` folder holding only a catalog uses the code of the install. The
    folders go on `sys.path` and on PYTHONPATH, so processes started from here (accelerate ranks, Ray
    workers, which get PYTHONPATH forwarded) import the same code."""
    code_root = Path(__file__).resolve().parents[1]
    found = [r for r in dict.fromkeys((root.resolve(), code_root)) if (r / "flows" / "__init__.py").exists()]
    import sys

    for folder in reversed(found):
        if str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    if found:
        parts = [str(f) for f in found] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(parts))
    return found
