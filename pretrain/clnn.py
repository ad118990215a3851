"""CLNN / CL-ILR, collaborative learning with intermediate-level representation sharing (Song &
Chai, NeurIPS 2018), as a method of this engine.

A hierarchical multi-head network (the paper's "hierarchical ILR sharing", its Fig. 1), a binary
tree of 4 heads split at the last two stages: ImageNet (KDCL's Table 3) ResNet-18 with the trunk
conv1 ... layer2, 2 x layer3 and 4 x (layer4 + fc), 40.51M parameters, the count KDCL reports
(one split into 4 would have 38.41M at layer4, 44.71M at layer3); CIFAR (Table 7) ResNet-32 by
the same rule, conv1 + layer1 shared, 2 x layer2, 4 x (layer3 + fc). That CIFAR tree is also the
CL-ILR of the MCL-OKD reimplementation (winycg/MCL-OKD, models/cl_ilr_resnet.py); the authors
published no code that we found. Backprop rescaling (the paper's Fig. 2: an identity whose
gradient is 1/H in front of a part shared by H heads): at each split the gradient into the shared
part is divided by the fan-out (2), so a layer shared by H heads receives 1/H of the summed
gradient (pretrain/multibranch.py). Per head h, the paper's beta J_hard + (1 - beta) J_soft with
the soft target from the other heads' mean logit at temperature T:

    L_h = beta CE(z_h, y) + (1 - beta) T^2 KL(softmax(mean_{j != h} z_j / T) || softmax(z_h / T))

with the other heads' mean detached: the collaborative loss with one target per head,
method.ce_weight = beta and method.kd_weight = 1 - beta (0.5 and 0.5 in the configs), T = 2.
KL and the cross-entropy to the detached soft target differ by the target's entropy, a constant:
the gradients are the same. The T^2 factor is Hinton's (and every other method's KD term here):
a choice, where the paper text we could read does not say (README, "Differences from the
authors"). Everything but the rescaling (in the network) is a constant target, so CLNN runs on
the same fast path as the KDCL variants.

Reported: every head's top-1 and the heads' ensemble (`ensemble`: the mean of their
probabilities, as for every method with several outputs). Tables 3 and 7 take the exported
head's top-1 (head 0): KDCL's tables compare single deployed networks, and CL-ILR deploys one
head.
"""
from __future__ import annotations

import torch

from .losses import Targets
from .multibranch import MultiBranchMethod


class CLNN(MultiBranchMethod):
    output_prefix = "head"
    default_fan_outs = (2, 2)
    rescale = True

    def __init__(self, cfg, num_students, device, env=None):
        super().__init__(cfg, num_students, device, env)
        self.mixing = torch.eye(num_students, device=device)  # head h distils from target h

    @torch.no_grad()
    def targets(self, logits, labels, inputs):
        heads = logits.shape[0]
        others = (logits.sum(0, keepdim=True) - logits) / (heads - 1)  # mean of the other heads
        return Targets((others / self.temperature).log_softmax(-1), self.mixing)
