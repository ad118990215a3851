"""ONE, On-the-fly Native Ensemble (Lan, Zhu & Gong, NeurIPS 2018), as a method of this engine.

One network: the shared low-level layers, m branches of the last stage + classifier, and a gate
g = softmax(ReLU(BN(FC(GAP(shared feature))))). The ensemble logit is z_e = sum_i g_i z_i and

    L = sum_i CE(z_i, y) + CE(z_e, y) + lambda w(e) T^2 sum_i KL(softmax(z_e/T) || softmax(z_i/T))

with z_e detached inside the KL, T = 3 and lambda = 1 in the configs, and w(e) the sigmoid
ramp-up of the official code (Lan1991Xu/ONE_NeurIPS2018: cifar_one.py multiplies the KL terms by
utils/ramps.py's sigmoid_rampup(epoch, 80), run with --consistency_rampup 80 --epochs 300):
w(e) = exp(-5 (1 - e/R)^2) in epoch e (0-based, constant within the epoch), e clipped to R, so
0.007 in the first epoch and 1 from epoch R on. R is method.rampup_epochs; its default keeps the
authors' fraction of the run, R = 80/300 x optim.epochs (80 of 300 epochs; 53.3 of the 200 of
the cifar and imagenet configs). The gate and CE(z_e) need gradients, so they are a `graph_loss`
(the KL terms too: their target is the network's own z_e). ImageNet (Table 3): ResNet-18 split
before layer4 into 3 branches, 29.50M parameters with the gate; CIFAR (Table 7): ResNet-32 split
before its last stage into 3.

Reported: every branch's top-1 and the gated ensemble's (`ensemble`). Tables 3 and 7 take the
exported branch's top-1 (branch 0): KDCL's tables compare single deployed networks (a ResNet-18
of the same size as the other rows), and ONE's own paper reports one branch as "ONE" apart
from the ensemble; the ensemble needs the whole multi-branch network at test time.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from kdcl_common import ConfigError

from .losses import LossTerms, Targets, distillation
from .multibranch import MultiBranchMethod

# The official run: --consistency_rampup 80 with --epochs 300 (scripts/ONE_ResNet32.sh)
RAMPUP_FRACTION = 80 / 300


def rampup_weight(epoch: float, length: float) -> float:
    """The weight of the KL terms in `epoch` (0-based) for a ramp-up of `length` epochs:
    exp(-5 (1 - e/length)^2) with e clipped to [0, length]; 1 for length 0 (Laine & Aila's
    ramp-up, as utils/ramps.py of ONE's code)."""
    if length == 0:
        return 1.0
    phase = 1.0 - min(max(epoch, 0.0), length) / length
    return math.exp(-5.0 * phase * phase)


class ONE(MultiBranchMethod):
    output_prefix = "branch"
    default_fan_outs = (3,)
    gate = True

    @classmethod
    def check_config(cls, cfg) -> None:
        """The splits (MultiBranchMethod), then method.rampup_epochs: null resolves to the
        authors' fraction of this run, so run.json and --print-config show the ramp trained."""
        super().check_config(cfg)
        method = cfg.method
        if method.rampup_epochs is None:
            method.rampup_epochs = RAMPUP_FRACTION * cfg.optim.epochs
        if not (method.rampup_epochs >= 0 and math.isfinite(method.rampup_epochs)):
            raise ConfigError(f"method.rampup_epochs={method.rampup_epochs!r} must be >= 0 "
                              f"(epochs; 0: no ramp-up, null: {RAMPUP_FRACTION:.4g} x "
                              f"optim.epochs as ONE's code)")

    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
        if cfg.rampup_epochs is None:
            raise ValueError("method.rampup_epochs is unresolved: load the config with "
                             "pretrain.config.load, which resolves it")
        self.ce_weight, self.kd_weight = cfg.ce_weight, cfg.kd_weight
        self.rampup_epochs = cfg.rampup_epochs
        self.rampup = rampup_weight(0, self.rampup_epochs)
        self.mixing = torch.ones(num_students, 1, device=device)

    def start_of_epoch(self, epoch):
        self.rampup = rampup_weight(epoch, self.rampup_epochs)

    def graph_loss(self, terms, outputs, labels):
        # `terms` holds the branches' CE (no targets() for ONE): add CE(z_e) and the KL terms.
        z, z_e = outputs.logits.float(), outputs.ensemble.float()
        target = Targets((z_e.detach() / self.temperature).log_softmax(-1)[None], self.mixing)
        kd = distillation(z, target, self.temperature)
        total = (terms.total + self.ce_weight * F.cross_entropy(z_e, labels)
                 + self.kd_weight * self.rampup * kd.sum())
        return LossTerms(total, terms.ce, kd)

    def ensemble_probs(self, outputs, probs):
        return outputs.ensemble.float().softmax(-1)
