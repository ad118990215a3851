"""Architectures and the backbone artifact contract."""
import json
import os

import pytest
import torch
import torchvision

from kdcl_common import KdclError, artifact, models
from kdcl_common import ConfigError


@pytest.mark.parametrize("arch,kwargs,size", [
    ("resnet18", {}, 64), ("resnet50", {}, 64),
    ("mobilenet_v2", {"width_mult": 0.5}, 64), ("mobilenet_v2", {"width_mult": 1.2}, 64),
    ("cifar_resnet32", {}, 32), ("cifar_resnet110", {}, 32),
    ("wrn_16_2", {}, 32), ("wrn_40_2", {}, 32), ("cifar_resnet20", {"norm": "gn"}, 32),
])
def test_architectures_build_and_run(arch, kwargs, size):
    model = models.build(arch, num_classes=7, **kwargs).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, size, size)).shape == (2, 7)


def test_cifar_parameter_counts_match_the_literature():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert abs(count(models.build("cifar_resnet32", num_classes=100)) / 1e6 - 0.47) < 0.02
    assert abs(count(models.build("wrn_16_2", num_classes=100)) / 1e6 - 0.70) < 0.02
    assert abs(count(models.build("wrn_40_2", num_classes=100)) / 1e6 - 2.26) < 0.03


def test_unknown_architecture_and_bad_arguments():
    with pytest.raises(ConfigError, match="known architectures: resnet18"):
        models.build("vgg16")
    with pytest.raises(ConfigError, match="cannot build cifar_resnet32"):
        models.build("cifar_resnet32", num_classes=10, width_mult=2)


def test_label_names_widths():
    assert models.label("mobilenet_v2", {"width_mult": 0.5}) == "mobilenet_v2_x0.5"
    assert models.label("mobilenet_v2", {"width_mult": 1.0}) == "mobilenet_v2"
    assert models.constructor_name("resnet18") == "torchvision.models.resnet18"


def _save(tmp_path, arch, **kwargs):
    model = models.build(arch, **kwargs)
    pre = artifact.preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 224, 256)
    artifact.save(tmp_path / f"{arch}.pth", model,
                  {"architecture": arch, "constructor_kwargs": kwargs, "preprocessing": pre})
    return model


