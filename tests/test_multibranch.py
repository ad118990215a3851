"""ONE and CLNN (multi-branch methods) against hand computation and their authors' code (ONE's
ramp-up), their networks and their exports."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
import torchvision

from kdcl_common import ConfigError, artifact, models
from kdcl_common.io import load_tensors
from pretrain import cli, config, methods
from pretrain.clnn import CLNN
from pretrain.config import MethodConfig
from pretrain.export import best_epoch
from pretrain.losses import collaborative_loss
from pretrain.methods import Outputs
from pretrain.multibranch import MultiBranchNet, scale_grad
from pretrain.one import ONE, rampup_weight

from .conftest import REPO, SMOKE, tiny_overrides, read_records

CPU = torch.device("cpu")


def problem(H=3, B=6, C=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(H, B, C, generator=g) * 2, torch.randint(0, C, (B,), generator=g)


def kl(p_logits, q_logits, T):
    """T^2 KL(softmax(p/T) || softmax(q/T)), batch mean, by torch's own kl_div."""
    return T * T * F.kl_div((q_logits / T).log_softmax(-1), (p_logits / T).log_softmax(-1),
                            reduction="batchmean", log_target=True)


# ------------------------------------------------------------------------------------- ONE
def test_one_gate_and_gated_ensemble_by_hand():
    torch.manual_seed(0)
    net = MultiBranchNet("cifar_resnet20", {"num_classes": 5}, [("layer3", 3)], gate=True).double()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)
    out = net(x)
    shared = net.trunk(x)  # train mode: BN with batch statistics, as in the forward above
    a = shared.mean((2, 3)) @ net.gate.fc.weight.T + net.gate.fc.bias
    a = (a - a.mean(0)) / torch.sqrt(a.var(0, unbiased=False) + net.gate.bn.eps)
    a = a * net.gate.bn.weight + net.gate.bn.bias
    g = torch.exp(a.clamp_min(0)) / torch.exp(a.clamp_min(0)).sum(1, keepdim=True)
    z_e = sum(g[:, i:i + 1] * out.logits[i] for i in range(3))
    torch.testing.assert_close(out.ensemble, z_e)
    assert out.logits.shape == (3, 4, 5)


def test_one_loss_and_its_gradients_by_hand():
    z, labels = problem()
    z_e = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    T = 3.0
    one = ONE(MethodConfig(name="one", temperature=T, rampup_epochs=0), 3, CPU)
    live, live_e = z.clone().requires_grad_(), z_e.clone().requires_grad_()
    outputs = Outputs(live, live_e)
    assert one.targets(live.detach(), labels, []) is None  # all of ONE's terms keep the graph
    terms = collaborative_loss(live, labels, None, T, 1.0)
    terms = one.graph_loss(terms, outputs, labels)
    expected = (sum(F.cross_entropy(z[i], labels) for i in range(3)) + F.cross_entropy(z_e, labels)
                + sum(kl(z_e, z[i], T) for i in range(3)))
    torch.testing.assert_close(terms.total, expected)
    for i in range(3):
        torch.testing.assert_close(terms.kd[i], kl(z_e, z[i], T))
    terms.total.backward()
    # the ensemble is a target inside the KL (detached): its gradient is CE(z_e)'s alone
    ref_e = z_e.clone().requires_grad_()
    F.cross_entropy(ref_e, labels).backward()
    torch.testing.assert_close(live_e.grad, ref_e.grad)


def test_one_rampup_is_the_official_sigmoid_rampup():
    """utils/ramps.py of ONE's code: exp(-5 (1 - e/R)^2) with e clipped to [0, R], 1 for R = 0;
    with the official R = 80: 0.007 in epoch 0, 0.29 in epoch 40, 1 from epoch 80 on."""
    for e in (0, 1, 13, 40, 79, 80, 81, 299):
        phase = 1 - min(e, 80) / 80
        assert rampup_weight(e, 80) == pytest.approx(math.exp(-5 * phase ** 2), rel=1e-12)
    assert round(rampup_weight(0, 80), 4) == 0.0067 and round(rampup_weight(40, 80), 4) == 0.2865
    assert rampup_weight(80, 80) == rampup_weight(300, 80) == 1.0
    assert rampup_weight(0, 0) == rampup_weight(7, 0) == 1.0
    weights = [rampup_weight(e, 53.3) for e in range(60)]
    assert weights == sorted(weights) and weights[-1] == 1.0


