"""The collaborative loss and the methods' targets, against F.kl_div / F.cross_entropy."""
import pytest
import torch
import torch.nn.functional as F

from pretrain import methods
from pretrain.config import MethodConfig
from pretrain.losses import Targets, collaborative_loss


def problem(S=3, B=16, C=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(S, B, C, generator=g) * 2, torch.randint(0, C, (B,), generator=g)


def reference_kd(student_logits, teacher_log_probs, T):
    """T^2 KL(p || softmax(z/T)), batch mean, with torch's own kl_div."""
    return T * T * F.kl_div((student_logits / T).log_softmax(-1), teacher_log_probs,
                            reduction="batchmean", log_target=True)


@pytest.mark.parametrize("T,lam", [(1.0, 1.0), (2.0, 1.0), (4.0, 0.5)])
def test_shared_target_loss_matches_reference(T, lam):
    logits, labels = problem()
    teacher = torch.randn(16, 7).log_softmax(-1)
    terms = collaborative_loss(logits, labels, Targets(teacher[None], torch.ones(3, 1)), T, lam)
    for i in range(3):
        torch.testing.assert_close(terms.ce[i], F.cross_entropy(logits[i], labels))
        torch.testing.assert_close(terms.kd[i], reference_kd(logits[i], teacher, T))
    expected = sum(F.cross_entropy(logits[i], labels) + lam * reference_kd(logits[i], teacher, T)
                   for i in range(3))
    torch.testing.assert_close(terms.total, expected)


def test_dml_is_the_mean_kl_to_each_peer():
    logits, labels = problem()
    T = 1.0
    method = methods.DML(MethodConfig(name="dml", temperature=T), 3, torch.device("cpu"))
    terms = collaborative_loss(logits, labels, method.targets(logits, labels, []), T, 1.0)
    for i in range(3):
        peers = [reference_kd(logits[i], (logits[j] / T).log_softmax(-1), T)
                 for j in range(3) if j != i]
        torch.testing.assert_close(terms.kd[i], sum(peers) / 2)


def test_independent_has_no_distillation_term():
    logits, labels = problem()
    terms = collaborative_loss(logits, labels, None, 2.0, 1.0)
    assert torch.equal(terms.kd, torch.zeros(3))
    torch.testing.assert_close(terms.total, sum(F.cross_entropy(l, labels) for l in logits))


@pytest.mark.parametrize("name", ["mean", "kdcl_naive", "kdcl_linear", "kdcl_minlogit",
                                  "kdcl_general", "dml"])
def test_no_gradient_reaches_the_teacher(name):
    """Build the targets from the very tensor that is trained: the gradient must equal the one
    computed with the targets as constants (no path through the teacher)."""
    logits, labels = problem()
    cfg = MethodConfig(name=name, temperature=2.0)
    method = methods.build(cfg, 3, torch.device("cpu"), 7, (0.5,) * 3, (0.25,) * 3, None)
    live = logits.clone().requires_grad_()
    targets = method.targets(live, labels, [])
    assert not targets.log_probs.requires_grad
    collaborative_loss(live, labels, targets, 2.0, 1.0).total.backward()

    const = logits.clone().requires_grad_()
    frozen = Targets(targets.log_probs.detach().clone(), targets.mixing)
    collaborative_loss(const, labels, frozen, 2.0, 1.0).total.backward()
    torch.testing.assert_close(live.grad, const.grad)


def test_kd_term_vanishes_when_the_student_is_the_target():
    logits, labels = problem(S=1)
    target = Targets((logits / 3.0).log_softmax(-1), torch.ones(1, 1))
    terms = collaborative_loss(logits, labels, target, 3.0, 1.0)
    assert abs(float(terms.kd[0])) < 1e-5
