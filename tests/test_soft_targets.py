"""The soft targets against hand computation and independent references (brute force, SciPy)."""
import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from pretrain import soft_targets as st


def ce(z, y):
    """CE of teacher logits z [B, C] (float64) with labels y [B]."""
    return torch.logsumexp(z, -1) - z.gather(1, y[:, None])[:, 0]


def random_problem(S, B, C, scale, seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(S, B, C, generator=g, dtype=torch.float64) * scale,
            torch.randint(0, C, (B,), generator=g))


# ------------------------------------------------------------------------------ hand-computed
def test_naive_picks_the_lowest_ce_student_per_sample():
    logits = torch.tensor([[[3.0, 0.0, 0.0], [0.0, 0.0, 1.0]],   # student 0
                           [[1.0, 0.0, 0.0], [0.0, 0.0, 4.0]]])  # student 1
    labels = torch.tensor([0, 2])
    # sample 0: student 0 is more confident in class 0; sample 1: student 1 in class 2
    expected = torch.tensor([[3.0, 0.0, 0.0], [0.0, 0.0, 4.0]])
    assert torch.equal(st.naive(logits, labels), expected)


def test_minlogit_by_hand():
    logits = torch.tensor([[[2.0, 1.0, -1.0]], [[0.0, 3.0, 1.0]]])
    labels = torch.tensor([1])
    # z - z_y: student 0 -> [1, 0, -2]; student 1 -> [-3, 0, -2]; element-wise min -> [-3, 0, -2]
    assert torch.equal(st.minlogit(logits, labels), torch.tensor([[-3.0, 0.0, -2.0]]))


def test_mean_by_hand():
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 4.0]]])
    assert torch.equal(st.mean(logits, torch.tensor([0])), torch.tensor([[1.0, 2.0]]))


def test_general_by_hand():
    logits = torch.tensor([[[math.log(3.0), 0.0]], [[0.0, 0.0]]])  # softmax: [.75, .25], [.5, .5]
    w = torch.tensor([0.2, 0.8])
    expected = torch.tensor([[0.2 * 0.75 + 0.8 * 0.5, 0.2 * 0.25 + 0.8 * 0.5]])
    torch.testing.assert_close(st.general(logits, w, T=1.0), expected)
    # at T = 2 the students' distributions are softened before mixing
    soft = torch.softmax(logits / 2, -1)
    torch.testing.assert_close(st.general(logits, w, T=2.0), (w[:, None, None] * soft).sum(0))


@pytest.mark.parametrize("T", [1.0, 2.0, 4.0])
def test_minlogit_ce_is_at_most_every_students_ce(T):
    logits, labels = random_problem(4, 256, 20, 3.0, seed=1)
    teacher = st.minlogit(logits, labels).double()
    students = torch.stack([ce(logits[i] / T, labels) for i in range(4)])
    assert (ce(teacher / T, labels) <= students.min(0).values + 1e-5).all()
    assert torch.all(teacher.gather(1, labels[:, None]) == 0)


def test_general_log_probs_handle_zero_weights():
    logits, _ = random_problem(3, 8, 5, 30.0, seed=2)
    log_p = st.general_log_probs(logits, torch.tensor([0.0, 1.0, 0.0]), T=1.0)
    assert torch.isfinite(log_p).all()
    torch.testing.assert_close(log_p, logits[1].float().log_softmax(-1))


# --------------------------------------------------------------------------------- KDCL-Linear
def brute_force_pair(z, y, points=200_001):
    """min over alpha in [0, 1] of CE(alpha z_0 + (1 - alpha) z_1), on a dense grid + polish."""
    a = torch.linspace(0, 1, points, dtype=torch.float64)[:, None]
    out = []
    for b in range(z.shape[1]):
        values = ce(a * z[0, b] + (1 - a) * z[1, b], y[b].expand(points))
        out.append(values.min())
    return torch.stack(out)


def slsqp(z, y):
    """SciPy's SLSQP from several starts (an independent solver)."""
    S = z.shape[0]
    out = []
    for b in range(z.shape[1]):
        zb, yb = z[:, b].numpy(), int(y[b])
        f = lambda w: float(np.logaddexp.reduce(w @ zb) - (w @ zb)[yb])  # noqa: E731
        starts = [np.full(S, 1 / S)] + [0.9 * np.eye(S)[i] + 0.1 / S for i in range(S)]
        out.append(min(minimize(f, x0, method="SLSQP", bounds=[(0, 1)] * S,
                                constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                                options={"ftol": 1e-15, "maxiter": 1000}).fun for x0 in starts))
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("scale", [1.0, 5.0, 20.0])
def test_linear_matches_brute_force_for_a_pair(scale):
    logits, labels = random_problem(2, 24, 30, scale, seed=3)
    ours = ce(st.linear(logits.float(), labels).double(), labels)
    assert (ours - brute_force_pair(logits, labels)).max() < 1e-4


@pytest.mark.parametrize("S,scale", [(3, 1.0), (3, 20.0), (4, 5.0), (5, 50.0)])
def test_linear_matches_scipy_for_several_students(S, scale):
    logits, labels = random_problem(S, 12, 25, scale, seed=S)
    ours = ce(st.linear(logits.float(), labels).double(), labels)
    assert (ours - slsqp(logits, labels)).max() < 1e-4


