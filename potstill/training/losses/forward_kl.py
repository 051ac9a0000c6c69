"""Forward KL, KL(p_T ‖ q_S) = Σ p_T (log p_T − log q_S): the classic (Hinton) distillation loss.

Mean-seeking: the student is pushed to cover every token the teacher gives mass to.
"""

from __future__ import annotations

import torch

from potstill.training.losses.distributions import kl_rows, log_distributions, position_mean
from potstill.training.losses.signal import TeacherSignal


def forward_kl(
    student_logits: torch.Tensor, teacher: TeacherSignal, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over the N positions of KL(p_T ‖ q_S) at temperature T, × T². Sparse signals compare k+1
    buckets (see `potstill.training.losses.distributions`)."""
    log_q, log_p = log_distributions(student_logits, teacher, temperature)
    return position_mean(kl_rows(log_p, log_q), temperature, student_logits)
