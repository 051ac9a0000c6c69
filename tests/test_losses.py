"""Distillation losses pinned against naive references written straight from the definitions.

The references use Python floats (double precision) and loops over tiny shapes, sharing no code with
`potstill.training.losses`: softmax, the k+1 buckets of a sparse signal, the divergences, the T² factor, the
mean over positions and the cross-entropy are all spelled out again here.
"""

from __future__ import annotations

import math

import pytest
import torch

from potstill.training.losses import (
    DIVERGENCES,
    DenseSignal,
    SparseSignal,
    distillation_loss,
    forward_kl,
    generalized_jsd,
    hidden_state_loss,
    make_projections,
    reverse_kl,
    total_variation,
)

N, V, K = 4, 9, 3
TEMPERATURES = [0.5, 1.0, 2.5]
BETAS = [0.0, 0.1, 0.5, 0.9, 1.0]


# ---------------------------------------------------------------- naive references (lists of floats)
def softmax(z: list[float], temperature: float) -> list[float]:
    exps = [math.exp(x / temperature) for x in z]
    total = sum(exps)
    return [e / total for e in exps]


def kl(a: list[float], b: list[float]) -> float:
    """KL(a ‖ b) = Σ a_i log(a_i / b_i), with 0 log 0 = 0."""
    return sum(ai * math.log(ai / bi) for ai, bi in zip(a, b, strict=True) if ai > 0)


def divergence(name: str, p: list[float], q: list[float], beta: float) -> float:
    """p is the teacher, q the student."""
    if name == "forward_kl":
        return kl(p, q)
    if name == "reverse_kl":
        return kl(q, p)
    if name == "tv":
        return 0.5 * sum(abs(pi - qi) for pi, qi in zip(p, q, strict=True))
    if beta == 0.0:  # TRL's convention at the ends: the limits of JSD/β and JSD/(1-β)
        return kl(p, q)
    if beta == 1.0:
        return kl(q, p)
    m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q, strict=True)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def sparse_buckets(
    student_row: list[float], ids: list[int], logprobs: list[float], tail: float, temperature: float
) -> tuple[list[float], list[float]]:
    """(teacher p, student q) on the k+1 buckets, per the documented definition."""
    q_full = softmax(student_row, temperature)
    q = [q_full[i] if i >= 0 else 0.0 for i in ids]
    q.append(1.0 - sum(q))
    w = [math.exp(lp / temperature) for lp in logprobs] + [tail ** (1.0 / temperature)]
    p = [x / sum(w) for x in w]
    return p, q


def ref_loss(name: str, student, teacher, temperature: float, beta: float = 0.5) -> float:
    """Mean over positions of the divergence at temperature T, times T²."""
    s = student.tolist()
    values = []
    for n in range(len(s)):
        if isinstance(teacher, DenseSignal):
            p = softmax(teacher.logits[n].tolist(), temperature)
            q = softmax(s[n], temperature)
        else:
            p, q = sparse_buckets(
                s[n],
                teacher.top_ids[n].tolist(),
                teacher.top_logprobs[n].tolist(),
                float(teacher.tail[n]),
                temperature,
            )
        values.append(divergence(name, p, q, beta))
    return sum(values) / len(values) * temperature**2


def ref_ce(logits, labels) -> float:
    rows = [
        -math.log(softmax(logits[n].tolist(), 1.0)[int(labels[n])])
        for n in range(len(labels))
        if int(labels[n]) != -100
    ]
    return sum(rows) / len(rows)


# ---------------------------------------------------------------- helpers
def call(name: str, student, teacher, temperature: float, beta: float = 0.5) -> torch.Tensor:
    if name == "forward_kl":
        return forward_kl(student, teacher, temperature)
    if name == "reverse_kl":
        return reverse_kl(student, teacher, temperature)
    if name == "tv":
        return total_variation(student, teacher, temperature)
    return generalized_jsd(student, teacher, temperature, beta=beta)


