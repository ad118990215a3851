"""Weight conversion: fidelity of the converted backbones and every converter error."""
import pickle

import pytest
import torch

from kdcl_common import models
from transfer import convert, families
from transfer.backends.detectron2 import weights as d2_weights
from transfer.backends.torchvision import weights as tv_weights
from transfer.backends.torchvision import models as detectors
from transfer.backends.torchvision.config import ModelConfig

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.mark.parametrize("arch,kwargs", [("resnet18", {}), ("resnet50", {}), ("mobilenet_v2", {}),
                                         ("mobilenet_v2", {"width_mult": 0.5})])
@pytest.mark.parametrize("norm", ["bn", "frozen_bn"])
def test_torchvision_target_gives_the_same_feature_maps(arch, kwargs, norm):
    torch.manual_seed(0)
    source = models.build(arch, num_classes=10, **kwargs).eval()
    with torch.no_grad():  # give BatchNorm non-trivial statistics
        source.train()(torch.randn(4, 3, 64, 64))
    source.eval()
    detector = detectors.build(ModelConfig(norm=norm, min_size=64, max_size=96), arch, kwargs, 5,
                               MEAN, STD)
    converted = detectors.load_backbone(detector, source.state_dict(), arch)
    assert all(k.startswith(("fc.", "classifier.")) for k in converted.skipped)
    detector.eval()
    image = torch.rand(1, 3, 80, 112)  # both sides normalise the same way (0-1 scale, RGB)
    x = (image - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        error = convert.max_relative_error(convert.torchvision_features(source, arch, x),
                                           detectors.backbone_features(detector, arch, x))
    assert error < 1e-5


def state_of(arch, **kwargs):
    return models.build(arch, num_classes=10, **kwargs).state_dict()


def test_detectron2_resnet_names_by_hand():
    converted = convert.convert(state_of("resnet50"), "resnet50", "detectron2")
    names = set(converted.state)
    for expected in ("stem.conv1.weight", "stem.conv1.norm.running_var",
                     "res2.0.conv3.weight", "res2.0.conv3.norm.bias",
                     "res2.0.shortcut.weight", "res2.0.shortcut.norm.running_mean",
                     "res5.2.conv2.norm.weight", "res4.5.conv1.weight"):
        assert expected in names
    assert converted.skipped == ["fc.weight", "fc.bias"]
    assert not any("layer" in k or "bn" in k or "downsample" in k for k in names)
    r18 = convert.convert(state_of("resnet18"), "resnet18", "detectron2").state
    assert "res2.0.shortcut.weight" not in r18 and "res3.0.shortcut.weight" in r18
    mbv2 = convert.convert(state_of("mobilenet_v2", width_mult=0.5), "mobilenet_v2", "detectron2")
    assert "features.18.1.running_mean" in mbv2.state
    assert not any("classifier" in k for k in mbv2.state)


def test_unused_source_keys_are_listed():
    state = state_of("resnet18")
    state["layer5.0.conv1.weight"] = torch.zeros(1)
    with pytest.raises(convert.ConversionError,
                       match="1 weights .* no place .*layer5.0.conv1.weight"):
        convert.convert(state, "resnet18", "detectron2")


def test_unfilled_and_unknown_target_keys_are_listed():
    detector = detectors.build(ModelConfig(), "resnet18", {}, 5, MEAN, STD)
    expected = detector.backbone.body.state_dict().keys()
    state = state_of("resnet18")
    del state["layer4.1.bn2.running_var"]
    with pytest.raises(convert.ConversionError, match="left unfilled: layer4.1.bn2.running_var"):
        convert.convert(state, "resnet18", "torchvision", expected)
    with pytest.raises(convert.ConversionError, match="target does not have: layer1.2.bn1.bias"):
        convert.convert(state_of("resnet34"), "resnet34", "torchvision", expected)


def test_colliding_targets_are_listed(monkeypatch):
    monkeypatch.setitem(tv_weights.RULES, "resnet",
                        lambda key: "same" if key.startswith("bn1.") else key)
    with pytest.raises(convert.ConversionError, match="collide.*bn1.weight and bn1.bias -> same"):
        convert.convert(state_of("resnet18"), "resnet18", "torchvision")


def test_shape_mismatch_and_unsupported_architectures():
    detector = detectors.build(ModelConfig(), "mobilenet_v2", {}, 5, MEAN, STD)
    with pytest.raises(convert.ConversionError, match="shape mismatches"):
        detectors.load_backbone(detector, state_of("mobilenet_v2", width_mult=0.5), "mobilenet_v2")
    with pytest.raises(convert.ConversionError, match="cifar_resnet32. is of no backbone family "
                       ".*The families: resnet \\(resnet18, .*mobilenet_v2 \\(mobilenet_v2\\)"):
        convert.convert(state_of("cifar_resnet32"), "cifar_resnet32", "torchvision")


def test_a_family_a_backend_has_no_rules_for_is_named(monkeypatch):
    """A third family (e.g. ConvNeXt) added to the table but not to a backend's rules is an
    error naming what the backend has, never another family's path."""
    convnext = families.Family("convnext", ("convnext_tiny",), (4, 8, 16, 32),
                               lambda arch, kwargs: [96, 192, 384, 768], (1, 3, 5, 7))
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, convnext))
    with pytest.raises(convert.ConversionError, match="the torchvision backend's weight rules "
                       "has nothing for the convnext family .* it has: resnet, mobilenet_v2"):
        convert.convert({}, "convnext_tiny", "torchvision")
    with pytest.raises(families.UnknownFamily, match="FPN backbones has nothing for the convnext"):
        detectors.build(ModelConfig(), "convnext_tiny", {}, 5, MEAN, STD)


def test_the_family_table_gives_each_stage_s_channels():
    """The channels the segmentation necks are given, against the networks themselves."""
    import torch

    from kdcl_common import models

    for arch, kwargs in (("resnet18", {}), ("resnet50", {}), ("mobilenet_v2", {}),
                         ("mobilenet_v2", {"width_mult": 0.5})):
        net = models.build(arch, num_classes=10, **kwargs).eval()
        maps = convert.torchvision_features(net, arch, torch.zeros(1, 3, 64, 64),
                                            mobilenet_ends=families.of(arch).stage_ends)
        assert [m.shape[1] for m in maps] == families.of(arch).channels(arch, kwargs)
        assert [64 // m.shape[-1] for m in maps] == list(families.of(arch).strides)


def test_detectron2_pickle_format(tmp_path):
    converted = convert.convert(state_of("resnet18"), "resnet18", "detectron2")
    path = d2_weights.save(converted, tmp_path / "r18.pkl", author="test")
    with open(path, "rb") as f:
        payload = pickle.load(f)
    assert payload["__author__"] == "test" and payload["matching_heuristics"] is True
    assert payload["model"]["stem.conv1.weight"].shape == (64, 3, 7, 7)
    assert type(payload["model"]["stem.conv1.weight"]).__module__ == "numpy"
