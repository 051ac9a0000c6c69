"""dvc.yaml and the catalog agree: deps are catalog files or params sections, no versioned entry is a
stage output (DVC refuses a path that is both `.dvc`-tracked and a stage out)."""

from pathlib import Path

import yaml

from potstill.catalog import Catalog
from potstill.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_dvc_yaml_agrees_with_the_catalog():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    catalog = Catalog.from_file(ROOT / "catalog" / "catalog.yaml")
    catalog_paths = {e.path for e in catalog.datasets.values()} | {p.path for p in catalog.prompts.values()}
    catalog_paths |= {"catalog/catalog.yaml", "catalog/prompts"}
    versioned = {e.path for e in catalog.datasets.values() if e.versioned}
    sections = set(RunConfig.model_fields)
    for name, stage in pipeline["stages"].items():
        assert stage["cmd"].startswith("potstill "), name
        for dep in stage.get("deps", []):
            assert dep in catalog_paths, f"{name}: dep {dep} is not a catalog path"
        for param in stage.get("params", []):
            assert param in sections, f"{name}: params section {param} is not in the run config"
        outs = {next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])}
        assert not outs & versioned, f"{name}: {outs & versioned} are versioned with dvc add"
