"""The noise evaluation of the paper's Fig. 4 (pretrain/robustness.py): its noise, a loss under
noise computed by hand, delta = 0 against the plain evaluation, and the command's records."""
import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from kdcl_common import artifact, models, records
from kdcl_common.config import config_hash, to_dict
from kdcl_common.distributed import DistContext
from kdcl_common.io import sha256_file
from pretrain import config, robustness
from pretrain.data import loader
from pretrain.data.views import normalization

from .conftest import SMOKE, TINY_DATA, make_backbone


def test_noise_is_standard_normal_and_a_function_of_seed_draw_and_image():
    index = torch.arange(300)
    eps = robustness.gaussian_noise(0, 0, index, (3, 8, 8))
    assert eps.shape == (300, 3, 8, 8) and eps.dtype == torch.float32
    n = eps.numel()
    assert abs(eps.mean()) < 4 / math.sqrt(n) and abs(eps.std() - 1) < 4 / math.sqrt(2 * n)
    assert abs((eps.abs() < 1).float().mean() - 0.6827) < 0.01
    assert eps.abs().max() < 5.8  # the bound that keeps the hand-computed test unclamped
    # The same images get the same noise in any batch, in any order.
    some = torch.tensor([250, 3, 17])
    assert torch.equal(robustness.gaussian_noise(0, 0, some, (3, 8, 8)), eps[some])
    # Other draws and seeds are other noise, uncorrelated.
    for other in (robustness.gaussian_noise(0, 1, index, (3, 8, 8)),
                  robustness.gaussian_noise(1, 0, index, (3, 8, 8))):
        assert abs(np.corrcoef(eps.flatten(), other.flatten())[0, 1]) < 4 / math.sqrt(n)
    # Neighbouring pixels and images are uncorrelated too.
    flat = eps.flatten()
    assert abs(np.corrcoef(flat[:-1], flat[1:])[0, 1]) < 4 / math.sqrt(n)
    assert abs(np.corrcoef(eps[:-1].flatten(), eps[1:].flatten())[0, 1]) < 4 / math.sqrt(n)


class Quadratic(nn.Module):
    """p(class 0 | x) = exp(-Q(x)) with Q = 1 + beta * |x|^2 on the normalised input, so the
    cross-entropy of label 0 is Q itself, and its mean under noise is known in closed form."""

    def __init__(self, beta: float):
        super().__init__()
        self.beta = beta

    def forward(self, x):
        q = 1 + self.beta * x.double().pow(2).sum((1, 2, 3))
        return torch.stack([-q, torch.log(-torch.expm1(-q))], 1)


