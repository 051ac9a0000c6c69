"""Generalized Jensen-Shannon divergence JSD(β), as TRL's GKD trainer defines it (Agarwal et al. 2024, eq. 1):

    M = β·p_T + (1−β)·q_S,   JSD(β) = β·KL(p_T ‖ M) + (1−β)·KL(q_S ‖ M).

β interpolates between the two KLs: JSD(β)/β → KL(p_T ‖ q_S) as β → 0 and JSD(β)/(1−β) → KL(q_S ‖ p_T) as
β → 1 (the unscaled formula itself goes to 0 at both ends). Like TRL, the end points are taken as those
limits: β = 0 is the forward KL and β = 1 the reverse KL. β = 0.5 is the symmetric Jensen-Shannon
divergence (bounded by log 2). Unlike TRL, the result is multiplied by T² like the other losses here.
"""

from __future__ import annotations

import torch

from potstill.training.losses.distributions import kl_rows, log_distributions, log_mixture, position_mean
from potstill.training.losses.signal import TeacherSignal


def generalized_jsd(
    student_logits: torch.Tensor, teacher: TeacherSignal, temperature: float = 1.0, beta: float = 0.5
) -> torch.Tensor:
    """Mean over the N positions of JSD(β) between p_T and q_S at temperature T, × T²."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    log_q, log_p = log_distributions(student_logits, teacher, temperature)
    if beta == 0.0:
        per_position = kl_rows(log_p, log_q)
    elif beta == 1.0:
        per_position = kl_rows(log_q, log_p)
    else:
        log_m = log_mixture(log_p, log_q, beta)
        per_position = beta * kl_rows(log_p, log_m) + (1.0 - beta) * kl_rows(log_q, log_m)
    return position_mean(per_position, temperature, student_logits)
