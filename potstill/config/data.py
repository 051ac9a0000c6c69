"""Where a run's data comes from and how it is checked: data, catalog and validation sections."""

from __future__ import annotations

from pydantic import Field

from potstill.config.base import Section


class DataConfig(Section):
    """How much of the task's data a run uses (the data itself is the task's: catalog/tasks/<task>.yaml)."""

    max_prompts: int | None = Field(
        None, ge=1, description="Label only the first N prompts (null: all). Keeps CPU runs short."
    )
    max_eval_rows: int | None = Field(
        None, ge=1, description="Evaluate on the first N gold rows (null: all)."
    )
    seed: int = Field(13, description="Seed of training (and of the demo task's prompts/gold split).")


class CatalogConfig(Section):
    """How catalog entries marked `versioned: true` are versioned (DVC)."""

    versioning: bool = Field(True, description="Track versioned entries with DVC (false: plain files only).")
    remote: str = Field(
        ".dvc-storage",
        description="DVC remote used when the repo has none: a folder (relative to the project root) or "
        "any DVC URL (s3://, gs://, ssh://; needs the matching dvc plugin and credentials in the env).",
    )
    push: bool = Field(True, description="`dvc push` every new version to the remote.")
    commit: bool = Field(
        False, description="Also git-commit the .dvc files and version log and tag `<entry>@v<N>`."
    )


class ValidationConfig(Section):
    """Great Expectations checks before every step that consumes a dataset."""

    min_valid_fraction: float = Field(
        0.9, ge=0.0, le=1.0, description="Go on with the valid rows while they are at least this fraction."
    )
    max_text_chars: int = Field(4000, ge=1, description="Longer prompt texts are quarantined.")
    max_parse_failure_rate: float = Field(
        0.05, ge=0.0, le=1.0, description="Teacher outputs that could not be parsed, at most this fraction."
    )
