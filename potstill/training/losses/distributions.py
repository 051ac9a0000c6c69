"""The two distributions every divergence compares, and numerically safe pieces shared by them.

Dense signal: student q = softmax(z_S / T) and teacher p = softmax(z_T / T) over the whole vocabulary.

Sparse signal (top-k + tail), compared on k+1 buckets — the k stored ids and "everything else":
- student: q = softmax(z_S / T) over the full vocabulary, gathered at the k ids; its "everything else"
  bucket is the log-sum-exp of the remaining log-probabilities (exact, and stable where 1 − Σ would cancel);
- teacher: the stored log-probabilities are at T = 1, so temperature is applied to the buckets themselves:
  each of the k log-probs and the tail's log-mass is divided by T and the k+1 values are renormalised
  (log-softmax over the buckets). At T = 1 that is the stored distribution (renormalising only absorbs fp16
  rounding). At T ≠ 1 it is an approximation: the tail bucket is tempered as if it were one token
  (tail^(1/T) rather than Σ_tail p_i^(1/T), which the stored signal cannot give).
A stored tail below TAIL_FLOOR (fp16 storage rounds small tails to 0) is raised to it, so that a
confident teacher does not make the reverse KL infinite. Pads (id −1, log-prob −inf) are empty buckets on
both sides. A row whose ids cover the whole vocabulary has
no "everything else": both tail buckets are empty there, so k = V gives exactly the dense loss.

All arithmetic is in log space in at least float32; empty buckets (−inf) contribute 0 and never produce NaN
in the forward or backward pass.
"""

from __future__ import annotations

import math

import torch

from potstill.training.losses.signal import DenseSignal, SparseSignal, TeacherSignal

NEG_INF = float("-inf")
# Smallest teacher tail on a row whose ids leave part of the vocabulary out. Stored tails are fp16 and
# clipped at 0, so a confident teacher often stores exactly 0; taken literally, reverse KL (and JSD near
# β = 1) would be +inf as soon as the student puts any mass outside the top-k.
TAIL_FLOOR = 1e-6


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for half/bfloat16 inputs (softmax over 50k entries in bf16 loses the tail), else as given."""
    return torch.promote_types(t.dtype, torch.float32)


def log_distributions(
    student_logits: torch.Tensor, teacher: TeacherSignal, temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(log q_S, log p_T) on the compared support: [N, V] for a dense signal, [N, k+1] for a sparse one."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if student_logits.dim() != 2:
        raise ValueError(f"student logits must be [N, V], got shape {tuple(student_logits.shape)}")
    if len(teacher) != student_logits.shape[0]:
        raise ValueError(f"teacher has {len(teacher)} positions, student logits {student_logits.shape[0]}")
    dtype = _compute_dtype(student_logits)
    log_q_full = torch.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    if isinstance(teacher, DenseSignal):
        t = teacher.logits.to(device=student_logits.device, dtype=dtype)
        if t.shape != student_logits.shape:
            raise ValueError(
                f"teacher logits {tuple(t.shape)} and student logits {tuple(student_logits.shape)} differ; "
                "vocabularies must match (truncate a padded vocabulary before the loss)"
            )
        return log_q_full, torch.log_softmax(t / temperature, dim=-1)
    if isinstance(teacher, SparseSignal):
        return _sparse_buckets(log_q_full, teacher, temperature)
    raise TypeError(f"teacher must be a DenseSignal or SparseSignal, got {type(teacher).__name__}")


def _sparse_buckets(
    log_q_full: torch.Tensor, teacher: SparseSignal, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    n, v = log_q_full.shape
    device, dtype = log_q_full.device, log_q_full.dtype
    ids = teacher.top_ids.to(device=device, dtype=torch.long)
    pad = ids < 0
    if ids.numel() and int(ids.max()) >= v:
        raise ValueError(f"teacher top ids reach {int(ids.max())} but the student vocabulary has {v} entries")
    # Student: the k buckets, then the log-sum-exp of every id not among them.
    top_q = log_q_full.gather(1, ids.clamp_min(0)).masked_fill(pad, NEG_INF)
    taken = torch.zeros(n, v + 1, dtype=torch.bool, device=device)
    taken.scatter_(1, torch.where(pad, v, ids), True)  # pads land in the extra column v
    taken = taken[:, :v]
    covered = taken.all(dim=1)  # ids cover the vocabulary: no "everything else" bucket
    # Rows with nothing left get a dummy finite input so the log-sum-exp backward stays finite (grad 0).
    rest_in = log_q_full.masked_fill(taken, NEG_INF).masked_fill(covered[:, None], 0.0)
    rest_q = torch.logsumexp(rest_in, dim=1).masked_fill(covered, NEG_INF)
    log_q = torch.cat([top_q, rest_q[:, None]], dim=1)
    # Teacher: stored T=1 log-probs and tail log-mass, tempered and renormalised over the k+1 buckets.
    top_p = teacher.top_logprobs.to(device=device, dtype=dtype)
    tail = teacher.tail.to(device=device, dtype=dtype).clamp_min(TAIL_FLOOR).masked_fill(covered, 0.0)
    raw = torch.cat([top_p, torch.log(tail)[:, None]], dim=1) / temperature
    log_p = raw - torch.logsumexp(raw, dim=1, keepdim=True)
    return log_q, log_p


def kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """Σ_i a_i (log a_i − log b_i) per row. Terms with a_i = 0 are 0 (0·log 0 = 0) without NaN gradients;
    a_i > 0 with b_i = 0 gives +inf, the true value."""
    a = log_a.exp()
    live = a > 0
    la = log_a.masked_fill(~live, 0.0)
    lb = log_b.masked_fill(~live, 0.0)
    return (a * (la - lb)).sum(dim=-1)


def log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(β·p + (1−β)·q) for 0 < β < 1, −inf where both are empty (with finite gradients)."""
    both = torch.isneginf(log_p) & torch.isneginf(log_q)
    a = log_p.masked_fill(both, 0.0) + math.log(beta)
    b = log_q.masked_fill(both, 0.0) + math.log1p(-beta)
    return torch.logaddexp(a, b).masked_fill(both, NEG_INF)


def position_mean(per_position: torch.Tensor, temperature: float, like: torch.Tensor) -> torch.Tensor:
    """Mean over positions × T² (the T² keeps gradient magnitudes comparable across temperatures, as in
    Hinton et al.). No positions gives a zero that is still connected to `like`'s graph."""
    if per_position.numel() == 0:
        return like.sum() * 0.0
    return per_position.mean() * (temperature**2)