def test_one_weights_the_kl_terms_by_the_rampup_of_the_epoch():
    z, labels = problem()
    z_e = torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    T = 3.0
    one = ONE(MethodConfig(name="one", temperature=T, rampup_epochs=80), 3, CPU)
    assert one.rampup == rampup_weight(0, 80)  # before any epoch (e.g. the benchmark's steps)
    ce = sum(F.cross_entropy(z[i], labels) for i in range(3)) + F.cross_entropy(z_e, labels)
    kls = torch.stack([kl(z_e, z[i], T) for i in range(3)])
    for epoch in (0, 40, 80, 120):
        one.start_of_epoch(epoch)
        terms = one.graph_loss(collaborative_loss(z, labels, None, T, 1.0), Outputs(z, z_e),
                               labels)
        torch.testing.assert_close(terms.total, ce + rampup_weight(epoch, 80) * kls.sum())
        torch.testing.assert_close(terms.kd, kls)  # recorded unweighted (as every method's)


def test_one_rampup_defaults_to_the_authors_fraction_of_the_run(monkeypatch, tmp_path):
    for var in ("IMAGENET_ROOT", "CIFAR100_ROOT"):
        monkeypatch.setenv(var, str(tmp_path))
    root = REPO / "pretrain" / "configs"
    for name, epochs in (("smoke/one", 4), ("cifar/one", 200), ("imagenet/r18/one", 200)):
        cfg = config.load(root / f"{name}.yaml")
        assert cfg.optim.epochs == epochs
        assert cfg.method.rampup_epochs == pytest.approx(80 / 300 * epochs)
    assert config.load(root / "cifar/one.yaml", ["optim.epochs=300"]).method.rampup_epochs == 80
    assert config.load(SMOKE / "one.yaml", ["method.rampup_epochs=0"]).method.rampup_epochs == 0
    with pytest.raises(ConfigError, match=r"method.rampup_epochs=-1.0 must be >= 0 \(epochs; 0: "
                                          r"no ramp-up, null: 0.2667 x optim.epochs"):
        config.load(SMOKE / "one.yaml", ["method.rampup_epochs=-1"])


def test_the_engine_sets_the_rampup_before_each_epoch(monkeypatch, tmp_path, tiny_root):
    seen = []
    start = ONE.start_of_epoch

    def spy(self, epoch):
        start(self, epoch)
        seen.append((epoch, self.rampup))

    monkeypatch.setattr(ONE, "start_of_epoch", spy)
    argv = [str(SMOKE / "one.yaml"), *tiny_overrides(tiny_root, tmp_path), "optim.epochs=2",
            "students.0.arch=cifar_resnet20", "method.splits=[]", "method.rampup_epochs=4"]
    assert cli.main(argv) == 0
    assert seen == [(0, rampup_weight(0, 4)), (1, rampup_weight(1, 4))]


def test_one_reports_the_gated_ensemble():
    z, _ = problem()
    z_e = torch.randn(6, 5)
    one = ONE(MethodConfig(name="one", rampup_epochs=0), 3, CPU)
    torch.testing.assert_close(one.ensemble_probs(Outputs(z, z_e), z.softmax(-1)),
                               z_e.softmax(-1))


# ------------------------------------------------------------------------------------ CLNN
def test_clnn_loss_by_hand():
    z, labels = problem(H=4)
    T, beta = 2.0, 0.5
    clnn = CLNN(MethodConfig(name="clnn", temperature=T, ce_weight=beta, kd_weight=1 - beta), 4,
                CPU)
    live = z.clone().requires_grad_()
    targets = clnn.targets(live.detach(), labels, [])
    terms = collaborative_loss(live, labels, targets, T, 1 - beta, beta)
    expected = 0
    for h in range(4):
        others = torch.stack([z[j] for j in range(4) if j != h]).mean(0)
        torch.testing.assert_close(terms.kd[h], kl(others, z[h], T))
        expected = (expected + beta * F.cross_entropy(z[h], labels)
                    + (1 - beta) * kl(others, z[h], T))
    torch.testing.assert_close(terms.total, expected)
    # the other heads' mean is a constant: the gradient is that of the hand loss with it fixed
    terms.total.backward()
    ref = z.clone().requires_grad_()
    hand = sum(beta * F.cross_entropy(ref[h], labels) + (1 - beta) * kl(
        torch.stack([z[j] for j in range(4) if j != h]).mean(0), ref[h], T) for h in range(4))
    hand.backward()
    torch.testing.assert_close(live.grad, ref.grad)


def test_scale_grad_is_identity_forward_and_scales_backward():
    x = torch.randn(3, requires_grad=True)
    w = torch.randn(3)
    y = scale_grad(x, 0.5)
    assert torch.equal(y, x)
    (y * w).sum().backward()
    torch.testing.assert_close(x.grad, 0.5 * w)


