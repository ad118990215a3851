"""ONE, On-the-fly Native Ensemble (Lan, Zhu & Gong, NeurIPS 2018), as a method of this engine.

One network: the shared low-level layers, m branches of the last stage + classifier, and a gate
g = softmax(ReLU(BN(FC(GAP(shared feature))))). The ensemble logit is z_e = sum_i g_i z_i and

    L = sum_i CE(z_i, y) + CE(z_e, y) + lambda T^2 sum_i KL(softmax(z_e / T) || softmax(z_i / T))

with z_e detached inside the KL (ONE's own code), T = 3 and lambda = 1 in the configs. The gate
and CE(z_e) need gradients, so they are a `graph_loss` (the KL terms too: their target is the
network's own z_e). ImageNet (Table 3): ResNet-18 split before layer4 into 3 branches, 29.50M
parameters with the gate; CIFAR (Table 7): ResNet-32 split before its last stage into 3.

Reported: every branch's top-1 and the gated ensemble's (`ensemble`). Tables 3 and 7 take the
exported branch's top-1 (branch 0): KDCL's tables compare single deployed networks (a ResNet-18
of the same size as the other rows), and ONE's own paper reports one branch as "ONE" apart
from the ensemble; the ensemble needs the whole multi-branch network at test time.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import LossTerms, Targets, distillation
from .multibranch import MultiBranchMethod


class ONE(MultiBranchMethod):
    output_prefix = "branch"
    default_fan_outs = (3,)
    gate = True

    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
        self.ce_weight, self.kd_weight = cfg.ce_weight, cfg.kd_weight
        self.mixing = torch.ones(num_students, 1, device=device)

    def graph_loss(self, terms, outputs, labels):
        # `terms` holds the branches' CE (no targets() for ONE): add CE(z_e) and the KL terms.
        z, z_e = outputs.logits.float(), outputs.ensemble.float()
        target = Targets((z_e.detach() / self.temperature).log_softmax(-1)[None], self.mixing)
        kd = distillation(z, target, self.temperature)
        total = (terms.total + self.ce_weight * F.cross_entropy(z_e, labels)
                 + self.kd_weight * kd.sum())
        return LossTerms(total, terms.ce, kd)

    def ensemble_probs(self, outputs, probs):
        return outputs.ensemble.float().softmax(-1)
