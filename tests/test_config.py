"""Config loading: inheritance, overrides, and errors that say how to fix them."""
import pytest

from kdcl_common import ConfigError
from kdcl_common.config import config_diff, read_yaml
from pretrain import config

from .conftest import SMOKE


def test_smoke_config_inherits_its_base():
    cfg = config.load(SMOKE / "kdcl_linear.yaml")
    assert cfg.name == "smoke/kdcl_linear"
    assert cfg.method.name == "kdcl_linear" and cfg.preset == "smoke"
    assert [s.arch for s in cfg.students] == ["resnet18", "mobilenet_v2"]


def test_overrides_are_typed_and_reach_list_items():
    cfg = config.load(SMOKE / "kdcl_linear.yaml",
                      ["optim.lr=0.5", "optim.milestones=[1,2]", "students.0.arch=resnet34",
                       "students.1.kwargs.width_mult=1.0", "method.icl=false"])
    assert cfg.optim.lr == 0.5 and cfg.optim.milestones == [1, 2]
    assert cfg.students[0].arch == "resnet34" and cfg.students[1].kwargs == {"width_mult": 1.0}
    assert cfg.method.icl is False


@pytest.mark.parametrize("override,hint", [
    ("optim.lrr=0.1", "Did you mean 'optim.lr'"),
    ("methd.name=dml", "Did you mean 'method'"),
    ("students.0.achr=resnet18", "Did you mean 'students.0.arch'"),
])
def test_unknown_override_names_the_nearest_key(override, hint):
    with pytest.raises(ConfigError, match=hint):
        config.load(SMOKE / "independent.yaml", [override])


def test_unknown_yaml_key_names_the_nearest_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_base_: {SMOKE / '_base.yaml'}\noptim: {{weight_decy: 0.1}}\n")
    with pytest.raises(ConfigError, match="optim.weight_decy.*Did you mean 'optim.weight_decay'"):
        config.load(bad)


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown architecture 'resnet19'.*resnet18.*wrn_16_2"):
        config.load(SMOKE / "independent.yaml", ["students.0.arch=resnet19"])


def test_unknown_method_and_bad_values():
    with pytest.raises(ConfigError, match="method.name='kdcl_fancy' is not one of"):
        config.load(SMOKE / "independent.yaml", ["method.name=kdcl_fancy"])
    with pytest.raises(ConfigError, match="optim.lr"):
        config.load(SMOKE / "independent.yaml", ["optim.lr=fast"])
    with pytest.raises(ConfigError, match="key=value"):
        config.load(SMOKE / "independent.yaml", ["optim.lr"])


def test_missing_environment_variable_says_what_to_export(tmp_path, monkeypatch):
    monkeypatch.delenv("KDCL_TEST_ROOT", raising=False)
    cfg = tmp_path / "env.yaml"
    cfg.write_text(f"_base_: {SMOKE / '_base.yaml'}\ndata: {{root: '${{oc.env:KDCL_TEST_ROOT}}'}}\n")
    with pytest.raises(ConfigError, match="export KDCL_TEST_ROOT=.*data.root="):
        config.load(cfg)
    monkeypatch.setenv("KDCL_TEST_ROOT", "/data/x")
    assert config.load(cfg).data.root == "/data/x"


def test_circular_base_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="circular"):
        read_yaml(tmp_path / "a.yaml")


def test_method_specific_checks():
    with pytest.raises(ConfigError, match="kd needs method.teacher"):
        config.load(SMOKE / "independent.yaml", ["method.name=kd"])
    with pytest.raises(ConfigError, match="at least 2"):
        config.load(SMOKE / "kdcl_minlogit.yaml", ["students=[{arch: resnet18}]"])


def test_config_diff_lists_changed_leaves():
    a = {"optim": {"lr": 0.1, "milestones": [1, 2]}, "students": [{"arch": "resnet18"}]}
    b = {"optim": {"lr": 0.2, "milestones": [1, 2]}, "students": [{"arch": "resnet34"}]}
    assert config_diff(a, b) == ["  optim.lr: 0.1 -> 0.2",
                                 "  students.0.arch: 'resnet18' -> 'resnet34'"]


def test_every_shipped_config_loads(monkeypatch):
    for var in ("IMAGENET_ROOT", "CIFAR100_ROOT"):
        monkeypatch.setenv(var, "/datasets/placeholder")
    configs = sorted(p for p in config.CONFIG_ROOT.rglob("*.yaml") if not p.name.startswith("_"))
    assert len(configs) >= 9
    for path in configs:
        cfg = config.load(path)
        assert cfg.students and cfg.preset in ("smoke", "cifar", "paper", "custom"), path
        assert (cfg.preset == "custom") == (path.parent.name == "bench"), path


def test_yaml_reads_only_true_and_false_as_booleans():
    from kdcl_common.config import load_yaml, parse_overrides

    # YAML 1.1 would read off/on/yes/no as booleans and break `train.amp: off`
    assert load_yaml("a: off\nb: yes\nc: true\nd: False") == {"a": "off", "b": "yes", "c": True,
                                                             "d": False}
    assert parse_overrides(["train.amp=off", "x=true", "lr=1.0e-4"]) == [
        ("train.amp", "off"), ("x", True), ("lr", 1e-4)]
