"""CLNN / CL-ILR, collaborative learning with intermediate-level representation sharing (Song &
Chai, NeurIPS 2018), as a method of this engine.

A hierarchical multi-head network, a binary tree: ImageNet (Table 3) ResNet-18 with the trunk
conv1 ... layer2, 2 x layer3 and 4 x (layer4 + fc), 40.51M parameters; CIFAR (Table 7) ResNet-32
with conv1 + the first stage shared, 2 x the second stage, 4 x (the last stage + fc), as the
public CL-ILR code. Backprop rescaling: at each split the gradient into the shared part is
divided by the fan-out (2), so a layer shared by H heads receives 1/H of the summed gradient
(pretrain/multibranch.py). Per head h:

    L_h = beta CE(z_h, y) + (1 - beta) T^2 KL(softmax(mean_{j != h} z_j / T) || softmax(z_h / T))

with the other heads' mean logit detached: the collaborative loss with one target per head,
method.ce_weight = beta and method.kd_weight = 1 - beta (0.5 and 0.5 in the configs), T = 2.
Everything but the rescaling (in the network) is a constant target, so CLNN runs on the same
fast path as the KDCL variants.

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
