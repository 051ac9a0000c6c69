"""Total variation distance, TV(p_T, q_S) = ½ Σ |p_T − q_S|, in [0, 1].

Bounded and symmetric; its gradient does not blow up where either distribution is near zero (DistiLLM and
"f-divergence minimization for sequence-level KD" use it as a robust alternative to the KLs).
"""

from __future__ import annotations

import torch

from potstill.training.losses.distributions import log_distributions, position_mean
from potstill.training.losses.signal import TeacherSignal


def total_variation(
    student_logits: torch.Tensor, teacher: TeacherSignal, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over the N positions of ½ Σ |p_T − q_S| at temperature T, × T²."""
    log_q, log_p = log_distributions(student_logits, teacher, temperature)
    per_position = 0.5 * (log_p.exp() - log_q.exp()).abs().sum(dim=-1)
    return position_mean(per_position, temperature, student_logits)
