"""Where students are registered and when one becomes champion: registry and promotion."""

from __future__ import annotations

from pydantic import Field

from potstill.config.base import Section


class RegistryConfig(Section):
    """Where the student is registered and how aliases are given."""

    model_name: str | None = Field(
        None,
        min_length=1,
        description="Registered model name in MLflow (null: the task's, `<task>-student` unless its "
        "declaration sets `model_name`).",
    )
    experiment: str | None = Field(
        None, min_length=1, description="MLflow experiment of the runs (null: `potstill-<task>`)."
    )
    metric: str | None = Field(
        None,
        description="Metric a new version must beat to become champion (null: the task kind's headline "
        "metric, student_accuracy for classification and NLI).",
    )


class PromotionConfig(Section):
    """The promotion gate a new student must pass to become `champion` (see potstill/operations/gate.py);
    null turns a check off. The primary metric is `registry.metric`."""

    min_improvement: float | None = Field(
        0.0, ge=0, description="Beat the champion on the metric strictly and by at least this much."
    )
    max_gap_to_teacher: float | None = Field(
        None, ge=0, description="Teacher metric minus student metric may be at most this (e.g. 0.1)."
    )
    max_slice_regression: float | None = Field(
        None,
        ge=0,
        description="On every slice the champion was measured on (per label recall), the new student may "
        "be worse by at most this.",
    )
    max_latency_ms: float | None = Field(None, gt=0, description="Student latency per row budget (ms).")
    max_size_mb: float | None = Field(None, gt=0, description="Student size on disk budget (MB).")