def test_clnn_rescaling_divides_the_gradient_by_the_fan_out_at_each_split():
    """The same tree with and without rescaling: the same forward; the gradient into the heads
    unchanged, into each layer2 copy (shared by 2 heads) halved, into the trunk (shared by 4)
    quartered."""
    torch.manual_seed(0)
    splits = [("layer2", 2), ("layer3", 2)]
    kwargs = {"num_classes": 5}
    plain = MultiBranchNet("cifar_resnet20", kwargs, splits).double()
    scaled = MultiBranchNet("cifar_resnet20", kwargs, splits, rescale=True).double()
    scaled.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    labels = torch.tensor([0, 3])
    grads, outputs = [], []
    for net in (plain, scaled):
        logits = net(x).logits
        outputs.append(logits.detach())
        sum(F.cross_entropy(z, labels) for z in logits).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters()})
    torch.testing.assert_close(outputs[1], outputs[0])
    for name, g in grads[1].items():
        factor = 0.25 if name.startswith("trunk.") else 0.5 if name.startswith("levels.0.") else 1
        torch.testing.assert_close(g, factor * grads[0][name], msg=name)
    assert any(n.startswith("trunk.") for n in grads[1])
    assert any(n.startswith("levels.0.") for n in grads[1])


# ------------------------------------------------------------------------------ the networks
def test_parameter_counts_are_table_3s():
    with torch.device("meta"):
        one = MultiBranchNet("resnet18", {"num_classes": 1000}, [("layer4", 3)], gate=True)
        clnn = MultiBranchNet("resnet18", {"num_classes": 1000}, [("layer3", 2), ("layer4", 2)],
                              rescale=True)
        r18, r50 = models.build("resnet18"), models.build("resnet50")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(one) == 29_503_745 and round(count(one) / 1e6, 2) == 29.50
    assert count(one.gate) == 256 * 3 + 3 + 2 * 3  # FC(256 -> 3) + BN(3)
    assert count(clnn) == 40_509_408 and round(count(clnn) / 1e6, 2) == 40.51
    # Table 3's 40.5M is the binary tree's alone: one split into 4 heads has another count
    with torch.device("meta"):
        at_layer4 = MultiBranchNet("resnet18", {"num_classes": 1000}, [("layer4", 4)])
        at_layer3 = MultiBranchNet("resnet18", {"num_classes": 1000}, [("layer3", 4)])
    assert round(count(at_layer4) / 1e6, 2) == 38.41 and round(count(at_layer3) / 1e6, 2) == 44.71
    assert round(count(r18) / 1e6, 2) == 11.69
    assert round((count(r18) + count(r50)) / 1e6, 2) == 37.25


@pytest.mark.parametrize("arch,splits,ctor,size", [
    ("resnet18", [("layer4", 3)], torchvision.models.resnet18, 32),
    ("cifar_resnet20", [("layer2", 2), ("layer3", 2)], models.cifar.cifar_resnet20, 8),
    ("wrn_16_2", [("block3", 2)], models.cifar.wrn_16_2, 8),
])
def test_every_path_loads_strictly_into_the_plain_constructor_with_the_same_logits(
        arch, splits, ctor, size):
    torch.manual_seed(0)
    net = MultiBranchNet(arch, {"num_classes": 5}, splits, gate=True)
    x = torch.randn(2, 3, size, size)
    net(x)  # one training step's BN statistics, so that the running buffers differ per branch
    net.eval()
    with torch.no_grad():
        logits = net(x).logits
        for leaf in range(net.leaves):
            plain = ctor(num_classes=5)
            plain.load_state_dict(net.path_state_dict(leaf), strict=True)
            torch.testing.assert_close(plain.eval()(x), logits[leaf], rtol=1e-5, atol=1e-5)
        assert not torch.allclose(logits[0], logits[-1])  # branches are initialised apart


def test_the_exported_branch_is_an_artifact_of_the_plain_network(tmp_path):
    cfg = config.load(SMOKE / "clnn.yaml", ["students.0.arch=cifar_resnet20",
                                            "method.splits=[]"])
    assert [(s.stage, s.fan_out) for s in cfg.method.splits] == [("layer2", 2), ("layer3", 2)]
    torch.manual_seed(0)
    (net,) = CLNN.networks(cfg, 5)
    method = methods.build(cfg.method, 4, CPU, 5, (0.5,) * 3, (0.25,) * 3, None)
    exports = method.exports(CLNN.output_names(cfg), [net], cfg.students)
    assert [e.name for e in exports] == ["head0", "head1", "head2", "head3"]
    assert [e.module is not None for e in exports] == [True, False, False, False]
    head = exports[0]
    pre = artifact.preprocessing((0.5,) * 3, (0.25,) * 3, 8, None)
    artifact.save(tmp_path / "head0.pth", head.module, {
        "architecture": head.arch, "constructor_kwargs": {"num_classes": 5, **head.kwargs},
        "preprocessing": pre, **head.notes})
    loaded, meta = artifact.load(tmp_path / "head0.pth")
    assert meta["branch"] == "head0" and "bias" in meta["branch_choice"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), net.eval()(x).logits[0])


