"""Hidden-state distillation: match chosen student layers to chosen teacher layers (a layer map).

Each mapped pair compares the student's hidden states, projected to the teacher's width by a learned linear
map when the widths differ (TinyBERT's W_h), with the teacher's. MSE matches magnitudes too; cosine
(1 − cos similarity per position) matches only directions, which tolerates the different activation scales
of a pruned student. The teacher states are a fixed target: they are detached here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

HIDDEN_LOSSES = ("mse", "cosine")


def make_projections(student_width: int, teacher_width: int, pairs: int) -> torch.nn.ModuleList | None:
    """One trainable nn.Linear(student_width → teacher_width) per mapped layer pair; None when the widths
    match (states are compared directly). The caller must give these parameters to the optimizer."""
    if student_width == teacher_width:
        return None
    return torch.nn.ModuleList(torch.nn.Linear(student_width, teacher_width) for _ in range(pairs))


def hidden_state_loss(
    student_hidden: list[torch.Tensor],
    teacher_hidden: list[torch.Tensor],
    projections: torch.nn.ModuleList | None,
    kind: str = "mse",
) -> torch.Tensor:
    """Mean over the mapped layer pairs of the per-pair loss. Pair i compares student_hidden[i] ([N, Hs], or
    any leading shape) through projections[i] with teacher_hidden[i] ([N, Ht]).

    mse: mean squared error over all elements; cosine: mean over positions of 1 − cos(s, t) along the width.
    """
    if kind not in HIDDEN_LOSSES:
        raise ValueError(f"unknown hidden-state loss {kind!r}; expected one of {', '.join(HIDDEN_LOSSES)}")
    if len(student_hidden) != len(teacher_hidden) or not student_hidden:
        raise ValueError(
            f"need the same non-zero number of student and teacher layers, got "
            f"{len(student_hidden)} and {len(teacher_hidden)}"
        )
    if projections is not None and len(projections) != len(student_hidden):
        raise ValueError(f"{len(projections)} projections for {len(student_hidden)} layer pairs")
    losses = []
    for i, (s, t) in enumerate(zip(student_hidden, teacher_hidden, strict=True)):
        dtype = torch.promote_types(s.dtype, torch.float32)
        if projections is not None:
            proj = projections[i]
            s = proj(s.to(proj.weight.dtype))
        if s.shape != t.shape:
            raise ValueError(
                f"layer pair {i}: student states {tuple(s.shape)} and teacher states {tuple(t.shape)} differ "
                "(widths differ: pass make_projections(...))"
            )
        s = s.to(dtype)
        t = t.detach().to(device=s.device, dtype=dtype)
        if kind == "mse":
            losses.append(F.mse_loss(s, t))
        else:
            losses.append((1.0 - F.cosine_similarity(s, t, dim=-1)).mean())
    return torch.stack(losses).mean()