def logits(seed: int, n: int = N, v: int = V, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, v, generator=g, dtype=torch.float64) * scale


def sparse_from(teacher_logits: torch.Tensor, k: int, pad_last_row: bool = True) -> SparseSignal:
    """Top-k of the teacher's T=1 distribution, as potstill.labeling.signals stores it (last row: one pad)."""
    lp = torch.log_softmax(teacher_logits, dim=-1)
    top_lp, top_ids = lp.topk(k, dim=-1)
    if pad_last_row:
        top_ids[-1, -1] = -1
        top_lp[-1, -1] = float("-inf")
    tail = (1.0 - top_lp.exp().sum(-1)).clamp_min(0.0)
    return SparseSignal(top_ids, top_lp, tail)


CASES = [(name, 0.5) for name in ("forward_kl", "reverse_kl", "tv")] + [("jsd", b) for b in BETAS]


# ---------------------------------------------------------------- values against the references
@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize(("name", "beta"), CASES)
def test_dense_matches_reference(name: str, beta: float, temperature: float) -> None:
    s, t = logits(1), logits(2)
    got = call(name, s, DenseSignal(t), temperature, beta)
    assert got.dtype == torch.float64
    assert float(got) == pytest.approx(
        ref_loss(name, s, DenseSignal(t), temperature, beta), rel=1e-10, abs=1e-12
    )


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize(("name", "beta"), CASES)
def test_sparse_matches_reference(name: str, beta: float, temperature: float) -> None:
    s = logits(3)
    signal = sparse_from(logits(4), K)
    got = call(name, s, signal, temperature, beta)
    want = ref_loss(name, s, signal, temperature, beta)
    assert float(got) == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert want > 0


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize(("name", "beta"), CASES)
def test_sparse_with_k_equal_v_is_the_dense_loss(name: str, beta: float, temperature: float) -> None:
    s, t = logits(5), logits(6)
    signal = sparse_from(t, V, pad_last_row=False)
    signal = SparseSignal(signal.top_ids, signal.top_logprobs, signal.tail + 1e-7)  # fp16-like rounding
    dense = call(name, s, DenseSignal(t), temperature, beta)
    assert float(call(name, s, signal, temperature, beta)) == pytest.approx(float(dense), rel=1e-9)


def test_sparse_zero_tail_is_floored_so_reverse_kl_stays_finite() -> None:
    """A confident teacher's fp16 tail is stored as 0; the loss uses TAIL_FLOOR (1e-6) instead."""
    s = logits(30)
    signal = sparse_from(logits(31) * 20, K, pad_last_row=False)
    signal = SparseSignal(signal.top_ids, signal.top_logprobs, torch.zeros(N, dtype=torch.float64))
    floored = SparseSignal(signal.top_ids, signal.top_logprobs, torch.full((N,), 1e-6, dtype=torch.float64))
    got = float(reverse_kl(s, signal))
    assert math.isfinite(got)
    assert got == pytest.approx(ref_loss("reverse_kl", s, floored, 1.0), rel=1e-9)


def test_sparse_temperature_tempers_the_tail_as_one_bucket() -> None:
    """At T=2 with one row: buckets exp(lp/2) and tail^(1/2), renormalised (hand-computed)."""
    signal = SparseSignal(
        torch.tensor([[0, 1]]),
        torch.log(torch.tensor([[0.5, 0.25]], dtype=torch.float64)),
        torch.tensor([0.25]),
    )
    s = torch.zeros(1, 4, dtype=torch.float64)  # student uniform: buckets 1/4, 1/4, 1/2
    w = [0.5**0.5, 0.25**0.5, 0.25**0.5]
    p = [x / sum(w) for x in w]
    want = 4 * sum(pi * math.log(pi / qi) for pi, qi in zip(p, [0.25, 0.25, 0.5], strict=True))
    assert float(forward_kl(s, signal, 2.0)) == pytest.approx(want, rel=1e-12)


