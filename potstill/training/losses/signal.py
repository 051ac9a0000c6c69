"""The teacher's signal at the N loss positions, in the two forms a distillation loss can compare against.

`DenseSignal` holds full-vocabulary logits (an online teacher in memory). `SparseSignal` holds what
`potstill.labeling.signals` stores on disk for offline distillation: the k best token ids with their
log-probabilities
at temperature 1 and the probability mass left outside them (the tail bucket). Both slice over positions with
`narrow` so that `potstill.training.losses.chunked` can walk the positions chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DenseSignal:
    """Full-vocabulary teacher logits, [N, V] float (any temperature is applied by the loss, not here)."""

    logits: torch.Tensor

    def __post_init__(self) -> None:
        if self.logits.dim() != 2:
            raise ValueError(f"DenseSignal.logits must be [N, V], got shape {tuple(self.logits.shape)}")

    def __len__(self) -> int:
        return int(self.logits.shape[0])

    def narrow(self, start: int, length: int) -> DenseSignal:
        """Positions start:start+length (a view, no copy)."""
        return DenseSignal(self.logits.narrow(0, start, length))

    def to(self, device: torch.device | str) -> DenseSignal:
        return DenseSignal(self.logits.to(device))


@dataclass(frozen=True)
class SparseSignal:
    """Stored top-k teacher log-probabilities at temperature 1 with a tail bucket.

    top_ids: [N, k] long, -1 pads; top_logprobs: [N, k] float, -inf pads; tail: [N] float,
    1 − Σ exp(top_logprobs), the teacher's mass on every other token (0 when the top-k covers it all).
    """

    top_ids: torch.Tensor
    top_logprobs: torch.Tensor
    tail: torch.Tensor

    def __post_init__(self) -> None:
        if self.top_ids.dim() != 2 or self.top_ids.shape != self.top_logprobs.shape:
            raise ValueError(
                f"SparseSignal: top_ids {tuple(self.top_ids.shape)} and top_logprobs "
                f"{tuple(self.top_logprobs.shape)} must both be [N, k]"
            )
        if self.tail.shape != self.top_ids.shape[:1]:
            raise ValueError(f"SparseSignal: tail must be [N], got {tuple(self.tail.shape)}")

    def __len__(self) -> int:
        return int(self.top_ids.shape[0])

    @property
    def k(self) -> int:
        return int(self.top_ids.shape[1])

    def narrow(self, start: int, length: int) -> SparseSignal:
        """Positions start:start+length (views, no copy)."""
        return SparseSignal(
            self.top_ids.narrow(0, start, length),
            self.top_logprobs.narrow(0, start, length),
            self.tail.narrow(0, start, length),
        )

    def to(self, device: torch.device | str) -> SparseSignal:
        return SparseSignal(self.top_ids.to(device), self.top_logprobs.to(device), self.tail.to(device))


TeacherSignal = DenseSignal | SparseSignal
