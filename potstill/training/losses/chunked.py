"""The distillation loss of a batch computed chunk by chunk over positions, from the student's last hidden
states and its LM head, so that the [N, V] logits never exist at once.

For a 49k-token vocabulary the logits of 2,048 positions take 400 MB in float32, and a loss over them keeps
several such tensors alive for backward (log-softmax, probabilities, gradients). Here each chunk of
`chunk_size` positions is projected with `lm_head`, reduced to two sums (KD and CE) and dropped; the chunk
runs under `torch.utils.checkpoint` (non-reentrant), so backward recomputes the chunk's logits, uses them and
drops them again. Peak memory is O(chunk_size × V) instead of O(N × V), at the cost of a second LM-head
matmul per chunk in backward. The result equals the unchunked loss (same sums, different summation order).

This is plain PyTorch on every device; Liger kernel's fused linear losses are not used (their JSD/KL
conventions and the sparse tail bucket would need their own pinning on a GPU).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from potstill.training.losses.forward_kl import forward_kl
from potstill.training.losses.jsd import generalized_jsd
from potstill.training.losses.reverse_kl import reverse_kl
from potstill.training.losses.signal import TeacherSignal
from potstill.training.losses.total_variation import total_variation

IGNORE_INDEX = -100
DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "tv")

Divergence = Callable[[torch.Tensor, TeacherSignal, float], torch.Tensor]


@dataclass(frozen=True)
class LossParts:
    """`loss` is differentiable (kd_weight·KD + ce_weight·CE); `kd` and `ce` are detached floats to log."""

    loss: torch.Tensor
    kd: float
    ce: float


def divergence_fn(name: str, beta: float = 0.5) -> Divergence:
    """The divergence named in config (`distill.divergence`): forward_kl, reverse_kl, jsd (with β) or tv."""
    if name == "forward_kl":
        return forward_kl
    if name == "reverse_kl":
        return reverse_kl
    if name == "jsd":
        return partial(generalized_jsd, beta=beta)
    if name == "tv":
        return total_variation
    raise ValueError(f"unknown divergence {name!r}; expected one of {', '.join(DIVERGENCES)}")


def distillation_loss(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    teacher: TeacherSignal | None,
    *,
    divergence: str = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    labels: torch.Tensor | None = None,
    kd_weight: float = 1.0,
    ce_weight: float = 0.0,
    chunk_size: int = 256,
) -> LossParts:
    """kd_weight·KD + ce_weight·CE over the N loss positions.

    hidden: [N, H] student hidden states at the loss positions; `lm_head(hidden)` gives their logits.
    teacher: the teacher's signal at the same N positions; None → the loss is the cross-entropy alone
      (weights ignored) and `kd` is 0.
    KD: the mean over the N positions of the divergence at `temperature`, × T² (see the divergence modules).
    CE: token cross-entropy at T = 1 against `labels` ([N], the next token each position must predict,
      already shifted; -100 is ignored), averaged over the non-ignored labels. Computed (for logging) whenever
      labels are given; required when teacher is None or ce_weight > 0.
    chunk_size: positions per chunk; N ≤ chunk_size computes everything at once without recomputation.
    """
    if hidden.dim() != 2:
        raise ValueError(f"hidden must be [N, H], got shape {tuple(hidden.shape)}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n = int(hidden.shape[0])
    if teacher is not None and len(teacher) != n:
        raise ValueError(f"teacher signal has {len(teacher)} positions, hidden has {n}")
    if labels is not None and tuple(labels.shape) != (n,):
        raise ValueError(f"labels must be [{n}], got shape {tuple(labels.shape)}")
    if labels is None and (teacher is None or ce_weight != 0.0):
        raise ValueError("labels are required for the cross-entropy term (teacher=None or ce_weight > 0)")
    div = divergence_fn(divergence, beta) if teacher is not None else None

    def chunk_sums(h: torch.Tensor, start: int, length: int) -> torch.Tensor:
        """[KD sum, CE sum] over positions start:start+length."""
        logits = lm_head(h)
        zero = logits.new_zeros((), dtype=torch.promote_types(logits.dtype, torch.float32))
        kd = div(logits, teacher.narrow(start, length), temperature) * length if div is not None else zero
        ce = zero
        if labels is not None:
            target = labels.narrow(0, start, length).to(device=logits.device, dtype=torch.long)
            ce = F.cross_entropy(logits.to(zero.dtype), target, ignore_index=IGNORE_INDEX, reduction="sum")
        return torch.stack([kd.to(zero.dtype), ce])

    needs_grad = torch.is_grad_enabled() and (
        hidden.requires_grad or any(p.requires_grad for p in lm_head.parameters())
    )
    if n <= chunk_size:
        totals = chunk_sums(hidden, 0, n)
    else:
        parts = []
        for start in range(0, n, chunk_size):
            length = min(chunk_size, n - start)
            h = hidden.narrow(0, start, length)
            if needs_grad:
                parts.append(checkpoint(chunk_sums, h, start, length, use_reentrant=False))
            else:
                parts.append(chunk_sums(h, start, length))
        totals = torch.stack(parts).sum(dim=0)

    kd = totals[0] / n if n else totals[0]
    n_labels = int((labels != IGNORE_INDEX).sum()) if labels is not None else 0
    ce = totals[1] / n_labels if n_labels else totals[1] * 0.0
    loss = kd_weight * kd + ce_weight * ce if teacher is not None else ce
    return LossParts(loss=loss, kd=float(kd.detach()), ce=float(ce.detach()))
