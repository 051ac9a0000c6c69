"""Keeping the student good after the first run: drift monitoring and retraining."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from potstill.config.base import Section
from potstill.config.training import StudentConfig


class MonitorConfig(Section):
    """Batch predictions of a registered student on incoming data and the drift monitor that decides when
    to retrain (flows/monitor_drift.py). Thresholds mirror potstill.operations.drift.DriftConfig."""

    incoming: str = Field("incoming", description="Catalog entry of production batches, one per version.")
    predictions: str = Field("predictions", description="Catalog entry the batch predictions are written to.")
    alias: str = Field("champion", min_length=1, description="Registry alias of the model that predicts.")
    reference_rows: int = Field(
        500, ge=2, description="Rows sampled (seeded) from the champion's train_set: the reference window."
    )
    teacher_sample_rows: int = Field(
        32, ge=0, description="Rows per window the teacher labels to measure teacher-student disagreement."
    )
    cooldown_s: float = Field(
        3600.0, ge=0, description="After a triggered retrain, drift in this many seconds triggers no other."
    )
    trigger: Literal["deployment", "inline", "none"] = Field(
        "deployment",
        description="On drift: `deployment` starts the `retrain/retrain-on-drift` deployment, `inline` runs "
        "the retrain flow as a subflow, `none` only logs the decision.",
    )
    checks: list[Literal["mmd", "domain_classifier", "psi", "chi2", "ks", "disagreement"]] = Field(
        default_factory=lambda: ["mmd", "psi", "chi2", "ks", "disagreement"],
        description="Drift checks to run (potstill/operations/drift.py); any one drifting means drift.",
    )
    mmd_alpha: float = Field(0.05, gt=0, lt=1, description="MMD test on embeddings: drift if p < this.")
    chi2_alpha: float = Field(0.05, gt=0, lt=1, description="Chi-square on label counts: drift if p < this.")
    ks_alpha: float = Field(0.05, gt=0, lt=1, description="KS on student confidence: drift if p < this.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI of predicted label shares above this is drift.")
    max_disagreement_increase: float = Field(
        0.05, ge=0, le=1, description="Teacher-student disagreement may grow this much over the reference."
    )
    n_permutations: int = Field(500, ge=1, description="Permutations of the MMD test (p-value resolution).")
    correction: Literal["bonferroni", "none"] = Field(
        "bonferroni",
        description="Multiple-testing correction across the p-value checks: each runs at alpha / m, so "
        "several tests on a clean batch do not add up to frequent false alarms.",
    )
    seed: int = Field(0, description="Seed of the reference sample, teacher samples and permutations.")


class RetrainConfig(Section):
    """The `retrain` flow: continue training the champion on a new incoming batch (teacher-labeled and
    routed like the distill flow). A continuation starts from weights that already fit the task, so it
    needs fewer steps and a lower learning rate than a student trained from the pruned teacher. The other
    training settings (batch size, max length, precision, ...) come from `student`."""

    train_on: Literal["merged", "new_plus_replay"] = Field(
        "merged",
        description="`merged`: train on the whole next train_set (previous + new rows); "
        "`new_plus_replay`: only the new rows plus a random replay sample of the previous train_set "
        "(cheaper on large sets; the replay keeps the student from forgetting). The saved train_set "
        "version is the merged set either way.",
    )
    replay_rows: int | None = Field(
        None,
        ge=0,
        description="With `new_plus_replay`: previous rows replayed (null: as many as there are new rows).",
    )
    epochs: float = Field(1.0, gt=0, description="Epochs of the continuation over its training rows.")
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(5e-5, gt=0, lt=1, description="Lower than a fresh run: the weights fit.")

    def student_settings(self, student: StudentConfig) -> StudentConfig:
        """The student training settings with this continuation's epochs, steps and learning rate."""
        return student.model_copy(
            update={"epochs": self.epochs, "max_steps": self.max_steps, "learning_rate": self.learning_rate}
        )
