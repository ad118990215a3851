"""The collaborative loss (Eq. 1-2 of the paper):

    L = sum_i [ CE(z_i, y) + lambda T^2 KD_i ],   KD_i = sum_j M_ij KL(p_j || softmax(z_i / T))

with batch-mean reductions. The targets p_j come from a Method (pretrain/methods.py) as
log-probabilities [J, B, C] and are constants; M [S, J] says which targets student i distils
from (KDCL: one shared target; DML: the mean over the peers; KD: the frozen teacher).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class Targets(NamedTuple):
    log_probs: Tensor  # [J, B, C], no autograd history
    mixing: Tensor  # [S, J]


class LossTerms(NamedTuple):
    total: Tensor  # scalar, to backpropagate
    ce: Tensor  # [S] per-student cross-entropy with the labels
    kd: Tensor  # [S] per-student KD term (T^2 KL, before lambda); zeros without distillation


def collaborative_loss(logits: Tensor, labels: Tensor, targets: Targets | None,
                       temperature: float, kd_weight: float) -> LossTerms:
    """`logits` [S, B, C] (with autograd), `labels` [B]."""
    S, B, C = logits.shape
    logits = logits.float()
    ce = F.cross_entropy(logits.reshape(S * B, C), labels.repeat(S), reduction="none")
    ce = ce.view(S, B).mean(1)
    if targets is None:
        kd = torch.zeros_like(ce)
        return LossTerms(ce.sum(), ce, kd)
    log_q = (logits / temperature).log_softmax(-1)  # [S, B, C]
    p = targets.log_probs.exp()  # [J, B, C]
    # KL(p_j || q_i) = sum_c p_j (log p_j - log q_i), batch-mean, for every pair (i, j) at once.
    neg_entropy = torch.special.xlogy(p, p).sum(-1).mean(-1)  # [J]
    cross = torch.einsum("jbc,sbc->sj", p, log_q) / B  # [S, J]
    kl = neg_entropy[None, :] - cross
    kd = temperature ** 2 * (targets.mixing * kl).sum(1)
    return LossTerms((ce + kd_weight * kd).sum(), ce, kd)
