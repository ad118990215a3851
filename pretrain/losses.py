"""The collaborative loss (Eq. 1-2 of the paper):

    L = sum_i [ a CE(z_i, y) + lambda T^2 KD_i ],   KD_i = sum_j M_ij KL(p_j || softmax(z_i / T))

with batch-mean reductions and a = method.ce_weight (1 but for CLNN's beta CE + (1 - beta) KD).
The targets p_j come from a Method (pretrain/methods.py) as log-probabilities [J, B, C] and are
constants; M [S, J] says which targets student i distils from (KDCL: one shared target; DML:
the mean over the peers; KD: the frozen teacher; CLNN: each head its own).
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
                       temperature: float, kd_weight: float, ce_weight: float = 1.0) -> LossTerms:
    """`logits` [S, B, C] (with autograd), `labels` [B]."""
    S, B, C = logits.shape
    logits = logits.float()
    ce = F.cross_entropy(logits.reshape(S * B, C), labels.repeat(S), reduction="none")
    ce = ce.view(S, B).mean(1)
    weighted = ce if ce_weight == 1 else ce_weight * ce  # the same graph as before ce_weight
    if targets is None:
        kd = torch.zeros_like(ce)
        return LossTerms(weighted.sum(), ce, kd)
    kd = distillation(logits, targets, temperature)
    return LossTerms((weighted + kd_weight * kd).sum(), ce, kd)


def distillation(logits: Tensor, targets: Targets, temperature: float) -> Tensor:
    """KD_i = T^2 sum_j M_ij KL(p_j || softmax(z_i / T)), batch-mean, for `logits` [S, B, C]
    (float32, with autograd) -> [S]."""
    B = logits.shape[1]
    log_q = (logits / temperature).log_softmax(-1)  # [S, B, C]
    p = targets.log_probs.exp()  # [J, B, C]
    # KL(p_j || q_i) = sum_c p_j (log p_j - log q_i), batch-mean, for every pair (i, j) at once.
    neg_entropy = torch.special.xlogy(p, p).sum(-1).mean(-1)  # [J]
    cross = torch.einsum("jbc,sbc->sj", p, log_q) / B  # [S, J]
    kl = neg_entropy[None, :] - cross
    return temperature ** 2 * (targets.mixing * kl).sum(1)
