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
