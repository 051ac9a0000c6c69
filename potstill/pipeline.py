"""The DVC pipeline (`dvc.yaml`) as data: which stage produces which catalog path.

A path that a `dvc.yaml` stage declares as an output cannot also be `dvc add`-ed (DVC refuses the
duplicate), so the catalog versions such entries by content hash in the DVC cache and remote instead,
and `dvc repro` tracks them in `dvc.lock`. Both ways end in the same cache objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

STEPS = ("prepare", "label", "route", "train", "evaluate", "register")


def load_stages(root: Path) -> dict[str, dict[str, Any]]:
    path = root / "dvc.yaml"
    if not path.exists():
        return {}
    return (yaml.safe_load(path.read_text()) or {}).get("stages", {})


def _paths(items: list[Any]) -> list[str]:
    return [next(iter(i)) if isinstance(i, dict) else str(i) for i in items or []]


def stage_outputs(root: Path) -> dict[str, str]:
    """{output path relative to root: stage name}."""
    return {out: name for name, stage in load_stages(root).items() for out in _paths(stage.get("outs", []))}


def stage_deps(root: Path) -> dict[str, list[str]]:
    return {name: _paths(stage.get("deps", [])) for name, stage in load_stages(root).items()}
