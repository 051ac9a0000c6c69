"""Write a step's rows or report to a catalog entry (a new version when the content is new)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from potstill.data.catalog import Catalog


@task(name="store_entry", retries=2, retry_delay_seconds=2, cache_policy=NO_CACHE)
def store_entry(catalog: Catalog, name: str, data: Any, run_id: str) -> str:
    """Returns `v3 md5:...` (or "unversioned") for lineage."""
    if catalog.dataset(name).format == "json":
        saved = catalog.save_json(name, data, run_id=run_id)
    else:
        saved = catalog.save(name, data, run_id=run_id)
    return f"{saved.version} md5:{saved.md5}" if saved.version else "unversioned"