def test_linear_on_a_simplex_grid():
    """Three students, exhaustive grid over the simplex with step 1/400."""
    logits, labels = random_problem(3, 6, 10, 4.0, seed=7)
    n = 400
    grid = torch.tensor([(i / n, j / n, (n - i - j) / n) for i in range(n + 1)
                         for j in range(n + 1 - i)], dtype=torch.float64)
    ours = ce(st.linear(logits.float(), labels).double(), labels)
    for b in range(6):
        values = ce(grid @ logits[:, b], labels[b].expand(len(grid)))
        assert ours[b] <= values.min() + 1e-4


def test_linear_weights_lie_on_the_simplex_and_beat_naive():
    logits, labels = random_problem(4, 64, 50, 8.0, seed=5)
    alpha = st.linear_weights(logits.float(), labels)
    assert (alpha >= 0).all()
    torch.testing.assert_close(alpha.sum(1), torch.ones(64))
    linear_ce = ce(st.linear(logits.float(), labels).double(), labels)
    naive_ce = ce(st.naive(logits, labels).double(), labels)
    assert (linear_ce <= naive_ce + 1e-5).all()


def test_linear_with_one_student_or_identical_students():
    logits, labels = random_problem(1, 8, 5, 3.0, seed=6)
    torch.testing.assert_close(st.linear(logits.float(), labels), logits[0].float())
    same = logits.repeat(3, 1, 1).float()
    out = st.linear(same, labels)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, logits[0].float(), atol=1e-4, rtol=1e-5)


# -------------------------------------------------------------------------------- KDCL-General
def closed_form(cov):
    ones = torch.ones(cov.shape[0], dtype=torch.float64)
    inv = torch.linalg.solve(cov, ones)
    return inv / inv.sum()


def test_general_weights_equal_eq_11_on_a_constructed_covariance():
    """Held-out probabilities built so that the error covariance is known by hand."""
    # Two students, four samples, label 0 everywhere; errors e = 1 - p_y:
    e0 = torch.tensor([0.1, 0.3, 0.2, 0.4], dtype=torch.float64)
    e1 = torch.tensor([0.5, 0.1, 0.3, 0.1], dtype=torch.float64)
    p_y = 1 - torch.stack([e0, e1])  # [S, N]
    probs = torch.stack([p_y, 1 - p_y], dim=-1)  # [S, N, 2]
    labels = torch.zeros(4, dtype=torch.long)
    cov = torch.tensor([[(e0 * e0).mean(), (e0 * e1).mean()],
                        [(e1 * e0).mean(), (e1 * e1).mean()]])
    torch.testing.assert_close(st.error_covariance(probs, labels), cov)
    expected = closed_form(cov)
    assert (expected > 0).all()
    torch.testing.assert_close(st.general_weights(probs, labels).double(), expected,
                               atol=1e-5, rtol=1e-5)


def test_general_weights_equal_eq_11_for_a_positive_definite_covariance():
    cov = torch.tensor([[0.04, 0.01, 0.005], [0.01, 0.05, 0.012], [0.005, 0.012, 0.06]],
                       dtype=torch.float64)
    torch.testing.assert_close(st.weights_from_covariance(cov).double(), closed_form(cov),
                               atol=1e-5, rtol=1e-5)


def test_general_weights_stay_non_negative_and_solve_the_constrained_problem():
    # Student 1 is much worse and strongly correlated with 0: Eq. 11 gives it a negative weight.
    cov = torch.tensor([[0.01, 0.018], [0.018, 0.04]], dtype=torch.float64)
    assert (closed_form(cov) < 0).any()
    w = st.weights_from_covariance(cov).double()
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-6
    grid = torch.linspace(0, 1, 10001, dtype=torch.float64)
    candidates = torch.stack([grid, 1 - grid], 1)
    best = torch.einsum("ks,st,kt->k", candidates, cov, candidates).min()
    assert float(w @ cov @ w) <= float(best) + 1e-9


@pytest.mark.parametrize("cov", [torch.zeros(3, 3), torch.full((3, 3), 0.02)])
def test_general_weights_on_a_singular_covariance_are_uniform(cov):
    torch.testing.assert_close(st.weights_from_covariance(cov), torch.full((3,), 1 / 3))


def test_general_weights_cross_entropy_variant():
    probs = torch.softmax(torch.randn(3, 100, 10, generator=torch.Generator().manual_seed(0)), -1)
    labels = torch.randint(0, 10, (100,), generator=torch.Generator().manual_seed(1))
    w = st.general_weights(probs, labels, error="cross_entropy")
    assert (w >= 0).all() and abs(float(w.sum()) - 1) < 1e-6


# ------------------------------------------------------------------------------- no autograd
@pytest.mark.parametrize("name", ["naive", "linear", "minlogit", "mean"])
def test_teacher_logits_carry_no_autograd_graph(name):
    logits, labels = random_problem(3, 8, 6, 2.0, seed=9)
    logits = logits.float().requires_grad_()
    out = getattr(st, name)(logits, labels)
    assert not out.requires_grad and out.grad_fn is None


def test_general_carries_no_autograd_graph():
    logits = torch.randn(2, 4, 3, requires_grad=True)
    out = st.general(logits, torch.tensor([0.5, 0.5]), T=2.0)
    assert not out.requires_grad


def test_shapes_are_checked():
    with pytest.raises(ValueError, match=r"\[S, B, C\]"):
        st.minlogit(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="labels"):
        st.naive(torch.zeros(2, 4, 3), torch.zeros(5, dtype=torch.long))


def test_supports_cover_every_subset():
    masks = st._supports(3, torch.device("cpu"))
    rows = {tuple(int(v) for v in m) for m in masks}
    assert rows == {t for t in itertools.product((0, 1), repeat=3) if any(t)}