@pytest.mark.parametrize("arch,kwargs,ctor", [
    ("resnet18", {"num_classes": 10}, torchvision.models.resnet18),
    ("mobilenet_v2", {"num_classes": 10, "width_mult": 0.5}, torchvision.models.mobilenet_v2),
])
def test_artifact_loads_strictly_into_the_torchvision_constructor(tmp_path, arch, kwargs, ctor):
    original = _save(tmp_path, arch, **kwargs)
    state = torch.load(tmp_path / f"{arch}.pth", weights_only=True)
    plain = ctor(**kwargs)
    plain.load_state_dict(state, strict=True)
    for (k, a), b in zip(original.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(a, b), k
    model, meta = artifact.load(tmp_path / f"{arch}.pth")
    assert meta["preprocessing"]["mean_255"] == [123.675, 116.28, 103.53]
    assert meta["constructor"] == f"torchvision.models.{arch}"


def test_artifact_errors(tmp_path):
    _save(tmp_path, "resnet18", num_classes=10)
    meta_path = tmp_path / "resnet18.json"
    meta = meta_path.read_text()
    # wrong architecture in the metadata
    meta_path.write_text(meta.replace('"architecture": "resnet18"', '"architecture": "resnet34"'))
    with pytest.raises(KdclError, match="do not fit the architecture.*missing keys: layer1.2"):
        artifact.load(tmp_path / "resnet18.pth")
    # missing metadata
    meta_path.unlink()
    with pytest.raises(KdclError, match="metadata .*resnet18.json is missing"):
        artifact.load(tmp_path / "resnet18.pth")
    # changed weights
    meta_path.write_text(meta)
    with open(tmp_path / "resnet18.pth", "ab") as f:
        f.write(b"x")
    with pytest.raises(KdclError, match="does not match the sha256"):
        artifact.load(tmp_path / "resnet18.pth")


class PrintOnLoad:
    def __reduce__(self):
        return (print, ("this would have run",))


class ShellOnLoad:
    def __reduce__(self):
        return (os.system, ("true",))


@pytest.mark.parametrize("Exploit", [PrintOnLoad, ShellOnLoad])
def test_a_pth_with_code_in_it_is_refused_by_name_without_unsafe_advice(tmp_path, Exploit):
    """A pickle that would run code on load: named, called not plain, and torch's advice to set
    weights_only=False is not passed on (torch words a builtin and a blocked module apart)."""
    from kdcl_common import identity
    from kdcl_common.io import sha256_file

    _save(tmp_path, "resnet18", num_classes=10)
    weights = tmp_path / "resnet18.pth"
    torch.save({"fc.weight": torch.zeros(1), "hook": Exploit()}, weights)
    meta = json.loads(identity.metadata_path(weights).read_text())
    identity.metadata_path(weights).write_text(json.dumps({**meta, "sha256": sha256_file(weights)}))
    with pytest.raises(KdclError) as raised:
        artifact.load(weights)
    message = str(raised.value)
    assert f"{weights} is not a plain state_dict" in message
    assert "weights_only" not in message and "trust" not in message
    weights.write_bytes(b"not a zip")
    identity.metadata_path(weights).write_text(json.dumps({**meta, "sha256": sha256_file(weights)}))
    with pytest.raises(KdclError, match="cannot be read as a PyTorch state_dict"):
        artifact.load(weights)


def backbone_commands(tmp_path, tiny_root, backbone):
    """The three commands that read a backbone's .json: transfer, KD (the teacher) and the
    noise evaluation."""
    from pretrain import cli as pretrain_cli
    from pretrain import robustness
    from transfer import cli as transfer_cli

    from .conftest import REPO, SMOKE, tiny_overrides

    return {
        "transfer": lambda: transfer_cli.main(
            [str(REPO / "transfer/configs/torchvision/smoke_faster_rcnn_fpn.yaml"),
             "--backbone", str(backbone), f"output_root={tmp_path / 'runs'}",
             f"records={tmp_path / 'records'}", f"data.root={tmp_path / 'scenes'}"]),
        "kd": lambda: pretrain_cli.main(
            [str(SMOKE / "independent.yaml"), *tiny_overrides(tiny_root, tmp_path),
             "method.name=kd", f"method.teacher={backbone}"]),
        "robustness": lambda: robustness.main(
            [str(backbone), "--records", str(tmp_path / "records"), "--device", "cpu"]),
    }


AGAIN = ("export the backbone again with `python -m pretrain` (or kdcl_common.artifact.save), "
         "or restore the .json it wrote")


@pytest.mark.parametrize("command", ["transfer", "kd", "robustness"])
def test_a_backbone_json_that_is_not_an_object_is_named(tmp_path, tiny_root, capsys, command):
    from .conftest import make_backbone

    backbone = make_backbone(tmp_path / "export", "resnet18")
    backbone.with_suffix(".json").write_text("[1, 2]\n")
    assert backbone_commands(tmp_path, tiny_root, backbone)[command]() == 2
    assert capsys.readouterr().err.endswith(
        f"error: backbone metadata {backbone.with_suffix('.json')} holds an array ([1, 2]), not "
        f"a JSON object ({{\"format\": \"kdcl-bench/backbone-v1\", \"architecture\": ...}}): "
        f"{AGAIN}\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()


@pytest.mark.parametrize("command", ["transfer", "kd", "robustness"])
def test_string_constructor_kwargs_in_a_backbone_json_are_named(tmp_path, tiny_root, capsys,
                                                                command):
    from .conftest import make_backbone

    backbone = make_backbone(tmp_path / "export", "resnet18")
    meta_file = backbone.with_suffix(".json")
    meta_file.write_text(json.dumps({**json.loads(meta_file.read_text()),
                                     "constructor_kwargs": "num_classes=10"}))
    assert backbone_commands(tmp_path, tiny_root, backbone)[command]() == 2
    assert capsys.readouterr().err.endswith(
        f"error: backbone metadata {meta_file}: constructor_kwargs is a string "
        f"(\"num_classes=10\"), not an object (e.g. \"constructor_kwargs\": {{\"num_classes\": "
        f"1000}}): {AGAIN}\n")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()