def test_temperature_squared_factor() -> None:
    s, t = logits(7), logits(8)
    for temperature in TEMPERATURES:
        raw = (
            sum(
                kl(softmax(t[n].tolist(), temperature), softmax(s[n].tolist(), temperature)) for n in range(N)
            )
            / N
        )
        got = float(forward_kl(s, DenseSignal(t), temperature))
        assert got == pytest.approx(temperature**2 * raw, rel=1e-10)
        assert got / temperature**2 == pytest.approx(raw, rel=1e-10)


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize(("name", "beta"), CASES)
def test_zero_when_distributions_are_equal(name: str, beta: float) -> None:
    s = logits(9)
    assert abs(float(call(name, s, DenseSignal(s.clone()), 1.7, beta))) < 1e-12
    # a sparse signal cut from the student's own distribution: equal buckets at T=1
    assert abs(float(call(name, s, sparse_from(s, K), 1.0, beta))) < 1e-12


@pytest.mark.parametrize("seed", range(5))
def test_non_negative_bounded_and_symmetric(seed: int) -> None:
    s, t = logits(100 + seed, scale=6.0), logits(200 + seed, scale=6.0)
    for name, beta in CASES:
        assert float(call(name, s, DenseSignal(t), 1.0, beta)) >= 0
        assert float(call(name, s, sparse_from(t, K), 1.0, beta)) >= 0
    assert float(total_variation(s, DenseSignal(t))) <= 1.0
    assert float(total_variation(s * 50, DenseSignal(t * 50))) <= 1.0
    assert float(total_variation(s * 50, DenseSignal(-s * 50))) == pytest.approx(1.0, abs=1e-6)  # disjoint
    jsd_st = float(generalized_jsd(s, DenseSignal(t), beta=0.5))
    assert jsd_st == pytest.approx(float(generalized_jsd(t, DenseSignal(s), beta=0.5)), rel=1e-12)
    assert jsd_st <= math.log(2)
    assert float(generalized_jsd(s, DenseSignal(t), beta=0.3)) == pytest.approx(
        float(generalized_jsd(t, DenseSignal(s), beta=0.7)), rel=1e-12
    )


def test_jsd_end_points_are_the_kl_limits() -> None:
    s, t = logits(11), logits(12)
    sig = DenseSignal(t)
    eps = 1e-6
    assert float(generalized_jsd(s, sig, beta=0.0)) == pytest.approx(float(forward_kl(s, sig)), rel=1e-12)
    assert float(generalized_jsd(s, sig, beta=1.0)) == pytest.approx(float(reverse_kl(s, sig)), rel=1e-12)
    assert float(generalized_jsd(s, sig, beta=eps)) / eps == pytest.approx(
        float(forward_kl(s, sig)), rel=1e-4
    )
    assert float(generalized_jsd(s, sig, beta=1 - eps)) / eps == pytest.approx(
        float(reverse_kl(s, sig)), rel=1e-4
    )


def test_stable_with_extreme_logits_and_low_precision() -> None:
    s = torch.tensor([[1000.0, -1000.0, 0.0, 5.0], [-1e4, 3.0, 2.0, 1.0]], requires_grad=True)
    t = torch.tensor([[-1000.0, 1000.0, 0.0, 5.0], [2.0, 3.0, -1e4, 1.0]])
    for name, beta in CASES:
        for signal in (DenseSignal(t), sparse_from(t, 2)):
            value = call(name, s, signal, 1.0, beta)
            (grad,) = torch.autograd.grad(value, s)
            assert torch.isfinite(value) and torch.isfinite(grad).all(), name
    half = call("forward_kl", s.detach().bfloat16(), DenseSignal(t.bfloat16()), 1.0)
    assert half.dtype == torch.float32 and torch.isfinite(half)


