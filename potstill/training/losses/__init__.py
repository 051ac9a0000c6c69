"""Distillation losses: divergences between teacher and student token distributions (dense logits or the
stored sparse top-k signal), their chunked combination with cross-entropy, and hidden-state matching."""

from potstill.training.losses.chunked import DIVERGENCES, LossParts, distillation_loss, divergence_fn
from potstill.training.losses.forward_kl import forward_kl
from potstill.training.losses.hidden import HIDDEN_LOSSES, hidden_state_loss, make_projections
from potstill.training.losses.jsd import generalized_jsd
from potstill.training.losses.reverse_kl import reverse_kl
from potstill.training.losses.signal import DenseSignal, SparseSignal, TeacherSignal
from potstill.training.losses.total_variation import total_variation

__all__ = [
    "DIVERGENCES",
    "HIDDEN_LOSSES",
    "DenseSignal",
    "LossParts",
    "SparseSignal",
    "TeacherSignal",
    "distillation_loss",
    "divergence_fn",
    "forward_kl",
    "generalized_jsd",
    "hidden_state_loss",
    "make_projections",
    "reverse_kl",
    "total_variation",
]