# ------------------------------------------------------------------------ config and runs
def test_icl_is_refused_for_the_multi_branch_methods(capsys):
    for name in ("one", "clnn"):
        with pytest.raises(ConfigError, match="method.icl=true.*set method.icl=false"):
            config.load(SMOKE / f"{name}.yaml", ["method.icl=true"])
        assert cli.main([str(SMOKE / f"{name}.yaml"), "method.icl=true", "--print-config"]) == 2
        assert "set method.icl=false" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="from one backbone: list 1 under students"):
        config.load(SMOKE / "one.yaml", ["students=[{arch: resnet18}, {arch: resnet18}]"])
    with pytest.raises(ConfigError, match="method.splits.0.stage='layer5'.*layer1, layer2"):
        config.load(SMOKE / "one.yaml", ["method.splits=[{stage: layer5, fan_out: 2}]"])


@pytest.mark.parametrize("name,branches,parameters", [
    # ResNet-32 for 4 classes has 466,516 parameters, 353,924 in its last stage + fc: ONE has
    # 3 copies of those (and a 32 -> 3 gate), CLNN 2 copies of layer2 and 4 of layer3 + fc
    ("one", ["branch0", "branch1", "branch2"], 1_174_469),
    ("clnn", ["head0", "head1", "head2", "head3"], 1_617_056),
])
def test_smoke_config_trains_and_records_every_branch(tmp_path, tiny_root, name, branches,
                                                      parameters):
    # the smoke config with ResNet-32 (what the cifar configs train) to keep the test short
    argv = [str(SMOKE / f"{name}.yaml"), *tiny_overrides(tiny_root, tmp_path),
            "optim.epochs=1", "students.0.arch=cifar_resnet32", "method.splits=[]"]
    assert cli.main(argv) == 0
    records = read_records(tmp_path)
    assert [r["student"] for r in records] == branches
    head = records[0]
    assert [r["exported"] for r in records] == [True] + [False] * (len(branches) - 1)
    for r in records:
        assert r["method"] == name and r["backbone"] == "cifar_resnet32"
        assert r["system_parameters"] == parameters
        m = r["metrics"]
        assert m["best_top1"] == m["top1"] and m["best_epoch"] == 1
        assert m["ensemble_top1"] is not None
    run_dir = tmp_path / "runs" / "smoke" / name / "seed0"
    plain = models.cifar.cifar_resnet32(num_classes=4)
    plain.load_state_dict(load_tensors(run_dir / "export" / f"{branches[0]}.pth", "the export"),
                          strict=True)
    meta = json.loads((run_dir / "export" / f"{branches[0]}.json").read_text())
    assert meta["branch"] == branches[0] and meta["branches"] == branches
    assert meta["metrics"]["best_epoch"] == head["metrics"]["best_epoch"]
    assert meta["system_parameters"] == head["system_parameters"]
    assert sorted(p.name for p in (run_dir / "export").iterdir()) == [
        f"{branches[0]}.json", f"{branches[0]}.pth", "manifest.json"]


@pytest.mark.parametrize("config_name", ["cifar/one", "cifar/clnn", "imagenet/r18/one",
                                         "imagenet/r18/clnn"])
def test_the_cifar_and_imagenet_configs_run(tmp_path, tiny_root, config_name):
    """The paper presets' configs as they are (ResNet-32, ResNet-18 with AMP and channels-last
    asked for), on generated CIFAR-100 pickles or the tiny ImageNet-layout set."""
    from .test_data import write_cifar100

    if config_name.startswith("cifar"):
        write_cifar100(tmp_path / "cifar-100-python", n_train=200, n_test=20)
        data = [f"data.root={tmp_path}", "data.held_out_per_class=1", "optim.batch_size=50"]
    else:
        data = [f"data.root={tiny_root}", "data.image_size=24", "data.eval_resize=28",
                "data.held_out_per_class=2", "optim.batch_size=8", "optim.warmup_epochs=0"]
    argv = [str(REPO / "pretrain" / "configs" / f"{config_name}.yaml"), *data, "data.workers=0",
            "optim.epochs=1", "optim.lr=0.01", f"output_root={tmp_path / 'runs'}",
            f"records={tmp_path / 'records'}"]
    assert cli.main(argv) == 0
    records = read_records(tmp_path)
    assert len(records) == (3 if config_name.endswith("one") else 4)
    preset = {"cifar": "cifar", "imagenet": "paper"}[config_name.split("/")[0]]
    assert records[0]["exported"] and records[0]["preset"] == preset


def test_best_epoch_is_the_first_epoch_with_the_best_top1():
    history = [{"epoch": e, "val/a/top1": v} for e, v in zip((1, 2, 3, 4), (10, 30, 30, 20))]
    assert best_epoch(history, "a") == (30, 2)
