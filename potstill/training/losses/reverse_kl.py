"""Reverse KL, KL(q_S ‖ p_T) = Σ q_S (log q_S − log p_T).

Mode-seeking: the student may drop tokens the teacher finds unlikely and concentrate on its main modes,
which suits a small student that cannot cover the whole teacher distribution (MiniLLM, Gu et al. 2023).
"""

from __future__ import annotations

import torch

from potstill.training.losses.distributions import kl_rows, log_distributions, position_mean
from potstill.training.losses.signal import TeacherSignal


def reverse_kl(
    student_logits: torch.Tensor, teacher: TeacherSignal, temperature: float = 1.0
) -> torch.Tensor:
    """Mean over the N positions of KL(q_S ‖ p_T) at temperature T, × T²."""
    log_q, log_p = log_distributions(student_logits, teacher, temperature)
    return position_mean(kl_rows(log_q, log_p), temperature, student_logits)