def test_loss_under_noise_matches_the_hand_computation():
    """E[Q(x + delta eps / std)] = Q(x) + beta * delta^2 * sum over pixels of 1 / std_c^2.
    The pixels are 127 and 128 and delta <= 0.08, so that the noise (|eps| < 5.8) never
    reaches 0 or 255: the clamp never acts here."""
    g = torch.Generator().manual_seed(0)
    n, shape, beta = 64, (3, 8, 8), 0.05
    images = (127 + torch.randint(0, 2, (n, *shape), generator=g)).to(torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    mean, std = (0.5, 0.45, 0.55), (0.25, 0.2, 0.3)
    batches = [(torch.arange(i, i + 16), images[i:i + 16], labels[i:i + 16])
               for i in range(0, n, 16)]
    deltas, draws = [0.0, 0.02, 0.05, 0.08], 10
    norm = robustness.Normalise.of(mean, std, torch.device("cpu"))
    losses, top1, seen = robustness.evaluate([Quadratic(beta)], [norm], batches, deltas, draws,
                                             seed=3, device=torch.device("cpu"))
    assert losses.shape == (1, 4, draws) and seen == n
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    a = (images.double() / 255 - m) / s                      # the clean normalised inputs
    clean = 1 + beta * a.pow(2).sum((1, 2, 3)).mean().item()
    inv_var = (1 / s.double() ** 2).expand(shape)            # per pixel: 1 / std_c^2
    for d, delta in enumerate(deltas):
        b2 = delta ** 2 * inv_var                            # variance of the normalised noise
        expected = clean + beta * b2.sum().item()
        # Var of sum_p (a_p + b_p eps_p)^2 per image: sum_p 4 a_p^2 b_p^2 + 2 b_p^4
        per_image = beta ** 2 * (4 * a.pow(2) * b2 + 2 * b2 ** 2).sum((1, 2, 3)).mean().item()
        se_draw = math.sqrt(per_image / n)                   # of one draw's mean loss
        got = losses[0, d]
        assert abs(got.mean() - expected) < 5 * se_draw / math.sqrt(draws) + 1e-6, (delta, got)
        if delta == 0:
            assert np.allclose(got, clean, rtol=0, atol=1e-5) and got.std() == 0
        else:
            assert 0.5 * se_draw < got.std(ddof=1) < 1.6 * se_draw, (delta, se_draw)
    # Reproducible, and independent of the batching.
    one_batch = [(torch.arange(n), images, labels)]
    again, _, _ = robustness.evaluate([Quadratic(beta)], [norm], one_batch, deltas, draws,
                                      seed=3, device=torch.device("cpu"))
    np.testing.assert_allclose(again, losses, rtol=1e-6)  # float32 sums
    other, _, _ = robustness.evaluate([Quadratic(beta)], [norm], batches, deltas, draws,
                                      seed=4, device=torch.device("cpu"))
    assert not np.allclose(other[0, 1:], losses[0, 1:])
    metrics = robustness.summarise(losses[0, 2], top1[0, 2])
    assert metrics["loss"] == pytest.approx(losses[0, 2].mean())
    assert metrics["loss_std"] == pytest.approx(losses[0, 2].std(ddof=1))


class Probe(nn.Module):
    """Keeps its inputs; two logits."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return torch.zeros(len(x), 2)


def test_noisy_pixels_are_clamped_to_the_pixel_range():
    images = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 3, 4, 4)
    probe = Probe()
    norm = robustness.Normalise.of((0.5,) * 3, (0.25,) * 3, torch.device("cpu"))
    batches = [(torch.arange(3), images, torch.zeros(3, dtype=torch.long))]
    robustness.evaluate([probe], [norm], batches, [0.0, 0.15], 1, 0, torch.device("cpu"))
    clean, noisy = (x * 0.25 + 0.5 for x in probe.seen)
    assert torch.allclose(clean, images.float() / 255)
    assert noisy.min() >= -1e-6 and noisy.max() <= 1 + 1e-6
    assert (noisy[0] == clean[0]).float().mean() > 0.3  # black pixels pushed below 0 stay 0
    assert (noisy[2] != clean[2]).all()                 # mid-grey ones move freely


def make_export(folder, root, seed=0, **extra):
    """An export as `python -m pretrain` writes it: a CIFAR network and its run's config on the
    tiny generated set (cifar policy, its 32 px images evaluated at 16 px to save time)."""
    overrides = [f"data.root={root}", "data.policy=cifar", "data.image_size=16",
                 *[f"data.synthetic.{k}={v}" for k, v in TINY_DATA.items()],
                 f"seed={seed}", *[f"{k}={v}" for k, v in extra.items()]]
    cfg = config.load(SMOKE / "independent.yaml", overrides)
    torch.manual_seed(seed)
    model = models.build("cifar_resnet20", num_classes=TINY_DATA["classes"])
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 1.5)
    pre = artifact.preprocessing(*normalization(cfg.data), 16, None)
    path = folder / "export" / "cifar_resnet20.pth"
    artifact.save(path, model, {
        "architecture": "cifar_resnet20",
        "constructor_kwargs": {"num_classes": TINY_DATA["classes"]},
        "name": "cifar_resnet20", "preprocessing": pre, "method": "independent", "icl": False,
        "dataset": {"name": "synthetic", "root": str(root), "num_classes": TINY_DATA["classes"]},
        "epochs": 1, "metrics": {"top1": 0.0, "top5": 0.0}, "seed": seed,
        "config_file": "pretrain/configs/smoke/independent.yaml", "config_name": cfg.name,
        "config_hash": config_hash(cfg), "config": to_dict(cfg), "run_dir": str(folder)})
    return path, cfg


def test_delta_zero_is_the_plain_evaluation(tmp_path, tiny_root):
    """The pre-training evaluation's inputs (loader.build's val split through the input
    pipeline, unaugmented) give the same loss and top-1 as delta = 0."""
    path, cfg = make_export(tmp_path, tiny_root)
    model, meta = artifact.load(path)
    model.eval()
    data = loader.build(cfg.data, 1, 8, 0, DistContext())
    total, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for batch in data.val:
            (x,), labels, _ = data.inputs(batch, augment=False)
            logits = model(x)
            total += F.cross_entropy(logits, labels, reduction="sum").item()
            hits += (logits.argmax(1) == labels).sum().item()
            count += len(labels)
    source = robustness.eval_split(robustness.data_config(path, meta, None), path)
    norm = robustness.Normalise.of(meta["preprocessing"]["mean"], meta["preprocessing"]["std"],
                                   torch.device("cpu"))
    losses, top1, seen = robustness.evaluate(
        [model], [norm], robustness.eval_batches(source, cfg.data, 8, 0), [0.0], 2, 0,
        torch.device("cpu"))
    assert seen == count == 16
    assert losses[0, 0] == pytest.approx([total / count] * 2, rel=1e-6)
    assert top1[0, 0] == pytest.approx([100 * hits / count] * 2)


def lines(folder):
    """The robustness records under a records folder, by export and delta."""
    return sorted((r for _, r in records.scan([folder]) if r.get("stage") == "robustness"),
                  key=lambda r: (r["backbone_path"], r["delta"]))


def test_the_command_writes_one_record_per_delta_once(tmp_path, tiny_root, capsys):
    from results import collect

    path, _ = make_export(tmp_path / "run", tiny_root)
    out = tmp_path / "records"
    argv = [str(path), "--deltas", "0", "0.05", "--draws", "2", "--records", str(out),
            "--device", "cpu", "--workers", "0", "--batch-size", "7"]
    assert robustness.main(argv) == 0
    written = lines(out)
    assert [r["delta"] for r in written] == [0.0, 0.05]
    sha = json.loads(path.with_suffix(".json").read_text())["sha256"]
    for r in written:
        assert r["stage"] == "robustness" and r["task"] == "classification"
        assert (r["method"], r["icl"], r["seed"], r["student"]) == ("independent", False, 0,
                                                                    "cifar_resnet20")
        assert r["config"] == "smoke/independent" and r["backbone_sha256"] == sha
        assert r["dataset"] == "synthetic" and r["draws"] == 2 and r["images"] == 16
        assert r["backbone_path"] == r["artifact"] == str(path)
        assert set(r["metrics"]) == {"loss", "loss_std", "top1", "top1_std"}
        assert r["metrics"]["loss"] == pytest.approx(np.mean(r["draw_losses"]), abs=1e-5)
    assert written[0]["metrics"]["loss_std"] == 0
    assert written[1]["metrics"]["loss"] != written[0]["metrics"]["loss"]
    assert len(collect.read([out])) == 2  # valid records for `python -m results`
    # Again: nothing new. With one more delta: only that one.
    assert robustness.main(argv) == 0
    assert "already evaluated" in capsys.readouterr().out and len(lines(out)) == 2
    assert robustness.main([*argv[:1], "--deltas", "0", "0.05", "0.1", *argv[4:]]) == 0
    assert [r["delta"] for r in lines(out)] == [0.0, 0.05, 0.1]
    # The same noise for any batch size: another batch size reproduces the records.
    again = tmp_path / "again"
    assert robustness.main([*argv[:6], "--records", str(again), "--device", "cpu",
                            "--workers", "0", "--batch-size", "16"]) == 0
    for a, b in zip(lines(again), written):
        assert a["metrics"]["loss"] == pytest.approx(b["metrics"]["loss"], rel=1e-5)


def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, tiny_root, capsys):
    out = tmp_path / "records"
    good, _ = make_export(tmp_path / "run", tiny_root)
    plain = make_backbone(tmp_path / "plain", "cifar_resnet20")  # no run config in its metadata
    elsewhere, _ = make_export(tmp_path / "moved", tmp_path / "no-such-data", seed=1)
    not_plain = tmp_path / "obj" / "cifar_resnet20.pth"
    not_plain.parent.mkdir()
    torch.save({"model": nn.Linear(2, 2)}, not_plain)
    meta = json.loads(good.with_suffix(".json").read_text())
    meta["sha256"] = sha256_file(not_plain)
    not_plain.with_suffix(".json").write_text(json.dumps(meta))
    cases = [
        ([str(tmp_path / "missing.pth")], "backbone weights not found"),
        ([str(plain)], "lacks .*config.preset: only exports of `python -m pretrain`"),
        ([str(elsewhere)], "does not exist .*--data-root"),
        ([str(not_plain)], "not a plain state_dict"),
        ([str(good), "--deltas", "0", "-0.1"], "must be finite and >= 0"),
        ([str(good), "--draws", "0"], "--draws=0 must be >= 1"),
        ([str(good), str(elsewhere)], "does not exist"),  # the good one is not evaluated either
    ]
    for argv, message in cases:
        assert robustness.main([*argv, "--records", str(out), "--device", "cpu"]) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        assert re.search(message, err), (message, err)
        assert not out.exists()
    # --data-root points an export at its data elsewhere
    assert robustness.main([str(elsewhere), "--data-root", str(tiny_root), "--deltas", "0",
                            "--draws", "1", "--records", str(out), "--device", "cpu",
                            "--workers", "0"]) == 0
    assert len(lines(out)) == 1