def test_input_errors() -> None:
    s = logits(13)
    with pytest.raises(ValueError, match="vocabularies must match"):
        forward_kl(s, DenseSignal(logits(14, v=V + 2)))
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(s, DenseSignal(s), beta=1.5)
    with pytest.raises(ValueError, match="temperature"):
        forward_kl(s, DenseSignal(s), 0.0)
    with pytest.raises(ValueError, match="student vocabulary"):
        forward_kl(s[:, :5], sparse_from(s, K))
    with pytest.raises(ValueError, match="unknown divergence"):
        distillation_loss(s, torch.nn.Identity(), DenseSignal(s), divergence="kl")


def test_gradcheck() -> None:
    s = logits(15).requires_grad_()
    t = logits(16)
    assert torch.autograd.gradcheck(lambda x: forward_kl(x, sparse_from(t, K), 1.5), (s,))
    assert torch.autograd.gradcheck(lambda x: generalized_jsd(x, DenseSignal(t), 0.7, beta=0.3), (s,))
    assert torch.autograd.gradcheck(lambda x: reverse_kl(x, sparse_from(t, K), 2.0), (s,))


# ---------------------------------------------------------------- chunked loss with cross-entropy
H, NC = 5, 7  # NC positions: not divisible by most chunk sizes


def head_and_hidden(seed: int) -> tuple[torch.nn.Linear, torch.Tensor]:
    torch.manual_seed(seed)
    head = torch.nn.Linear(H, V, bias=True).double()
    hidden = torch.randn(NC, H, dtype=torch.float64, requires_grad=True)
    return head, hidden


LABELS = torch.tensor([3, -100, 0, 8, 2, -100, 5])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("name", DIVERGENCES)
def test_chunked_equals_unchunked_values_and_gradients(name: str, sparse: bool) -> None:
    head, hidden = head_and_hidden(17)
    t = logits(18, n=NC)
    teacher = sparse_from(t, K) if sparse else DenseSignal(t)
    kw = {"divergence": name, "beta": 0.3, "temperature": 2.0, "labels": LABELS}

    # unchunked, written directly: full logits, the divergence, cross-entropy over the kept labels
    full = head(hidden)
    want_kd = call(name, full, teacher, 2.0, 0.3)
    want_ce = torch.nn.functional.cross_entropy(full, LABELS, ignore_index=-100)
    want = 0.4 * want_kd + 0.6 * want_ce
    want_grads = torch.autograd.grad(want, (hidden, head.weight, head.bias))

    for chunk in (1, 2, 3, 4, NC, 100):
        parts = distillation_loss(hidden, head, teacher, kd_weight=0.4, ce_weight=0.6, chunk_size=chunk, **kw)
        grads = torch.autograd.grad(parts.loss, (hidden, head.weight, head.bias))
        assert parts.loss.item() == pytest.approx(want.item(), abs=1e-6, rel=1e-9), chunk
        assert parts.kd == pytest.approx(want_kd.item(), rel=1e-9)
        assert parts.ce == pytest.approx(want_ce.item(), rel=1e-9)
        for g, w in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-6, rtol=1e-6)


def test_ce_mix_against_reference() -> None:
    head, hidden = head_and_hidden(19)
    t = logits(20, n=NC)
    z = head(hidden).detach()
    kd = ref_loss("forward_kl", z, DenseSignal(t), 1.5)
    ce = ref_ce(z, LABELS)
    parts = distillation_loss(
        hidden,
        head,
        DenseSignal(t),
        temperature=1.5,
        labels=LABELS,
        kd_weight=0.25,
        ce_weight=2.0,
        chunk_size=3,
    )
    assert parts.loss.item() == pytest.approx(0.25 * kd + 2.0 * ce, rel=1e-10)
    assert (parts.kd, parts.ce) == (pytest.approx(kd, rel=1e-10), pytest.approx(ce, rel=1e-10))
    assert isinstance(parts.kd, float) and isinstance(parts.ce, float)
    pure = distillation_loss(hidden, head, None, labels=LABELS, kd_weight=5.0, ce_weight=0.0, chunk_size=2)
    assert pure.loss.item() == pytest.approx(ce, rel=1e-10) and pure.kd == 0.0
    kd_only = distillation_loss(hidden, head, DenseSignal(t), temperature=1.5, chunk_size=2)
    assert kd_only.loss.item() == pytest.approx(kd, rel=1e-10) and kd_only.ce == 0.0
    with pytest.raises(ValueError, match="labels are required"):
        distillation_loss(hidden, head, None)
    with torch.no_grad():
        assert float(distillation_loss(hidden, head, DenseSignal(t), temperature=1.5, chunk_size=2).loss) == (
            pytest.approx(kd, rel=1e-10)
        )


def test_chunking_never_saves_an_n_by_v_tensor() -> None:
    """What autograd keeps for backward: chunked, nothing of N×V size; unchunked, the full logits."""
    n, v, h = 64, 50, 8
    head = torch.nn.Linear(h, v, bias=False)
    hidden = torch.randn(n, h, requires_grad=True)
    teacher = DenseSignal(torch.randn(n, v))
    labels = torch.randint(0, v, (n,))

    def largest_saved(chunk: int) -> int:
        sizes: list[int] = []

        def pack(x: torch.Tensor) -> torch.Tensor:
            sizes.append(x.numel())
            return x

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            parts = distillation_loss(hidden, head, teacher, labels=labels, ce_weight=1.0, chunk_size=chunk)
        parts.loss.backward()
        return max(sizes)

    assert largest_saved(8) < n * v // 4
    assert largest_saved(n) >= n * v


# ---------------------------------------------------------------- hidden states
def test_hidden_state_losses_against_reference() -> None:
    torch.manual_seed(21)
    student = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    teacher = [torch.randn(3, 4, dtype=torch.float64) for _ in range(2)]
    mse = [
        sum((s[i, j] - t[i, j]).item() ** 2 for i in range(3) for j in range(4)) / 12
        for s, t in zip(student, teacher, strict=True)
    ]
    assert float(hidden_state_loss(student, teacher, None, "mse")) == pytest.approx(sum(mse) / 2, rel=1e-12)

    def cos(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    cosine = [
        sum(1 - cos(s[i].tolist(), t[i].tolist()) for i in range(3)) / 3
        for s, t in zip(student, teacher, strict=True)
    ]
    got = float(hidden_state_loss(student, teacher, None, "cosine"))
    assert got == pytest.approx(sum(cosine) / 2, rel=1e-12)
    assert float(hidden_state_loss(student, [3.0 * s for s in student], None, "cosine")) == pytest.approx(
        0.0, abs=1e-12
    )


def test_projections_map_student_width_to_teacher_width_and_learn() -> None:
    assert make_projections(8, 8, 3) is None
    projections = make_projections(4, 6, 2).double()
    assert [(p.in_features, p.out_features) for p in projections] == [(4, 6), (4, 6)]
    torch.manual_seed(22)
    student = [torch.randn(5, 4, dtype=torch.float64) for _ in range(2)]
    teacher = [torch.randn(5, 6, dtype=torch.float64) for _ in range(2)]
    want = sum(
        torch.nn.functional.mse_loss(p(s), t).item()
        for p, s, t in zip(projections, student, teacher, strict=True)
    )
    loss = hidden_state_loss(student, teacher, projections, "mse")
    assert loss.item() == pytest.approx(want / 2, rel=1e-12)
    loss.backward()
    assert all(p.weight.grad is not None and p.weight.grad.abs().sum() > 0 for p in projections)
    with pytest.raises(ValueError, match="make_projections"):
        hidden_state_loss(student, teacher, None)
    with pytest.raises(ValueError, match="unknown hidden-state loss"):
        hidden_state_loss(student, teacher, projections, "l1")
